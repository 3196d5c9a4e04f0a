"""``random``: route each query to the next model with a fixed probability, ignoring confidences.

Representation. A random policy has no thresholds, but the common machinery scores threshold
vectors with ``c_j > t_j``. The vertex policies "model j answers every query" are threshold vectors:
``t_i = +inf`` for i < j (nobody before j accepts) and ``t_j = -inf`` (j accepts everything). Routing
from stage j to j+1 with probability p, with j+1 always answering, is the mixture
(1-p)·vertex_j + p·vertex_{j+1}; its expected error and expected (cumulative) cost are exactly the
same mixture of the two vertices' error and cost. So the random-routing curve is the piecewise
linear interpolation of the k vertex points, which is exactly what :func:`cascade.evaluate.curves.auc`
integrates. ``thresholds_`` holds the k vertex vectors; :func:`expected_score` gives the exact
expected error/cost for any vector of per-model answer probabilities.
"""

from __future__ import annotations

import numpy as np

from cascade.data.records import CascadeData
from cascade.tuners.base import SEED, Tuner, register


def vertex_thresholds(k: int) -> list[np.ndarray]:
    """Threshold vectors that make model j answer every query, j = 0..k-1."""
    out = []
    for j in range(k):
        t = np.full(k - 1, np.inf)
        if j < k - 1:
            t[j] = -np.inf
        out.append(t)
    return out


def expected_score(answer_probs, data: CascadeData) -> dict:
    """Exact expected error and cost of routing each query to model j with probability answer_probs[j]
    (independent of the query); cost is cumulative over the models visited."""
    return _expected_score(answer_probs, *model_means(data))


def model_means(data: CascadeData) -> tuple[np.ndarray, np.ndarray]:
    """Each model's accuracy and mean cumulative cost on ``data`` (one pass over the arrays)."""
    return data.correct.mean(axis=0), np.cumsum(data.cost, axis=1).mean(axis=0)


def _expected_score(answer_probs, acc: np.ndarray, cum: np.ndarray) -> dict:
    k = len(acc)
    p = np.asarray(answer_probs, float).reshape(-1)
    if p.shape[0] != k or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"answer_probs must be {k} non-negative numbers summing to 1, got {p}")
    return {"error": float(1.0 - p @ acc), "cost": float(p @ cum), "shares": p}


def escalation_to_answer_probs(k: int, stage: int, p: float) -> np.ndarray:
    """Answer shares when stages < ``stage`` always escalate, ``stage`` escalates with probability p
    and ``stage + 1`` answers."""
    probs = np.zeros(k)
    probs[stage] = 1.0 - p
    if stage + 1 < k:
        probs[stage + 1] = p
    return probs


@register("random")
class RandomRoutingTuner(Tuner):
    """Random routing. Curve points are the k single-model vertices (see module doc); ``n_points``
    extra points per segment are reported in ``diagnostics_['probabilities']`` for plotting only."""

    parameter_constraints = {"seed": SEED}

    def __init__(self, seed: int = 0):
        self.seed = seed  # the curve is deterministic in expectation; kept for the common interface

    def fit(self, train: CascadeData) -> "RandomRoutingTuner":
        if train.n == 0:
            raise ValueError("random routing: the training split is empty")
        if train.k < 2:
            raise ValueError("random routing: a cascade needs at least two models")
        k = train.k
        self.thresholds_ = vertex_thresholds(k)
        probs = [np.eye(k)[j] for j in range(k)]
        acc, cum = model_means(train)  # once: the k vertices need only the per-model means
        scores = [_expected_score(p, acc, cum) for p in probs]
        self.train_error_ = np.array([s["error"] for s in scores])
        self.train_cost_ = np.array([s["cost"] for s in scores])
        self.answer_probs_ = probs
        self.diagnostics_ = {"representation": "vertices; random mixture = linear interpolation",
                             "answer_probs": [p.tolist() for p in probs]}
        return self
