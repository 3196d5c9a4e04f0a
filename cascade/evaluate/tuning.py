"""The tuning pipeline: records -> calibrate -> fit a tuner on train -> score its curve on test.
"""


from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cascade.data.records import CascadeData, RecordsError, cascade_data
from cascade.evaluate import curves as evaluate
from cascade.tuners import METHODS, Tuner, get_method, register, threshold_bounds  # noqa: F401
from cascade.tuners.calibration import default_transform, make_calibrator

COST_SCALE = 1e6  # tuning and curves use USD per million queries
COST_MODES = ("per-query", "model-mean")


@dataclass
class TuneResult:
    curve: pd.DataFrame
    summary: dict
    tuner: object = None
    calibrators: list = field(default_factory=list)


def apply_cost_mode(data: CascadeData, mode: str, scale: float = COST_SCALE) -> CascadeData:
    """Scale costs to USD per million queries and, for ``model-mean``, replace them by column means."""
    if mode not in COST_MODES:
        raise ValueError(f"unknown cost mode {mode!r}; use per-query or model-mean")
    cost = data.cost * scale
    if mode == "model-mean":
        cost = np.broadcast_to(cost.mean(axis=0, keepdims=True), cost.shape).copy()
    return CascadeData(data.models, data.query_id, data.confidence, data.correct, cost)


def prepare(
    records: pd.DataFrame,
    *,
    models: list[str],
    train_split: str = "train",
    test_split: str = "test",
    benchmark: str | None = None,
    signal: str = "confidence",
    calibration: str = "auto",
    transform: str | None = None,
    cost_mode: str = "model-mean",
) -> tuple[CascadeData, CascadeData, list]:
    """Records -> calibrated train/test arrays for one cascade (calibrators fitted on train only)."""
    if len(models) < 2:
        raise ValueError(f"a cascade needs at least two models, got {models}; pass --models m1,m2[,...]")
    if len(set(models)) != len(models):
        raise ValueError(f"--models lists a model twice: {models}")
    train = cascade_data(records, models, train_split, signal=signal, benchmark=benchmark)
    test = cascade_data(records, models, test_split, signal=signal, benchmark=benchmark)
    transform = transform or default_transform(signal)
    calibrators = [make_calibrator(calibration, transform).fit(train.confidence[:, j], train.correct[:, j])
                   for j in range(len(models))]
    cal_train = np.column_stack([c.predict(train.confidence[:, j]) for j, c in enumerate(calibrators)])
    cal_test = np.column_stack([c.predict(test.confidence[:, j]) for j, c in enumerate(calibrators)])
    train = apply_cost_mode(train.with_confidence(cal_train), cost_mode)
    test = apply_cost_mode(test.with_confidence(cal_test), cost_mode)
    return train, test, calibrators


def curve_frame(method: str, models: list[str], thresholds: list, train_error, train_cost, test: CascadeData) -> pd.DataFrame:
    scored = evaluate.score_curve(thresholds, test)
    df = pd.DataFrame({
        "method": method,
        "cascade": " -> ".join(models),
        "point": np.arange(len(thresholds)),
        "thresholds": [list(map(float, np.atleast_1d(t))) for t in thresholds],
        "train_error": np.asarray(train_error, float),
        "train_cost": np.asarray(train_cost, float),
        "test_error": scored["error"].to_numpy(),
        "test_cost": scored["cost"].to_numpy(),
    })
    for j, m in enumerate(models):
        df[f"share_{m}"] = scored[f"share_{j}"].to_numpy()
    return df


def tune_prepared(train: CascadeData, test: CascadeData, method: str, params: dict | None = None) -> tuple[pd.DataFrame, dict, object]:
    """Fit a tuner on calibrated train data and score its curve on test."""
    cls = get_method(method)
    tuner = cls(**(params or {}))
    t0 = time.perf_counter()
    tuner.fit(train)
    seconds = time.perf_counter() - t0
    curve = curve_frame(method, train.models, tuner.thresholds_, tuner.train_error_, tuner.train_cost_, test)
    summary = {
        "method": method,
        "models": train.models,
        "n_train": train.n,
        "n_test": test.n,
        "n_points": len(curve),
        "test_auc": evaluate.auc(curve["test_cost"], curve["test_error"]),
        "test_cost_range": [float(curve["test_cost"].min()), float(curve["test_cost"].max())],
        "seconds": seconds,
        "params": {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
                   for k, v in tuner.get_params().items()},
        "diagnostics": getattr(tuner, "diagnostics_", {}),
    }
    return curve, summary, tuner


def run_tuning(
    records: pd.DataFrame,
    *,
    models: list[str],
    method: str = "markov-copula",
    benchmark: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    cost_mode: str = "model-mean",
    calibration: str = "auto",
    signal: str = "confidence",
    params: dict | None = None,
) -> TuneResult:
    """Records -> calibrate -> fit tuner on train -> score every threshold vector on test."""
    get_method(method)  # fail early on an unknown method
    train, test, calibrators = prepare(
        records, models=models, train_split=train_split, test_split=test_split, benchmark=benchmark,
        signal=signal, calibration=calibration, cost_mode=cost_mode,
    )
    curve, summary, tuner = tune_prepared(train, test, method, params)
    summary.update({
        "benchmark": benchmark,
        "train_split": train_split,
        "test_split": test_split,
        "cost_mode": cost_mode,
        "cost_unit": "USD per million queries",
        "calibration": calibration,
        "signal": signal,
        "calibrators": [getattr(c, "coef_", np.array([])).tolist() for c in calibrators],
    })
    return TuneResult(curve=curve, summary=summary, tuner=tuner, calibrators=calibrators)


__all__ = [
    "METHODS", "Tuner", "TuneResult", "register", "get_method", "prepare", "run_tuning", "tune_prepared",
    "threshold_bounds", "apply_cost_mode", "RecordsError",
]
