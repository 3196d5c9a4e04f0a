"""Calibration of raw confidence signals into P(correct | signal), per model (method doc, section 1).

Raw signals are log-probabilities l = log p (possibly 0 or -inf). They are transformed, then a
logistic regression (intercept + slope, unpenalised maximum likelihood, statsmodels ``Logit``) of
correctness on the transformed value gives the calibrated confidence c = sigmoid(a + b t).
"""

from __future__ import annotations

import warnings

import numpy as np
import statsmodels.api as sm
from scipy.special import expit


def one_sided(logp) -> np.ndarray:
    """t = -log(1 - p), computed stably: l near 0 -> -log(-l), l < -10 -> exp(l); l = 0 -> +inf."""
    l = np.asarray(logp, float)
    out = np.empty_like(l)
    perfect = l == 0.0
    near_one = (l > -1e-5) & (l < 0.0)
    tiny = l < -10
    mid = ~(perfect | near_one | tiny)
    out[perfect] = np.inf
    out[near_one] = -np.log(-l[near_one])
    out[tiny] = np.exp(l[tiny])
    out[mid] = -np.log1p(-np.exp(l[mid]))
    return out


def two_sided(logp) -> np.ndarray:
    """For P(True)-style signals: t = log(2p) if p < 1/2, else -log(2(1-p))."""
    l = np.asarray(logp, float)
    out = np.empty_like(l)
    hi = l >= np.log(0.5)
    out[hi] = -np.log(2.0) + one_sided(l[hi])
    out[~hi] = np.log(2.0) + l[~hi]
    return out


def identity(x) -> np.ndarray:
    return np.asarray(x, float)


TRANSFORMS = {"one-sided": one_sided, "two-sided": two_sided, "identity": identity}


class LogisticCalibrator:
    """scikit-learn style: ``LogisticCalibrator(transform).fit(signal, correct).predict(signal)``.

    +inf transformed values become the largest finite training value and -inf the smallest; the same
    constants are used on new data. Soft labels (correct in [0, 1]) are allowed (quasi-likelihood).
    """

    def __init__(self, transform: str = "one-sided"):
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
        self.transform = transform

    def _prepare(self, signal) -> np.ndarray:
        t = TRANSFORMS[self.transform](signal)
        t = np.where(np.isposinf(t), self.pos_inf_, t)
        t = np.where(np.isneginf(t), self.neg_inf_, t)
        return t

    def fit(self, signal, correct) -> "LogisticCalibrator":
        t = TRANSFORMS[self.transform](signal)
        finite = t[np.isfinite(t)]
        if finite.size == 0:
            raise ValueError("calibration needs at least one finite signal value")
        self.pos_inf_ = float(finite.max())
        self.neg_inf_ = float(finite.min())
        t = self._prepare(signal)
        y = np.asarray(correct, float)
        X = sm.add_constant(t, has_constant="add")
        self.coef_ = np.array([np.log((y.mean() + 1e-9) / (1 - y.mean() + 1e-9)), 0.0])
        if 0 < y.mean() < 1 and np.ptp(t) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    res = sm.Logit(y, X).fit(disp=0, maxiter=1000)
                    if np.all(np.isfinite(res.params)):
                        self.coef_ = np.asarray(res.params, float)
                except Exception:  # perfect separation and friends: fall back to a penalised fit
                    res = sm.Logit(y, X).fit_regularized(alpha=1e-3, disp=0)
                    self.coef_ = np.asarray(res.params, float)
        return self

    def predict(self, signal) -> np.ndarray:
        t = self._prepare(signal)
        return expit(self.coef_[0] + self.coef_[1] * t)


class IdentityCalibrator:
    """``--calibration none``: the signal already is P(correct)."""

    def fit(self, signal, correct) -> "IdentityCalibrator":
        s = np.asarray(signal, float)
        if np.any((s < 0) | (s > 1)):
            raise ValueError("--calibration none needs confidences in [0, 1] (they are taken as P(correct))")
        return self

    def predict(self, signal) -> np.ndarray:
        return np.clip(np.asarray(signal, float), 0.0, 1.0)


def make_calibrator(calibration: str, transform: str = "one-sided"):
    if calibration == "none":
        return IdentityCalibrator()
    if calibration in ("auto", "logistic"):
        return LogisticCalibrator(transform)
    raise ValueError(f"unknown calibration {calibration!r}; use auto or none")


def default_transform(signal: str, benchmark: str | None = None) -> str:
    """The transform the method doc prescribes for a signal: two-sided for P(True), else one-sided
    (answer log-probabilities); margins and other non-log-prob signals are used as they are."""
    s = signal.lower()
    if "ptrue" in s or "p_true" in s:
        return "two-sided"
    if "margin" in s or "logit" in s or "likelihood" in s:
        return "identity"
    return "one-sided"
