"""The tuning pipeline: records -> calibrate -> fit a tuner on train -> score its curve on test.

Every entry point (``cascade tune``, ``cascade study``, sweeps, the Python API) goes through
:func:`choose_transform` (which calibration transform, and why), :func:`prepare` (records -> calibrated
train/test arrays) and :func:`tune_prepared` (fit, score, flag degenerate fits), so the checks here
apply to all of them:

- signal values outside the transform's domain (a log-probability above 0, +inf among log-probs) are
  refused with the model, split and query named (:class:`~cascade.tuners.calibration.TransformError`);
- a training split of fewer than 2 queries is refused;
- degenerate fits are flagged, not refused (the routing found is still the best for that data):
  ``summary["degenerate"]`` lists the reasons (empty when fine): fewer than :data:`MIN_TRAIN`
  training queries, a model whose training answers are all correct or all wrong, a non-final model
  whose calibrated confidence is constant on train, a test curve whose cost range is a single point
  (its ``test_auc`` is then NaN: there is no area under one point).
"""


from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cascade.data.records import CascadeData, RecordsError, cascade_data
from cascade.evaluate import curves as evaluate
from cascade.tuners import METHODS, Tuner, get_method, register, threshold_bounds  # noqa: F401
from cascade.tuners.base import check_memory
from cascade.tuners.calibration import Parts, TransformError, auto_transform, make_calibrator, out_of_domain

COST_SCALE = 1e6  # tuning and curves use USD per million queries
COST_MODES = ("per-query", "model-mean")
TRANSFORM_CHOICES = ("auto", "one-sided", "two-sided", "identity")
MIN_TRAIN = 10  # fewer training queries than this is flagged as degenerate


@dataclass(frozen=True)
class TransformChoice:
    """The calibration transform of a tuning run and why it was chosen (``summary.json``: ``transform``,
    ``transform_reason``). ``name`` is ``none`` under ``calibration="none"``."""

    name: str
    reason: str


def _where(rows, mask, signal: str) -> str:
    """The first three rows under ``mask`` ("model m split s query q = v"); ``rows``: a frame or a function
    giving it (built only for this message)."""
    rows = rows() if callable(rows) else rows
    ex = rows[np.asarray(mask)].head(3)
    parts = [f"model {m} {s} query {q} = {v!r}" for m, s, q, v in
             zip(ex["model"], ex["split"], ex["query_id"], ex[signal].astype(float))]
    return "; ".join(parts)


def _signal_rows(records, models: list[str], splits, signal: str, benchmark: str | None):
    """The values of ``signal`` for ``models`` in ``splits`` and the rows they come from (a function giving
    a frame with model, split, query_id and the signal, in the values' order, for messages only).

    ``records``: a records frame, or what :func:`cascade.data.records.load_cascade` returned (split ->
    CascadeData, raw signals): values then come split by split, model by model, in query-id order, as
    :class:`~cascade.tuners.calibration.Parts` (one array per split and model, never concatenated)."""
    if isinstance(records, Mapping):
        parts = [(s, cascade_data(records, models, s)) for s in dict.fromkeys(splits) if s in records]
        v = Parts(d.confidence[:, j] for _, d in parts for j in range(d.k))

        def rows() -> pd.DataFrame:
            return pd.concat([pd.DataFrame({"model": np.repeat(d.models, d.n), "split": s,
                                            "query_id": np.tile(d.query_id, d.k),
                                            signal: d.confidence.ravel(order="F")}) for s, d in parts],
                             ignore_index=True)
        return v, rows
    df = records if benchmark is None else records[records["benchmark"] == benchmark]
    if signal not in df.columns:
        have = ", ".join(c for c in df.columns if c == "confidence" or c.startswith("conf_")) or "none"
        raise RecordsError(f"signal {signal!r} is not in the records (signals: {have})")
    rows = df[df["model"].isin(models) & df["split"].isin(list(splits))]
    return rows[signal].to_numpy(float), rows


