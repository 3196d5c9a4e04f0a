"""Goodness of fit of a fitted :class:`~cascade.tuners.markov_copula.MarkovCopulaModel` (method doc, section 7).

Three checks, each with a statistic and a p-value:

- **Marginals**: Cramer-von Mises distance ``n * int (F_n - F)^2 dF`` between the ECDF of a split's
  calibrated confidences (the held-out test split by default) and the fitted law F, which has point
  masses at its end points. The law was fitted on the training split, so it is a simple hypothesis on
  the test split: the p-value is a parametric bootstrap (samples of the same size drawn from F).
- **Copulas**: the Kendall-function test of Genest, Quessy and Remillard (2006) for each consecutive
  pair, on the jointly interior training points: ``S = n int (K_n - K_theta)^2 dK_theta`` with the
  Gumbel Kendall function ``K(t) = t - t ln(t) / theta`` (independence when theta = 1). The family is
  tested, so each bootstrap sample re-estimates theta from Kendall's tau, as the fit does.
- **Markov property**: a logistic regression (binomial GLM, so fractional correctness works) of model
  j's correctness on the calibrated confidences of models j-1 and j-2; under the Markov assumption the
  earlier model adds nothing, so its Wald p-value should be large.
"""

from __future__ import annotations

import warnings

import numpy as np
import statsmodels.api as sm
from scipy import stats
from statsmodels.distributions.copula.api import GumbelCopula

from cascade.tuners.markov_copula import EndpointBetaMixture, MarkovCopulaModel
from cascade.data.records import CascadeData


# ------------------------------------------------------------------------------------------------
# Marginals
# ------------------------------------------------------------------------------------------------

def marginal_cvm(law: EndpointBetaMixture, x) -> float:
    """Cramer-von Mises ``n * int (F_n - F)^2 dF`` for a law with atoms at its end points m and M.

    Exact for the piecewise-constant ECDF: the interior part is integrated in u = F(x), where each
    stretch between consecutive data points contributes ``((u_b - c)^3 - (u_a - c)^3) / 3``; the atoms
    contribute their mass times the squared gap at the atom. Values outside [m, M] are clipped.
    """
    x = np.sort(np.clip(np.asarray(x, float), law.m_, law.M_))
    n = len(x)
    if n == 0:
        return float("nan")

    def ecdf(t, right=True):
        return np.searchsorted(x, t, side="right" if right else "left") / n

    total = 0.0
    # atom at m: the gap between the right-continuous ECDF and F(m) = p_min, weighted by the mass
    total += law.p_min_ * (ecdf(law.m_) - law.p_min_) ** 2
    # interior: u runs over (F(m), F(M-)) = (p_min, p_min + p_int)
    interior = x[(x > law.m_) & (x < law.M_)]
    knots = np.concatenate([[law.m_], interior, [law.M_]])
    u = law.p_min_ + law.p_int_ * np.clip(law.cdf_interior(knots), 0.0, 1.0)
    u[0], u[-1] = law.p_min_, law.p_min_ + law.p_int_
    c = ecdf(knots[:-1])  # ECDF is constant on [knot_i, knot_{i+1})
    total += np.sum(((u[1:] - c) ** 3 - (u[:-1] - c) ** 3) / 3.0)
    if law.p_max_ > 0:  # atom at M: both CDFs reach 1 there, so compare the left limits
        total += law.p_max_ * (ecdf(law.M_, right=False) - (1.0 - law.p_max_)) ** 2
    return float(n * total)


def marginal_test(law: EndpointBetaMixture, x, *, n_boot: int = 100, rng=None) -> dict:
    rng = np.random.default_rng(rng)
    x = np.asarray(x, float)
    stat = marginal_cvm(law, x)
    boot = np.array([marginal_cvm(law, law.rvs(len(x), rng)) for _ in range(n_boot)])
    p = (1 + np.sum(boot >= stat)) / (n_boot + 1) if n_boot else float("nan")
    return {"cvm": stat, "p_value": float(p), "n": int(len(x))}


# ------------------------------------------------------------------------------------------------
# Copulas: Kendall-function test
# ------------------------------------------------------------------------------------------------

def _pseudo(x):
    return stats.rankdata(x) / (len(x) + 1.0)


def _kendall_w(u, v):
    """W_i = #{j : u_j < u_i, v_j < v_i} / (n - 1), the empirical Kendall-function sample."""
    n = len(u)
    below = (u[None, :] < u[:, None]) & (v[None, :] < v[:, None])
    return below.sum(axis=1) / (n - 1.0)


def gumbel_kendall_function(t, theta: float):
    t = np.clip(np.asarray(t, float), 1e-300, 1.0)
    return t - t * np.log(t) / theta


def _theta_from_tau(tau: float) -> float:
    return 1.0 / (1.0 - min(tau, 0.99)) if np.isfinite(tau) and tau > 0 else 1.0


def kendall_cvm(u, v, theta: float, grid: int = 400) -> float:
    """S = n int_0^1 (K_n(t) - K_theta(t))^2 dK_theta(t), integrated on a fine grid in t."""
    w = np.sort(_kendall_w(u, v))
    n = len(w)
    t = (np.arange(grid) + 0.5) / grid
    k_emp = np.searchsorted(w, t, side="right") / n
    edges = np.linspace(0.0, 1.0, grid + 1)
    dk = np.diff(gumbel_kendall_function(edges, theta))
    return float(n * np.sum((k_emp - gumbel_kendall_function(t, theta)) ** 2 * dk))


