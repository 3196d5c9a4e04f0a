"""Calibration of raw confidence signals into P(correct | signal), per model (method doc, section 1).

A raw signal is transformed, then a logistic regression (intercept + slope, unpenalised maximum
likelihood) of correctness on the transformed value gives the calibrated confidence
c = sigmoid(a + b t). Where the transformed values repeat (fewer distinct values than half the
points, e.g. millions of queries with a few hundred distinct signals) the fit runs on the sufficient
statistics: the distinct values with their counts and mean correctness (statsmodels ``GLM``, binomial
family, frequency weights, Newton from zero as ``Logit.fit``), the same likelihood, so the same maximum
to float rounding, at a cost that grows with the distinct values, not the queries. Otherwise, and for
separated data (no finite maximum), the point-wise ``Logit`` fit and its fallbacks. Transforms:

- ``one-sided``: answer log-probabilities l = log p in [-inf, 0]: t = -log(1 - p) (l = -inf is p = 0,
  l = 0 is p = 1);
- ``two-sided``: P(True) log-probabilities in [-inf, 0]: t = log(2p) below p = 1/2, -log(2(1 - p)) above;
- ``identity``: any other score (margins, logits, probabilities) as it is; +-inf are its extreme ranks.

A log-probability cannot exceed 0: the two log-prob transforms refuse values above
:data:`LOGPROB_TOL` (and read values in (0, LOGPROB_TOL], float32 rounding of log-softmax, as 0).
:func:`auto_transform` chooses the transform of a signal from the signal registry
(:mod:`cascade.scoring.signals`) and, for a column the registry does not know (the generic
``confidence``), from its values.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit

from cascade.scoring import signals as signal_registry

#: Log-probabilities in (0, LOGPROB_TOL] are read as 0 (rounding); larger ones are refused.
LOGPROB_TOL = 1e-6
#: Transformed values further than this many interquartile ranges outside the training quartiles are
#: treated as the extreme ranks (clipped), as +-inf are: keeps the logistic fit finite for values such
#: as +-1e308 and leaves ordinary signals untouched.
CLIP_IQR = 1e4
#: An unregistered column whose values are <= 0 except for fewer than this share (or except for +inf
#: values) is refused by ``auto``: it looks like log-probabilities with wrong values.
MIXED_SHARE = 0.05


class TransformError(ValueError):
    """Signal values outside a transform's domain (e.g. a log-probability above 0)."""


def _logprob(logp, name: str) -> np.ndarray:
    l = np.asarray(logp, float)
    bad = np.isnan(l) | (l > LOGPROB_TOL)
    if bad.any():
        ex = l[bad][:3].tolist()
        raise TransformError(f"{name} needs log-probabilities <= 0; got {int(bad.sum())} value(s) above 0 or NaN "
                             f"(e.g. {', '.join(map(repr, ex))})")
    return np.minimum(l, 0.0)


