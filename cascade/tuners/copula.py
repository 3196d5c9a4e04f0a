"""Model: a cascade's calibrated confidences as a Markov chain of data-chosen pair copulas (``--method copula``).

The paper's model (:mod:`cascade.tuners.markov_copula`, ``--method markov-copula``) fixes a Gumbel copula
for the jointly interior points of each consecutive pair and handles the end-point masses with 3 x 3
cells. This model keeps its structure (marginals per model, a Markov chain along the cascade order,
calibration, lambda path and curves) and changes the dependence:

- **Pair copulas chosen per pair by an information criterion** (``criterion``: AIC or BIC, computed by
  pyvinecopulib on the training split) among ``families`` (default: independence, Gaussian, Student t,
  Clayton, Gumbel, Frank, Joe, BB1, BB6, BB7, BB8 with their rotations, and the nonparametric ``tll``).
  Every candidate's criterion value is kept (``describe()``, ``--gof``).
- **Ties and end-point masses** are part of the copula, not separate cells: each X_j is the quantile
  Q_j(V_j) of a uniform V_j (the distributional transform), and the copula joins the V's. Pseudo-
  observations come from ranks; a model whose largest tie group holds at least ``tie_share`` of its
  training points (an end-point mass, e.g. p = 1 from an API model) enters the pair fit as a discrete
  variable (pyvinecopulib ``var_types="d"``: the likelihood of each tied rank's interval); other ties are
  broken at random with a seeded generator (``ties="auto"``). ``ties="discrete"`` treats every model with
  any tie as discrete, ``ties="jitter"`` breaks all ties at random.
- **Marginals** (``margin``): ``"beta"`` is the paper's law (end-point masses + a two-component beta
  mixture, :class:`~cascade.tuners.markov_copula.EndpointBetaMixture`); ``"ecdf"`` is the training
  distribution itself, discrete-aware: tied values are atoms, untied points are spread uniformly over the
  gap below them (a continuous, piecewise-linear CDF between data points; the default); ``"auto"`` is the
  beta law below ``obs_per_par`` x 7 training points (its 7 parameters), the ECDF from there on (it lost
  on the qwen/OpenAI chain at n = 20 and 50: docs/tuner.md).
- **Model size follows the data** (``obs_per_par``, default 10: a rule of thumb fixed in advance, not
  tuned per benchmark): a pair-copula family with p parameters (the effective degrees of freedom for
  ``tll``) competes only where the pair has at least 10 p training points, the conditional correctness
  model (3 parameters) only from 30 (and ``margin="auto"`` switches to the ECDF at 70). On 10-19
  queries the choice is among independence and the one-parameter families, where choosing among every
  family (and ``tll``) over-fitted; from a few hundred on nothing is excluded. ``obs_per_par=0`` gives
  the earlier model.
- **Correctness given the previous model** (``correctness``): the paper takes P(model j correct) = c_j.
  Queries that reach model j are those the earlier models were unsure of, and the previous model's
  confidence often predicts j's correctness beyond c_j. ``"auto"`` fits a logistic regression of
  correct_j on logit c_j and logit c_{j-1} per model j >= 2 and keeps it where the criterion prefers it
  to the calibrated confidence (:func:`fit_correctness`); ``"calibrated"`` never, ``"conditional"``
  always.
- **Beyond Markov** (``structure``): ``"markov"`` (default), ``"auto"`` (the second tree of a D-vine along
  the cascade order, pairs (j-1, j+1 | j), chosen by the same criterion, used when any of its edges is
  not independence), ``"dvine"`` (always the truncated D-vine).
- **Integrals**: :class:`cascade.tuners.joint.MarkovJoint` / :class:`~cascade.tuners.joint.DVineJoint`
  (forward recursion on a u-space grid), at every optimiser step; predictions on the curve are the same
  numbers.

The tuner (:class:`CopulaTuner`) subclasses :class:`~cascade.tuners.markov_copula.MarkovCopulaTuner`: the
same constructor parameters (lambda path, stop rule, box, gap filling) plus the model's. Defaults
(``margin="ecdf"``, ``obs_per_par=10``, ``criterion="aic"``, ``start="warm"``, ``structure="markov"``) were
chosen on the dev data; docs/tuner.md has the numbers of every alternative.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import OrderedDict

import numpy as np

from cascade.tuners.base import SEED, Interval, Options, register, threshold_bounds
from cascade.tuners.joint import DVineJoint, MarkovJoint
from cascade.tuners.markov_copula import EndpointBetaMixture, MarkovCopulaTuner, fill_gaps

#: Pair-copula families by name (``pyvinecopulib.BicopFamily.<name>``, imported where a copula is fitted:
#: importing pyvinecopulib costs ~0.7 s, which every ``cascade`` command that lists the methods would pay);
#: rotations are tried for every asymmetric family.
FAMILIES = ("indep", "gaussian", "student", "clayton", "gumbel", "frank", "joe", "bb1", "bb6", "bb7", "bb8", "tll")
DEFAULT_FAMILIES = tuple(FAMILIES)
CRITERIA = ("aic", "bic", "aicc")
MARGINS = ("auto", "beta", "ecdf")
#: parameters of the paper's marginal law: two end-point masses and a two-component beta mixture (5)
BETA_MARGIN_PARAMS = 7
TIES = ("auto", "discrete", "jitter")
STRUCTURES = ("auto", "markov", "dvine")


# --------------------------------------------------------------------------------------------
# Marginals (the protocol of joint.MarkovJoint: cdf, cdf_left, ppf, atoms_u)
# --------------------------------------------------------------------------------------------

class BetaMargin(EndpointBetaMixture):
    """The paper's marginal (masses at the training min m and max M, a beta mixture inside) with the
    left-limit CDF and the quantile function that the joint integrals need."""

    def __init__(self, method: str = "mle", n_table: int = 4097):
        super().__init__(method)
        self.n_table = n_table

    def fit(self, x) -> "BetaMargin":
        super().fit(x)
        self._grid = np.linspace(0.0, 1.0, self.n_table)
        tab = np.clip(self.interior_.cdf(self._grid), 0.0, 1.0)
        tab[0], tab[-1] = 0.0, 1.0
        self._tab = np.maximum.accumulate(tab)
        return self

    def cdf_left(self, x):
        x = np.asarray(x, float)
        return (self.p_min_ * (x > self.m_) + self.p_int_ * self.cdf_interior(x) * (x > self.m_)
                + self.p_max_ * (x > self.M_))

    def ppf(self, u):
        u = np.asarray(u, float)
        lo, hi = self.p_min_, self.p_min_ + self.p_int_
        v = np.clip((u - lo) / max(self.p_int_, 1e-300), 0.0, 1.0)
        inner = self.m_ + (self.M_ - self.m_) * np.interp(v, self._tab, self._grid)
        return np.where(u <= lo, self.m_, np.where(u > hi, self.M_, inner))

    def atoms_u(self):
        return [self.p_min_, self.p_min_ + self.p_int_]

    def describe(self) -> dict:
        return {"margin": "beta", "min": self.m_, "max": self.M_, "p_min": self.p_min_, "p_max": self.p_max_,
                "mixture": list(map(float, self.interior_.params_))}


class EcdfMargin:
    """The training distribution, discrete-aware. Distinct values v_1 < ... < v_m with counts c_i: the
    smallest is an atom of mass c_1/n; every other v_i spreads one point's mass (1/n) uniformly over
    (v_{i-1}, v_i) and keeps the rest, (c_i - 1)/n, as an atom. Untied data give a continuous,
    piecewise-linear CDF through the data; ties (end-point masses) stay atoms."""

    def fit(self, x) -> "EcdfMargin":
        v, c = np.unique(np.asarray(x, float), return_counts=True)
        n = c.sum()
        self.v_ = v
        right = np.cumsum(c) / n  # F(v_i)
        left = right - c / n  # F(v_i-) for an atom carrying everything
        left[1:] += 1.0 / n  # ... but the first point of each later value is spread below it
        self.left_, self.right_ = left, right
        self.m_, self.M_ = float(v[0]), float(v[-1])
        # the knots of the CDF as a function: x = (v1, v1, v2, v2, ...), F = (L1, R1, L2, R2, ...)
        self._xk = np.repeat(v, 2)
        self._fk = np.column_stack([left, right]).ravel()
        self._fk[0] = 0.0
        return self

    def cdf(self, x):
        x = np.asarray(x, float)
        i = np.searchsorted(self.v_, x, side="right") - 1  # last v_i <= x
        ic = np.clip(i, 0, len(self.v_) - 1)
        nxt = np.minimum(ic + 1, len(self.v_) - 1)
        gap = self.v_[nxt] - self.v_[ic]
        frac = np.where(gap > 0, (x - self.v_[ic]) / np.where(gap > 0, gap, 1.0), 0.0)
        val = self.right_[ic] + frac * (self.left_[nxt] - self.right_[ic])
        return np.where(i < 0, 0.0, np.where(i >= len(self.v_) - 1, 1.0, val))

    def cdf_left(self, x):
        x = np.asarray(x, float)
        i = np.searchsorted(self.v_, x, side="left")
        at = (i < len(self.v_)) & (self.v_[np.minimum(i, len(self.v_) - 1)] == x)
        return np.where(at, self.left_[np.minimum(i, len(self.v_) - 1)] * (i > 0), self.cdf(x))

    def ppf(self, u):
        return np.interp(np.asarray(u, float), self._fk, self._xk)

    def atoms_u(self):
        atom = self.right_ - self.left_ > 1e-12  # left_[0] = 0: the smallest value is all atom
        return np.concatenate([self.left_[atom], self.right_[atom]])

    def describe(self) -> dict:
        atoms = int(np.sum(self.right_ - self.left_ > 1e-12))
        return {"margin": "ecdf", "min": self.m_, "max": self.M_, "n_distinct": int(len(self.v_)), "n_atoms": atoms}


def make_margin(kind: str):
    if kind == "beta":
        return BetaMargin()
    if kind == "ecdf":
        return EcdfMargin()
    raise ValueError(f"unknown margin {kind!r}; use one of {', '.join(MARGINS)}")


# --------------------------------------------------------------------------------------------
# Pair copulas chosen by a criterion
# --------------------------------------------------------------------------------------------

def _tie_share(x) -> float:
    _, c = np.unique(np.asarray(x, float), return_counts=True)
    return float((c.max() if len(c) else 0) / max(len(x), 1)) if np.any(c > 1) else 0.0


def pseudo_obs(x, discrete: bool, rng) -> tuple[np.ndarray, np.ndarray | None]:
    """Rank pseudo-observations in (0, 1): for a discrete variable (u, u_left) = (F_n(x), F_n(x-)) scaled
    by n/(n+1); otherwise ranks / (n + 1) with ties broken at random (``rng``) and u_left None."""
    x = np.asarray(x, float)
    n = len(x)
    if discrete:
        from scipy import stats

        return stats.rankdata(x, "max") / (n + 1.0), (stats.rankdata(x, "min") - 1.0) / (n + 1.0)
    order = np.lexsort((rng.random(n), x))
    r = np.empty(n)
    r[order] = np.arange(1, n + 1)
    return r / (n + 1.0), None


_PAIR_CACHE: OrderedDict = OrderedDict()
_PAIR_CACHE_SIZE = 256


def _family_names(families) -> tuple:
    """A tuple of family names from a sequence or a comma-separated string (``--param families=a,b``)."""
    if isinstance(families, str):
        families = [f.strip() for f in families.split(",") if f.strip()]
    return tuple(families)


def _criterion_value(criterion: str, loglik: float, npars: float, n: int) -> float:
    """-2 loglik + penalty: AIC (2 per parameter), BIC (log n per parameter) or AICc (AIC plus the
    small-sample correction 2p(p+1)/(n-p-1); infinite when n <= p + 1)."""
    if criterion == "aic":
        return -2 * loglik + 2 * npars
    if criterion == "bic":
        return -2 * loglik + np.log(n) * npars
    if criterion == "aicc":
        return -2 * loglik + 2 * npars + (2 * npars * (npars + 1) / (n - npars - 1) if n > npars + 1 else np.inf)
    raise ValueError(f"unknown criterion {criterion!r}; use one of {', '.join(CRITERIA)}")


def _fit_families(data, var_types, families, num_threads: int):
    """Every family of ``families`` fitted to ``data`` (best rotation each): (copulas, rows), cached by
    the data; a family that cannot be fitted gets None and a row with its error."""
    import pyvinecopulib as pv

    key = hashlib.sha1(data.tobytes() + repr((tuple(families), var_types)).encode()).hexdigest()
    if key in _PAIR_CACHE:
        _PAIR_CACHE.move_to_end(key)
        return _PAIR_CACHE[key]
    rows, fitted = [], []
    n = len(data)
    for name in families:
        controls = pv.FitControlsBicop(family_set=[getattr(pv.BicopFamily, name)], selection_criterion="aic",
                                       num_threads=num_threads)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cop = pv.Bicop.from_data(data, controls=controls, var_types=var_types)
            ll = float(cop.loglik(data))
            npars = float(cop.npars)
            row = {"family": name, "rotation": int(cop.rotation), "npars": round(npars, 2), "loglik": ll,
                   "aic": _criterion_value("aic", ll, npars, n), "bic": _criterion_value("bic", ll, npars, n),
                   "aicc": _criterion_value("aicc", ll, npars, n), "tau": float(cop.tau)}
        except Exception as e:  # a family that cannot be fitted to these data is reported, not chosen
            cop, row = None, {"family": name, "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        fitted.append(cop)
    _PAIR_CACHE[key] = (fitted, rows)
    while len(_PAIR_CACHE) > _PAIR_CACHE_SIZE:
        _PAIR_CACHE.popitem(last=False)
    return fitted, rows


def select_pair(u, v, u_left=None, v_left=None, *, families=DEFAULT_FAMILIES, criterion: str = "aic",
                obs_per_par: float = 0.0, num_threads: int = 1) -> tuple[pv.Bicop, list[dict]]:
    """Fit every family (best rotation each) to the pseudo-observations and keep the one with the smallest
    ``criterion`` among the eligible ones: a family with p parameters (pyvinecopulib's count; the
    effective degrees of freedom for ``tll``) is eligible when the pair has at least ``obs_per_par`` * p
    points (independence, p = 0, always is). Returns the chosen copula and one row per candidate:
    family, rotation, parameters' count, log-likelihood, AIC, BIC, AICc, ``eligible``, ``chosen``. A
    discrete variable passes its left limits (``u_left``)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown copula families {unknown}; choose from {', '.join(FAMILIES)}")
    import pyvinecopulib as pv

    var_types = ["d" if u_left is not None else "c", "d" if v_left is not None else "c"]
    cols = [u, v] + [c for c in (u_left, v_left) if c is not None]
    data = np.column_stack(cols)
    fitted, rows = _fit_families(data, var_types, families, num_threads)
    rows = [dict(r) for r in rows]
    n = len(u)
    for r in rows:
        if "error" not in r:
            r["eligible"] = bool(r["npars"] <= 0 or n >= obs_per_par * r["npars"])
    ok = [i for i, r in enumerate(rows) if r.get("eligible") and np.isfinite(r[criterion])]
    best = min(ok, key=lambda i: rows[i][criterion]) if ok else None
    cop = fitted[best] if best is not None else pv.Bicop()
    for i, r in enumerate(rows):
        r["chosen"] = i == best
    return cop, rows


