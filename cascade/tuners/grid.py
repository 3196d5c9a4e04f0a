"""Thresholds by grid search: the paper's baseline (method doc, sections 5-6).

Each threshold ranges over ``n_quantiles`` training quantiles of its model's calibrated confidence
(levels eps, eps + 1/n, ..., as the release: 0.01, 0.035, ..., 0.985 for n = 40); every combination
is scored on the training split and the Pareto-optimal ones (min cost, min error) form the curve.

Candidates are scored with the training labels by default (``score="labels"``). The release scored
them with the calibrated confidences instead (``score="calibrated"``), which is available for
reproducing its numbers. All (n_quantiles)^(k-1) combinations are evaluated at once: each query
adds its correctness and cost to a box of the threshold grid (a difference array), and cumulative
sums along every axis give every combination's totals, so k = 5 with 40 quantiles (2.56 M
combinations) takes seconds instead of the release's minutes. The boxes are added with one
``np.bincount`` over flat cell indices (not ``np.add.at``), and a cost-binned pre-filter drops
certainly dominated cells before the exact Pareto filter; both give bit-for-bit the cells, ties and
totals of the plain computation (tests/test_tuner_fit_exact.py). At 1e6 training queries, k = 5,
the fit takes under a second of CPU and ~0.3 GB.
"""

from __future__ import annotations

import math
import time

import numpy as np

from cascade.tuners.routing import pareto_mask
from cascade.tuners.base import Interval, Options, Tuner, register


def grid_totals(confidence: np.ndarray, value: np.ndarray, cum_cost: np.ndarray, grids: list[np.ndarray]):
    """Sum over queries of the answering model's ``value`` and cumulative cost, for every combination
    of grid thresholds. Returns two arrays of shape (len(g) for g in grids).

    Query q with a_qj = number of grid values of model j strictly below c_qj is answered by model j at
    every combination r with r_i >= a_qi for i < j and r_j < a_qj (the last model: r_i >= a_qi for all
    i). In a difference array D of shape (len(g) + 1 ...) that box is +v at (a_q0..a_q(j-1), 0, 0..)
    and -v at (a_q0..a_q(j-1), a_qj, 0..); cumulative sums along every axis give the totals. All
    entries are accumulated by one ``np.bincount`` over flat cell indices, in the order query-by-query
    within each (model, sign) block, so every cell sums its entries in a fixed order."""
    n, k = confidence.shape
    sizes = [len(g) for g in grids]
    shape = tuple(s + 1 for s in sizes)
    strides = np.cumprod((1,) + shape[::-1])[:-1][::-1]  # C-order strides (in cells) of D
    n_cells = int(np.prod(shape))
    # blocks in accumulation order: (0, +), (0, -), (1, +), (1, -), ..., (k-1, +) as (column, sign);
    # block b's flat cell indices are idx[b * n:(b + 1) * n]
    blocks = [(j, sign) for j in range(k - 1) for sign in (1.0, -1.0)] + [(k - 1, 1.0)]
    idx = np.empty(len(blocks) * n, np.intp)
    part = lambda b: idx[b * n:(b + 1) * n]  # noqa: E731
    part(0)[:] = 0  # model 0's box starts at the origin
    for j in range(k - 1):
        # a_qj: model j accepts at grid index r iff r < a_qj (c_qj > grid value)
        step = np.searchsorted(grids[j], confidence[:, j], side="left").astype(np.intp)
        step *= int(strides[j])
        np.add(part(2 * j), step, out=part(2 * j + 1))  # (a_q0, .., a_qj, 0, ..)
        part(2 * j + 2)[:] = part(2 * j + 1)  # the next model's + block starts where this one's - block is
        del step
    totals = []
    for vals in (value, cum_cost):
        w = np.empty(len(idx))
        for b, (j, sign) in enumerate(blocks):
            np.multiply(vals[:, j], sign, out=w[b * n:(b + 1) * n])
        D = np.bincount(idx, weights=w, minlength=n_cells).reshape(shape)
        del w
        for ax in range(k - 1):
            np.cumsum(D, axis=ax, out=D)
        totals.append(D[tuple(slice(0, s) for s in sizes)])
    return totals[0], totals[1]


