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

For the ``copula`` model (:class:`~cascade.tuners.copula.CopulaModel`) the report also says, per pair,
which family the criterion chose and why: every candidate family with its best rotation, number of
parameters, log-likelihood, AIC and BIC on the training split; the Kendall-function test of the
*chosen* family (all training points, ties broken at random, bootstrap re-fitting the chosen family and
rotation); the Gumbel test above next to it; and, per model j >= 2, whether its correctness given the
previous model's confidence was modelled (log-likelihoods and coefficients). Marginals other than the
beta mixture (the ``ecdf`` margin) use the same Cramer-von Mises distance computed in u-space.
"""

from __future__ import annotations

import warnings

import numpy as np
import statsmodels.api as sm
from scipy import stats
from statsmodels.distributions.copula.api import GumbelCopula

from cascade.tuners.markov_copula import EndpointBetaMixture, MarkovCopulaModel  # noqa: F401
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


def marginal_cvm_u(law, x, grid: int = 4000) -> float:
    """``n * int (F_n - F)^2 dF`` for any law with ``cdf`` and ``ppf`` (atoms allowed), integrated over
    u = F(x) in (0, 1): on an atom's u-interval both CDFs are constant, so this is the same integral."""
    x = np.sort(np.asarray(x, float))
    n = len(x)
    if n == 0:
        return float("nan")
    v = (np.arange(grid) + 0.5) / grid
    q = np.asarray(law.ppf(v), float)
    fn = np.searchsorted(x, q, side="right") / n
    return float(n * np.mean((fn - np.asarray(law.cdf(q), float)) ** 2))


def marginal_test(law, x, *, n_boot: int = 100, rng=None) -> dict:
    rng = np.random.default_rng(rng)
    x = np.asarray(x, float)
    cvm = marginal_cvm if hasattr(law, "cdf_interior") else marginal_cvm_u
    draw = law.rvs if hasattr(law, "rvs") else (lambda size, r: law.ppf(r.random(size)))
    stat = cvm(law, x)
    boot = np.array([cvm(law, draw(len(x), rng)) for _ in range(n_boot)])
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


def _k_emp(w, t):
    w = np.sort(w)
    return np.searchsorted(w, t, side="right") / len(w)


def family_kendall_test(cop, u, v, *, n_boot: int = 100, rng=None, grid: int = 400, n_mc: int = 20000,
                        max_points: int = 1500) -> dict:
    """Kendall-function CvM of a fitted pyvinecopulib ``Bicop`` on pseudo-observations (u, v):
    S = n int (K_n - K)^2 dK, with K(t) = P(C(U, V) <= t) by Monte Carlo from the copula; the p-value is a
    parametric bootstrap that re-fits the same family and rotation on each sample."""
    import pyvinecopulib as pv

    rng = np.random.default_rng(rng)
    u, v = np.asarray(u, float), np.asarray(v, float)
    n = len(u)
    if n < 10:
        return {"cvm": float("nan"), "p_value": float("nan"), "n": int(n)}
    if n > max_points:
        keep = rng.choice(n, max_points, replace=False)
        u, v, n = u[keep], v[keep], max_points
    t = (np.arange(grid) + 0.5) / grid
    edges = np.linspace(0.0, 1.0, grid + 1)

    def stat(c, uu, vv):
        sim = c.sample(n_mc, seeds=[int(rng.integers(2**31))])
        cvals = c.cdf(sim)
        k_edges, k_mid = _k_emp(cvals, edges), _k_emp(cvals, t)
        w = _kendall_w(_pseudo(uu), _pseudo(vv))
        return float(n * np.sum((_k_emp(w, t) - k_mid) ** 2 * np.diff(k_edges)))

    s0 = stat(cop, u, v)
    controls = pv.FitControlsBicop(family_set=[cop.family], allow_rotations=False)
    boot = []
    for _ in range(n_boot):
        sample = cop.sample(n, seeds=[int(rng.integers(2**31))])
        b = pv.Bicop(cop.family, rotation=cop.rotation)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b.fit(_pseudo_cols(sample), controls=controls)
            boot.append(stat(b, sample[:, 0], sample[:, 1]))
        except Exception:
            continue
    boot = np.asarray(boot)
    p = (1 + np.sum(boot >= s0)) / (len(boot) + 1) if len(boot) else float("nan")
    return {"cvm": s0, "p_value": float(p), "n": int(n), "n_boot": int(len(boot))}


def _pseudo_cols(sample):
    return np.column_stack([_pseudo(sample[:, 0]), _pseudo(sample[:, 1])])


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