def copula_test(xi, xj, *, n_boot: int = 100, rng=None, max_points: int = 1500) -> dict:
    """Kendall-function test of the Gumbel family on jointly interior points (xi, xj)."""
    rng = np.random.default_rng(rng)
    xi, xj = np.asarray(xi, float), np.asarray(xj, float)
    n = len(xi)
    if n < 10:
        return {"n_interior": n, "cvm": float("nan"), "p_value": float("nan"), "theta": float("nan")}
    if n > max_points:  # the test is O(n^2); a random subsample keeps it fast
        keep = rng.choice(n, max_points, replace=False)
        xi, xj = xi[keep], xj[keep]
        n = max_points
    u, v = _pseudo(xi), _pseudo(xj)
    tau = stats.kendalltau(u, v)[0]
    theta = _theta_from_tau(tau)
    stat = kendall_cvm(u, v, theta)
    boot = []
    for _ in range(n_boot):
        if theta > 1.0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                s = GumbelCopula(theta).rvs(n, rng=rng)
        else:
            s = rng.random((n, 2))
        bu, bv = _pseudo(s[:, 0]), _pseudo(s[:, 1])
        btheta = _theta_from_tau(stats.kendalltau(bu, bv)[0])
        boot.append(kendall_cvm(bu, bv, btheta))
    boot = np.asarray(boot)
    p = (1 + np.sum(boot >= stat)) / (n_boot + 1) if n_boot else float("nan")
    return {"n_interior": int(n), "tau": float(tau), "theta": float(theta), "cvm": stat, "p_value": float(p)}


# ------------------------------------------------------------------------------------------------
# Markov property
# ------------------------------------------------------------------------------------------------

def markov_test(correct_j, c_prev, c_earlier) -> dict:
    """Binomial GLM of correct_j on [1, c_{j-1}, c_{j-2}]; the Wald p-value of c_{j-2}."""
    X = sm.add_constant(np.column_stack([c_prev, c_earlier]), has_constant="add")
    y = np.clip(np.asarray(correct_j, float), 0.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = sm.GLM(y, X, family=sm.families.Binomial()).fit()
        except Exception as e:  # perfect separation and friends
            return {"coef_earlier": float("nan"), "p_value": float("nan"), "error": str(e)}
    return {"coef_prev": float(fit.params[1]), "coef_earlier": float(fit.params[2]),
            "p_value": float(fit.pvalues[2]), "n": int(len(y))}


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------

def report(model: MarkovCopulaModel, train: CascadeData, test: CascadeData, *, n_boot: int = 100,
           seed: int = 0, alpha: float = 0.05) -> dict:
    """All three checks for a model fitted on ``train`` (calibrated confidences); JSON-able."""
    rng = np.random.default_rng(seed)
    models = list(train.models)
    out: dict = {"n_boot": n_boot, "seed": seed, "alpha": alpha, "marginals": [], "copulas": [], "markov": []}
    for j, law in enumerate(model.marginals_):
        out["marginals"].append({"model": models[j], "split": "test", **marginal_test(
            law, test.confidence[:, j], n_boot=n_boot, rng=rng)})
    X = train.confidence
    for j, pair in enumerate(model.pairs_, start=1):
        mi, mj = model.marginals_[j - 1], model.marginals_[j]
        both = (X[:, j - 1] > mi.m_) & (X[:, j - 1] < mi.M_) & (X[:, j] > mj.m_) & (X[:, j] < mj.M_)
        res = copula_test(X[both, j - 1], X[both, j], n_boot=n_boot, rng=rng)
        out["copulas"].append({"pair": f"{models[j - 1]} -> {models[j]}", "split": "train",
                               "theta_fitted": float(pair.theta_), **res})
    for j in range(2, train.k):
        out["markov"].append({"model": models[j], "given": models[j - 1], "earlier": models[j - 2],
                              "split": "train",
                              **markov_test(train.correct[:, j], X[:, j - 1], X[:, j - 2])})
    pv = lambda rows: [r["p_value"] for r in rows if np.isfinite(r.get("p_value", np.nan))]  # noqa: E731
    out["rejected"] = {
        "marginals": int(sum(p < alpha for p in pv(out["marginals"]))),
        "copulas": int(sum(p < alpha for p in pv(out["copulas"]))),
        "markov": int(sum(p < alpha for p in pv(out["markov"]))),
    }
    return out


def format_report(rep: dict) -> str:
    lines = ["marginals (test ECDF vs fitted law, Cramer-von Mises):"]
    lines += [f"  {r['model']:<28} n={r['n']:<5} W2={r['cvm']:.4f}  p={r['p_value']:.3f}" for r in rep["marginals"]]
    lines.append("copulas (Gumbel, Kendall-function CvM on train interior points):")
    lines += [f"  {r['pair']:<40} n={r['n_interior']:<5} theta={r['theta']:.3f}  S={r['cvm']:.4f}  "
              f"p={r['p_value']:.3f}" for r in rep["copulas"]]
    if rep["markov"]:
        lines.append("Markov property (does c_{j-2} predict correct_j given c_{j-1}?):")
        lines += [f"  {r['model']:<28} coef={r.get('coef_earlier', float('nan')):+.3f}  p={r['p_value']:.3g}"
                  for r in rep["markov"]]
    return "\n".join(lines)


__all__ = ["report", "format_report", "marginal_cvm", "marginal_test", "kendall_cvm", "copula_test",
           "markov_test", "gumbel_kendall_function"]
