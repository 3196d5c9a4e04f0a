"""Model: the Markov-copula probabilistic model of a cascade's calibrated confidences, and its tuner.

Method: ``../shared/docs/markov-copula.md`` (Zellinger & Thomson, arXiv 2501.09345), sections 2-5.

- :class:`EndpointBetaMixture`: a model's calibrated confidence: point masses at the training
  minimum m and maximum M plus a two-component beta mixture rescaled to [m, M] on interior points.
- :class:`PairModel`: consecutive models (i, j): empirical min/interior/max cell frequencies, a
  single beta law for the interior variable in mixed cells, and a Gumbel copula (statsmodels,
  theta from Kendall's tau) between jointly interior points (independence when tau <= 0).
- :class:`MarkovCopulaModel`: ``fit(confidence)``, then ``expected(thresholds, costs)`` gives the
  closed forms for E[correct] and E[cost] under the Markov assumption. Instead of the release's
  interpolated tables, the expectations are computed directly: E[X 1{X > t} | A] is integrated by
  parts and the remaining integral of a CDF is done with Gauss-Legendre quadrature.
- :class:`MarkovCopulaTuner` (method ``markov-copula``): L-BFGS-B along a lambda path of
  (1 - E[correct]) + lambda E[cost], with gap filling.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import betainc, betaln, digamma, expit, logit, xlog1py, xlogy

from cascade.tuners.base import LAMBDAS, Interval, Options, Tuner, register, threshold_bounds


# --------------------------------------------------------------------------------------------
# Marginals
# --------------------------------------------------------------------------------------------

def _beta_logpdf01(u, a, b):
    return xlogy(a - 1.0, u) + xlog1py(b - 1.0, -u) - betaln(a, b)


def _collapse(u, weights=None):
    """Distinct values of ``u`` and their total weights (counts when ``weights`` is None): every fit below
    is a weighted sum over distinct values, the sufficient statistics of an i.i.d. likelihood."""
    u = np.asarray(u, float)
    if weights is None:
        return np.unique(u, return_counts=True)
    vals, inv = np.unique(u, return_inverse=True)
    return vals, np.bincount(inv.ravel(), weights=np.asarray(weights, float), minlength=len(vals))


def mixture_nll_grad(z, lu, l1u, w):
    """Negative log-likelihood of the two-component beta mixture and its gradient, in the unconstrained
    parameters z = (logit pi, log a1, log b1, log a2, log b2), for distinct points u given as
    lu = log u, l1u = log(1 - u), with counts (weights) w. One pass over the distinct points."""
    pi = expit(z[0])
    a1, b1, a2, b2 = np.exp(z[1:])
    l1 = np.log(pi) + (a1 - 1.0) * lu + (b1 - 1.0) * l1u - betaln(a1, b1)
    l2 = np.log1p(-pi) + (a2 - 1.0) * lu + (b2 - 1.0) * l1u - betaln(a2, b2)
    ll = np.logaddexp(l1, l2)
    r1 = w * np.exp(l1 - ll)  # weighted responsibilities of component 1
    r2 = w - r1
    s1, s2 = r1.sum(), r2.sum()
    d1, d2 = digamma(a1 + b1), digamma(a2 + b2)
    # d log Beta(u; a, b) / da = log u - digamma(a) + digamma(a + b); chain rule through a = exp(z)
    grad = -np.array([
        s1 - pi * (s1 + s2),
        a1 * (r1 @ lu - s1 * (digamma(a1) - d1)),
        b1 * (r1 @ l1u - s1 * (digamma(b1) - d1)),
        a2 * (r2 @ lu - s2 * (digamma(a2) - d2)),
        b2 * (r2 @ l1u - s2 * (digamma(b2) - d2)),
    ])
    return -(w @ ll), grad


class BetaMixture01:
    """Two-component beta mixture on (0, 1), fitted by maximum likelihood.

    ``method="mle"`` maximises the mixture log-likelihood directly (L-BFGS-B on unconstrained
    parameters, analytic gradient) from the release's starting point pi=0.5, (2, 5), (5, 2).
    ``method="em"`` runs the release's EM (weighted beta MLE in the M-step, stop at |delta loglik| < tol).
    Both work on the distinct values with their counts, so a fit costs O(distinct values) per
    likelihood evaluation, not O(points).
    """

    def __init__(self, method: str = "mle", init=(0.5, 2.0, 5.0, 5.0, 2.0), tol: float = 1e-6, max_iter: int = 2000):
        self.method = method
        self.init = init
        self.tol = tol
        self.max_iter = max_iter

    @staticmethod
    def _nll(params, u, w=1.0):
        pi, a1, b1, a2, b2 = params
        l1 = np.log(pi) + _beta_logpdf01(u, a1, b1)
        l2 = np.log1p(-pi) + _beta_logpdf01(u, a2, b2)
        return -np.sum(w * np.logaddexp(l1, l2))

    def fit(self, u, weights=None) -> "BetaMixture01":
        """Fit on points ``u`` in (0, 1) (clipped to [1e-12, 1 - 1e-12]); ``weights``: optional
        per-point counts (e.g. from an earlier ``np.unique``)."""
        u = np.clip(np.asarray(u, float), 1e-12, 1 - 1e-12)
        u, w = _collapse(u, weights)
        n = float(w.sum())
        self.n_ = int(n) if float(n).is_integer() else n  # number of points (total weight)
        if n < 3:
            # too few points for a mixture: a single beta (method of moments), or uniform
            mu = float(np.sum(w * u) / n) if n > 0 else 0.0
            var = float(np.sum(w * (u - mu) ** 2) / n) if n > 0 else 0.0
            if n >= 2 and var > 0:
                c = max(mu * (1 - mu) / var - 1, 1e-2)
                self.params_ = (1.0, mu * c, (1 - mu) * c, 1.0, 1.0)
            else:
                self.params_ = (1.0, 1.0, 1.0, 1.0, 1.0)
            self.loglik_ = -self._nll(self.params_, u, w)
            return self
        if self.method == "em":
            self.params_ = self._fit_em(u, w)
        elif self.method == "mle":
            self.params_ = self._fit_mle(u, w)
        else:
            raise ValueError(f"unknown mixture fit {self.method!r}; use mle or em")
        self.loglik_ = -self._nll(self.params_, u, w)
        return self

    def _fit_mle(self, u, w):
        from scipy import optimize

        pi, a1, b1, a2, b2 = self.init
        z0 = np.array([logit(pi), np.log(a1), np.log(b1), np.log(a2), np.log(b2)])
        lu, l1u = np.log(u), np.log1p(-u)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = optimize.minimize(mixture_nll_grad, z0, args=(lu, l1u, w), jac=True, method="L-BFGS-B",
                                   bounds=[(-20, 20)] + [(-12, 7)] * 4)
        z = res.x
        return (float(min(max(expit(z[0]), 1e-9), 1 - 1e-9)), *map(float, np.exp(z[1:])))

    def _fit_em(self, u, w):
        from scipy import optimize

        pi, a1, b1, a2, b2 = self.init
        lu, l1u = np.log(u), np.log1p(-u)
        n = w.sum()
        prev = None

        def mstep(r, a, b):
            # weighted beta MLE: the weighted log-likelihood depends on the data only through these sums
            s, sl, sl1 = r.sum(), r @ lu, r @ l1u

            def nll(p):
                dab = digamma(p[0] + p[1])
                f = -((p[0] - 1.0) * sl + (p[1] - 1.0) * sl1 - s * betaln(p[0], p[1]))
                return f, -np.array([sl - s * (digamma(p[0]) - dab), sl1 - s * (digamma(p[1]) - dab)])

            r_ = optimize.minimize(nll, [a, b], jac=True, method="L-BFGS-B", bounds=[(1e-5, None), (1e-5, None)])
            return r_.x

        for _ in range(self.max_iter):
            p1 = pi * np.exp(_beta_logpdf01(u, a1, b1))
            p2 = (1 - pi) * np.exp(_beta_logpdf01(u, a2, b2))
            tot = np.maximum(p1 + p2, 1e-6)
            r1, r2 = p1 / tot, p2 / tot
            ll = w @ np.log(tot)
            if prev is not None and abs(ll - prev) < self.tol:
                break
            prev = ll
            pi = float(np.clip((w @ r1) / n, 1e-9, 1 - 1e-9))
            a1, b1 = mstep(w * r1, a1, b1)
            a2, b2 = mstep(w * r2, a2, b2)
        return (pi, float(a1), float(b1), float(a2), float(b2))

    def cdf(self, u):
        pi, a1, b1, a2, b2 = self.params_
        u = np.clip(u, 0.0, 1.0)
        return pi * betainc(a1, b1, u) + (1 - pi) * betainc(a2, b2, u)

    def pdf(self, u):
        pi, a1, b1, a2, b2 = self.params_
        return pi * np.exp(_beta_logpdf01(u, a1, b1)) + (1 - pi) * np.exp(_beta_logpdf01(u, a2, b2))

    def rvs(self, size, rng):
        pi, a1, b1, a2, b2 = self.params_
        first = rng.random(size) < pi
        return np.where(first, rng.beta(a1, b1, size), rng.beta(a2, b2, size))


class EndpointBetaMixture:
    """A calibrated-confidence marginal: masses at m and M, beta mixture on (m, M)."""

    def __init__(self, method: str = "mle"):
        self.method = method

    def fit(self, x) -> "EndpointBetaMixture":
        vals, counts = np.unique(np.asarray(x, float), return_counts=True)
        n = counts.sum()
        self.m_, self.M_ = float(vals[0]), float(vals[-1])
        self.p_min_ = float(counts[0] / n)
        self.p_max_ = float(counts[-1] / n) if self.M_ > self.m_ else 0.0
        self.p_int_ = 1.0 - self.p_min_ - self.p_max_
        # the interior fit sees the distinct interior values with their counts
        self.interior_ = BetaMixture01(self.method).fit(self._u(vals[1:-1]), weights=counts[1:-1])
        return self

    def _u(self, x):
        span = self.M_ - self.m_
        return (np.asarray(x, float) - self.m_) / span if span > 0 else np.zeros_like(np.asarray(x, float))

    def cdf_interior(self, x):
        """F(x): CDF of the interior part alone, on [m, M]."""
        return self.interior_.cdf(self._u(x))

    def cdf(self, x):
        x = np.asarray(x, float)
        return (self.p_min_ * (x >= self.m_) + self.p_int_ * self.cdf_interior(x) * (x > self.m_)
                + self.p_max_ * (x >= self.M_))

    def mean(self) -> float:
        """E[X] of the fitted law (numerically)."""
        nodes, weights = _gauss(64)
        x = self.m_ + (self.M_ - self.m_) * nodes
        int_cdf = (self.M_ - self.m_) * np.sum(weights * self.cdf_interior(x))
        # E[X] = m p_min + M p_max + p_int (M - int_m^M F)
        return self.m_ * self.p_min_ + self.M_ * self.p_max_ + self.p_int_ * (self.M_ - int_cdf)

    def rvs(self, size, rng):
        kind = rng.choice(3, size=size, p=[self.p_min_, self.p_int_, self.p_max_])
        inner = self.m_ + (self.M_ - self.m_) * self.interior_.rvs(size, rng)
        return np.where(kind == 0, self.m_, np.where(kind == 2, self.M_, inner))


class _CellLaw:
    """The single law of the interior variable in a mixed cell: beta on (m, M) (scipy MLE with fixed
    location and scale), a triangular law if that fit fails, uniform if the cell is empty."""

    def __init__(self, data, m, M):
        data = np.asarray(data, float)
        self.m, self.span = m, max(M - m, 1e-300)
        self.n = len(data)
        self.kind, self.params = "uniform", ()
        if len(data) >= 2 and np.ptp(data) > 0:
            from scipy import stats  # here, not at the top: importing scipy.stats costs ~0.4 s

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    a, b, _, _ = stats.beta.fit(data, floc=m, fscale=self.span)
                    if np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0:
                        self.kind, self.params = "beta", (a, b)
                except Exception:
                    pass
                if self.kind == "uniform":
                    try:
                        c, _, _ = stats.triang.fit(data, floc=m, fscale=self.span)
                        self.kind, self.params = "triang", (float(np.clip(c, 0, 1)),)
                    except Exception:
                        pass
        elif len(data) == 1:
            # one point: a triangular law peaked at it
            self.kind, self.params = "triang", (float(np.clip((data[0] - m) / self.span, 0, 1)),)

    def cdf(self, x):
        u = np.clip((np.asarray(x, float) - self.m) / self.span, 0.0, 1.0)
        if self.kind == "beta":
            return betainc(self.params[0], self.params[1], u)
        if self.kind == "triang":  # scipy.stats.triang.cdf, inlined: it dominates the objective's run time
            c = self.params[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                left = np.where(c > 0, u * u / c, 1.0)
                right = np.where(c < 1, 1.0 - (1.0 - u) ** 2 / (1.0 - c), 1.0)
            return np.where(u <= c, np.where(c > 0, left, 0.0), right)
        return u

    def rvs(self, size, rng):
        if self.kind == "beta":
            u = rng.beta(*self.params, size)
        elif self.kind == "triang":
            from scipy import stats

            u = stats.triang.rvs(self.params[0], size=size, random_state=rng)
        else:
            u = rng.random(size)
        return self.m + self.span * u


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------

def _cells(x, m, M) -> np.ndarray:
    """0 at the minimum m, 2 at the maximum M (when M != m), 1 inside; int8."""
    cell = np.ones(len(x), np.int8)
    cell[x == M] = 2
    cell[x == m] = 0
    return cell


def kendall_tau_b(x, y, max_cells: int = 1_000_000) -> float:
    """Kendall's tau-b of (x, y): ``scipy.stats.kendalltau(x, y).statistic``, bit for bit, from the table
    of counts of distinct (x, y) values: the same integers (pairs tied in x, in y and in both, discordant
    pairs) and the same float formula as scipy. With few distinct values (calibrated confidences) that is
    two sorts and cumulative sums instead of scipy's merge-sort count; with more than ``max_cells`` cells,
    or NaN, scipy itself. NaN when every pair is tied in x or in y."""
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    n = x.size
    if n < 2 or np.isnan(x).any() or np.isnan(y).any():
        from scipy import stats

        return float(stats.kendalltau(x, y)[0])
    ux, cx = np.unique(x, return_inverse=True)
    uy, cy = np.unique(y, return_inverse=True)
    nx, ny = len(ux), len(uy)
    if nx * ny > max_cells:
        from scipy import stats

        return float(stats.kendalltau(x, y)[0])
    W = np.bincount(cx.ravel() * ny + cy.ravel(), minlength=nx * ny).reshape(nx, ny).astype(np.int64)

    def tied(c):  # pairs within groups of sizes c
        return int((c * (c - 1) // 2).sum())

    xtie, ytie, ntie = tied(W.sum(axis=1)), tied(W.sum(axis=0)), tied(W.ravel())
    tot = (n * (n - 1)) // 2
    if xtie == tot or ytie == tot:
        return float("nan")
    P = np.cumsum(W, axis=1) - W  # P[i, j]: points with x = ux[i], y < uy[j]
    Q = np.cumsum(P[::-1], axis=0)[::-1] - P  # Q[i, j]: points with x > ux[i], y < uy[j]
    dis = int((W * Q).sum())  # discordant pairs: one point above and left of the other
    tau = (tot - xtie - ytie + ntie - 2 * dis) / np.sqrt(tot - xtie) / np.sqrt(tot - ytie)
    return float(np.minimum(1.0, max(-1.0, tau)))


class PairModel:
    """Joint law of consecutive calibrated confidences (X_i, X_j)."""

    def __init__(self, copula: str = "gumbel"):
        if copula not in ("gumbel", "independence"):
            raise ValueError(f"unknown copula {copula!r}; use gumbel or independence")
        self.copula = copula

    def fit(self, xi, xj, mi: EndpointBetaMixture, mj: EndpointBetaMixture) -> "PairModel":
        from statsmodels.distributions.copula.api import GumbelCopula

        xi, xj = np.asarray(xi, float), np.asarray(xj, float)
        self.mi, self.mj = mi, mj
        cell_i, cell_j = _cells(xi, mi.m_, mi.M_), _cells(xj, mj.m_, mj.M_)
        self.p_ = np.bincount(3 * cell_i + cell_j, minlength=9).reshape(3, 3) / len(xi)
        # mixed cells: the interior variable given the other at an end point
        self.g_i_jmin = _CellLaw(xi[(cell_i == 1) & (cell_j == 0)], mi.m_, mi.M_)
        self.g_j_imin = _CellLaw(xj[(cell_i == 0) & (cell_j == 1)], mj.m_, mj.M_)
        self.g_i_jmax = _CellLaw(xi[(cell_i == 1) & (cell_j == 2)], mi.m_, mi.M_)
        self.g_j_imax = _CellLaw(xj[(cell_i == 2) & (cell_j == 1)], mj.m_, mj.M_)
        both = (cell_i == 1) & (cell_j == 1)
        self.n_interior_ = int(both.sum())
        self.tau_ = float("nan")
        self.theta_ = 1.0
        if self.copula == "gumbel" and self.n_interior_ >= 3:
            tau = kendall_tau_b(xi[both], xj[both])
            self.tau_ = float(tau) if np.isfinite(tau) else float("nan")
            if np.isfinite(tau) and tau > 0:
                self.theta_ = float(GumbelCopula().theta_from_tau(min(tau, 0.99)))
        self.cop_ = GumbelCopula(self.theta_) if self.theta_ > 1 else None
        return self

    def C(self, u, v):
        u, v = np.broadcast_arrays(np.asarray(u, float), np.asarray(v, float))
        if self.cop_ is None:
            return u * v
        uu = np.clip(np.stack([u, v], axis=-1), 1e-300, 1.0)
        out = self.cop_.cdf(uu.reshape(-1, 2)).reshape(u.shape)
        return np.where((u <= 0) | (v <= 0), 0.0, out)

    def joint_cdf(self, ti, tj):
        """P(X_i <= ti, X_j <= tj) for ti < M_i and tj < M_j (vectorised over tj)."""
        p = self.p_
        Fi = self.mi.cdf_interior(ti) * (ti > self.mi.m_)
        Fj = self.mj.cdf_interior(tj) * (np.asarray(tj) > self.mj.m_)
        return (p[0, 0]
                + p[1, 0] * self.g_i_jmin.cdf(ti) * (ti > self.mi.m_)
                + p[0, 1] * self.g_j_imin.cdf(tj) * (np.asarray(tj) > self.mj.m_)
                + p[1, 1] * self.C(Fi, Fj))

    def marginal_i_cdf(self, ti):
        """P(X_i <= ti) under this pair's joint law, for ti < M_i."""
        p = self.p_
        inside = ti > self.mi.m_
        return (p[0].sum()
                + inside * (p[1, 0] * self.g_i_jmin.cdf(ti) + p[1, 1] * self.mi.cdf_interior(ti)
                            + p[1, 2] * self.g_i_jmax.cdf(ti)))

    def joint_jmax(self, ti):
        """P(X_i <= ti, X_j = M_j) for ti < M_i."""
        return self.p_[0, 2] + self.p_[1, 2] * self.g_i_jmax.cdf(ti) * (ti > self.mi.m_)

    def sample(self, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
        """Draw n pairs from this joint law: a cell, then the laws of that cell (copula for interior-interior)."""
        cells = rng.choice(9, size=n, p=self.p_.ravel() / self.p_.sum())
        ci, cj = cells // 3, cells % 3
        xi = np.where(ci == 0, self.mi.m_, self.mi.M_).astype(float)
        xj = np.where(cj == 0, self.mj.m_, self.mj.M_).astype(float)
        for cell_i, cell_j, law, target in ((1, 0, self.g_i_jmin, "i"), (1, 2, self.g_i_jmax, "i"),
                                            (0, 1, self.g_j_imin, "j"), (2, 1, self.g_j_imax, "j")):
            idx = (ci == cell_i) & (cj == cell_j)
            if idx.any():
                (xi if target == "i" else xj)[idx] = law.rvs(int(idx.sum()), rng)
        both = (ci == 1) & (cj == 1)
        if both.any():
            m = int(both.sum())
            if self.cop_ is None:
                uv = rng.random((m, 2))
            else:
                uv = np.asarray(self.cop_.rvs(m, rng=rng))
            xi[both] = _inverse_cdf(self.mi, uv[:, 0])
            xj[both] = _inverse_cdf(self.mj, uv[:, 1])
        return xi, xj


# --------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------

_GAUSS = {}


def _gauss(n):
    if n not in _GAUSS:
        x, w = np.polynomial.legendre.leggauss(n)
        _GAUSS[n] = ((x + 1) / 2, w / 2)
    return _GAUSS[n]


class MarkovCopulaModel:
    """The Markov-copula model of k calibrated confidences. ``fit(confidence)`` with an (n, k) array."""

    def __init__(self, marginal_fit: str = "mle", copula: str = "gumbel", n_quad: int = 48,
                 integration: str = "exact", table_size: tuple[int, int] = (100, 20)):
        self.marginal_fit = marginal_fit
        self.copula = copula
        self.n_quad = n_quad
        self.integration = integration
        self.table_size = table_size

    def fit(self, confidence) -> "MarkovCopulaModel":
        X = np.asarray(confidence, float)
        if X.ndim != 2 or X.shape[1] < 2:
            raise ValueError("MarkovCopulaModel.fit needs an (n, k) array with k >= 2")
        self.k_ = X.shape[1]
        self.marginals_ = [EndpointBetaMixture(self.marginal_fit).fit(X[:, j]) for j in range(self.k_)]
        self.pairs_ = [PairModel(self.copula).fit(X[:, j - 1], X[:, j], self.marginals_[j - 1], self.marginals_[j])
                       for j in range(1, self.k_)]
        self.bounds_ = [(mg.m_, mg.M_) for mg in self.marginals_]
        if self.integration == "table":
            self._build_tables()
        elif self.integration != "exact":
            raise ValueError(f"unknown integration {self.integration!r}; use exact or table")
        return self

    # -- the release's tabulated expectations (integration="table") --------------------------
    def _build_tables(self):
        """Tabulate the correctness terms as the release does: E[X_1 1{X_1 > t}] on a 100-point grid
        (linear interpolation) and E[X_j 1{X_j > t_j} | X_{j-1} <= t_{j-1}] on a 20 x 20 grid with the
        release's piecewise-planar interpolation. Deferral probabilities stay exact; P(X_{j-1} <= t)
        comes from the marginal, as in the release."""
        n_uni, n_bi = self.table_size
        mg = self.marginals_[0]
        self._uni_grid = np.linspace(mg.m_, mg.M_, n_uni)
        integration, self.integration = self.integration, "exact"
        try:
            self._uni_tab = self._first(self._uni_grid)[0]
            self._uni_tab[0] += mg.m_ * mg.p_min_  # at t = min the release counts the mass at the minimum
            self._bi = [self._table_pair(pair, n_bi) for pair in self.pairs_]
        finally:
            self.integration = integration

    def _table_pair(self, pair, n_bi):
        gi = np.linspace(pair.mi.m_, pair.mi.M_, n_bi)
        gj = np.linspace(pair.mj.m_, pair.mj.M_, n_bi)
        ti = np.minimum(gi, np.nextafter(pair.mi.M_, -np.inf))
        pA = np.maximum(pair.mi.p_min_ + pair.mi.p_int_ * pair.mi.cdf_interior(ti) * (ti > pair.mi.m_), 1e-300)
        TI, TJ = np.meshgrid(ti, gj, indexing="ij")
        _, _, part = self._next(pair, TI.ravel(), TJ.ravel(), False)
        tab = (part.reshape(n_bi, n_bi)) / pA[:, None]
        _, _, part_last = self._next(pair, ti, None, True)
        tab[:, 0] = part_last / pA  # t_j = min: the full conditional expectation, min mass included
        return gi, gj, tab

    @staticmethod
    def _grid_pos(grid, t):
        """Fractional grid index of t; 0 on a degenerate grid (a model whose training confidences are
        all equal, e.g. a last model that answered every training query of a small subsample correctly)."""
        step = grid[1] - grid[0]
        if not step > 0:
            return np.zeros(np.shape(t))
        r = (np.clip(t, grid[0], grid[-1]) - grid[0]) / step  # finite unless t is NaN
        return np.where(np.isnan(r), 0.0, r)

    @staticmethod
    def _interp_uni(grid, tab, t):
        r = MarkovCopulaModel._grid_pos(grid, t)
        f = np.minimum(np.floor(r).astype(int), len(grid) - 1)
        w = r - f
        return np.where(f == len(grid) - 1, tab[f], w * tab[np.minimum(f + 1, len(grid) - 1)] + (1 - w) * tab[f])

    @staticmethod
    def _interp_bi(gi, gj, tab, ti, tj):
        """The release's interpolation: base + w0 * (step along t_i) + w1 * (step along t_j)."""
        r0 = MarkovCopulaModel._grid_pos(gi, ti)
        r1 = MarkovCopulaModel._grid_pos(gj, tj)
        f0 = np.minimum(np.floor(r0).astype(int), len(gi) - 1)
        f1 = np.minimum(np.floor(r1).astype(int), len(gj) - 1)
        w0, w1 = r0 - f0, r1 - f1
        # np.isclose(w, 0.0) on finite w, without its overhead (this runs at every optimiser step)
        i0 = np.minimum(np.where(np.abs(w0) <= 1e-8, f0, f0 + 1), len(gi) - 1)
        i1 = np.minimum(np.where(np.abs(w1) <= 1e-8, f1, f1 + 1), len(gj) - 1)
        base = tab[f0, f1]
        return base + w0 * (tab[i0, f1] - base) + w1 * (tab[f0, i1] - base)

    # -- closed forms (vectorised over a batch of threshold vectors) ----------------------------
    def _first(self, t):
        """E[X_1 1{X_1 > t}] and P(X_1 <= t) for m < t < M; t has shape (B,)."""
        mg = self.marginals_[0]
        Ft = mg.p_min_ + mg.p_int_ * mg.cdf_interior(t) * (t > mg.m_)
        if self.integration == "table":
            return self._interp_uni(self._uni_grid, self._uni_tab, t), Ft
        nodes, w = _gauss(self.n_quad)
        x = t[:, None] + (mg.M_ - t)[:, None] * nodes[None, :]
        integral = (mg.M_ - t) * ((mg.p_min_ + mg.p_int_ * mg.cdf_interior(x)) @ w)
        partial = mg.M_ * (mg.p_min_ + mg.p_int_) - t * Ft - integral + mg.M_ * mg.p_max_
        return partial, Ft

    def _next(self, pair: PairModel, ti, tj, last: bool):
        """For A = {X_i <= ti}: P(A), P(A, X_j <= tj) and E[X_j 1{X_j > tj}, A] (for the last model
        E[X_j 1{A}]), by parts: int_(t,M) x dH = M H(M-) - t H(t) - int_t^M H dx. Shapes (B,)."""
        mj = pair.mj
        pA = pair.marginal_i_cdf(ti)
        lo = np.full_like(ti, mj.m_) if last else tj
        nodes, w = _gauss(self.n_quad)
        x = lo[:, None] + (mj.M_ - lo)[:, None] * nodes[None, :]
        ends = np.column_stack([np.full_like(ti, mj.M_), lo])
        H = pair.joint_cdf(ti[:, None], np.concatenate([x, ends], axis=1))
        integral = (mj.M_ - lo) * (H[:, :-2] @ w)
        H_M, Ht = H[:, -2], H[:, -1]
        if last:  # include the mass at the minimum: integrate from m_j-
            return pA, None, mj.M_ * H_M - integral + mj.M_ * pair.joint_jmax(ti)
        return pA, Ht, mj.M_ * H_M - tj * Ht - integral + mj.M_ * pair.joint_jmax(ti)

    def expected_batch(self, T, costs) -> dict:
        """Vectorised closed forms for threshold vectors T of shape (B, k-1): arrays ``correct`` (B,),
        ``cost`` (B,), ``deferral`` (B, k-1) with the conditional deferral probabilities d_j, and
        ``shares`` (B, k). ``costs``: per-model (uncumulated) mean costs; stopping at model j costs
        the sum of the first j. Thresholds must lie strictly inside (min c_j, max c_j)."""
        T = np.atleast_2d(np.asarray(T, float))
        k = self.k_
        if T.shape[1] != k - 1:
            raise ValueError(f"need {k - 1} thresholds, got {T.shape[1]}")
        C = np.cumsum(np.asarray(costs, float))
        partial, d1 = self._first(T[:, 0])
        e_correct = partial.copy()
        D = d1.copy()
        shares = [1.0 - d1]
        e_cost = (1.0 - d1) * C[0]
        ds = [d1]
        for j in range(1, k):
            last = j == k - 1
            pair = self.pairs_[j - 1]
            ti = T[:, j - 1]
            tj = None if last else T[:, j]
            if self.integration == "table":
                gi, gj, tab = self._bi[j - 1]
                pA = pair.mi.p_min_ + pair.mi.p_int_ * pair.mi.cdf_interior(ti) * (ti > pair.mi.m_)
                Ht = None if last else pair.joint_cdf(ti, tj)
                cond = self._interp_bi(gi, gj, tab, ti, np.full_like(ti, gj[0]) if last else tj)
                pA = np.maximum(pA, 1e-300)
                part = pA * cond
            else:
                pA, Ht, part = self._next(pair, ti, tj, last)
                pA = np.maximum(pA, 1e-300)
            e_correct = e_correct + D * part / pA
            if last:
                e_cost = e_cost + D * C[j]
                shares.append(D)
            else:
                d = np.clip(Ht / pA, 0.0, 1.0)
                e_cost = e_cost + D * (1.0 - d) * C[j]
                shares.append(D * (1.0 - d))
                ds.append(d)
                D = D * d
        return {"correct": e_correct, "cost": e_cost, "deferral": np.column_stack(ds),
                "shares": np.column_stack(shares)}

    def expected(self, thresholds, costs) -> dict:
        """The closed forms for one threshold vector: floats ``correct``, ``cost`` and lists ``deferral``
        (conditional deferral probabilities d_j) and ``shares`` (probability each model answers)."""
        e = self.expected_batch(np.asarray(thresholds, float).reshape(1, -1), costs)
        return {"correct": float(e["correct"][0]), "cost": float(e["cost"][0]),
                "deferral": e["deferral"][0].tolist(), "shares": e["shares"][0].tolist()}

    # -- Monte Carlo of the same fitted model (checks the closed forms) ----------------------
    def monte_carlo(self, thresholds, costs, n: int = 200_000, rng=None) -> dict:
        """E[correct] and E[cost] by simulation: the first model from its marginal, each step's
        deferral and conditional correctness from samples of its pair law (the Markov assumption).
        ``thresholds``: one vector (floats returned) or a (B, k-1) batch sharing one set of draws
        (arrays returned)."""
        rng = np.random.default_rng(rng)
        T = np.atleast_2d(np.asarray(thresholds, float))
        C = np.cumsum(np.asarray(costs, float))
        k = self.k_
        x1 = self.marginals_[0].rvs(n, rng)
        pairs = [self.pairs_[j - 1].sample(n, rng) for j in range(1, k)]
        correct, cost = np.empty(len(T)), np.empty(len(T))
        for b, t in enumerate(T):
            d = np.mean(x1 <= t[0])
            e_correct = np.mean(x1 * (x1 > t[0]))
            e_cost = (1 - d) * C[0]
            D = d
            for j in range(1, k):
                xi, xj = pairs[j - 1]
                A = xi <= t[j - 1]
                pA = max(A.mean(), 1e-300)
                if j == k - 1:
                    e_correct += D * np.mean(xj * A) / pA
                    e_cost += D * C[j]
                else:
                    dj = np.mean(A & (xj <= t[j])) / pA
                    e_correct += D * np.mean(xj * (xj > t[j]) * A) / pA
                    e_cost += D * (1 - dj) * C[j]
                    D *= dj
            correct[b], cost[b] = e_correct, e_cost
        if np.ndim(thresholds) < 2:
            return {"correct": float(correct[0]), "cost": float(cost[0])}
        return {"correct": correct, "cost": cost}

    def describe(self) -> dict:
        """Fitted parameters, JSON-able."""
        return {
            "marginals": [
                {"min": mg.m_, "max": mg.M_, "p_min": mg.p_min_, "p_max": mg.p_max_,
                 "mixture": list(map(float, mg.interior_.params_))}
                for mg in self.marginals_
            ],
            "pairs": [
                {"cells": pr.p_.round(6).tolist(), "kendall_tau": pr.tau_, "gumbel_theta": pr.theta_,
                 "n_interior": pr.n_interior_}
                for pr in self.pairs_
            ],
        }


def _inverse_cdf(mg: EndpointBetaMixture, v):
    """Quantile of the interior law by bisection on the mixture CDF."""
    lo, hi = np.zeros_like(v), np.ones_like(v)
    for _ in range(50):
        mid = (lo + hi) / 2
        c = mg.interior_.cdf(mid)
        lo = np.where(c < v, mid, lo)
        hi = np.where(c < v, hi, mid)
    return mg.m_ + (mg.M_ - mg.m_) * (lo + hi) / 2


# --------------------------------------------------------------------------------------------
# The tuner
# --------------------------------------------------------------------------------------------

def fill_gaps(thresholds: list, confidence: np.ndarray, max_gap: float = 0.1, max_points: int = 500) -> list:
    """Insert midpoints between consecutive threshold vectors while, for some model, more than
    ``max_gap`` of the training confidences lie strictly between them."""
    pts = [np.asarray(t, float) for t in thresholds]
    n = len(confidence)
    cols = [np.sort(confidence[:, j]) for j in range(confidence.shape[1] - 1)]  # one sort, then O(log n) per check

    def mass_between(lo, hi):
        # share of training confidences strictly between lo and hi, the largest over the models
        return max((max(np.searchsorted(c, h, "left") - np.searchsorted(c, lo_, "right"), 0) / n
                    for c, lo_, h in zip(cols, lo, hi)), default=0.0)

    i = 0
    while i < len(pts) - 1 and len(pts) < max_points:
        a, b = pts[i], pts[i + 1]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        mass = mass_between(lo, hi)
        if mass > max_gap:
            pts.insert(i + 1, (a + b) / 2)
        else:
            i += 1
    return pts


@register("markov-copula")
class MarkovCopulaTuner(Tuner):
    """Rational tuning: fit the Markov-copula model on train, then minimise
    (1 - E[correct]) + lambda E[cost] with L-BFGS-B for a path of lambda values.

    Parameters follow the release (method doc, section 5): ``lambdas`` start values, then the last is
    multiplied by ``growth`` until the expected cost is within ``stop_multiplier`` of the reference
    model's cost (``stop_reference``: "cascade" = the cascade's first model; "chain" = the given
    ``reference_cost``, the release's choice of the chain's first model), at most ``max_steps`` times
    and while lambda < ``lambda_max``. ``start``: "midpoint" of the box (the release) or "warm"
    (previous solution). ``max_gap``: gap filling on training confidences. ``integration``: "table"
    (default, the release's tabulated expectations, interpolated) or "exact" (closed form at every
    step); see docs/tuner.md for why the default is "table".
    """

    parameter_constraints = {
        "lambdas": LAMBDAS, "growth": Interval(float, 1, 1e6, open="lo"), "max_steps": Interval(int, 0, 10000),
        "lambda_max": Interval(float, 0, 1e300, open="lo"), "stop_multiplier": Interval(float, 0, 1e6, open="lo"),
        "stop_reference": Options(("cascade", "chain")), "reference_cost": Interval(float, 0, None, none=True),
        "max_gap": Interval(float, 0, 1), "eps": Interval(float, 0, 0.5, open="hi"),
        "start": Options(("midpoint", "warm")), "marginal_fit": Options(("mle", "em")),
        "copula": Options(("gumbel", "independence")), "n_quad": Interval(int, 2, 4096),
        "integration": Options(("exact", "table")),
    }

    @classmethod
    def memory_need(cls, n, k, params=None):
        n_quad = int((params or {}).get("n_quad", 48))
        # the closed forms run on batches of up to 500 threshold vectors (fill_gaps) x n_quad nodes
        return 8.0 * (16 * n * k + 8 * 500 * k * n_quad), "lower n_quad"

    def __init__(self, lambdas=(0.0, 1e-10, 1e-8, 1e-6), growth: float = 2.0, max_steps: int = 24,
                 lambda_max: float = 1000.0, stop_multiplier: float = 1.25, stop_reference: str = "cascade",
                 reference_cost: float | None = None, max_gap: float = 0.1, eps: float = 1e-3,
                 start: str = "midpoint", marginal_fit: str = "mle", copula: str = "gumbel", n_quad: int = 48,
                 integration: str = "table"):
        self.lambdas = tuple(lambdas)
        self.growth = growth
        self.max_steps = max_steps
        self.lambda_max = lambda_max
        self.stop_multiplier = stop_multiplier
        self.stop_reference = stop_reference
        self.reference_cost = reference_cost
        self.max_gap = max_gap
        self.eps = eps
        self.start = start
        self.marginal_fit = marginal_fit
        self.copula = copula
        self.n_quad = n_quad
        self.integration = integration

    def fit(self, train):
        import time

        from scipy import optimize

        t0 = time.perf_counter()
        conf = train.confidence
        self.model_ = MarkovCopulaModel(self.marginal_fit, self.copula, self.n_quad, self.integration).fit(conf)
        self.costs_ = train.cost.mean(axis=0)
        fit_s = time.perf_counter() - t0
        bounds = threshold_bounds(conf, self.eps)
        mid = np.array([(a + b) / 2 for a, b in bounds])
        if self.stop_reference == "cascade":
            ref = self.costs_[0]
        elif self.stop_reference == "chain":
            ref = self.costs_[0] if self.reference_cost is None else self.reference_cost
        else:
            raise ValueError(f"unknown stop_reference {self.stop_reference!r}; use cascade or chain")

        lower = np.array([a for a, _ in bounds])
        upper = np.array([b for _, b in bounds])

        def solve(lam, x0):
            def fun_and_grad(t):
                # forward differences with scipy's L-BFGS-B default step (1e-8, flipped at an upper
                # bound), evaluated in one vectorised batch instead of k separate calls
                h = np.full_like(t, 1e-8)
                h = np.where((t + h > upper) & (t - h >= lower), -h, h)
                X = np.vstack([t, t + np.diag(h)])
                e = self.model_.expected_batch(X, self.costs_)
                f = (1.0 - e["correct"]) + lam * e["cost"]
                dx = (t + h) - t
                return f[0], (f[1:] - f[0]) / dx

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = optimize.minimize(fun_and_grad, x0, jac=True, method="L-BFGS-B", bounds=bounds)
            return res.x

        path, lams = [], []
        x = mid
        for lam in self.lambdas:
            x = solve(lam, mid if self.start == "midpoint" else x)
            path.append(x)
            lams.append(lam)
        lam = self.lambdas[-1]
        steps = 0
        while (self.model_.expected(path[-1], self.costs_)["cost"] > self.stop_multiplier * ref
               and lam < self.lambda_max and steps < self.max_steps):
            lam *= self.growth
            steps += 1
            x = solve(lam, mid if self.start == "midpoint" else x)
            path.append(x)
            lams.append(lam)
        n_solved = len(path)
        path = fill_gaps(path, conf, self.max_gap)
        # the predictions reported for the curve come from the exact closed forms, whichever integration
        # drove the optimiser: the release's interpolated tables overestimate E[correct] near the top of
        # the box (up to E[correct] > 1 where calibrated confidences pile up just below 1)
        integration, self.model_.integration = self.model_.integration, "exact"
        try:
            preds = self.model_.expected_batch(np.array(path), self.costs_)
        finally:
            self.model_.integration = integration
        self.thresholds_ = path
        self.lambdas_ = lams
        self.train_error_ = 1.0 - preds["correct"]
        self.train_cost_ = preds["cost"]
        self.diagnostics_ = {
            "fit_seconds": fit_s,
            "tune_seconds": time.perf_counter() - t0 - fit_s,
            "n_lambdas": n_solved,
            "n_filled": len(path) - n_solved,
            "model": self.model_.describe(),
        }
        return self
