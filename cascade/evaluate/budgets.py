"""Absolute budgets: one fixed set of budgets (USD per million queries) per benchmark, shared by every tuning
and selection run on it, so that two runs' numbers at a budget always mean the same dollar amount.

The set is fixed in advance by a rule that sees no result: the "preferred numbers" 1, 1.5, 2, 3, 5, 7 times a
power of ten that lie between the cheapest and the dearest model's mean cost per query on the test split,
over every model the records hold for that benchmark (so every chain and cascade of one records file or
store on one benchmark gets the same budgets), starting at the cheapest model's own cost rounded up to two
significant digits (so a selection, which always holds the single models, is defined at every budget). Costs as everywhere in tuning:
:data:`cascade.evaluate.tuning.COST_SCALE` (USD per million queries).

Reading a curve at a budget B (:func:`error_at`): the lowest test error among the curve's points whose test
cost is at most B, the way an error-cost curve is read (a cascade whose cheapest point costs more than B has
no value there: it cannot run within B). The same rule for every method, cascade and selection frontier.
The selection's own answer at B (which point it would run, chosen on train) is
:func:`cascade.evaluate.select.choose`; :func:`answer_at_budgets` tabulates it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

PREFERRED = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
COST_SCALE = 1e6  # = cascade.evaluate.tuning.COST_SCALE (USD per million queries); not imported: tuning is heavy


def metric_name(budget: float, what: str = "test_error") -> str:
    """``test_error_at_usd20``: the budget (USD per million queries) in the name, as ``%g``."""
    return f"{what}_at_usd{budget:g}"


def _round_up(x: float, digits: int = 2) -> float:
    if x <= 0 or not math.isfinite(x):
        return x
    e = math.floor(math.log10(x)) - (digits - 1)
    return float(f"{math.ceil(x / 10 ** e - 1e-9) * 10 ** e:.6g}")


def grid(lo: float, hi: float) -> list[float]:
    """The budgets for a cost range [lo, hi]: lo rounded up to two significant digits (the cheapest model
    fits in the first budget), then every preferred number in (that, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi < lo:
        return [float(lo)] if math.isfinite(lo) and lo > 0 else []
    start = _round_up(lo)
    out = [start]
    for e in range(math.floor(math.log10(start)) - 1, math.ceil(math.log10(hi)) + 1):
        for p in PREFERRED:
            b = float(f"{p * 10 ** e:.6g}")
            if start < b <= hi * (1 + 1e-9) and b not in out:
                out.append(b)
    return sorted(out)


def model_costs(records: pd.DataFrame, benchmark: str | None = None, split: str = "test") -> dict[str, float]:
    """Each model's mean cost per query on ``split`` (all rows when the split is absent), USD per million."""
    df = records
    if benchmark is not None and "benchmark" in df:
        df = df[df["benchmark"] == benchmark]
    if split in set(df.get("split", pd.Series(dtype=str)).unique()):
        df = df[df["split"] == split]
    costs = df.groupby("model")["cost"].mean() * COST_SCALE
    return {str(m): float(c) for m, c in costs.items() if np.isfinite(c)}


def benchmark_budgets(records: pd.DataFrame, benchmark: str | None = None, split: str = "test") -> list[float]:
    """The benchmark's budget set (module doc) from its records."""
    costs = model_costs(records, benchmark, split)
    if not costs:
        return []
    return grid(min(costs.values()), max(costs.values()))


def error_at(curve: pd.DataFrame, budget: float, cost: str = "test_cost", error: str = "test_error") -> float:
    """The lowest ``error`` among points with ``cost`` <= budget (NaN when none costs that little)."""
    x = curve[cost].to_numpy(float)
    y = curve[error].to_numpy(float)
    ok = (x <= budget * (1 + 1e-9)) & np.isfinite(y)
    return float(y[ok].min()) if ok.any() else float("nan")


def curve_at_budgets(curve: pd.DataFrame, budgets: list[float]) -> list[float]:
    return [error_at(curve, b) for b in budgets]


def budget_metrics(curve: pd.DataFrame, budgets: list[float]) -> dict[str, float]:
    """``test_error_at_usd<B>`` for every budget the curve can afford (unaffordable budgets are left out)."""
    return {metric_name(b): v for b, v in zip(budgets, curve_at_budgets(curve, budgets)) if np.isfinite(v)}


def answer_at_budgets(frontier: pd.DataFrame, budgets: list[float], select_on: str = "measured") -> pd.DataFrame:
    """One row per budget: the frontier point a selection runs at that budget (chosen on train: the point with
    the largest train-side cost <= B, :func:`cascade.evaluate.select.choose`), its method (when the frontier
    pools several), cascade, models in order, thresholds, the train-side (predicted) error and cost it was
    chosen by (``select_on``: measured = the thresholds scored on the training labels, predicted = the tuner's
    estimate), and its measured test error and cost. A budget below the cheapest point gets no row."""
    pred_err, pred_cost = (("train_error", "train_cost") if str(select_on).partition(":")[0] == "predicted"
                           else ("measured_train_error", "measured_train_cost"))
    lo = frontier["budget_lo"].to_numpy(float)
    rows = []
    for i, b in enumerate(budgets):
        ok = np.flatnonzero(lo <= b * (1 + 1e-9))
        if not len(ok):
            continue
        r = frontier.iloc[ok[-1]]
        rows.append({"budget_index": i, "budget": float(b), "method": r["method"] if "method" in r else None,
                     "cascade": r["cascade"], "models": list(r["models"]) if "models" in r else r["cascade"].split(" -> "),
                     "thresholds": [float(t) for t in r["thresholds"]], "frontier_row": int(ok[-1]),
                     "predicted_error": float(r[pred_err]), "predicted_cost": float(r[pred_cost]),
                     "test_error": float(r["test_error"]), "test_cost": float(r["test_cost"])})
    return pd.DataFrame(rows)


__all__ = ["PREFERRED", "answer_at_budgets", "benchmark_budgets", "budget_metrics", "curve_at_budgets", "error_at",
           "grid", "metric_name", "model_costs"]
