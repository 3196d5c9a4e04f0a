"""Joint: the cascade's integrals for a Markov chain of arbitrary pair copulas with given marginals.

The model. Each model j has a calibrated confidence X_j (= P(correct | signal)) with marginal CDF F_j,
which may have atoms (ties, point masses at the end points). Write X_j = Q_j(V_j) with V_j uniform on
(0, 1) (the distributional transform, Q_j the quantile function); (V_1, ..., V_k) is a Markov chain
whose consecutive pairs (V_j, V_{j+1}) have copula C_j. For an atom x of X_j, V_j runs over the whole
interval [F_j(x-), F_j(x)], so threshold events map to u-space exactly:

    X_j > t   <=>  V_j > F_j(t)          X_j < a  <=>  V_j < F_j(a-)

Cascade semantics with both thresholds. At stage j (the first reached), with an upper (deferral)
threshold t_j and an optional lower (abstention) threshold a_j: the model answers when X_j > t_j,
abstains when X_j < a_j, and defers to the next model when a_j <= X_j <= t_j (the box event). The last
model has no upper threshold (it answers unless it abstains). A lower threshold above the upper one is
clipped to it (answering wins). Without lower thresholds this is the cascade of docs/markov-copula.md:
model j answers when c_j > t_j.

The numerical method (forward recursion on a grid in u-space). Each V_j's unit interval is cut into
cells (denser near 0 and 1, and with every atom's interval boundaries as edges, so thresholds never
cut an atom). The transition matrix of pair j holds the copula volumes of the cell rectangles,
P_j[a, b] = P(V_j in cell a, V_{j+1} in cell b), computed from the h-function
h(u, v) = P(V_{j+1} <= v | V_j = u) with Gauss-Legendre nodes in each cell of V_j (h-functions are
bounded, so tail-dependent families with singular densities at the corners are handled). The state at
stage j is the vector of masses P(reach stage j, V_j in cell a); the part of it inside the box
[lo_j, hi_j] (cells cut by a threshold contribute their covered fraction) times P_j / width is the next
state. E[X_j; V_j in (s, 1]] uses the tabulated antiderivative of the quantile function,
IQ_j(s) = int_0^s Q_j(v) dv. Everything is vectorised over a batch of threshold vectors: one stage is a
(B, N_j) x (N_j, N_{j+1}) product. The error is O(cell width) in partially covered cells only; the
tests check the results against Monte Carlo from :meth:`MarkovJoint.sample`.

API (stable):

``MarkovJoint(margins, copulas, n_cells=96, n_nodes=4, n_sub=16, correctness=None)``
    ``margins``: k objects with vectorised ``cdf(x)`` (right-continuous), ``cdf_left(x)`` (F(x-)) and
    ``ppf(u)`` (quantile, inf{x: F(x) >= u}); optionally ``atoms_u()`` -> array of u-values at atom
    boundaries (F(x-) and F(x) of every atom) to be used as cell edges. ``copulas``: k-1 pair copulas
    of (V_j, V_{j+1}) with ``hfunc1(u)`` on an (n, 2) array (P(V_{j+1} <= u[:, 1] | V_j = u[:, 0]));
    ``pyvinecopulib.Bicop`` qualifies (one fitted with discrete ``var_types`` is evaluated as the
    continuous copula of the distributional transforms). For sampling also ``hinv1``.
    ``correctness`` (optional): k entries, the first None; entry j (>= 1) None or a vectorised function
    g_j(x_prev, x) = P(model j correct | X_{j-1} = x_prev, X_j = x) for a model whose correctness
    depends on the previous model's confidence too. None (default): P(correct) = X_j, the calibrated
    confidence. g_j / X_j is taken constant within a cell pair (X_j itself is integrated exactly).
``.to_u(upper=None, lower=None)``
    x-space thresholds -> u-space: upper -> F_j(t_j), lower -> F_j(a_j-). Arrays of shape (B, k-1)
    for upper and (B, k) for lower (NaN / -inf = no lower threshold).
``.evaluate(upper, lower=None, space="x")`` -> dict of (B, k) arrays
    ``reach`` P(stage j is reached), ``answer`` P(model j answers), ``answer_correct``
    E[X_j; model j answers] (expected correctness contributed by stage j, as X_j = P(correct); with
    ``correctness``, E[g_j(X_{j-1}, X_j); model j answers]), ``abstain`` P(stage j abstains),
    ``abstain_correct`` E[X_j; stage j abstains] (likewise). ``upper``: (B, k-1)
    (or (k-1,)); ``lower``: None, or (B, k) / (k,) with -inf or NaN for "no lower threshold". With
    ``space="u"`` both are already u-space values (lower/upper box ends of V_j).
``.expected(upper, costs, lower=None, space="x")`` -> dict
    ``correct`` (B,) = sum_j answer_correct, ``answered`` (B,) = sum_j answer, ``cost`` (B,) with
    ``costs`` the k per-model (uncumulated) costs: a query that stops at stage j (answering or
    abstaining) pays costs_1 + ... + costs_j; ``deferral`` (B, k-1) conditional deferral probabilities
    P(defer at j | reach j); ``shares`` (B, k) = answer; ``abstain`` (B, k).
``.sample(n, rng)`` -> (n, k) draws of X from the same model (Monte Carlo checks).
``empirical(X, upper, lower=None, correctness=None)``
    the same quantities as ``evaluate`` measured on data X (n, k) with the same semantics (checks
    against samples or records).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MarkovJoint", "DVineJoint", "empirical", "default_edges"]


def default_edges(n_cells: int, extra=()) -> np.ndarray:
    """Cell edges on [0, 1]: half uniform, half Chebyshev spacing (denser near 0 and 1), plus ``extra``
    edges (atom boundaries); edges closer than 1e-9 are merged."""
    i = np.arange(n_cells + 1) / n_cells
    g = 0.5 * i + 0.5 * (1.0 - np.cos(np.pi * i)) / 2.0
    extra = np.clip(np.asarray(list(extra), float), 0.0, 1.0)
    g = np.unique(np.concatenate([g, extra, [0.0, 1.0]]))
    keep = np.concatenate([[True], np.diff(g) > 1e-9])
    g = g[keep]
    g[-1] = 1.0
    return g


def _continuous(cop):
    """A pair copula evaluated as a continuous copula (pyvinecopulib Bicop fitted with discrete margins)."""
    vt = getattr(cop, "var_types", None)
    if vt is not None and any(v != "c" for v in vt):
        return cop.with_var_types(["c", "c"])
    return cop


class MarkovJoint:
    """Joint law of the cascade's calibrated confidences: marginals + a Markov chain of pair copulas."""

    def __init__(self, margins, copulas, n_cells: int = 96, n_nodes: int = 4, n_sub: int = 16, correctness=None):
        if len(copulas) != len(margins) - 1:
            raise ValueError(f"need {len(margins) - 1} pair copulas for {len(margins)} margins, got {len(copulas)}")
        if correctness is not None and (len(correctness) != len(margins) or correctness[0] is not None):
            raise ValueError(f"correctness needs {len(margins)} entries, the first None (model 1 has no predecessor)")
        self.margins = list(margins)
        self.copulas = [_continuous(c) for c in copulas]
        self.k = len(self.margins)
        self.n_cells = n_cells
        self.n_nodes = n_nodes
        self.edges = []
        for mg in self.margins:
            extra = mg.atoms_u() if hasattr(mg, "atoms_u") else ()
            self.edges.append(default_edges(n_cells, extra))
        self.widths = [np.diff(g) for g in self.edges]
        # IQ_j on a refined grid: each cell split into n_sub pieces, Q at their midpoints
        self._iq_grid, self._iq = [], []
        for mg, g in zip(self.margins, self.edges):
            fine = (g[:-1, None] + np.diff(g)[:, None] * (np.arange(n_sub) / n_sub)[None, :]).ravel()
            fine = np.concatenate([fine, [1.0]])
            mids = (fine[:-1] + fine[1:]) / 2
            q = np.asarray(mg.ppf(mids), float)
            iq = np.concatenate([[0.0], np.cumsum(q * np.diff(fine))])
            self._iq_grid.append(fine)
            self._iq.append(iq)
        self._iq_edges = [self._iq_at(j, g) for j, g in enumerate(self.edges)]
        # transition matrices, conditional on the row cell: K_j[a, b] = P(V_{j+1} in b | V_j in a)
        x, w = np.polynomial.legendre.leggauss(n_nodes)
        x, w = (x + 1) / 2, w / 2
        self.kernels = []
        for j, cop in enumerate(self.copulas):
            gi, gj = self.edges[j], self.edges[j + 1]
            nodes = (gi[:-1, None] + np.diff(gi)[:, None] * x[None, :]).ravel()  # (Ni * n_nodes,)
            U = np.repeat(nodes, len(gj))
            Vv = np.tile(gj, len(nodes))
            H = np.asarray(cop.hfunc1(np.column_stack([U, Vv])), float).reshape(len(nodes), len(gj))
            H[:, 0], H[:, -1] = 0.0, 1.0
            H = np.maximum.accumulate(np.clip(H, 0.0, 1.0), axis=1)  # monotone in v
            dH = np.diff(H, axis=1).reshape(len(gi) - 1, n_nodes, len(gj) - 1)
            K = np.einsum("anb,n->ab", dH, w)  # rows sum to 1
            self.kernels.append(K / K.sum(axis=1, keepdims=True))
        # correctness relative to the calibrated confidence, rho_j[a, b] = g_j(x_a, x_b) / x_b at the cells'
        # midpoints (x_a of the previous model), folded into the kernel that leads to stage j
        self.correctness = list(correctness) if correctness is not None else [None] * self.k
        self.weighted_kernels = [None] * self.k
        self.rho = [None] * self.k
        for j in range(1, self.k):
            g = self.correctness[j]
            if g is None:
                continue
            xa = np.asarray(self.margins[j - 1].ppf((self.edges[j - 1][:-1] + self.edges[j - 1][1:]) / 2), float)
            xb = np.asarray(self.margins[j].ppf((self.edges[j][:-1] + self.edges[j][1:]) / 2), float)
            G = np.asarray(g(xa[:, None] * np.ones((1, len(xb))), np.ones((len(xa), 1)) * xb[None, :]), float)
            rho = np.clip(G, 0.0, 1.0) / np.maximum(xb[None, :], 1e-12)
            self.rho[j] = rho
            self.weighted_kernels[j] = self.kernels[j - 1] * rho

    # -- thresholds ---------------------------------------------------------------------------
    def to_u(self, upper=None, lower=None):
        """x-space thresholds -> u-space: upper t_j -> F_j(t_j), lower a_j -> F_j(a_j-)."""
        out_u = out_l = None
        if upper is not None:
            U = np.atleast_2d(np.asarray(upper, float))
            out_u = np.column_stack([np.clip(self.margins[j].cdf(U[:, j]), 0.0, 1.0) for j in range(U.shape[1])])
        if lower is not None:
            L = np.atleast_2d(np.asarray(lower, float))
            cols = []
            for j in range(L.shape[1]):
                a = L[:, j]
                ok = np.isfinite(a)
                v = np.zeros(len(a))
                if ok.any():
                    v[ok] = np.clip(self.margins[j].cdf_left(a[ok]), 0.0, 1.0)
                cols.append(v)
            out_l = np.column_stack(cols)
        return out_u, out_l

    def _prepare(self, upper, lower, space):
        U = np.atleast_2d(np.asarray(upper, float))
        k = self.k
        if U.shape[1] != k - 1:
            raise ValueError(f"need {k - 1} upper thresholds, got {U.shape[1]}")
        B = U.shape[0]
        if lower is not None:
            L = np.atleast_2d(np.asarray(lower, float))
            if L.shape[1] != k:
                raise ValueError(f"need {k} lower thresholds (one per model; -inf or NaN for none), got {L.shape[1]}")
            L = np.broadcast_to(L, (B, k)).copy()
        if space == "x":
            U, L = self.to_u(U, lower if lower is None else L)
        elif space != "u":
            raise ValueError(f"unknown threshold space {space!r}; use x or u")
        elif lower is not None:
            L = np.where(np.isfinite(L), L, 0.0)
        lo = np.zeros((B, k)) if lower is None else np.clip(L, 0.0, 1.0)
        hi = np.column_stack([np.clip(U, 0.0, 1.0), lo[:, -1]])  # the last model defers nothing
        lo = np.minimum(lo, hi)
        return hi, lo

    def _iq_at(self, j, s):
        return np.interp(s, self._iq_grid[j], self._iq[j])

    # -- the forward recursion ----------------------------------------------------------------
    def _stage(self, j, mass, wmass, hi, lo, out):
        """Fill stage j's outputs from ``mass`` (B, N_j) = P(reach j, V_j in cell) and ``wmass`` (the same
        weighted by rho_j, or None); return the covered fraction of each cell by the deferral box."""
        g, w = self.edges[j], self.widths[j]
        n_j = len(w)
        rows = np.arange(mass.shape[0])
        dens = mass / w[None, :]
        wdens = dens if wmass is None else wmass / w[None, :]
        iqe = self._iq_edges[j]
        out["reach"][:, j] = mass.sum(axis=1)
        # each threshold cuts one cell: whole cells below it (cumulative sums) plus the cut part
        cm = np.cumsum(mass, axis=1)
        cw = np.cumsum(wdens * np.diff(iqe)[None, :], axis=1)
        below = {}
        for name, s_ in (("hi", hi[:, j]), ("lo", lo[:, j])):
            c = np.clip(np.searchsorted(g, s_, side="right") - 1, 0, n_j - 1)  # the cell holding s_
            s_ = np.clip(s_, g[c], g[c + 1])
            below[name] = (cm[rows, c] - dens[rows, c] * (g[c + 1] - s_),  # mass below s_
                           cw[rows, c] - wdens[rows, c] * (iqe[c + 1] - self._iq_at(j, s_)))
        out["answer"][:, j] = cm[:, -1] - below["hi"][0]
        out["answer_correct"][:, j] = cw[:, -1] - below["hi"][1]
        out["abstain"][:, j] = below["lo"][0]
        out["abstain_correct"][:, j] = below["lo"][1]
        return (np.clip(hi[:, j:j + 1], g[None, :-1], g[None, 1:])
                - np.clip(lo[:, j:j + 1], g[None, :-1], g[None, 1:])) / w[None, :]

    @staticmethod
    def _empty(B, k):
        return {name: np.zeros((B, k)) for name in ("reach", "answer", "answer_correct", "abstain", "abstain_correct")}

    def evaluate(self, upper, lower=None, space: str = "x") -> dict:
        hi, lo = self._prepare(upper, lower, space)
        B, k = hi.shape
        out = self._empty(B, k)
        mass = np.broadcast_to(self.widths[0], (B, len(self.widths[0])))  # P(reach 1, V_1 in cell a)
        wmass = None  # with a correctness function: E[rho; reach j, V_j in cell a]
        for j in range(k):
            frac = self._stage(j, mass, wmass, hi, lo, out)
            if j < k - 1:
                deferred = mass * frac
                mass = deferred @ self.kernels[j]
                wk = self.weighted_kernels[j + 1]
                wmass = None if wk is None else deferred @ wk
        return out

    def expected(self, upper, costs, lower=None, space: str = "x") -> dict:
        e = self.evaluate(upper, lower, space)
        C = np.cumsum(np.asarray(costs, float))
        stop = e["answer"] + e["abstain"]
        reach = np.maximum(e["reach"], 1e-300)
        deferral = np.clip(1.0 - stop[:, :-1] / reach[:, :-1], 0.0, 1.0)
        return {"correct": e["answer_correct"].sum(axis=1), "answered": e["answer"].sum(axis=1),
                "cost": stop @ C, "deferral": deferral, "shares": e["answer"], "abstain": e["abstain"]}

    # -- Monte Carlo ----------------------------------------------------------------------------
    def sample(self, n: int, rng=None) -> np.ndarray:
        """n draws of (X_1, ..., X_k): V_1 uniform, V_{j+1} = h^{-1}(W | V_j), X_j = Q_j(V_j)."""
        rng = np.random.default_rng(rng)
        V = np.empty((n, self.k))
        V[:, 0] = rng.random(n)
        for j, cop in enumerate(self.copulas):
            W = rng.random(n)
            V[:, j + 1] = np.clip(cop.hinv1(np.column_stack([V[:, j], W])), 0.0, 1.0)
        return np.column_stack([np.asarray(self.margins[j].ppf(V[:, j]), float) for j in range(self.k)])