def one_sided(logp) -> np.ndarray:
    """t = -log(1 - p), computed stably: l near 0 -> -log(-l), l < -10 -> exp(l); l = 0 -> +inf."""
    l = _logprob(logp, "the one-sided transform")
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
    l = _logprob(logp, "the two-sided transform")
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

    Transformed values are clipped to the training quartiles +- :data:`CLIP_IQR` interquartile ranges
    (a no-op for ordinary signals); +inf then becomes the largest finite training value and -inf the
    smallest (when the finite training values are all equal or absent, one beyond them: the order is kept). The same constants are used
    on new data. Soft labels (correct in [0, 1]) are allowed (quasi-likelihood). The calibrated
    confidences are always finite: a fit whose coefficients are not finite falls back to a penalised fit,
    then to the intercept (the training accuracy).
    """

    def __init__(self, transform: str = "one-sided"):
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
        self.transform = transform

    def _prepare(self, signal) -> np.ndarray:
        return self._clipped(TRANSFORMS[self.transform](signal))

    def _clipped(self, t) -> np.ndarray:
        """Transformed values clipped, +-inf replaced (the constants of :meth:`fit`)."""
        t = np.where(np.isfinite(t), np.clip(t, self.clip_[0], self.clip_[1]), t)
        t = np.where(np.isposinf(t), self.pos_inf_, t)
        t = np.where(np.isneginf(t), self.neg_inf_, t)
        return t

    def fit(self, signal, correct) -> "LogisticCalibrator":
        self._fit(signal, correct)
        return self

    def fit_predict(self, signal, correct) -> np.ndarray:
        """``fit(signal, correct).predict(signal)``, transforming ``signal`` once."""
        return self._predict_t(self._fit(signal, correct))

    def _fit(self, signal, correct) -> np.ndarray:
        """Fit; returns the prepared (transformed, clipped) training values."""
        t_raw = TRANSFORMS[self.transform](signal)
        finite = t_raw[np.isfinite(t_raw)]
        if finite.size:
            q1, q3 = np.quantile(finite, [0.25, 0.75])
            spread = (q3 - q1) if np.isfinite(q3 - q1) and q3 > q1 else 1.0
            self.clip_ = (float(max(q1 - CLIP_IQR * spread, -1e100)), float(min(q3 + CLIP_IQR * spread, 1e100)))
            finite = np.clip(finite, *self.clip_)
            self.pos_inf_ = float(finite.max())
            self.neg_inf_ = float(finite.min())
            if self.pos_inf_ == self.neg_inf_:  # one finite value: +-inf go beyond it, keeping the order
                self.pos_inf_, self.neg_inf_ = self.pos_inf_ + 1.0, self.neg_inf_ - 1.0
        else:  # only +-inf: keep their order
            self.clip_ = (-np.inf, np.inf)
            self.pos_inf_, self.neg_inf_ = 1.0, -1.0
        del finite
        t = self._clipped(t_raw)
        del t_raw
        y = np.asarray(correct, float)
        self.coef_ = np.array([np.log((y.mean() + 1e-9) / (1 - y.mean() + 1e-9)), 0.0])
        if 0 < y.mean() < 1 and np.ptp(t) > 0:
            coef = grouped_logit(t, y, max_groups=len(t) // 2)
            if coef is None:  # few ties, separated data or a failed grouped fit: point-wise, with its fallbacks
                coef = pointwise_logit(t, y)
            if coef is not None:
                self.coef_ = coef
        return t

    def predict(self, signal) -> np.ndarray:
        return self._predict_t(self._prepare(signal))

    def _predict_t(self, t) -> np.ndarray:
        with np.errstate(over="ignore"):
            return expit(self.coef_[0] + self.coef_[1] * t)


def _design(t) -> np.ndarray:
    return np.column_stack([np.ones(len(t)), np.asarray(t, float)])


def grouped_logit(t, y, maxiter: int = 1000, max_groups: int | None = None) -> np.ndarray | None:
    """The unpenalised logistic MLE of ``y`` (in [0, 1]) on (1, ``t``), fitted on the distinct values of
    ``t`` with their counts and mean ``y``: the log-likelihood sum_i y_i log p(t_i) + (1 - y_i) log(1 - p(t_i))
    equals sum_g n_g (ybar_g log p(t_g) + (1 - ybar_g) log(1 - p(t_g))), so the maximum is the same.
    statsmodels ``GLM`` (binomial, frequency weights n_g) with Newton from zero, as ``Logit.fit`` runs.
    Returns None when the data are separated (some threshold on t splits the correct from the wrong
    answers: no finite maximum), when there are more than ``max_groups`` distinct values (grouping would
    not pay) or when the fit fails; :func:`pointwise_logit` then decides as before."""
    vals, inv = np.unique(np.asarray(t, float), return_inverse=True)
    if max_groups is not None and len(vals) > max_groups:
        return None
    n = np.bincount(inv)
    s = np.bincount(inv, weights=np.asarray(y, float), minlength=len(vals))
    pos, neg = s > 0, s < n  # values with some correct answer / some wrong one
    if not (pos.any() and neg.any() and vals[pos].min() < vals[neg].max() and vals[neg].min() < vals[pos].max()):
        return None
    from statsmodels.genmod import families
    from statsmodels.genmod.generalized_linear_model import GLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = GLM(s / n, _design(vals), family=families.Binomial(), freq_weights=n.astype(float)).fit(
                method="newton", start_params=np.zeros(2), maxiter=maxiter, max_start_irls=0, disp=0)
        except Exception:
            return None
    coef = np.asarray(res.params, float)
    return coef if np.all(np.isfinite(coef)) else None


def pointwise_logit(t, y) -> np.ndarray | None:
    """statsmodels ``Logit`` on every point (Newton from zero); on failure (perfect separation and friends)
    a penalised fit; None when both fail or give non-finite coefficients."""
    from statsmodels.discrete.discrete_model import Logit

    X = _design(t)
    y = np.asarray(y, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = Logit(y, X).fit(disp=0, maxiter=1000)
            return np.asarray(res.params, float) if np.all(np.isfinite(res.params)) else None
        except Exception:  # perfect separation and friends: fall back to a penalised fit
            try:
                res = Logit(y, X).fit_regularized(alpha=1e-3, disp=0)
                return np.asarray(res.params, float) if np.all(np.isfinite(res.params)) else None
            except Exception:  # keep the intercept-only fit
                return None


class IdentityCalibrator:
    """``--calibration none``: the signal already is P(correct)."""

    def fit(self, signal, correct) -> "IdentityCalibrator":
        s = np.asarray(signal, float)
        if np.any((s < 0) | (s > 1)):
            raise ValueError("--calibration none needs confidences in [0, 1] (they are taken as P(correct))")
        return self

    def fit_predict(self, signal, correct) -> np.ndarray:
        return self.fit(signal, correct).predict(signal)

    def predict(self, signal) -> np.ndarray:
        return np.clip(np.asarray(signal, float), 0.0, 1.0)


def make_calibrator(calibration: str, transform: str = "one-sided"):
    if calibration == "none":
        return IdentityCalibrator()
    if calibration in ("auto", "logistic"):
        return LogisticCalibrator(transform)
    raise ValueError(f"unknown calibration {calibration!r}; use auto or none")


class Parts(list):
    """Signal values given as several arrays (e.g. one per model and split), read as their concatenation
    by :func:`auto_transform` and :func:`out_of_domain` without building it (10^7 values at scale)."""


def _parts(values) -> list[np.ndarray]:
    if isinstance(values, Parts):
        return [np.asarray(p, float).reshape(-1) for p in values]
    return [np.asarray(values, float).reshape(-1)]


def _describe_range(parts: list[np.ndarray]) -> str:
    parts = [p for p in parts if p.size]
    lo = np.array([p.min() for p in parts]).min()  # NaN if any value is NaN, as the concatenation's min
    hi = np.array([p.max() for p in parts]).max()
    return f"[{lo:.4g}, {hi:.4g}]"


def auto_transform(column: str, values) -> tuple[str, str]:
    """The transform ``auto`` picks for signal ``column`` with raw ``values`` (train and test, every
    model of the cascade; an array, or :class:`Parts`), and why (one sentence). Raises
    :class:`TransformError` when the values contradict every reading.

    - A registered signal (:func:`cascade.scoring.signals.by_column`) gets its registered transform
      (its values are then checked against it by :func:`check_domain`).
    - Any other column (the generic ``confidence``, unregistered ``conf_*``) is decided by its values:
      all <= 0: answer log-probabilities, one-sided; all in [0, 1]: probabilities, identity; values
      <= 0 except some +inf, or except fewer than :data:`MIXED_SHARE` above 0: refused (they look like
      log-probabilities with wrong values; ``--transform identity`` takes them as a score); otherwise a
      score of both signs, identity.
    """
    parts = _parts(values)
    sig = signal_registry.by_column(column)
    if sig is not None:
        return sig.transform, (f"{column} is the registered signal {sig.name!r} ({sig.description}): "
                               f"{sig.transform}")
    size = sum(p.size for p in parts)
    if size == 0:
        raise TransformError(f"signal {column!r} has no values")
    rng = _describe_range(parts)
    if not any((p > 0).any() for p in parts):
        return "one-sided", (f"{column} is not a registered signal and its values lie in {rng} (all <= 0): "
                             f"answer log-probabilities, one-sided; for P(True) log-probs name the column "
                             f"conf_ptrue or pass --transform two-sided")
    if all(((p >= 0) & (p <= 1)).all() for p in parts):
        return "identity", (f"{column} is not a registered signal and its values lie in {rng} (within [0, 1], "
                            f"not all <= 0): probabilities or bounded scores, identity")
    n_pos = int(sum((p > 0).sum() for p in parts))
    # some finite value, and none of them above 0
    only_inf = (any(np.isfinite(p).any() for p in parts)
                and not any((np.isfinite(p) & (p > 0)).any() for p in parts))
    if any((p < 0).any() for p in parts) and (only_inf or n_pos < MIXED_SHARE * size):
        what = "+inf" if only_inf else "above 0"
        raise TransformError(
            f"signal {column!r} looks like log-probabilities ({size - n_pos} of {size} values <= 0) but {n_pos} "
            f"value(s) are {what}; a log-probability is <= 0 (certain = 0, impossible = -inf): fix those values, "
            f"or pass --transform identity to use the column as a plain score")
    return "identity", (f"{column} is not a registered signal and its values lie in {rng} ({n_pos} of {size} "
                        f"> 0): not log-probabilities, a score of both signs, identity")


def out_of_domain(transform: str, values) -> bool:
    """Whether some of ``values`` (an array, or :class:`Parts`) lie outside ``transform``'s domain (the
    values :func:`check_domain` refuses), without copying them."""
    if transform in ("one-sided", "two-sided"):
        return any((np.isnan(p) | (p > LOGPROB_TOL)).any() for p in _parts(values))
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose one of auto, {', '.join(TRANSFORMS)}")
    return False


def check_domain(transform: str, values) -> None:
    """Raise :class:`TransformError` if ``values`` lie outside ``transform``'s domain."""
    if transform in ("one-sided", "two-sided"):
        _logprob(values, f"the {transform} transform")
    elif transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose one of auto, {', '.join(TRANSFORMS)}")