def pareto_candidates(cost: np.ndarray, error: np.ndarray, n_bins: int = 4096) -> np.ndarray:
    """Indices (increasing) of the points that may be Pareto-optimal: a cheap exact pre-filter for
    :func:`pareto_mask` on millions of grid cells. Points are put in ``n_bins`` bins of equal cost width
    (a bin order implies a strictly lower cost, as rounding is monotone); a point whose error is at least
    the lowest error of any lower bin is dominated by a strictly cheaper point and is dropped. Dropping
    dominated points changes neither which of the others ``pareto_mask`` keeps nor their tie order, so
    ``idx[pareto_mask(cost[idx], error[idx])]`` equals ``flatnonzero(pareto_mask(cost, error))``."""
    cost = np.asarray(cost, float)
    error = np.asarray(error, float)
    if cost.size == 0 or not (np.isfinite(cost).all() and np.isfinite(error).all()):
        return np.arange(cost.size)
    lo, hi = cost.min(), cost.max()
    with np.errstate(over="ignore", divide="ignore"):
        width = hi - lo
        scale = n_bins / width if width > 0 else np.inf
    if not (np.isfinite(width) and np.isfinite(scale)):  # a range too wide or too narrow to scale
        return np.arange(cost.size)
    b = np.floor((cost - lo) * scale).astype(np.intp)
    np.clip(b, 0, n_bins - 1, out=b)
    best = np.full(n_bins, np.inf)
    np.minimum.at(best, b, error)
    below = np.concatenate([[np.inf], np.minimum.accumulate(best)[:-1]])  # lowest error of lower bins
    return np.flatnonzero(error < below[b])


@register("grid")
class GridSearchTuner(Tuner):
    """Grid search over ``n_quantiles`` training quantiles per threshold, Pareto-filtered on train."""

    parameter_constraints = {"n_quantiles": Interval(int, 1, 10000), "eps": Interval(float, 0, 0.5, open="hi"),
                             "score": Options(("labels", "calibrated"))}

    @classmethod
    def memory_need(cls, n, k, params=None):
        """The grid's (levels + 1)^(k-1) cells, about six float64 arrays of them (the two difference arrays
        and their totals, error, cost, the pre-filter's bins), plus the (2k-1) n flat indices and weights."""
        p = {"n_quantiles": 40, "eps": 0.01, **(params or {})}
        levels = max(1, math.ceil((1 - 2 * p["eps"]) * p["n_quantiles"]))
        cells = float(levels + 1) ** (k - 1)
        return (6 * cells + 2 * (2 * k - 1) * n) * 8.0, (
            f"the grid has (n_quantiles + 1)^(k-1) = {cells:.3g} cells: lower n_quantiles or tune fewer models")

    def __init__(self, n_quantiles: int = 40, eps: float = 0.01, score: str = "labels"):
        self.n_quantiles = n_quantiles
        self.eps = eps
        self.score = score

    def fit(self, train):
        if self.score not in ("labels", "calibrated"):
            raise ValueError(f"unknown grid score {self.score!r}; use labels or calibrated")
        t0 = time.perf_counter()
        conf = train.confidence
        n, k = conf.shape
        levels = np.arange(self.eps, 1 - self.eps, 1.0 / self.n_quantiles)
        grids = [np.quantile(conf[:, j], levels) for j in range(k - 1)]
        value = train.correct if self.score == "labels" else conf
        corr_sum, cost_sum = grid_totals(conf, value, np.cumsum(train.cost, axis=1), grids)
        error = 1.0 - corr_sum.ravel() / n
        cost = cost_sum.ravel() / n
        cand = pareto_candidates(cost, error)
        keep = cand[pareto_mask(cost[cand], error[cand])]
        keep = keep[np.argsort(cost[keep], kind="stable")]
        idx = np.unravel_index(keep, corr_sum.shape)
        self.thresholds_ = [np.array([grids[j][idx[j][p]] for j in range(k - 1)]) for p in range(len(keep))]
        self.train_error_ = error[keep]
        self.train_cost_ = cost[keep]
        self.diagnostics_ = {"n_candidates": int(error.size), "n_pareto": int(len(keep)),
                             "tune_seconds": time.perf_counter() - t0}
        return self