def report(model, train: CascadeData, test: CascadeData, *, n_boot: int = 100,
           seed: int = 0, alpha: float = 0.05) -> dict:
    """All checks for a model fitted on ``train`` (calibrated confidences); JSON-able. ``model``: a
    :class:`MarkovCopulaModel` or a :class:`~cascade.tuners.copula.CopulaModel` (which adds the
    ``families`` and ``correctness`` sections)."""
    rng = np.random.default_rng(seed)
    models = list(train.models)
    chosen = hasattr(model, "copulas_")  # a CopulaModel: families chosen by a criterion
    out: dict = {"n_boot": n_boot, "seed": seed, "alpha": alpha, "marginals": [], "copulas": [], "markov": []}
    for j, law in enumerate(model.marginals_):
        out["marginals"].append({"model": models[j], "split": "test", **marginal_test(
            law, test.confidence[:, j], n_boot=n_boot, rng=rng)})
    X = train.confidence
    if chosen:
        out["families"] = []
    for j in range(1, train.k):
        mi, mj = model.marginals_[j - 1], model.marginals_[j]
        both = (X[:, j - 1] > mi.m_) & (X[:, j - 1] < mi.M_) & (X[:, j] > mj.m_) & (X[:, j] < mj.M_)
        res = copula_test(X[both, j - 1], X[both, j], n_boot=n_boot, rng=rng)
        pair = f"{models[j - 1]} -> {models[j]}"
        row = {"pair": pair, "split": "train", **res}
        if not chosen:
            row["theta_fitted"] = float(model.pairs_[j - 1].theta_)
        out["copulas"].append(row)
        if chosen:
            desc = model.describe()["pairs"][j - 1]
            u = _pseudo(X[:, j - 1] + 1e-12 * rng.random(len(X)))  # ties broken at random
            v = _pseudo(X[:, j] + 1e-12 * rng.random(len(X)))
            cop = model.joint_.copulas[j - 1]  # the continuous copula of the distributional transforms
            test_res = family_kendall_test(cop, u, v, n_boot=n_boot, rng=rng)
            out["families"].append({"pair": pair, "split": "train", "criterion": desc["criterion"],
                                    "family": desc["family"], "rotation": desc["rotation"],
                                    "kendall_tau": desc["kendall_tau"], "var_types": desc["var_types"],
                                    "candidates": desc["candidates"], **test_res})
    for j in range(2, train.k):
        out["markov"].append({"model": models[j], "given": models[j - 1], "earlier": models[j - 2],
                              "split": "train",
                              **markov_test(train.correct[:, j], X[:, j - 1], X[:, j - 2])})
    if chosen:
        out["correctness"] = [{"model": models[j], "given": models[j - 1], "split": "train",
                               **model.correctness_info_[j]}
                              for j in range(1, train.k) if model.correctness_info_[j] is not None]
    pv = lambda rows: [r["p_value"] for r in rows if np.isfinite(r.get("p_value", np.nan))]  # noqa: E731
    out["rejected"] = {
        "marginals": int(sum(p < alpha for p in pv(out["marginals"]))),
        "copulas": int(sum(p < alpha for p in pv(out["copulas"]))),
        "markov": int(sum(p < alpha for p in pv(out["markov"]))),
    }
    if chosen:
        out["rejected"]["families"] = int(sum(p < alpha for p in pv(out["families"])))
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
    for r in rep.get("families", []):
        crit = r["criterion"]
        lines.append(f"pair copula {r['pair']}: chosen {r['family']} (rotation {r['rotation']}, tau={r['kendall_tau']:.3f}, "
                     f"var_types {''.join(r['var_types'])}) by {crit.upper()}; Kendall-function test of the chosen "
                     f"family S={r['cvm']:.4f} p={r['p_value']:.3f}")
        ok = sorted((c for c in r["candidates"] if "error" not in c), key=lambda c: c[crit])
        for c in ok:
            lines.append(f"    {'*' if c.get('chosen') else ' '} {c['family']:<9} rot={c['rotation']:<3} npars={c['npars']:<5} "
                         f"loglik={c['loglik']:9.2f}  AIC={c['aic']:9.2f}  BIC={c['bic']:9.2f}")
        for c in r["candidates"]:
            if "error" in c:
                lines.append(f"      {c['family']:<9} not fitted: {c['error']}")
    if rep.get("correctness"):
        lines.append("correctness given the previous model's confidence (logistic; kept when the criterion prefers it):")
        for r in rep["correctness"]:
            ll_c = r.get("loglik_conditional", float("nan"))
            lines.append(f"  {r['model']:<28} given {r['given']:<28} {r['chosen']:<11} loglik calibrated "
                         f"{r['loglik_calibrated']:.2f} conditional {ll_c:.2f}"
                         + (f" coef {np.round(r['coef'], 3).tolist()}" if "coef" in r else "")
                         + (f" ({r['error']})" if "error" in r else ""))
    return "\n".join(lines)


__all__ = ["report", "format_report", "marginal_cvm", "marginal_cvm_u", "marginal_test", "kendall_cvm",
           "copula_test", "family_kendall_test", "markov_test", "gumbel_kendall_function"]
