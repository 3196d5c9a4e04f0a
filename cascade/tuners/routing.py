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


def score_curve(threshold_list, data: CascadeData) -> pd.DataFrame:
    """Score a list of threshold vectors; one row each: error, cost, share_<model>."""
    rows = []
    for t in threshold_list:
        s = score_thresholds(t, data)
        row = {"error": s["error"], "cost": s["cost"]}
        row.update({f"share_{i}": float(v) for i, v in enumerate(s["shares"])})
        rows.append(row)
    return pd.DataFrame(rows)


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
