"""Thresholds by grid search: the paper's baseline (method doc, sections 5-6).

Each threshold ranges over ``n_quantiles`` training quantiles of its model's calibrated confidence
(levels eps, eps + 1/n, ..., as the release: 0.01, 0.035, ..., 0.985 for n = 40); every combination
is scored on the training split and the Pareto-optimal ones (min cost, min error) form the curve.

Candidates are scored with the training labels by default (``score="labels"``). The release scored
them with the calibrated confidences instead (``score="calibrated"``), which is available for
reproducing its numbers. All (n_quantiles)^(k-1) combinations are evaluated at once: each query
adds its correctness and cost to a box of the threshold grid (a difference array), and cumulative
sums along every axis give every combination's totals, so k = 5 with 40 quantiles (2.56 M
combinations) takes seconds instead of the release's minutes.
"""

from __future__ import annotations

import time

import numpy as np

from cascade.tuners.routing import pareto_mask
from cascade.tuners.base import Tuner, register


def grid_totals(confidence: np.ndarray, value: np.ndarray, cum_cost: np.ndarray, grids: list[np.ndarray]):
    """Sum over queries of the answering model's ``value`` and cumulative cost, for every combination
    of grid thresholds. Returns two arrays of shape (len(g) for g in grids)."""
    n, k = confidence.shape
    sizes = [len(g) for g in grids]
    # a[q, j] = number of grid values strictly below c_qj: model j accepts at index r iff r < a[q, j]
    a = np.column_stack([np.searchsorted(grids[j], confidence[:, j], side="left") for j in range(k - 1)])
    shape = tuple(s + 1 for s in sizes)
    totals = []
    for vals in (value, cum_cost):
        D = np.zeros(shape)
        for j in range(k):
            idx_prefix = [a[:, i] for i in range(j)]
            if j < k - 1:
                zeros = [np.zeros(n, int)] * (k - 2 - j)
                np.add.at(D, tuple(idx_prefix + [np.zeros(n, int)] + zeros), vals[:, j])
                np.add.at(D, tuple(idx_prefix + [a[:, j]] + zeros), -vals[:, j])
            else:
                np.add.at(D, tuple(idx_prefix), vals[:, j])
        for ax in range(k - 1):
            np.cumsum(D, axis=ax, out=D)
        totals.append(D[tuple(slice(0, s) for s in sizes)])
    return totals[0], totals[1]


@register("grid")
class GridSearchTuner(Tuner):
    """Grid search over ``n_quantiles`` training quantiles per threshold, Pareto-filtered on train."""

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
        keep = np.flatnonzero(pareto_mask(cost, error))
        keep = keep[np.argsort(cost[keep], kind="stable")]
        idx = np.unravel_index(keep, corr_sum.shape)
        self.thresholds_ = [np.array([grids[j][idx[j][p]] for j in range(k - 1)]) for p in range(len(keep))]
        self.train_error_ = error[keep]
        self.train_cost_ = cost[keep]
        self.diagnostics_ = {"n_candidates": int(error.size), "n_pareto": int(len(keep)),
                             "tune_seconds": time.perf_counter() - t0}
        return self
