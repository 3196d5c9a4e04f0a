"""Routing: cascade semantics applied to labelled records (which model answers, error, cost, shares).

One definition for every method: model j answers when its confidence c_j > t_j, otherwise the query
goes on; the last model always answers. A query's cost is the sum of the costs of every model it
visited. Tuners search with these functions; :mod:`cascade.evaluate.curves` scores test curves with them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cascade.data.records import CascadeData


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


def _group_rows(codes: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Group index of each row of the (n, m) integer array ``codes`` (column j in [0, sizes[j])) and the
    distinct rows, in one sort (a mixed-radix int64 key when it fits, else ``np.unique(axis=0)``)."""
    n, m = codes.shape
    if m == 0:
        return np.zeros(n, np.intp), np.zeros((1 if n else 0, 0), np.int64)
    if float(np.prod(np.asarray(sizes, float))) < 2.0 ** 62:
        key = codes[:, 0].astype(np.int64)
        for j in range(1, m):
            key = key * sizes[j] + codes[:, j]
        keys, group = np.unique(key, return_inverse=True)
        digits = []
        for size in sizes[:0:-1]:
            keys, d = np.divmod(keys, size)
            digits.append(d)
        digits.append(keys)
        return group.reshape(-1), np.column_stack(digits[::-1])
    distinct, group = np.unique(codes, axis=0, return_inverse=True)
    return group.reshape(-1), distinct


def score_many(threshold_list, data: CascadeData) -> dict:
    """:func:`score_thresholds` of every vector of ``threshold_list`` at once: arrays ``error`` (B,),
    ``cost`` (B,) and ``shares`` (B, k), the same routing (c_j > t_j answers) of every query.

    Only the order of each confidence among the thresholds given for its model matters, so each model's
    confidences are coded by the number of those thresholds strictly below them (c > t_b exactly when
    the code exceeds t_b's position among them); queries with the same codes are routed alike and are
    collapsed once (counts, sums of correctness and of cumulative cost per answering model), and each
    vector routes the groups, not the queries: one sort of n keys, then O(groups x k) per vector. Shares
    and, for 0/1 labels, errors equal :func:`score_thresholds`'s exactly; mean costs (and soft-label
    errors) to float rounding, the sums adding in another order."""
    n, k = data.n, data.k
    vectors = [np.asarray(t, float).reshape(-1) for t in threshold_list]
    for t in vectors:
        if t.shape[0] != k - 1:
            raise ValueError(f"need {k - 1} thresholds for {k} models, got {t.shape[0]}")
    T = np.array(vectors, float).reshape(len(vectors), k - 1)
    B = len(T)
    if B == 0 or n == 0 or np.isnan(T).any() or np.isnan(data.confidence[:, : k - 1]).any():
        rows = [score_thresholds(t, data) for t in T]
        return {"error": np.array([r["error"] for r in rows]), "cost": np.array([r["cost"] for r in rows]),
                "shares": np.array([r["shares"] for r in rows]).reshape(B, k)}
    pos = np.empty((B, k - 1), np.int64)  # position of t_bj among model j's distinct thresholds
    codes = np.empty((n, k - 1), np.int64)  # number of model j's distinct thresholds below c_j
    sizes = []
    for j in range(k - 1):
        u = np.unique(T[:, j])
        pos[:, j] = np.searchsorted(u, T[:, j], side="left")
        codes[:, j] = np.searchsorted(u, data.confidence[:, j], side="left")
        sizes.append(len(u) + 1)
    group, gcodes = _group_rows(codes, sizes)
    del codes
    g = len(gcodes)
    count = np.bincount(group, minlength=g).astype(float)
    cum_cost = np.cumsum(data.cost, axis=1)
    S_correct = np.column_stack([np.bincount(group, weights=data.correct[:, j], minlength=g) for j in range(k)])
    S_cost = np.column_stack([np.bincount(group, weights=cum_cost[:, j], minlength=g) for j in range(k)])
    del cum_cost, group
    small = np.int16 if max(sizes) < 2 ** 15 else np.int64
    gcols = [np.ascontiguousarray(gcodes[:, j], dtype=small) for j in range(k - 1)]
    base = np.arange(g, dtype=np.int64) * k  # flat index of each group's row in S_correct / S_cost
    flat_correct, flat_cost = S_correct.ravel(), S_cost.ravel()
    error, cost, shares = np.empty(B), np.empty(B), np.empty((B, k))
    open_ = np.empty(g, bool)
    accept = np.empty(g, bool)
    for b in range(B):
        idx = base + (k - 1)  # the last model answers what nobody before accepted
        open_.fill(True)
        for j in range(k - 1):
            np.greater(gcols[j], pos[b, j], out=accept)
            accept &= open_
            idx[accept] -= k - 1 - j
            open_ &= ~accept
        error[b] = 1.0 - flat_correct[idx].sum() / n
        cost[b] = flat_cost[idx].sum() / n
        shares[b] = np.bincount(idx - base, weights=count, minlength=k) / n
    return {"error": error, "cost": cost, "shares": shares}


def score_curve(threshold_list, data: CascadeData) -> pd.DataFrame:
    """Score a list of threshold vectors; one row each: error, cost, share_<model> (:func:`score_many`)."""
    threshold_list = list(threshold_list)
    if not threshold_list:
        return pd.DataFrame([])
    s = score_many(threshold_list, data)
    out = pd.DataFrame({"error": s["error"], "cost": s["cost"]})
    for i in range(data.k):
        out[f"share_{i}"] = s["shares"][:, i]
    return out


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
