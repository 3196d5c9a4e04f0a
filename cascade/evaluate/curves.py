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

from cascade.data.records import CascadeData
from cascade.tuners.routing import pareto_mask, route, score_curve, score_routing, score_thresholds  # noqa: F401


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