class DVineJoint(MarkovJoint):
    """A D-vine along the cascade order truncated after its second tree: V_{j+1} depends on (V_{j-1}, V_j)
    (a second-order Markov chain). ``copulas`` are the first tree's pair copulas (V_j, V_{j+1});
    ``copulas2`` (k-2 entries) the second tree's, between the conditional pseudo-observations
    U_{j-1|j} = P(V_{j-1} <= v_{j-1} | V_j) and U_{j+1|j} = P(V_{j+1} <= v_{j+1} | V_j) (None =
    independence: that step is Markov). The state at stage j is the (B, N_{j-1}, N_j) array of masses
    P(reach j, V_{j-1} in cell a, V_j in cell b); a step contracts it with
    T_j[a, b, c] = P(V_{j+1} in cell c | V_{j-1} in cell a, V_j in cell b), computed from the h-functions
    at ``n_nodes2`` x ``n_nodes2`` Gauss-Legendre nodes per cell pair weighted by the first tree's copula
    density. Same API as :class:`MarkovJoint`; a coarser default grid (the state is quadratic)."""

    def __init__(self, margins, copulas, copulas2, n_cells: int = 48, n_nodes: int = 4, n_nodes2: int = 2,
                 n_sub: int = 16, correctness=None):
        super().__init__(margins, copulas, n_cells=n_cells, n_nodes=n_nodes, n_sub=n_sub, correctness=correctness)
        if len(copulas2) != max(self.k - 2, 0):
            raise ValueError(f"need {max(self.k - 2, 0)} second-tree copulas for {self.k} margins, got {len(copulas2)}")
        self.copulas2 = [None if c is None else _continuous(c) for c in copulas2]
        x, w = np.polynomial.legendre.leggauss(n_nodes2)
        x, w = (x + 1) / 2, w / 2
        self.tensors = [None] * self.k  # tensors[j]: the step from stage j to j + 1 (j >= 1)
        for j in range(1, self.k - 1):
            cop2 = self.copulas2[j - 1]
            if cop2 is None:
                continue
            ga, gb, gc = self.edges[j - 1], self.edges[j], self.edges[j + 1]
            na, nb, nc = len(ga) - 1, len(gb) - 1, len(gc) - 1
            xa = (ga[:-1, None] + np.diff(ga)[:, None] * x[None, :]).ravel()  # (na * m,)
            yb = (gb[:-1, None] + np.diff(gb)[:, None] * x[None, :]).ravel()  # (nb * m,)
            XA, YB = np.meshgrid(xa, yb, indexing="ij")
            pair = np.column_stack([XA.ravel(), YB.ravel()])
            dens = np.asarray(self.copulas[j - 1].pdf(np.clip(pair, 1e-10, 1 - 1e-10)), float)
            cond_prev = np.asarray(self.copulas[j - 1].hfunc2(pair), float)  # U_{j-1|j}
            Y = np.repeat(yb, len(gc))
            E = np.tile(gc, len(yb))
            cond_next = np.asarray(self.copulas[j].hfunc1(np.column_stack([Y, E])), float).reshape(len(yb), len(gc))
            A = np.repeat(cond_prev, len(gc))  # (na*m * nb*m * (nc+1),)
            Bv = np.tile(cond_next, (len(xa), 1)).ravel()
            F = np.asarray(cop2.hfunc1(np.column_stack([A, Bv])), float).reshape(len(xa), len(yb), len(gc))
            F[..., 0], F[..., -1] = 0.0, 1.0
            F = np.maximum.accumulate(np.clip(F, 0.0, 1.0), axis=2)
            dF = np.diff(F, axis=2).reshape(na, len(x), nb, len(x), nc)
            wt = (w[:, None] * w[None, :])[None, :, None, :] * dens.reshape(na, len(x), nb, len(x))
            wt = np.where(np.isfinite(wt), wt, 0.0)
            wt = wt / np.maximum(wt.sum(axis=(1, 3), keepdims=True), 1e-300)
            T = np.einsum("apbq,apbqc->abc", wt, dF)
            self.tensors[j] = T / np.maximum(T.sum(axis=2, keepdims=True), 1e-300)

    def evaluate(self, upper, lower=None, space: str = "x") -> dict:
        hi, lo = self._prepare(upper, lower, space)
        B, k = hi.shape
        out = self._empty(B, k)
        mass = np.broadcast_to(self.widths[0], (B, len(self.widths[0])))
        frac = self._stage(0, mass, None, hi, lo, out)
        S = (mass * frac)[:, :, None] * self.kernels[0][None]  # (B, N_1, N_2): reach 2, V_1 cell, V_2 cell
        for j in range(1, k):
            mass = S.sum(axis=1)
            wmass = None if self.rho[j] is None else np.einsum("xab,ab->xb", S, self.rho[j])
            frac = self._stage(j, mass, wmass, hi, lo, out)
            if j < k - 1:
                S2 = S * frac[:, None, :]
                if self.tensors[j] is None:
                    S = S2.sum(axis=1)[:, :, None] * self.kernels[j][None]
                else:  # S'[x, b, c] = sum_a S2[x, a, b] T[a, b, c], one matrix product per cell b
                    S = np.matmul(S2.transpose(2, 0, 1), self.tensors[j].transpose(1, 0, 2)).transpose(1, 0, 2)
        return out

    def sample(self, n: int, rng=None) -> np.ndarray:
        """n draws: V_1 uniform; V_2 from the first pair; V_{j+1} by inverting the second tree, then the first."""
        rng = np.random.default_rng(rng)
        V = np.empty((n, self.k))
        V[:, 0] = rng.random(n)
        for j in range(self.k - 1):
            W = rng.random(n)
            cop2 = self.copulas2[j - 1] if j >= 1 else None
            if cop2 is not None:
                a = self.copulas[j - 1].hfunc2(np.column_stack([V[:, j - 1], V[:, j]]))
                W = np.clip(cop2.hinv1(np.column_stack([a, W])), 0.0, 1.0)
            V[:, j + 1] = np.clip(self.copulas[j].hinv1(np.column_stack([V[:, j], W])), 0.0, 1.0)
        return np.column_stack([np.asarray(self.margins[j].ppf(V[:, j]), float) for j in range(self.k)])