# --------------------------------------------------------------------------------------------
# Correctness given the previous model's confidence
# --------------------------------------------------------------------------------------------

CORRECTNESS = ("auto", "calibrated", "conditional")


class ConditionalCorrectness:
    """P(model j correct | X_{j-1} = x_prev, X_j = x) = sigmoid(a + b logit(x) + c logit(x_prev)), a
    binomial GLM (statsmodels) on the training split. Its nested model (c = 0) is the calibrated
    confidence itself (the calibration is a logistic fit on the same split), so the criterion compares
    one extra parameter: AIC keeps it when 2 (LL - LL_calibrated) > 2, BIC when > log(n)."""

    def __init__(self, params):
        self.params = np.asarray(params, float)

    def __call__(self, x_prev, x):
        from scipy.special import expit

        a, b, c = self.params
        return expit(a + b * _logit(x) + c * _logit(x_prev))


def _logit(p):
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def fit_correctness(c_prev, c, correct, criterion: str = "aic",
                    obs_per_par: float = 0.0) -> tuple[ConditionalCorrectness | None, dict]:
    """Fit :class:`ConditionalCorrectness`; returns it (or None when the criterion prefers the calibrated
    confidence, the fit fails, or there are fewer than ``obs_per_par`` points per parameter of the
    conditional model, 3) and a JSON-able record of the comparison."""
    from statsmodels.genmod import families
    from statsmodels.genmod.generalized_linear_model import GLM

    y = np.clip(np.asarray(correct, float), 0.0, 1.0)
    c = np.clip(np.asarray(c, float), 1e-6, 1 - 1e-6)
    n = len(y)
    ll_cal = float(np.sum(y * np.log(c) + (1 - y) * np.log1p(-c)))
    info = {"loglik_calibrated": ll_cal}
    X = np.column_stack([np.ones(n), _logit(c), _logit(c_prev)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = GLM(y, X, family=families.Binomial()).fit()
        params = np.asarray(res.params, float)
        ll = float(res.llf)
        if not (np.all(np.isfinite(params)) and np.all(np.abs(params) < 30) and np.isfinite(ll)):
            raise ValueError("separated or diverging fit")
    except Exception as e:
        info["error"] = f"{type(e).__name__}: {e}"
        return None, info | {"chosen": "calibrated"}
    # the criterion's difference between the conditional (3 parameters) and the calibrated model (2)
    penalty = float(_criterion_value(criterion, 0.0, 3, n) - _criterion_value(criterion, 0.0, 2, n))
    eligible = n >= obs_per_par * 3
    keep = eligible and 2 * (ll - ll_cal) > penalty
    info |= {"loglik_conditional": ll, "coef": params.tolist(), "penalty": penalty, "eligible": bool(eligible),
             "chosen": "conditional" if keep else "calibrated"}
    return (ConditionalCorrectness(params) if keep else None), info


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class CopulaModel:
    """Marginals + a Markov chain of pair copulas chosen by ``criterion``. ``fit(confidence)`` with an
    (n, k) array of calibrated confidences; ``expected_batch(T, costs)`` as MarkovCopulaModel's."""

    integration = "exact"  # read by code written for MarkovCopulaModel; the integrals here have one method

    def __init__(self, margin: str = "ecdf", families: str = ",".join(DEFAULT_FAMILIES), criterion: str = "aic",
                 ties: str = "auto", tie_share: float = 0.05, n_cells: int = 96, seed: int = 0,
                 correctness: str = "auto", structure: str = "markov", obs_per_par: float = 10.0):
        vars(self).update(margin=margin, families=_family_names(families), criterion=criterion, ties=ties,
                          tie_share=tie_share, n_cells=n_cells, seed=seed, correctness=correctness,
                          structure=structure, obs_per_par=obs_per_par)

    def _discrete(self, x) -> bool:
        share = _tie_share(x)
        if self.ties == "auto":
            return share >= self.tie_share
        if self.ties == "discrete":
            return share > 0
        if self.ties == "jitter":
            return False
        raise ValueError(f"unknown ties rule {self.ties!r}; use one of {', '.join(TIES)}")

    def fit(self, confidence, correct=None) -> "CopulaModel":
        """``confidence``: (n, k) calibrated confidences; ``correct``: (n, k) labels, needed unless
        ``correctness="calibrated"``."""
        X = np.asarray(confidence, float)
        if X.ndim != 2 or X.shape[1] < 2:
            raise ValueError("CopulaModel.fit needs an (n, k) array with k >= 2")
        n, self.k_ = X.shape
        rng = np.random.default_rng(self.seed)
        self.margin_ = self.margin
        if self.margin == "auto":  # the paper's parametric law until the data hold obs_per_par points per parameter
            self.margin_ = "ecdf" if n >= self.obs_per_par * BETA_MARGIN_PARAMS else "beta"
        self.marginals_ = [make_margin(self.margin_).fit(X[:, j]) for j in range(self.k_)]
        self.discrete_ = [self._discrete(X[:, j]) for j in range(self.k_)]
        po = [pseudo_obs(X[:, j], self.discrete_[j], rng) for j in range(self.k_)]
        self.copulas_, self.candidates_ = [], []
        for j in range(1, self.k_):
            (u, ul), (v, vl) = po[j - 1], po[j]
            cop, rows = select_pair(u, v, ul, vl, families=self.families, criterion=self.criterion,
                                    obs_per_par=self.obs_per_par)
            self.copulas_.append(cop)
            self.candidates_.append(rows)
        if self.correctness not in CORRECTNESS:
            raise ValueError(f"unknown correctness {self.correctness!r}; use one of {', '.join(CORRECTNESS)}")
        self.correctness_ = [None] * self.k_
        self.correctness_info_ = [None] * self.k_
        if self.correctness != "calibrated":
            if correct is None:
                raise ValueError("CopulaModel.fit needs the training labels (correct) for correctness="
                                 f"{self.correctness!r}")
            for j in range(1, self.k_):
                g, info = fit_correctness(X[:, j - 1], X[:, j], np.asarray(correct, float)[:, j],
                                          self.criterion, self.obs_per_par)
                if self.correctness == "conditional" and g is None and "coef" in info:
                    g = ConditionalCorrectness(info["coef"])
                    info["chosen"] = "conditional"
                self.correctness_[j], self.correctness_info_[j] = g, info
        if self.structure not in STRUCTURES:
            raise ValueError(f"unknown structure {self.structure!r}; use one of {', '.join(STRUCTURES)}")
        self.copulas2_, self.candidates2_ = [], []
        if self.structure != "markov" and self.k_ >= 3:
            # the D-vine's second tree: pairs (j-1, j+1 | j) on the conditional pseudo-observations, with
            # ties broken at random (the continuous copula of the distributional transforms)
            cont = [p[0] if p[1] is None else p[1] + rng.random(n) * (p[0] - p[1]) for p in po]
            cops = [self.copulas_[j].with_var_types(["c", "c"]) if any(t != "c" for t in self.copulas_[j].var_types)
                    else self.copulas_[j] for j in range(self.k_ - 1)]
            for j in range(1, self.k_ - 1):
                a = np.clip(cops[j - 1].hfunc2(np.column_stack([cont[j - 1], cont[j]])), 1e-10, 1 - 1e-10)
                b = np.clip(cops[j].hfunc1(np.column_stack([cont[j], cont[j + 1]])), 1e-10, 1 - 1e-10)
                cop2, rows = select_pair(a, b, families=self.families, criterion=self.criterion,
                                         obs_per_par=self.obs_per_par)
                self.copulas2_.append(None if cop2.family.name == "indep" else cop2)
                self.candidates2_.append(rows)
        self.dvine_ = any(c is not None for c in self.copulas2_) or (self.structure == "dvine" and self.k_ >= 3)
        if self.dvine_:
            self.joint_ = DVineJoint(self.marginals_, self.copulas_, self.copulas2_, n_cells=max(self.n_cells // 2, 16),
                                     correctness=self.correctness_)
        else:
            self.joint_ = MarkovJoint(self.marginals_, self.copulas_, n_cells=self.n_cells, correctness=self.correctness_)
        self.bounds_ = [(mg.m_, mg.M_) for mg in self.marginals_]
        return self

    def expected_batch(self, T, costs) -> dict:
        """E[correct], E[cost], conditional deferral probabilities and answer shares for threshold
        vectors T (B, k-1): arrays ``correct``, ``cost`` (B,), ``deferral`` (B, k-1), ``shares`` (B, k)."""
        T = np.atleast_2d(np.asarray(T, float))
        if T.shape[1] != self.k_ - 1:
            raise ValueError(f"need {self.k_ - 1} thresholds, got {T.shape[1]}")
        e = self.joint_.expected(T, costs)
        return {"correct": e["correct"], "cost": e["cost"], "deferral": e["deferral"], "shares": e["shares"]}

    def expected(self, thresholds, costs) -> dict:
        e = self.expected_batch(np.asarray(thresholds, float).reshape(1, -1), costs)
        return {"correct": float(e["correct"][0]), "cost": float(e["cost"][0]),
                "deferral": e["deferral"][0].tolist(), "shares": e["shares"][0].tolist()}

    def sample(self, n: int, rng=None) -> np.ndarray:
        return self.joint_.sample(n, rng)

    def describe(self) -> dict:
        pairs = []
        for j, (cop, rows) in enumerate(zip(self.copulas_, self.candidates_), start=1):
            chosen = next((r for r in rows if r.get("chosen")), {})
            pairs.append({"pair": [j - 1, j], "family": chosen.get("family", "indep"),
                          "rotation": int(cop.rotation), "parameters": np.asarray(cop.parameters).ravel().tolist()
                          if chosen.get("family") != "tll" else "tll grid",
                          "kendall_tau": float(cop.tau), "criterion": self.criterion,
                          "var_types": ["d" if self.discrete_[j - 1] else "c", "d" if self.discrete_[j] else "c"],
                          "candidates": rows})
        tree2 = []
        for j, (cop, rows) in enumerate(zip(self.copulas2_, self.candidates2_), start=1):
            chosen = next((r for r in rows if r.get("chosen")), {})
            tree2.append({"pair": [j - 1, j + 1], "given": j, "family": chosen.get("family", "indep"),
                          "rotation": int(cop.rotation) if cop is not None else 0,
                          "kendall_tau": float(cop.tau) if cop is not None else 0.0, "candidates": rows})
        return {"margin": self.margin_, "obs_per_par": self.obs_per_par,
                "marginals": [mg.describe() for mg in self.marginals_], "pairs": pairs,
                "structure": "dvine" if self.dvine_ else "markov", "tree2": tree2,
                "correctness": self.correctness_info_}


# --------------------------------------------------------------------------------------------
# The tuner
# --------------------------------------------------------------------------------------------

@register("copula")
class CopulaTuner(MarkovCopulaTuner):
    """Rational tuning with :class:`CopulaModel`: the lambda path of
    :class:`~cascade.tuners.markov_copula.MarkovCopulaTuner` (same parameters) on this model's exact
    integrals, plus the model's parameters (``margin``, ``families``, ``criterion``, ``ties``,
    ``tie_share``, ``n_cells``, ``seed``)."""

    # the lambda path's bounds come from MarkovCopulaTuner; the model's parameters:
    parameter_constraints = {
        "margin": Options(MARGINS), "families": Options(FAMILIES, many=True), "criterion": Options(CRITERIA),
        "ties": Options(TIES), "tie_share": Interval(float, 0, 1), "n_cells": Interval(int, 2, 4096), "seed": SEED,
        "correctness": Options(CORRECTNESS), "structure": Options(STRUCTURES),
        "obs_per_par": Interval(float, 0, None),
    }

    def __init__(self, lambdas=(0.0, 1e-10, 1e-8, 1e-6), growth: float = 2.0, max_steps: int = 24,
                 lambda_max: float = 1000.0, stop_multiplier: float = 1.25, stop_reference: str = "cascade",
                 reference_cost: float | None = None, max_gap: float = 0.1, eps: float = 1e-3,
                 start: str = "warm", margin: str = "ecdf", families: str = ",".join(DEFAULT_FAMILIES),
                 criterion: str = "aic",
                 ties: str = "auto", tie_share: float = 0.05, n_cells: int = 96, seed: int = 0,
                 correctness: str = "auto", structure: str = "markov", obs_per_par: float = 10.0):
        super().__init__(lambdas=lambdas, growth=growth, max_steps=max_steps, lambda_max=lambda_max,
                         stop_multiplier=stop_multiplier, stop_reference=stop_reference,
                         reference_cost=reference_cost, max_gap=max_gap, eps=eps, start=start,
                         integration="exact")
        del self.marginal_fit, self.copula, self.n_quad, self.integration  # not parameters of this model
        self._model_params = CopulaModel(margin, families, criterion, ties, tie_share, n_cells, seed, correctness,
                                         structure, obs_per_par).__dict__
        vars(self).update(self._model_params)

    def make_model(self) -> CopulaModel:
        return CopulaModel(**{name: getattr(self, name) for name in self._model_params})

    def fit(self, train):
        t0 = time.perf_counter()
        conf = train.confidence
        self.model_ = self.make_model().fit(conf, train.correct)
        self.costs_ = train.cost.mean(axis=0)
        fit_s = time.perf_counter() - t0
        path, lams = self._lambda_path(conf)
        n_solved = len(path)
        path = fill_gaps(path, conf, self.max_gap)
        preds = self.model_.expected_batch(np.array(path), self.costs_)
        self.thresholds_ = path
        self.lambdas_ = lams
        self.train_error_ = 1.0 - preds["correct"]
        self.train_cost_ = preds["cost"]
        self.diagnostics_ = {"fit_seconds": fit_s, "tune_seconds": time.perf_counter() - t0 - fit_s,
                             "n_lambdas": n_solved, "n_filled": len(path) - n_solved,
                             "model": self.model_.describe()}
        return self

    def _lambda_path(self, conf):
        """Minimise (1 - E[correct]) + lambda E[cost] by L-BFGS-B (forward-difference gradient evaluated
        in one batch) along the lambda path of MarkovCopulaTuner: ``lambdas``, then ``growth`` times the
        last until E[cost] is within ``stop_multiplier`` of the reference model's cost."""
        from scipy import optimize

        bounds = threshold_bounds(conf, self.eps)
        lower = np.array([a for a, _ in bounds])
        upper = np.array([b for _, b in bounds])
        mid = (lower + upper) / 2
        if self.stop_reference not in ("cascade", "chain"):
            raise ValueError(f"unknown stop_reference {self.stop_reference!r}; use cascade or chain")
        ref = self.costs_[0] if self.stop_reference == "cascade" or self.reference_cost is None else self.reference_cost

        def objective(lam):
            def f(t):
                h = np.where(t + 1e-7 > upper, -1e-7, 1e-7)
                e = self.model_.expected_batch(np.vstack([t, t + np.diag(h)]), self.costs_)
                val = (1.0 - e["correct"]) + lam * e["cost"]
                return val[0], (val[1:] - val[0]) / h
            return f

        def solve(lam, x0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optimize.minimize(objective(lam), x0, jac=True, method="L-BFGS-B", bounds=bounds).x

        path, lams, x = [], [], mid
        for lam in self.lambdas:
            x = solve(lam, mid if self.start == "midpoint" else x)
            path.append(x)
            lams.append(lam)
        lam, steps = self.lambdas[-1], 0
        while (self.model_.expected(path[-1], self.costs_)["cost"] > self.stop_multiplier * ref
               and lam < self.lambda_max and steps < self.max_steps):
            lam = lam * self.growth if lam > 0 else 1e-6
            steps += 1
            x = solve(lam, mid if self.start == "midpoint" else x)
            path.append(x)
            lams.append(lam)
        return path, lams
