"""``margin``: margin sampling (Ramirez, Birch & Titov 2024, arXiv 2405.02134).

The signal is the first generated token's top-2 probability margin (records column
``conf_top2_margin``): a small margin means the cheap model is unsure, so the query escalates.

- Offline (registered tuner ``margin``): for a grid of target escalation rates r, the threshold of
  stage j is the r-quantile of the training signal of model j; a query escalates from j when its
  signal is <= that quantile (answers when ``c_j > t_j``, the common semantics). Calibration is
  monotone, so quantiles of calibrated confidences are quantiles of the margins. The curve lives on
  the common error-cost axes and is scored by :mod:`cascade.evaluate.curves` like any other.
- Online (:func:`online_margin_curve`, two-model cascade): queries arrive one by one. For a per-query
  budget B the target escalation rate is r = (B - c_cheap) / c_expensive; the threshold for query t is
  the r-quantile of all margins seen so far (this one included); nothing escalates during the first
  ``warmup`` queries; an escalation that would take the total spend over B * N (the cheap model runs on
  every query, so N * c_cheap is reserved) is refused. Accuracy is measured at ``n_budgets`` budgets
  evenly spaced between the cheapest model's cost and the cost of always escalating, averaged over
  ``n_orders`` seeded query orders; the area is the integral of accuracy over the budget range divided
  by the range (the mean accuracy).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cascade.data.records import CascadeData
from cascade.tuners.base import SEED, Interval, Tuner, register


@register("margin")
class MarginTuner(Tuner):
    """Offline margin sampling: quantile thresholds at ``n_rates`` escalation rates in [0, 1]."""

    parameter_constraints = {"n_rates": Interval(int, 2, 100000), "seed": SEED}

    @classmethod
    def memory_need(cls, n, k, params=None):
        n_rates = int((params or {}).get("n_rates", 41))
        return 8.0 * (16 * n * k + 4 * n_rates * k), "lower n_rates"

    def __init__(self, n_rates: int = 41, seed: int = 0):
        self.n_rates = n_rates
        self.seed = seed  # deterministic; kept for the common interface

    def fit(self, train: CascadeData) -> "MarginTuner":
        if train.n == 0:
            raise ValueError("margin: the training split is empty")
        if train.k < 2:
            raise ValueError("margin: a cascade needs at least two models")
        if int(self.n_rates) < 2:
            raise ValueError("margin: n_rates must be >= 2")
        rates = np.linspace(0.0, 1.0, int(self.n_rates))
        conf = train.confidence[:, :-1]
        cum = np.cumsum(train.cost, axis=1)
        rows = np.arange(train.n)
        ts, errs, costs = [], [], []
        for r in rates:
            if r <= 0:
                t = np.full(train.k - 1, -np.inf)
            elif r >= 1:
                t = np.full(train.k - 1, np.inf)
            else:
                t = np.quantile(conf, r, axis=0, method="inverted_cdf")
            accept = np.concatenate([conf > t[None, :], np.ones((train.n, 1), bool)], axis=1)
            a = np.argmax(accept, axis=1)
            ts.append(t)
            errs.append(1.0 - train.correct[rows, a].mean())
            costs.append(cum[rows, a].mean())
        order = np.argsort(costs, kind="stable")
        self.thresholds_ = [ts[i] for i in order]
        self.train_error_ = np.asarray(errs)[order]
        self.train_cost_ = np.asarray(costs)[order]
        self.rates_ = rates[order]
        self.diagnostics_ = {"rates": self.rates_.tolist()}
        return self


def online_margin_run(margins, correct, cost_cheap: float, cost_exp: float, budget: float, order,
                      warmup: int = 20) -> dict:
    """One online pass in the given query order at per-query budget ``budget``.

    ``correct`` is (n, 2) for (cheap, expensive); costs are per-query means of each model (the
    expensive model's cost is added on escalation). Returns accuracy, escalation rate and spend."""
    margins = np.asarray(margins, float)[order]
    correct = np.asarray(correct, float)[order]
    n = len(margins)
    if n == 0:
        raise ValueError("online margin: no queries")
    if cost_exp <= 0:
        raise ValueError("online margin: the expensive model must cost more than 0")
    rate = float(np.clip((budget - cost_cheap) / cost_exp, 0.0, 1.0))
    total = budget * n
    spent = 0.0
    n_esc = 0
    hits = 0.0
    seen = np.empty(n)
    for t in range(n):
        seen[t] = margins[t]
        spent += cost_cheap
        esc = False
        if t >= warmup and rate > 0:
            thr = np.quantile(seen[: t + 1], rate)
            # escalate if unsure and the remaining budget still covers the cheap model on the rest
            reserve = cost_cheap * (n - t - 1)
            if margins[t] <= thr and spent + cost_exp + reserve <= total * (1 + 1e-12):
                esc = True
        if esc:
            spent += cost_exp
            n_esc += 1
            hits += correct[t, 1]
        else:
            hits += correct[t, 0]
    return {"accuracy": hits / n, "escalation_rate": n_esc / n, "spent": spent, "total_budget": total,
            "target_rate": rate}


def online_margin_curve(margins, correct, cost_cheap: float, cost_exp: float, *, n_budgets: int = 100,
                        n_orders: int = 3, warmup: int = 20, seed: int = 0) -> tuple[pd.DataFrame, float]:
    """Accuracy at ``n_budgets`` budgets in [cost_cheap, cost_cheap + cost_exp], mean over ``n_orders``
    seeded orders. Returns (frame: budget, accuracy, escalation_rate, max_spend_ratio) and the area
    (integral of accuracy over the budget range / range)."""
    rng = np.random.default_rng(seed)
    n = len(np.asarray(margins))
    orders = [rng.permutation(n) for _ in range(n_orders)]
    budgets = np.linspace(cost_cheap, cost_cheap + cost_exp, n_budgets)
    rows = []
    for b in budgets:
        runs = [online_margin_run(margins, correct, cost_cheap, cost_exp, b, o, warmup) for o in orders]
        rows.append({"budget": b, "accuracy": float(np.mean([r["accuracy"] for r in runs])),
                     "escalation_rate": float(np.mean([r["escalation_rate"] for r in runs])),
                     "max_spend_ratio": float(max(r["spent"] / r["total_budget"] for r in runs))})
    frame = pd.DataFrame(rows)
    return frame, budget_area(frame["budget"], frame["accuracy"])


def budget_area(budget, accuracy) -> float:
    b = np.asarray(budget, float)
    a = np.asarray(accuracy, float)
    if b[-1] <= b[0]:
        return float(a.mean())
    return float(np.trapezoid(a, b) / (b[-1] - b[0]))


def accuracy_at_budgets(curve_cost, curve_error, budgets) -> np.ndarray:
    """Accuracy of an offline curve at given budgets: best accuracy among points with cost <= budget
    (a point dearer than the budget cannot be afforded), the cheapest point's below its cost."""
    c = np.asarray(curve_cost, float)
    acc = 1.0 - np.asarray(curve_error, float)
    out = []
    for b in np.asarray(budgets, float):
        ok = c <= b * (1 + 1e-12)
        out.append(acc[ok].max() if ok.any() else acc[np.argmin(c)])
    return np.asarray(out)