def empirical(X, upper, lower=None, correctness=None) -> dict:
    """The quantities of :meth:`MarkovJoint.evaluate` measured on data X (n, k) (values of X_j as
    correctness, or ``correctness[j](X_{j-1}, X_j)`` where given), for a batch of x-space thresholds:
    same semantics, same keys."""
    X = np.asarray(X, float)
    n, k = X.shape
    U = np.atleast_2d(np.asarray(upper, float))
    B = U.shape[0]
    L = np.full((B, k), -np.inf) if lower is None else np.broadcast_to(np.atleast_2d(np.asarray(lower, float)), (B, k))
    L = np.where(np.isfinite(L), L, -np.inf)
    out = {name: np.zeros((B, k)) for name in ("reach", "answer", "answer_correct", "abstain", "abstain_correct")}
    for b in range(B):
        alive = np.ones(n, bool)
        for j in range(k):
            x = X[:, j]
            g = None if correctness is None else correctness[j]
            val = x if g is None else np.asarray(g(X[:, j - 1], x), float)
            abst = alive & (x < L[b, j])
            ans = alive & ~abst if j == k - 1 else alive & (x > U[b, j])
            abst &= ~ans
            out["reach"][b, j] = alive.mean()
            out["answer"][b, j] = ans.mean()
            out["answer_correct"][b, j] = np.sum(val * ans) / n
            out["abstain"][b, j] = abst.mean()
            out["abstain_correct"][b, j] = np.sum(val * abst) / n
            alive = alive & ~ans & ~abst
    return out
