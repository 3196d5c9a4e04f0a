"""Curves: cascade semantics on real labels and costs, area under the error-cost curve, comparisons.

Cascade semantics (one definition for every method): model j answers when its confidence
c_j > t_j, otherwise the query goes on; the last model always answers. A query's cost is the sum of
the costs of every model it visited. Costs are in the unit of the data (the tune pipeline uses USD
per million queries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .records import CascadeData


def route(thresholds, confidence: np.ndarray) -> np.ndarray:
    """Index (0..k-1) of the model that answers each query, for one threshold vector."""
    conf = np.asarray(confidence, float)
    t = np.asarray(thresholds, float).reshape(-1)
    k = conf.shape[1]
    if t.shape[0] != k - 1:
        raise ValueError(f"need {k - 1} thresholds for {k} models, got {t.shape[0]}")
    accepts = conf[:, : k - 1] > t[None, :]
    accepts = np.concatenate([accepts, np.ones((conf.shape[0], 1), bool)], axis=1)
    return np.argmax(accepts, axis=1)


def score_routing(answering: np.ndarray, data: CascadeData) -> dict:
    """Error, mean cost and per-model answer shares for a given routing on labelled data."""
    n, k = data.n, data.k
    rows = np.arange(n)
    correct = data.correct[rows, answering]
    cum_cost = np.cumsum(data.cost, axis=1)
    cost = cum_cost[rows, answering]
    shares = np.bincount(answering, minlength=k) / n
    return {"error": float(1.0 - correct.mean()), "cost": float(cost.mean()), "shares": shares}


def score_thresholds(thresholds, data: CascadeData) -> dict:
    """Measured error and cost of one threshold vector on ``data`` (its confidences, labels, costs)."""
    return score_routing(route(thresholds, data.confidence), data)


def score_curve(threshold_list, data: CascadeData) -> pd.DataFrame:
    """Score a list of threshold vectors; one row each: error, cost, share_<model>."""
    rows = []
    for t in threshold_list:
        s = score_thresholds(t, data)
        row = {"error": s["error"], "cost": s["cost"]}
        row.update({f"share_{i}": float(v) for i, v in enumerate(s["shares"])})
        rows.append(row)
    return pd.DataFrame(rows)


def _dedupe_sorted(cost, acc):
    cost = np.asarray(cost, float)
    acc = np.asarray(acc, float)
    order = np.argsort(cost, kind="stable")
    cost, acc = cost[order], acc[order]
    uc, inv = np.unique(cost, return_inverse=True)
    ua = np.bincount(inv, weights=acc) / np.bincount(inv)
    return uc, ua


def integrate_linear(cost, acc, lo: float, hi: float) -> float:
    """Integral over [lo, hi] of the piecewise-linear interpolant of (cost, acc), extrapolated linearly
    beyond the end points (as scipy's interp1d(..., fill_value='extrapolate')). Points with equal cost
    are averaged."""
    x, y = _dedupe_sorted(cost, acc)
    if hi <= lo:
        return 0.0
    if len(x) == 1:
        return float(y[0] * (hi - lo))

    def f(z):
        z = np.asarray(z, float)
        i = np.clip(np.searchsorted(x, z, side="right") - 1, 0, len(x) - 2)
        slope = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
        return y[i] + slope * (z - x[i])

    knots = np.concatenate([[lo], x[(x > lo) & (x < hi)], [hi]])
    vals = f(knots)
    return float(np.sum((vals[1:] + vals[:-1]) * np.diff(knots)) / 2.0)


def auc(cost, error, lo: float | None = None, hi: float | None = None) -> float:
    """Mean test error over [lo, hi] (default: the curve's own cost range). Lower is better.

    AUC = 1 - (1/(hi-lo)) * integral_lo^hi accuracy(cost) dcost  (the method doc's definition)."""
    cost = np.asarray(cost, float)
    acc = 1.0 - np.asarray(error, float)
    lo = float(cost.min()) if lo is None else lo
    hi = float(cost.max()) if hi is None else hi
    if hi <= lo:
        x, y = _dedupe_sorted(cost, acc)
        return float(1.0 - y[np.argmin(np.abs(x - lo))])
    return 1.0 - integrate_linear(cost, acc, lo, hi) / (hi - lo)


def shared_range(*costs) -> tuple[float, float]:
    """lo = max of the curves' minimum costs, hi = min of their maximum costs."""
    lo = max(float(np.min(c)) for c in costs)
    hi = min(float(np.max(c)) for c in costs)
    return lo, hi


@dataclass
class Comparison:
    lo: float
    hi: float
    auc_a: float
    auc_b: float

    @property
    def pct_change(self) -> float:
        return 100.0 * (self.auc_a - self.auc_b) / self.auc_b


def compare_curves(cost_a, error_a, cost_b, error_b) -> Comparison:
    """AUCs of two test curves over their shared cost range."""
    lo, hi = shared_range(cost_a, cost_b)
    return Comparison(lo, hi, auc(cost_a, error_a, lo, hi), auc(cost_b, error_b, lo, hi))


def pareto_mask(cost, error) -> np.ndarray:
    """Non-dominated points (lower cost and lower error are better); of exact ties the first is kept."""
    cost = np.asarray(cost, float)
    error = np.asarray(error, float)
    order = np.lexsort((np.arange(len(cost)), error, cost))
    e = error[order]
    prev_best = np.concatenate([[np.inf], np.minimum.accumulate(e)[:-1]])
    keep = np.zeros(len(cost), bool)
    keep[order[e < prev_best]] = True
    return keep


def wilcoxon_less(pct_changes) -> float:
    """One-sided paired Wilcoxon signed-rank p-value that the changes are below zero (method a better)."""
    x = np.asarray(pct_changes, float)
    x = x[np.isfinite(x)]
    if len(x) < 2 or np.all(x == 0):
        return float("nan")
    return float(stats.wilcoxon(x, alternative="less").pvalue)


def summarize_by_length(table: pd.DataFrame, value: str = "pct_change") -> pd.DataFrame:
    """Mean % change per cascade length with the one-sided Wilcoxon p-value, plus k>=3 and all rows."""
    rows = []
    for k, g in table.groupby("k"):
        rows.append({"k": str(k), "n_cascades": len(g), f"mean_{value}": g[value].mean(), "wilcoxon_p": wilcoxon_less(g[value])})
    ge3 = table[table["k"] >= 3]
    if len(ge3):
        per_k = ge3.groupby("k")[value].mean()
        rows.append({"k": ">=3 (mean of per-k means)", "n_cascades": len(ge3), f"mean_{value}": per_k.mean(),
                     "wilcoxon_p": wilcoxon_less(ge3[value])})
    rows.append({"k": "all", "n_cascades": len(table), f"mean_{value}": table[value].mean(),
                 "wilcoxon_p": wilcoxon_less(table[value])})
    return pd.DataFrame(rows)
