"""Tuner base: the estimator interface, the registry, declared parameters.

Every tuner is a scikit-learn style estimator: parameters in the constructor, ``fit(train)`` on a
:class:`~cascade.records.CascadeData` whose ``confidence`` holds *calibrated* confidences (P(correct))
and whose ``cost`` holds per-query costs in USD per million queries (column means under
``--cost model-mean``). After ``fit``:

- ``thresholds_``: list of (k-1,) arrays, one per point of the error-cost curve;
- ``train_error_``, ``train_cost_``: the tuner's own estimate on the training split for each vector
  (the model's prediction for markov-copula, empirical values for search methods);
- ``diagnostics_``: a JSON-able dict.

Methods register themselves in :data:`METHODS` with :func:`register`.
"""

from __future__ import annotations

import numpy as np

from cascade.data.records import CascadeData

METHODS: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


class Tuner:
    """Base class of threshold tuners."""

    name = "base"

    def fit(self, train: CascadeData) -> "Tuner":  # pragma: no cover - interface
        raise NotImplementedError

    def get_params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}


def threshold_bounds(confidence: np.ndarray, eps: float = 1e-3) -> list[tuple[float, float]]:
    """The box [min c_j + eps, max c_j - eps] for each non-final model."""
    lo = confidence[:, :-1].min(axis=0) + eps
    hi = confidence[:, :-1].max(axis=0) - eps
    return [(float(a), float(max(a, b))) for a, b in zip(lo, hi)]


def get_method(name: str) -> type:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
