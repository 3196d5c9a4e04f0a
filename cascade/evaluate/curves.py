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


def error_at_nearest(cost, error, at: float) -> float:
    """Test error of the curve's point nearest to cost ``at`` (points of equal cost averaged)."""
    x, y = _dedupe_sorted(cost, 1.0 - np.asarray(error, float))
    return float(1.0 - y[np.argmin(np.abs(x - at))])


def auc(cost, error, lo: float | None = None, hi: float | None = None) -> float:
    """Mean test error over [lo, hi] (default: the curve's own cost range). Lower is better.

    AUC = 1 - (1/(hi-lo)) * integral_lo^hi accuracy(cost) dcost  (the method doc's definition).
    NaN when the range is a single cost or empty (hi <= lo): there is no area to average over."""
    cost = np.asarray(cost, float)
    acc = 1.0 - np.asarray(error, float)
    if cost.size == 0:
        return float("nan")
    lo = float(cost.min()) if lo is None else lo
    hi = float(cost.max()) if hi is None else hi
    if not hi > lo:
        return float("nan")
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
    note: str = ""  # why the comparison is not an area comparison (single shared cost, no shared range)

    @property
    def pct_change(self) -> float:
        if not (np.isfinite(self.auc_a) and np.isfinite(self.auc_b)) or self.auc_b == 0:
            return float("nan")
        return 100.0 * (self.auc_a - self.auc_b) / self.auc_b


def compare_curves(cost_a, error_a, cost_b, error_b, *, at_single_cost: bool = False) -> Comparison:
    """AUCs of two test curves over their shared cost range.

    Without a shared range of positive width there is no area to compare: when the cost ranges do not
    overlap the AUCs are NaN (note says so); when they share a single cost they are NaN too, unless
    ``at_single_cost`` (the study protocol), which compares the errors of each curve's point nearest to
    that cost and says so in ``note``."""
    lo, hi = shared_range(cost_a, cost_b)
    if hi > lo:
        return Comparison(lo, hi, auc(cost_a, error_a, lo, hi), auc(cost_b, error_b, lo, hi))
    nan = float("nan")
    if hi < lo:
        return Comparison(lo, hi, nan, nan, f"no shared cost range: one curve costs {hi:.6g} at most, the "
                                            f"other {lo:.6g} at least")
    if at_single_cost:
        return Comparison(lo, hi, error_at_nearest(cost_a, error_a, lo), error_at_nearest(cost_b, error_b, lo),
                          f"single shared cost {lo:.6g}: errors compared at that cost")
    return Comparison(lo, hi, nan, nan, f"the curves share a single cost ({lo:.6g}): there is no area to compare")


def wilcoxon_less(pct_changes) -> float:
    """One-sided paired Wilcoxon signed-rank p-value that the changes are below zero (method a better)."""
    from scipy import stats  # here, not at the top: importing scipy.stats costs ~0.4 s

    x = np.asarray(pct_changes, float)
    x = x[np.isfinite(x)]
    if len(x) < 2 or np.all(x == 0):
        return float("nan")
    return float(stats.wilcoxon(x, alternative="less").pvalue)