def choose_transform(records, *, models: list[str], signal: str = "confidence",
                     splits=("train", "test"), benchmark: str | None = None, transform="auto",
                     calibration: str = "auto") -> TransformChoice:
    """The calibration transform for ``signal`` on the rows of ``models`` in ``splits``.

    ``records``: a records frame, or what :func:`cascade.data.records.load_cascade` returned.

    ``transform``: ``auto`` (the signal registry, else the values: see
    :func:`cascade.tuners.calibration.auto_transform`), an explicit name, or a :class:`TransformChoice`
    (returned as it is). The values are then checked against the transform's domain on every split, so
    a bad value in the test split is refused too. Raises ValueError (one line, naming the values)."""
    if isinstance(transform, TransformChoice):
        return transform
    transform = "auto" if transform is None else transform
    if transform not in TRANSFORM_CHOICES:
        raise ValueError(f"--transform {transform!r}: choose one of {', '.join(TRANSFORM_CHOICES)}")
    if calibration not in ("auto", "logistic", "none"):
        raise ValueError(f"unknown calibration {calibration!r}; use auto or none")
    v, rows = _signal_rows(records, models, splits, signal, benchmark)

    def values() -> np.ndarray:  # all values in one array: for the messages below only
        return (np.concatenate(v) if len(v) else np.zeros(0)) if isinstance(v, Parts) else v

    if calibration == "none":
        if transform != "auto":
            raise ValueError(f"--transform {transform} applies to --calibration auto; with --calibration none "
                             "the signal is taken as P(correct) as it is")
        if not all(((p >= 0) & (p <= 1)).all() for p in (v if isinstance(v, Parts) else [v])):
            v = values()
            bad = ~((v >= 0) & (v <= 1))
            raise ValueError(f"--calibration none needs signal {signal!r} in [0, 1] (it is taken as P(correct)); "
                             f"{int(bad.sum())} value(s) are not, e.g. {_where(rows, bad, signal)}: use "
                             "--calibration auto")
        return TransformChoice("none", "--calibration none: the signal is taken as P(correct), no transform")
    try:
        if transform == "auto":
            name, reason = auto_transform(signal, v)
        else:
            name, reason = transform, f"given (--transform {transform})"
    except TransformError as e:
        raise TransformError(f"{e} (e.g. {_where(rows, values() > 0, signal)})") from None
    if name in ("one-sided", "two-sided"):
        if out_of_domain(name, v):
            v = values()
            bad = np.isnan(v) | (v > 1e-6)
            how = "registered as a log-probability signal" if transform == "auto" else "--transform " + name
            raise TransformError(
                f"signal {signal!r} ({how}, {name}) has {int(bad.sum())} of {v.size} value(s) above 0, e.g. "
                f"{_where(rows, bad, signal)}; a log-probability is <= 0 (certain = 0, impossible = -inf): "
                "fix those values, or pass --transform identity to use the signal as a plain score") from None
    return TransformChoice(name, reason)


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


@dataclass
class Prepared:
    """Calibrated train/test arrays for one cascade, the calibrators (fitted on train) and the transform."""

    train: CascadeData
    test: CascadeData
    calibrators: list
    transform: TransformChoice


