"""The `copula` tuner: joint.py integrals against Monte Carlo, family selection, the tuner end to end."""

from __future__ import annotations

import numpy as np
import pyvinecopulib as pv
import pytest
from scipy import stats

from cascade.tuners.joint import MarkovJoint, empirical


class AtomBeta:
    """Test margin: atoms p0 at lo and p1 at hi, a beta(a, b) law on (lo, hi) in between."""

    def __init__(self, lo, hi, p0, p1, a, b):
        self.lo, self.hi, self.p0, self.p1, self.d = lo, hi, p0, p1, stats.beta(a, b)
        self.pi = 1.0 - p0 - p1

    def _inner(self, x):
        return self.d.cdf((np.asarray(x, float) - self.lo) / (self.hi - self.lo))

    def cdf(self, x):
        x = np.asarray(x, float)
        return self.p0 * (x >= self.lo) + self.pi * self._inner(x) * (x > self.lo) + self.p1 * (x >= self.hi)

    def cdf_left(self, x):
        x = np.asarray(x, float)
        return self.p0 * (x > self.lo) + self.pi * self._inner(x) * (x > self.lo) + self.p1 * (x > self.hi)

    def ppf(self, u):
        u = np.asarray(u, float)
        inner = self.lo + (self.hi - self.lo) * self.d.ppf(np.clip((u - self.p0) / self.pi, 0, 1))
        return np.where(u <= self.p0, self.lo, np.where(u > self.p0 + self.pi, self.hi, inner))

    def atoms_u(self):
        return [self.p0, 1.0 - self.p1]


def _chain():
    margins = [AtomBeta(0.2, 1.0, 0.05, 0.3, 2, 1.5), AtomBeta(0.3, 0.98, 0.0, 0.0, 3, 1),
               AtomBeta(0.4, 1.0, 0.02, 0.1, 2, 2), AtomBeta(0.5, 0.99, 0.0, 0.2, 4, 1.2)]
    copulas = [pv.Bicop(pv.BicopFamily.gumbel, parameters=np.array([[2.5]])),
               pv.Bicop(pv.BicopFamily.clayton, rotation=180, parameters=np.array([[1.5]])),
               pv.Bicop(pv.BicopFamily.student, parameters=np.array([[0.5], [4.0]]))]
    return margins, copulas


def test_joint_matches_monte_carlo_with_upper_and_lower_thresholds():
    margins, copulas = _chain()
    joint = MarkovJoint(margins, copulas)
    X = joint.sample(300_000, rng=1)
    rng = np.random.default_rng(2)
    B = 12
    T = np.column_stack([rng.uniform(0.3, 0.99, B), rng.uniform(0.35, 0.97, B), rng.uniform(0.45, 0.99, B)])
    T[0] = [1.0, 0.98, 1.0]  # thresholds at the maxima: the atoms at the top answer nothing, all defer
    L = np.column_stack([rng.uniform(0.2, 0.5, B), rng.uniform(0.3, 0.5, B), np.full(B, -np.inf),
                         rng.uniform(0.5, 0.7, B)])
    for lower in (None, L):
        model = joint.evaluate(T, lower)
        mc = empirical(X, T, lower)
        for key in model:
            # Monte Carlo standard error <= 0.5 / sqrt(3e5) ~ 1e-3
            assert np.abs(model[key] - mc[key]).max() < 4e-3, key
        total = model["answer"].sum(axis=1) + model["abstain"].sum(axis=1)
        np.testing.assert_allclose(total, 1.0, atol=1e-9)  # every query stops somewhere


def test_joint_grid_converges_and_expected_is_consistent():
    margins, copulas = _chain()
    T = np.array([[0.6, 0.7, 0.8], [0.9, 0.5, 0.95]])
    fine = MarkovJoint(margins, copulas, n_cells=800).evaluate(T)
    coarse = MarkovJoint(margins, copulas).evaluate(T)
    for key in fine:
        assert np.abs(fine[key] - coarse[key]).max() < 5e-4, key
    joint = MarkovJoint(margins, copulas)
    costs = [1.0, 2.0, 4.0, 8.0]
    e = joint.expected(T, costs)
    ev = joint.evaluate(T)
    np.testing.assert_allclose(e["correct"], ev["answer_correct"].sum(axis=1))
    np.testing.assert_allclose(e["cost"], ev["answer"] @ np.cumsum(costs))
    # u-space thresholds give the same numbers as x-space ones mapped by the margins
    U, _ = joint.to_u(T)
    np.testing.assert_allclose(joint.evaluate(U, space="u")["answer_correct"], ev["answer_correct"])


def test_joint_independence_is_exact_product():
    margins = [AtomBeta(0.0, 1.0, 0.0, 0.0, 1, 1)] * 3  # uniform margins
    joint = MarkovJoint(margins, [pv.Bicop(), pv.Bicop()])
    e = joint.evaluate(np.array([[0.3, 0.6]]))
    # P(reach 3) = 0.3 * 0.6; E[X_1; X_1 > 0.3] = (1 - 0.09) / 2; model 3 answers all reached: E = 0.18 * 0.5
    np.testing.assert_allclose(e["reach"][0], [1.0, 0.3, 0.18], atol=1e-12)
    np.testing.assert_allclose(e["answer_correct"][0], [0.455, 0.3 * (1 - 0.36) / 2, 0.09], atol=1e-6)


def test_joint_rejects_wrong_shapes():
    margins, copulas = _chain()
    joint = MarkovJoint(margins, copulas)
    with pytest.raises(ValueError, match="upper thresholds"):
        joint.evaluate(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="lower thresholds"):
        joint.evaluate(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="pair copulas"):
        MarkovJoint(margins, copulas[:2])


def test_joint_correctness_function_matches_monte_carlo():
    """P(correct_j) may depend on the previous model's confidence: g(x_prev, x) = x * (0.5 + x_prev / 2)."""
    margins, copulas = _chain()

    def g(xp, x):
        return x * (0.5 + np.asarray(xp) / 2)

    corr = [None, g, None, g]
    joint = MarkovJoint(margins, copulas, correctness=corr)
    X = joint.sample(300_000, rng=3)
    T = np.array([[0.6, 0.7, 0.8], [0.9, 0.5, 0.95], [0.99, 0.97, 0.99]])
    L = np.array([[0.3, 0.4, -np.inf, 0.6]] * 3)
    model, mc = joint.evaluate(T, L), empirical(X, T, L, correctness=corr)
    for key in model:
        assert np.abs(model[key] - mc[key]).max() < 4e-3, key
    plain = MarkovJoint(margins, copulas).evaluate(T, L)
    assert np.all(model["answer_correct"][:, 1] < plain["answer_correct"][:, 1])  # g < x: the test can fail
