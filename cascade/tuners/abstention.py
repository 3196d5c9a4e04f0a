"""Early abstention: a deferral threshold and an abstention threshold at every stage of a cascade.

Zellinger, Liu & Thomson 2025 ("Cost-saving LLM cascades with early abstention", arXiv 2502.09054).
At stage j a query is answered when the calibrated confidence X_j > t_j, deferred to the next model when
a_j <= X_j <= t_j, and abstained on (not answered) when X_j < a_j; the last model answers or abstains.
An abstention is charged ``abstain_cost`` (in error units) instead of an error; a query that stops at
stage j, answering or abstaining, pays the cost of models 1..j. Per threshold vector:

    error      = P(answered and wrong)            (the release's "joint" error)
    abstention = P(abstained)
    loss       = error + abstain_cost * abstention

The tuning is markov-copula's continuous optimisation (method doc, section 5): for a path of lambda
values, minimise loss + lambda E[cost] with L-BFGS-B (forward-difference gradients in one batch), from
the box midpoint for the deferral thresholds and "no abstention" for the abstention thresholds, the
lambda path and its stop rule and the gap filling unchanged. ``stages``: "all" (early abstention),
"last" (only the last model may abstain: the paper's baseline) or "none" (the plain cascade).

The probabilities come from :class:`cascade.tuners.joint.MarkovJoint` (a Markov chain of pair copulas
with box events per stage): :func:`joint_from_markov_copula` builds it from a fitted
:class:`~cascade.tuners.markov_copula.MarkovCopulaModel`: its marginals (masses at the end points plus
the beta mixture) and its Gumbel pairs (the fitted theta, used as the copula of the whole pair; the
markov-copula closed forms treat the end-point cells separately, the chain does not). The optimisation
runs in the chain's u-space (V_j = F_j(X_j)), where the objective is continuous across the marginals'
point masses; thresholds are mapped back with the marginal quantile functions. An abstention threshold
at its lower bound means "never abstain" and is reported as -inf.

A single model has no deferral: it abstains when its calibrated confidence (= P(correct)) is below
1 - abstain_cost, the choice that minimises the loss under calibration.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from scipy import optimize

from cascade.data.records import CascadeData
from cascade.tuners.base import LAMBDAS, Interval, Options, Tuner, threshold_bounds
from cascade.tuners.joint import MarkovJoint
from cascade.tuners.markov_copula import MarkovCopulaModel, fill_gaps

STAGES = ("all", "last", "none")
METHOD_NAMES = {"all": "early-abstention", "last": "last-model-abstention", "none": "no-abstention"}


def method_name(stages: str) -> str:
    """The method name a curve of this tuner carries (``cascade compare`` tells curves apart by it)."""
    return METHOD_NAMES.get(stages, "early-abstention")


# --------------------------------------------------------------------------------------------------
# The adapter: fitted Markov-copula model -> Markov chain of pair copulas
# --------------------------------------------------------------------------------------------------

class EndpointMargin:
    """An :class:`~cascade.tuners.markov_copula.EndpointBetaMixture` as a margin of
    :class:`~cascade.tuners.joint.MarkovJoint`: ``cdf``, ``cdf_left``, ``ppf`` (interior quantiles from
    a monotone table of the mixture CDF) and ``atoms_u`` (the u-intervals of the end-point masses)."""

    def __init__(self, marginal, n_table: int = 4097):
        self.mg = marginal
        i = np.arange(n_table) / (n_table - 1)
        u = 0.5 * i + 0.25 * (1.0 - np.cos(np.pi * i))  # denser near the end points
        F = np.maximum.accumulate(np.clip(marginal.interior_.cdf(u), 0.0, 1.0))
        F[0], F[-1] = 0.0, 1.0
        keep = np.concatenate([[True], np.diff(F) > 0])
        self._F, self._u = F[keep], u[keep]

    def cdf(self, x):
        return self.mg.cdf(np.asarray(x, float))

    def cdf_left(self, x):
        """P(X < x)."""
        mg = self.mg
        x = np.asarray(x, float)
        return (mg.p_min_ * (x > mg.m_) + mg.p_int_ * mg.cdf_interior(x) * (x > mg.m_) + mg.p_max_ * (x > mg.M_))

    def ppf(self, u):
        """inf{x: F(x) >= u}."""
        mg = self.mg
        u = np.asarray(u, float)
        v = np.clip((u - mg.p_min_) / max(mg.p_int_, 1e-300), 0.0, 1.0)
        inner = mg.m_ + (mg.M_ - mg.m_) * np.interp(v, self._F, self._u)
        return np.where(u <= mg.p_min_, mg.m_, np.where(u > mg.p_min_ + mg.p_int_, mg.M_, inner))

    def atoms_u(self):
        return np.array([self.mg.p_min_, self.mg.p_min_ + self.mg.p_int_])


def gumbel_copula(theta: float):
    """The pair copula of a Gumbel theta (independence at theta <= 1), as a pyvinecopulib Bicop."""
    import pyvinecopulib as pv

    if not theta > 1.0:
        return pv.Bicop()
    return pv.Bicop(family=pv.BicopFamily.gumbel, parameters=np.array([[float(theta)]]))


def joint_from_markov_copula(model: MarkovCopulaModel, n_cells: int = 96) -> MarkovJoint:
    """A :class:`MarkovJoint` with the fitted model's marginals and Gumbel pairs."""
    margins = [EndpointMargin(mg) for mg in model.marginals_]
    copulas = [gumbel_copula(getattr(p, "theta_", 1.0)) for p in model.pairs_]
    return MarkovJoint(margins, copulas, n_cells=n_cells)