def prepare_full(
    records: pd.DataFrame | Mapping[str, CascadeData],
    *,
    models: list[str],
    train_split: str = "train",
    test_split: str = "test",
    benchmark: str | None = None,
    signal: str = "confidence",
    calibration: str = "auto",
    transform="auto",
    cost_mode: str = "model-mean",
) -> Prepared:
    """Records -> calibrated train/test arrays for one cascade (calibrators fitted on train only).

    ``records``: a records frame, or what :func:`cascade.data.records.load_cascade` returned for the
    splits (split -> raw CascadeData of at least these models; the store read once for the chain)."""
    if len(models) < 2:
        raise ValueError(f"a cascade needs at least two models, got {models}; pass --models m1,m2[,...]")
    if len(set(models)) != len(models):
        raise ValueError(f"--models lists a model twice: {models}")
    train = cascade_data(records, models, train_split, signal=signal, benchmark=benchmark)
    test = cascade_data(records, models, test_split, signal=signal, benchmark=benchmark)
    if train.n < 2:
        raise ValueError(f"the training split {train_split!r} has {train.n} query for {' -> '.join(models)}; "
                         f"tuning needs at least 2 (at least {MIN_TRAIN} for a reliable fit)")
    choice = choose_transform(records, models=models, signal=signal, splits=(train_split, test_split),
                              benchmark=benchmark, transform=transform, calibration=calibration)
    tname = "one-sided" if choice.name == "none" else choice.name
    calibrators = [make_calibrator(calibration, tname) for _ in models]
    cal_train = np.empty(train.confidence.shape)  # row-major (n, k), as np.column_stack made them
    cal_test = np.empty(test.confidence.shape)
    for j, c in enumerate(calibrators):
        cal_train[:, j] = c.fit_predict(train.confidence[:, j], train.correct[:, j])
        cal_test[:, j] = c.predict(test.confidence[:, j])
    for name, cal in (("train", cal_train), ("test", cal_test)):
        bad = ~np.isfinite(cal).all(axis=0)
        if bad.any():  # cannot happen with the calibrators above; a guard so no NaN reaches a tuner
            raise ValueError(f"calibration of {', '.join(np.asarray(models)[bad])} gave non-finite confidences "
                             f"on the {name} split (signal {signal!r}, transform {choice.name})")
    train = apply_cost_mode(train.with_confidence(cal_train), cost_mode)
    test = apply_cost_mode(test.with_confidence(cal_test), cost_mode)
    return Prepared(train, test, calibrators, choice)


def prepare(
    records: pd.DataFrame | Mapping[str, CascadeData],
    *,
    models: list[str],
    train_split: str = "train",
    test_split: str = "test",
    benchmark: str | None = None,
    signal: str = "confidence",
    calibration: str = "auto",
    transform="auto",
    cost_mode: str = "model-mean",
) -> tuple[CascadeData, CascadeData, list]:
    """:func:`prepare_full` as a tuple (calibrated train, calibrated test, calibrators)."""
    p = prepare_full(records, models=models, train_split=train_split, test_split=test_split, benchmark=benchmark,
                     signal=signal, calibration=calibration, transform=transform, cost_mode=cost_mode)
    return p.train, p.test, p.calibrators


def degenerate_reasons(train: CascadeData, curve: pd.DataFrame | None = None) -> list[str]:
    """Why a fit on ``train`` (calibrated) with test ``curve`` is degenerate; empty when it is not."""
    reasons = []
    if train.n < MIN_TRAIN:
        reasons.append(f"the training split has only {train.n} queries (fewer than {MIN_TRAIN}): thresholds "
                       "fitted on so few are unreliable")
    for j, m in enumerate(train.models):
        y = train.correct[:, j]
        if (y >= 1).all():
            reasons.append(f"{m}: every training answer is correct (its calibration is a constant)")
        elif (y <= 0).all():
            reasons.append(f"{m}: every training answer is wrong (its calibration is a constant)")
        elif j < train.k - 1 and np.ptp(train.confidence[:, j]) < 1e-12:
            reasons.append(f"{m}: constant confidence on the training split (the signal does not rank its "
                           "queries, so no threshold can separate them)")
    if curve is not None and len(curve):
        lo, hi = float(curve["test_cost"].min()), float(curve["test_cost"].max())
        if not hi > lo:
            reasons.append(f"the test curve has a single cost ({lo:.6g} USD per million queries): there is no "
                           "area under it, so test_auc is NaN")
    return reasons


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
    params = cls.validate_params(params)
    check_memory(cls, train.n, train.k, params)  # a fit far beyond the machine is refused, not attempted
    tuner = cls(**params)
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
        "test_auc": evaluate.auc(curve["test_cost"], curve["test_error"]),  # NaN for a single cost
        "test_cost_range": [float(curve["test_cost"].min()), float(curve["test_cost"].max())],
        "seconds": seconds,
        "params": {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
                   for k, v in tuner.get_params().items()},
        "diagnostics": getattr(tuner, "diagnostics_", {}),
        "degenerate": degenerate_reasons(train, curve),
    }
    return curve, summary, tuner


def run_tuning(
    records: pd.DataFrame | Mapping[str, CascadeData],
    *,
    models: list[str],
    method: str = "markov-copula",
    benchmark: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    cost_mode: str = "model-mean",
    calibration: str = "auto",
    signal: str = "confidence",
    transform="auto",
    params: dict | None = None,
    abstain_cost: float | None = None,
) -> TuneResult:
    """Records -> calibrate -> fit tuner on train -> score every threshold vector on test.

    ``transform``: ``auto`` | ``one-sided`` | ``two-sided`` | ``identity`` or a :class:`TransformChoice`
    (see :func:`choose_transform`). ``summary`` records ``transform``, ``transform_reason`` and
    ``degenerate`` (a list of reasons, empty when the fit is fine).

    ``abstain_cost``: early abstention (:mod:`cascade.tuners.abstention`, on the markov-copula model):
    ``params`` are the abstention tuner's, the curve's ``*_error`` columns hold the loss error +
    abstain_cost * abstention (see docs/select.md)."""
    if abstain_cost is not None:
        from cascade.tuners.abstention import AbstentionTuner

        if method != "markov-copula":
            raise ValueError(f"--abstain-cost works with --method markov-copula (its model gives the abstention "
                             f"probabilities), not {method!r}")
        if not abstain_cost >= 0:
            raise ValueError(f"--abstain-cost {abstain_cost}: use a number >= 0 (errors per abstained query)")
        params = AbstentionTuner.validate_params(params)
    else:
        params = get_method(method).validate_params(params)  # fail early on an unknown method or parameter
    if (benchmark is None and isinstance(records, pd.DataFrame) and "benchmark" in records.columns
            and records["benchmark"].nunique() == 1):
        benchmark = str(records["benchmark"].iloc[0])  # recorded in the summary
    prep = prepare_full(
        records, models=models, train_split=train_split, test_split=test_split, benchmark=benchmark,
        signal=signal, calibration=calibration, transform=transform, cost_mode=cost_mode,
    )
    if abstain_cost is not None:
        from cascade.tuners import abstention

        curve, summary, tuner = abstention.tune_prepared(prep.train, prep.test, abstain_cost, params)
        summary["method"] = abstention.method_name(params.get("stages", "all"))
        summary["test_auc"] = evaluate.auc(curve["test_cost"], curve["test_error"])
        summary["degenerate"] = degenerate_reasons(prep.train, curve)
    else:
        curve, summary, tuner = tune_prepared(prep.train, prep.test, method, params)
    summary.update({
        "benchmark": benchmark,
        "train_split": train_split,
        "test_split": test_split,
        "cost_mode": cost_mode,
        "cost_unit": "USD per million queries",
        "calibration": calibration,
        "signal": signal,
        "transform": prep.transform.name,
        "transform_reason": prep.transform.reason,
        "calibrators": [getattr(c, "coef_", np.array([])).tolist() for c in prep.calibrators],
    })
    return TuneResult(curve=curve, summary=summary, tuner=tuner, calibrators=prep.calibrators)


__all__ = [
    "METHODS", "Tuner", "TuneResult", "register", "get_method", "prepare", "prepare_full", "Prepared", "run_tuning",
    "tune_prepared", "threshold_bounds", "apply_cost_mode", "RecordsError", "TransformChoice", "TransformError",
    "choose_transform", "degenerate_reasons", "TRANSFORM_CHOICES", "MIN_TRAIN",
]