# --------------------------------------------------------------------------------------------------
# Routing and scoring with abstention on labelled data
# --------------------------------------------------------------------------------------------------

def route(upper, lower, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one pair of threshold vectors: the stage (0..k-1) where each query stops, and whether it
    abstained there. ``upper``: k-1 deferral thresholds; ``lower``: k abstention thresholds (-inf or
    NaN: never abstain)."""
    conf = np.asarray(confidence, float)
    n, k = conf.shape
    t = np.asarray(upper, float).reshape(-1)
    a = np.asarray(lower, float).reshape(-1)
    if t.shape[0] != k - 1 or a.shape[0] != k:
        raise ValueError(f"need {k - 1} deferral and {k} abstention thresholds for {k} models, "
                         f"got {t.shape[0]} and {a.shape[0]}")
    a = np.where(np.isfinite(a), a, -np.inf)
    below = conf < a[None, :]
    answer = np.concatenate([conf[:, :k - 1] > t[None, :], ~below[:, k - 1:]], axis=1)  # answering wins
    abstain = below & ~answer
    stop = answer | abstain
    stage = np.argmax(stop, axis=1)
    return stage, abstain[np.arange(n), stage]


def score_thresholds(upper, lower, data: CascadeData) -> dict:
    """Measured error (answered and wrong), abstention rate, mean cost and answer shares."""
    stage, abstained = route(upper, lower, data.confidence)
    rows = np.arange(data.n)
    correct = data.correct[rows, stage]
    cost = np.cumsum(data.cost, axis=1)[rows, stage]
    answered = ~abstained
    shares = np.bincount(stage[answered], minlength=data.k) / data.n
    return {"error": float(np.sum((1.0 - correct) * answered) / data.n), "abstention": float(abstained.mean()),
            "cost": float(cost.mean()), "shares": shares}


def score_curve(upper_list, lower_list, data: CascadeData) -> pd.DataFrame:
    """Score pairs of threshold vectors; one row each: error, abstention, cost, share_<j>."""
    rows = []
    for t, a in zip(upper_list, lower_list):
        s = score_thresholds(t, a, data)
        row = {"error": s["error"], "abstention": s["abstention"], "cost": s["cost"]}
        row.update({f"share_{i}": float(v) for i, v in enumerate(s["shares"])})
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# The tuner
# --------------------------------------------------------------------------------------------------

def _loss_terms(e: dict, abstain_cost: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    wrong = e["answered"] - e["correct"]
    abst = e["abstain"].sum(axis=1)
    loss = wrong + (abstain_cost * abst if np.isfinite(abstain_cost) else 0.0)
    return wrong, abst, loss


class AbstentionTuner(Tuner):
    """Deferral and abstention thresholds along a lambda path of loss + lambda E[cost], on the
    Markov-copula model (marginals and Gumbel pairs) evaluated as a Markov chain of pair copulas.

    ``abstain_cost``: the penalty of one abstention in error units (inf: never abstain). ``stages``:
    "all", "last" or "none" (see the module doc). The lambda path (``lambdas``, ``growth``,
    ``max_steps``, ``lambda_max``, ``stop_multiplier`` against the cascade's first model's cost, or
    ``reference_cost`` with ``stop_reference="chain"``) and ``max_gap`` are markov-copula's; ``eps``
    the box margin of the deferral thresholds; ``n_cells`` the chain's grid. ``marginal_fit`` and
    ``copula`` are passed to :class:`MarkovCopulaModel`.

    After ``fit``: ``thresholds_`` (deferral, x-space), ``abstain_thresholds_`` (k per point, -inf =
    never), ``train_error_`` (predicted P(answered and wrong)), ``train_abstention_``,
    ``train_loss_``, ``train_cost_``, ``lambdas_``, ``model_``, ``joint_``, ``diagnostics_``.
    """

    name = "early-abstention"
    parameter_constraints = {
        "abstain_cost": Interval(float, 0, None, infinite=True), "stages": Options(("all", "last", "none")),
        "lambdas": LAMBDAS, "growth": Interval(float, 1, 1e6, open="lo"), "max_steps": Interval(int, 0, 10000),
        "lambda_max": Interval(float, 0, 1e300, open="lo"), "stop_multiplier": Interval(float, 0, 1e6, open="lo"),
        "stop_reference": Options(("cascade", "chain")), "reference_cost": Interval(float, 0, None, none=True),
        "max_gap": Interval(float, 0, 1), "eps": Interval(float, 0, 0.5, open="hi"), "n_cells": Interval(int, 2, 4096),
        "marginal_fit": Options(("mle", "em")), "copula": Options(("gumbel", "independence")),
    }

    def __init__(self, abstain_cost: float = 1.0, stages: str = "all", lambdas=(0.0, 1e-10, 1e-8, 1e-6),
                 growth: float = 2.0, max_steps: int = 24, lambda_max: float = 1000.0, stop_multiplier: float = 1.25,
                 stop_reference: str = "cascade", reference_cost: float | None = None, max_gap: float = 0.1,
                 eps: float = 1e-3, n_cells: int = 96, marginal_fit: str = "mle", copula: str = "gumbel"):
        self.abstain_cost = abstain_cost
        self.stages = stages
        self.lambdas = tuple(lambdas)
        self.growth = growth
        self.max_steps = max_steps
        self.lambda_max = lambda_max
        self.stop_multiplier = stop_multiplier
        self.stop_reference = stop_reference
        self.reference_cost = reference_cost
        self.max_gap = max_gap
        self.eps = eps
        self.n_cells = n_cells
        self.marginal_fit = marginal_fit
        self.copula = copula

    # -- the optimisation in u-space -----------------------------------------------------------
    def _free_lower(self) -> np.ndarray:
        """Which stages may abstain."""
        k = self.k_
        if self.stages == "all" and np.isfinite(self.abstain_cost):
            return np.ones(k, bool)
        if self.stages == "last" and np.isfinite(self.abstain_cost):
            return np.arange(k) == k - 1
        return np.zeros(k, bool)

    def _split(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Optimisation variables (B, k-1 + n_free) -> u-space upper (B, k-1) and lower (B, k)."""
        z = np.atleast_2d(z)
        k = self.k_
        upper = z[:, :k - 1]
        lower = np.zeros((len(z), k))
        lower[:, self.free_] = z[:, k - 1:]
        return upper, lower

    def predict_u(self, z) -> dict:
        """Predicted error, abstention, loss and cost for optimisation vectors z (B, n_vars)."""
        upper, lower = self._split(np.asarray(z, float))
        e = self.joint_.expected(upper, self.costs_, lower, space="u")
        wrong, abst, loss = _loss_terms(e, self.abstain_cost)
        return {"error": wrong, "abstention": abst, "loss": loss, "cost": e["cost"], "shares": e["shares"]}

    def _minimize(self, lam: float, x0: np.ndarray, n_vars: int) -> np.ndarray:
        """L-BFGS-B on the first ``n_vars`` variables (the rest held at ``x0``)."""
        bounds = self.bounds_[:n_vars]
        lower_b, upper_b = bounds[:, 0], bounds[:, 1]
        rest = x0[n_vars:]

        def fun_and_grad(z):
            h = np.full_like(z, 1e-8)
            h = np.where((z + h > upper_b) & (z - h >= lower_b), -h, h)
            Z = np.vstack([z, z + np.diag(h)])
            p = self.predict_u(np.column_stack([Z, np.broadcast_to(rest, (len(Z), len(rest)))]))
            f = p["loss"] + lam * p["cost"]
            return f[0], (f[1:] - f[0]) / ((z + h) - z)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = optimize.minimize(fun_and_grad, np.clip(x0[:n_vars], lower_b, upper_b), jac=True,
                                    method="L-BFGS-B", bounds=list(map(tuple, bounds)))
        return np.concatenate([res.x, rest])

    def abstention_pays(self, lam: float, z: np.ndarray, h: float = 1e-6) -> bool:
        """Whether raising some abstention threshold from ``z`` lowers loss + lam * E[cost]."""
        n = self.k_ - 1
        steps = [z] + [z + h * np.eye(len(z))[i] for i in range(n, len(z)) if z[i] + h <= self.bounds_[i, 1]]
        p = self.predict_u(np.array(steps))
        f = p["loss"] + lam * p["cost"]
        return bool(np.any(f[1:] < f[0] - 1e-12))

    def solve(self, lam: float, plain: np.ndarray | None = None) -> np.ndarray:
        """Minimise loss + lam * E[cost]: first the deferral thresholds alone from the box midpoint
        without abstention (the plain cascade); then, where stages may abstain and abstaining pays at
        the margin, all thresholds from there. Otherwise the plain solution is already optimal for the
        abstention thresholds (at their "never" bound, the loss rises in each), so a large abstain_cost
        gives exactly the plain cascade; and the second stage only descends, so the predicted loss is
        never above the plain one. ``plain``: the first stage's solution for this lambda, if known (it
        does not depend on abstain_cost)."""
        z = self._minimize(lam, self.start_, self.k_ - 1) if plain is None else np.asarray(plain, float).copy()
        if self.free_.any() and self.abstention_pays(lam, z):
            z = self._minimize(lam, z, len(self.start_))
        return z

    def to_x(self, z) -> tuple[list, list]:
        """u-space optimisation vectors -> x-space deferral thresholds and abstention thresholds (-inf =
        never; an abstention threshold above the deferral threshold is reported at it)."""
        upper, lower = self._split(np.atleast_2d(np.asarray(z, float)))
        k = self.k_
        ts, as_ = [], []
        for up, lo in zip(upper, lower):
            t = np.array([float(self.joint_.margins[j].ppf(up[j])) for j in range(k - 1)])
            a = np.full(k, -np.inf)
            for j in range(k):
                if self.free_[j] and lo[j] > 0:
                    a[j] = float(self.joint_.margins[j].ppf(lo[j]))
                    if j < k - 1:
                        a[j] = min(a[j], t[j])
            ts.append(t)
            as_.append(a)
        return ts, as_

    def setup(self, train: CascadeData) -> "AbstentionTuner":
        """Fit the model and set up the optimisation (bounds, start) without tuning; :meth:`fit` does this
        and then runs the lambda path. After ``setup``, :meth:`solve` tunes one lambda; the abstain_cost
        may be changed between calls (not between finite and infinite)."""
        if self.stages not in STAGES:
            raise ValueError(f"unknown stages {self.stages!r}; use all, last or none")
        if not self.abstain_cost >= 0:
            raise ValueError(f"abstain_cost {self.abstain_cost}: use a number >= 0 (inf: never abstain)")
        if train.k < 2:
            raise ValueError("AbstentionTuner needs a cascade of at least two models (single models: tune_prepared)")
        t0 = time.perf_counter()
        conf = train.confidence
        self.k_ = train.k
        self.model_ = MarkovCopulaModel(self.marginal_fit, self.copula, integration="exact").fit(conf)
        self.joint_ = joint_from_markov_copula(self.model_, self.n_cells)
        self.costs_ = train.cost.mean(axis=0)
        self.free_ = self._free_lower()
        box = threshold_bounds(conf, self.eps)
        lo_u, _ = self.joint_.to_u(upper=np.array([[a for a, _ in box]]))
        hi_u, _ = self.joint_.to_u(upper=np.array([[b for _, b in box]]))
        mid_u, _ = self.joint_.to_u(upper=np.array([[(a + b) / 2 for a, b in box]]))
        n_free = int(self.free_.sum())
        self.bounds_ = np.array([[lo_u[0, j], max(lo_u[0, j], hi_u[0, j])] for j in range(self.k_ - 1)]
                                + [[0.0, 1.0]] * n_free)
        self.start_ = np.concatenate([mid_u[0], np.zeros(n_free)])
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def fit(self, train: CascadeData) -> "AbstentionTuner":
        t0 = time.perf_counter()
        self.setup(train)
        conf = train.confidence
        fit_s = self.fit_seconds_
        if self.stop_reference == "cascade":
            ref = self.costs_[0]
        elif self.stop_reference == "chain":
            ref = self.costs_[0] if self.reference_cost is None else self.reference_cost
        else:
            raise ValueError(f"unknown stop_reference {self.stop_reference!r}; use cascade or chain")

        path, lams = [], []
        for lam in self.lambdas:
            path.append(self.solve(lam))
            lams.append(lam)
        lam, steps = self.lambdas[-1], 0
        while (self.predict_u(path[-1][None, :])["cost"][0] > self.stop_multiplier * ref
               and lam < self.lambda_max and steps < self.max_steps):
            lam *= self.growth
            steps += 1
            path.append(self.solve(lam))
            lams.append(lam)
        n_solved = len(path)
        # gap filling on the u-space training confidences of every variable (a dummy last column: fill_gaps
        # reads the columns of the thresholds from all but the last)
        U = np.column_stack([self.joint_.margins[j].cdf(conf[:, j]) for j in range(self.k_)])
        obs = np.column_stack([U[:, :self.k_ - 1], U[:, self.free_], np.zeros(len(U))])
        path = fill_gaps(path, obs, self.max_gap)
        Z = np.array(path)
        pred = self.predict_u(Z)
        self.z_ = Z
        self.thresholds_, self.abstain_thresholds_ = self.to_x(Z)
        self.lambdas_ = lams
        self.train_error_ = pred["error"]
        self.train_abstention_ = pred["abstention"]
        self.train_loss_ = pred["loss"]
        self.train_cost_ = pred["cost"]
        self.diagnostics_ = {"fit_seconds": fit_s, "tune_seconds": time.perf_counter() - t0 - fit_s,
                             "n_lambdas": n_solved, "n_filled": len(path) - n_solved, "stages": self.stages,
                             "abstain_cost": self.abstain_cost, "model": self.model_.describe()}
        return self


# --------------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------------

def _json_float(x: float):
    return float(x) if np.isfinite(x) else None


def curve_frame(models: list[str], abstain_cost: float, thresholds, abstain_thresholds, train_error, train_abstention,
                train_cost, test: CascadeData, method: str = "early-abstention") -> pd.DataFrame:
    """One row per threshold pair; ``*_error`` columns hold the loss (error + abstain_cost *
    abstention) so that the generic curve code (AUC, frontier, compare) works on the loss; the parts
    are in ``*_wrong`` (answered and wrong) and ``*_abstention``."""
    scored = score_curve(thresholds, abstain_thresholds, test)
    x = abstain_cost if np.isfinite(abstain_cost) else 0.0
    train_error = np.asarray(train_error, float)
    train_abstention = np.asarray(train_abstention, float)
    df = pd.DataFrame({
        "method": method,
        "cascade": " -> ".join(models),
        "point": np.arange(len(thresholds)),
        "thresholds": [list(map(float, np.atleast_1d(t))) for t in thresholds],
        "abstain_thresholds": [list(map(float, np.atleast_1d(a))) for a in abstain_thresholds],
        "abstain_cost": float(abstain_cost),
        "train_error": train_error + x * train_abstention,
        "train_wrong": train_error,
        "train_abstention": train_abstention,
        "train_cost": np.asarray(train_cost, float),
        "test_error": scored["error"].to_numpy() + x * scored["abstention"].to_numpy(),
        "test_wrong": scored["error"].to_numpy(),
        "test_abstention": scored["abstention"].to_numpy(),
        "test_cost": scored["cost"].to_numpy(),
    })
    for j, m in enumerate(models):
        df[f"share_{m}"] = scored[f"share_{j}"].to_numpy()
    return df


def single_model_threshold(train: CascadeData, abstain_cost: float) -> float:
    """A single model abstains when P(correct) = c < 1 - abstain_cost (-inf: never, on the training range)."""
    a = 1.0 - abstain_cost if np.isfinite(abstain_cost) else -np.inf
    return a if a > train.confidence[:, 0].min() else -np.inf


def tune_prepared(train: CascadeData, test: CascadeData, abstain_cost: float, params: dict | None = None
                  ) -> tuple[pd.DataFrame, dict, object]:
    """Fit the abstention tuner on calibrated train data and score its curve on test (a single model:
    one point). The summary has no AUC: the caller's curve code adds it (tuners do not import evaluate)."""
    params = dict(params or {})
    models = list(train.models)
    t0 = time.perf_counter()
    if train.k == 1:
        a = single_model_threshold(train, abstain_cost)
        s = score_thresholds([], [a], train)
        tuner = None
        curve = curve_frame(models, abstain_cost, [np.array([])], [np.array([a])], [s["error"]], [s["abstention"]],
                            [s["cost"]], test)
        diagnostics = {"kind": "single-model", "abstain_below": _json_float(a)}
    else:
        params = AbstentionTuner.validate_params(params)
        params["abstain_cost"] = abstain_cost
        tuner = AbstentionTuner(**params).fit(train)
        curve = curve_frame(models, abstain_cost, tuner.thresholds_, tuner.abstain_thresholds_, tuner.train_error_,
                            tuner.train_abstention_, tuner.train_cost_, test, method_name(tuner.stages))
        diagnostics = tuner.diagnostics_
    summary = {
        "method": method_name(params.get("stages", "all")),
        "models": models,
        "abstain_cost": abstain_cost if np.isfinite(abstain_cost) else None,
        "error_axis": "error + abstain_cost * abstention (error = answered and wrong)",
        "n_train": train.n,
        "n_test": test.n,
        "n_points": len(curve),
        "test_cost_range": [float(curve["test_cost"].min()), float(curve["test_cost"].max())],
        "seconds": time.perf_counter() - t0,
        "params": {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
                   for k, v in (tuner.get_params() if tuner is not None else {"abstain_cost": abstain_cost}).items()},
        "diagnostics": diagnostics,
    }
    return curve, summary, tuner


__all__ = ["STAGES", "METHOD_NAMES", "method_name", "AbstentionTuner", "EndpointMargin", "gumbel_copula", "joint_from_markov_copula", "route",
           "score_thresholds", "score_curve", "curve_frame", "single_model_threshold", "tune_prepared"]
