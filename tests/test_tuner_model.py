"""The Markov-copula model: parameter recovery, closed forms vs Monte Carlo, predicted vs empirical curves."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats
from statsmodels.distributions.copula.api import GumbelCopula

from cascade.evaluate import curves as evaluate
from cascade.data import records
from cascade.evaluate import tuning as tune
from cascade.tuners.markov_copula import (BetaMixture01, MarkovCopulaModel, MarkovCopulaTuner, fill_gaps,
                                          mixture_nll_grad)

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
CHAIN = json.loads((ROOT / "examples" / "medmcqa-paper-auc.json").read_text())["definitions"]["models_llama_chain"]

TABLE_BUG = ("integration='table' (the release's 20x20 linear grid) overestimates E[X_j 1{X_j > t_j} | "
             "X_{j-1} <= t_{j-1}] near the top of the box, where calibrated confidences pile up just below 1: "
             "up to 0.15 off the exact closed form on dev k=5, and E[correct] > 1 at the box's upper corner")


def _mixture_ppf(u, pi, a1, b1, a2, b2):
    grid = np.linspace(0, 1, 20001)
    cdf = pi * stats.beta.cdf(grid, a1, b1) + (1 - pi) * stats.beta.cdf(grid, a2, b2)
    return np.interp(u, cdf, grid)


def _sorted_components(params):
    pi, a1, b1, a2, b2 = params
    comps = sorted([(a1 / (a1 + b1), pi, a1, b1), (a2 / (a2 + b2), 1 - pi, a2, b2)])
    return comps


@pytest.mark.parametrize("method", ["mle", "em"])
def test_beta_mixture_recovers_its_parameters(method):
    rng = np.random.default_rng(0)
    n = 6000
    z = rng.random(n) < 0.35
    u = np.where(z, rng.beta(2.0, 8.0, n), rng.beta(9.0, 3.0, n))
    fit = BetaMixture01(method).fit(u)
    (m_lo, w_lo, a_lo, b_lo), (m_hi, w_hi, a_hi, b_hi) = _sorted_components(fit.params_)
    assert w_lo == pytest.approx(0.35, abs=0.03)
    assert (a_lo, b_lo) == pytest.approx((2.0, 8.0), rel=0.15)
    assert (a_hi, b_hi) == pytest.approx((9.0, 3.0), rel=0.15)


def test_mixture_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    u, w = np.unique(np.round(rng.beta(2.0, 5.0, 400), 3), return_counts=True)
    lu, l1u = np.log(u), np.log1p(-u)
    for z in ([0.0, np.log(2), np.log(5), np.log(5), np.log(2)], [1.2, -0.4, 2.1, 1.5, -0.3], [-3.0, 3.0, 0.5, -1.0, 4.0]):
        z = np.asarray(z)
        f, g = mixture_nll_grad(z, lu, l1u, w)
        num = optimize.approx_fprime(z, lambda zz: mixture_nll_grad(zz, lu, l1u, w)[0], 1e-7)
        assert g == pytest.approx(num, rel=1e-4, abs=1e-3 * max(1.0, abs(f)))
        # and the value is the per-point log-likelihood of the expanded data
        params = (1 / (1 + np.exp(-z[0])), *np.exp(z[1:]))
        assert f == pytest.approx(BetaMixture01._nll(params, np.repeat(u, w)), rel=1e-12)


@pytest.mark.parametrize("method", ["mle", "em"])
def test_mixture_fit_on_counts_is_the_fit_on_points_and_a_stationary_point(method):
    """Resampled data (few distinct values, many points): fitting the points or their distinct values with
    counts is the same fit, and the result is a maximum of the per-point likelihood (zero gradient)."""
    rng = np.random.default_rng(4)
    base = np.where(rng.random(250) < 0.4, rng.beta(2.0, 6.0, 250), rng.beta(6.0, 2.0, 250))
    u = base[rng.integers(0, len(base), 50_000)]
    on_points = BetaMixture01(method).fit(u)
    vals, counts = np.unique(u, return_counts=True)
    on_counts = BetaMixture01(method).fit(vals, weights=counts)
    assert on_points.params_ == on_counts.params_
    assert on_points.n_ == on_counts.n_ == len(u)
    assert on_points.loglik_ == pytest.approx(-BetaMixture01._nll(on_points.params_, u), rel=1e-12)
    pi, a1, b1, a2, b2 = on_points.params_
    z = np.array([np.log(pi / (1 - pi)), np.log(a1), np.log(b1), np.log(a2), np.log(b2)])
    _, g = mixture_nll_grad(z, np.log(vals), np.log1p(-vals), counts)
    tol = 1e-4 if method == "mle" else 5e-2  # EM stops on |delta loglik| < 1e-6, short of the exact optimum
    assert np.abs(g).max() < tol * len(u)


def test_fill_gaps_counts_the_training_mass_between_points_exactly():
    """fill_gaps (sorted columns + searchsorted) against the direct definition: more than max_gap of some
    model's training confidences strictly between consecutive threshold vectors -> insert the midpoint."""
    rng = np.random.default_rng(6)
    conf = np.round(rng.random((3000, 4)), 2)  # ties, and thresholds landing on data values

    def reference(pts, max_gap=0.1, max_points=500):
        pts = [np.asarray(t, float) for t in pts]
        obs = conf[:, :-1]
        i = 0
        while i < len(pts) - 1 and len(pts) < max_points:
            lo, hi = np.minimum(pts[i], pts[i + 1]), np.maximum(pts[i], pts[i + 1])
            if np.mean((obs > lo) & (obs < hi), axis=0).max() > max_gap:
                pts.insert(i + 1, (pts[i] + pts[i + 1]) / 2)
            else:
                i += 1
        return pts

    for _ in range(5):
        pts = list(np.round(rng.random((6, 3)), 2))
        for max_gap in (0.02, 0.1):
            got, want = fill_gaps(pts, conf, max_gap), reference(pts, max_gap)
            assert len(got) == len(want) > len(pts)
            assert all(np.array_equal(a, b) for a, b in zip(got, want))


def _synthetic(n, theta, rng, k=2, p_end=0.05):
    """k calibrated confidences: consecutive pairs joined by a Gumbel copula (a Markov chain built by
    sampling each next uniform from the conditional Gumbel law), beta-mixture marginals on (0.1, 0.95),
    end-point masses p_end at 0.1 and 0.95."""
    cop = GumbelCopula(theta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uv = cop.rvs(n, random_state=rng)
    us = [uv[:, 0], uv[:, 1]]
    # extend the chain: V_{j+1} | V_j by conditional inversion on a grid (Markov chain of Gumbel pairs)
    for _ in range(k - 2):
        prev = us[-1]
        w = rng.random(n)
        grid = np.linspace(1e-6, 1 - 1e-6, 2001)
        nxt = np.empty(n)
        for i in range(n):
            h = _gumbel_h(grid, prev[i], theta)
            nxt[i] = np.interp(w[i], h, grid)
        us.append(nxt)
    X = np.column_stack([0.1 + 0.85 * _mixture_ppf(u, 0.4, 2, 6, 6, 2) for u in us])
    for j in range(k):
        r = rng.random(n)
        X[r < p_end, j] = 0.1
        X[r > 1 - p_end, j] = 0.95
    return X


def _gumbel_h(v, u, theta):
    """P(V <= v | U = u) for the Gumbel copula (dC/du)."""
    lu, lv = -np.log(u), -np.log(v)
    s = lu ** theta + lv ** theta
    C = np.exp(-s ** (1 / theta))
    return C * s ** (1 / theta - 1) * lu ** (theta - 1) / u


@pytest.mark.parametrize("theta", [1.5, 2.0, 3.0])
def test_gumbel_copula_and_marginals_are_recovered(theta):
    rng = np.random.default_rng(1)
    X = _synthetic(5000, theta, rng)
    model = MarkovCopulaModel(integration="exact").fit(X)
    pair = model.pairs_[0]
    # the fit uses Kendall's tau on the jointly interior points, where the copula is the generating one
    assert pair.theta_ == pytest.approx(theta, rel=0.08)
    assert pair.tau_ == pytest.approx(1 - 1 / theta, abs=0.03)
    # end-point cells: the masses were set independently of the copula, so p(min, min) ~ 0.05^2 etc.
    assert pair.p_[1, 1] == pytest.approx(0.9 ** 2, abs=0.02)
    assert pair.p_[0, 0] == pytest.approx(0.05 ** 2, abs=0.004)
    for mg in model.marginals_:
        assert mg.m_ == pytest.approx(0.1) and mg.M_ == pytest.approx(0.95)
        assert mg.p_min_ == pytest.approx(0.05, abs=0.01)
        assert mg.p_max_ == pytest.approx(0.05, abs=0.01)
        (_, w_lo, a_lo, b_lo), (_, w_hi, a_hi, b_hi) = _sorted_components(mg.interior_.params_)
        assert w_lo == pytest.approx(0.4, abs=0.05)
        assert (a_lo, b_lo) == pytest.approx((2, 6), rel=0.2)
        assert (a_hi, b_hi) == pytest.approx((6, 2), rel=0.2)


def test_chain_of_three_recovers_both_thetas():
    X = _synthetic(4000, 2.5, np.random.default_rng(12), k=3)
    model = MarkovCopulaModel(integration="exact").fit(X)
    assert [p.theta_ for p in model.pairs_] == pytest.approx([2.5, 2.5], rel=0.1)


def test_independent_pairs_fit_theta_near_one():
    rng = np.random.default_rng(2)
    X = 0.1 + 0.85 * rng.beta(2, 2, size=(4000, 2))
    model = MarkovCopulaModel().fit(X)
    assert model.pairs_[0].theta_ == pytest.approx(1.0, abs=0.06)


def _dev_train(k):
    df = records.load(DEV)
    train, _, _ = tune.prepare(df, models=CHAIN[:k], cost_mode="model-mean")
    return train


def _fast_inverse_cdf(mg, v):
    """Grid inversion of the interior mixture CDF (200 001 points, |error in u| < 1e-5): the model's own
    bisection costs ~75 us per draw, too slow for the 10^6 draws a 0.5% check needs."""
    grid = np.linspace(0.0, 1.0, 200_001)
    cdf = np.maximum.accumulate(mg.interior_.cdf(grid))
    return mg.m_ + (mg.M_ - mg.m_) * np.interp(v, cdf, grid)


QUANTILES = [(0.3, 0.3, 0.3, 0.3), (0.5, 0.7, 0.2, 0.6), (0.8, 0.5, 0.5, 0.1), (0.1, 0.9, 0.9, 0.9),
             (0.95, 0.05, 0.6, 0.4)]


def _thresholds(model, X, k):
    T = []
    for q in QUANTILES:
        t = np.array([np.quantile(X[:, j], q[j]) for j in range(k - 1)])
        lo = [model.bounds_[j][0] + 1e-3 for j in range(k - 1)]
        hi = [model.bounds_[j][1] - 1e-3 for j in range(k - 1)]
        T.append(np.clip(t, lo, hi))
    return T


@pytest.mark.parametrize("source,k", [("dev", 2), ("dev", 3), ("dev", 5), ("synthetic", 2), ("synthetic", 3),
                                      ("synthetic", 5)])
def test_closed_forms_match_monte_carlo_within_half_a_percent(source, k, monkeypatch):
    monkeypatch.setattr("cascade.tuners.markov_copula._inverse_cdf", _fast_inverse_cdf)
    if source == "dev":
        train = _dev_train(k)
        X, costs = train.confidence, train.cost.mean(axis=0)
    else:
        X = _synthetic(3000, 1.7, np.random.default_rng(3), k=k)
        costs = np.array([1.0, 4.0, 20.0, 60.0, 200.0])[:k]
    model = MarkovCopulaModel(integration="exact").fit(X)
    T = _thresholds(model, X, k)
    # one set of draws shared by all threshold vectors; MC sd of cost <= 0.15%
    mc = model.monte_carlo(np.array(T), costs, n=2_000_000, rng=np.random.default_rng(4))
    exact = model.expected_batch(np.array(T), costs)
    for i, t in enumerate(T):
        assert mc["correct"][i] == pytest.approx(exact["correct"][i], rel=0.005), (t, exact["correct"][i], mc)
        assert mc["cost"][i] == pytest.approx(exact["cost"][i], rel=0.005), (t, exact["cost"][i], mc)
    # expected() and expected_batch() agree, shares sum to one
    one = model.expected(T[1], costs)
    assert one["correct"] == pytest.approx(exact["correct"][1], rel=1e-12)
    assert sum(one["shares"]) == pytest.approx(1.0)


def test_model_monte_carlo_method_agrees_with_closed_form(monkeypatch):
    """MarkovCopulaModel.monte_carlo itself (k=3, dev data), 300k draws: within 1%."""
    monkeypatch.setattr("cascade.tuners.markov_copula._inverse_cdf", _fast_inverse_cdf)
    train = _dev_train(3)
    costs = train.cost.mean(axis=0)
    model = MarkovCopulaModel(integration="exact").fit(train.confidence)
    t = _thresholds(model, train.confidence, 3)[1]
    mc = model.monte_carlo(t, costs, n=300_000, rng=np.random.default_rng(6))
    ex = model.expected(t, costs)
    assert mc["correct"] == pytest.approx(ex["correct"], rel=0.01)
    assert mc["cost"] == pytest.approx(ex["cost"], rel=0.01)


def test_sample_reproduces_the_fitted_pair_law(monkeypatch):
    """PairModel.sample: cell frequencies and interior Kendall tau of the draws match the fitted values."""
    monkeypatch.setattr("cascade.tuners.markov_copula._inverse_cdf", _fast_inverse_cdf)
    X = _synthetic(4000, 2.0, np.random.default_rng(8))
    model = MarkovCopulaModel(integration="exact").fit(X)
    pair = model.pairs_[0]
    xi, xj = pair.sample(200_000, np.random.default_rng(9))
    ci = np.where(xi == pair.mi.m_, 0, np.where(xi == pair.mi.M_, 2, 1))
    cj = np.where(xj == pair.mj.m_, 0, np.where(xj == pair.mj.M_, 2, 1))
    freq = np.zeros((3, 3))
    np.add.at(freq, (ci, cj), 1.0)
    np.testing.assert_allclose(freq / len(xi), pair.p_, atol=0.005)
    both = (ci == 1) & (cj == 1)
    tau = stats.kendalltau(xi[both][:20000], xj[both][:20000])[0]
    assert tau == pytest.approx(pair.tau_, abs=0.02)


# Honest tolerances, measured on the dev data (mean / max |predicted - measured| train error along the tuner's
# own curve): exact k=2 0.012/0.011, k=3 0.029/0.041, k=5 0.031/0.049; table k=2 0.011, k=3 0.029/0.041,
# k=5 0.053/0.128. The largest gaps sit at the expensive end (lambda ~ 0), where L-BFGS-B picks the
# thresholds that maximise the model's own E[correct] (optimism of the argmax), and, for the table, where
# calibrated confidences pile up just below 1 and the 20-point linear grid cannot follow E[X 1{X > t} | A].
# (Since the tuner reports exact-closed-form predictions whichever integration drove the optimiser, the table
# rows now measure only the table-driven threshold choice; the looser table tolerance is kept as a ceiling.)
TRAIN_CURVE_TOL = {"exact": (0.035, 0.06, 0.05), "table": (0.06, 0.14, 0.05)}  # mean err, max err, mean cost


@pytest.mark.parametrize("integration,k", [
    ("exact", 2), ("exact", 3), ("exact", 5), ("table", 2), ("table", 3),
    ("table", 5)])
def test_predicted_train_curve_tracks_the_empirical_one(k, integration):
    """The model's predicted (train) error and cost along its own curve, against the values measured on the
    same training split (300 queries)."""
    train = _dev_train(k)
    tuner = MarkovCopulaTuner(integration=integration).fit(train)
    emp = evaluate.score_curve(tuner.thresholds_, train)
    err_gap = np.abs(np.asarray(tuner.train_error_) - emp["error"].to_numpy())
    cost_gap = np.abs(np.asarray(tuner.train_cost_) / emp["cost"].to_numpy() - 1)
    mean_tol, max_tol, cost_tol = TRAIN_CURVE_TOL[integration]
    assert err_gap.mean() < mean_tol, err_gap
    assert err_gap.max() < max_tol, err_gap
    assert cost_gap.mean() < cost_tol, cost_gap
    # predictions are probabilities
    assert np.all((np.asarray(tuner.train_error_) >= 0) & (np.asarray(tuner.train_error_) <= 1))
    # the predicted curve is a trade-off: cheaper points do not predict lower error than dearer ones
    order = np.argsort(tuner.train_cost_)
    pred = np.asarray(tuner.train_error_)[order]
    assert np.all(np.diff(pred) <= 0.01)


@pytest.mark.parametrize("integration", ["exact", pytest.param("table", marks=pytest.mark.xfail(
    strict=True, reason="table: E[correct] = 1.034 at the box's upper corner on dev k=5"))])
def test_closed_form_predictions_are_probabilities_over_the_box(integration):
    """E[correct] in [0, 1] and shares summing to 1 for threshold vectors anywhere in the tuning box,
    including its upper corner (dev data, k = 5)."""
    train = _dev_train(5)
    costs = train.cost.mean(axis=0)
    bounds = tune.threshold_bounds(train.confidence)
    rng = np.random.default_rng(11)
    T = np.column_stack([rng.uniform(lo, hi, 500) for lo, hi in bounds])
    T = np.vstack([T, [[hi for _, hi in bounds]], [[lo for lo, _ in bounds]]])
    e = MarkovCopulaModel(integration=integration).fit(train.confidence).expected_batch(T, costs)
    np.testing.assert_allclose(e["shares"].sum(axis=1), 1.0, atol=1e-9)
    assert np.all((e["cost"] >= costs[0] - 1e-9) & (e["cost"] <= costs.sum() + 1e-9))
    assert np.all((e["correct"] >= 0) & (e["correct"] <= 1)), e["correct"].max()


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_table_integration_approximates_exact_on_average(k):
    """Over 3000 random threshold vectors in the tuning box: the release's tables agree with the exact
    closed forms on average (mean |diff| 0.001-0.003, 95th percentile <= 0.014 on the dev data)."""
    train = _dev_train(k)
    costs = train.cost.mean(axis=0)
    bounds = tune.threshold_bounds(train.confidence)
    rng = np.random.default_rng(5)
    T = np.column_stack([rng.uniform(lo, hi, 3000) for lo, hi in bounds])
    a = MarkovCopulaModel(integration="exact").fit(train.confidence).expected_batch(T, costs)
    b = MarkovCopulaModel(integration="table").fit(train.confidence).expected_batch(T, costs)
    d = np.abs(a["correct"] - b["correct"])
    assert d.mean() < 0.005 and np.quantile(d, 0.95) < 0.02
    # deferral probabilities are exact in both, but the table conditions on the marginal's
    # P(X_{j-1} <= t) (as the release) and exact on the pair law's: a small, deliberate difference
    np.testing.assert_allclose(b["cost"], a["cost"], rtol=1e-2)


@pytest.mark.parametrize("k", [
    2, pytest.param(3, marks=pytest.mark.xfail(strict=True, reason=TABLE_BUG)),
    pytest.param(5, marks=pytest.mark.xfail(strict=True, reason=TABLE_BUG))])
def test_table_integration_is_close_to_exact_everywhere(k):
    train = _dev_train(k)
    costs = train.cost.mean(axis=0)
    bounds = tune.threshold_bounds(train.confidence)
    rng = np.random.default_rng(5)
    T = np.column_stack([rng.uniform(lo, hi, 3000) for lo, hi in bounds])
    T = np.vstack([T, [[hi for _, hi in bounds]]])
    a = MarkovCopulaModel(integration="exact").fit(train.confidence).expected_batch(T, costs)
    b = MarkovCopulaModel(integration="table").fit(train.confidence).expected_batch(T, costs)
    assert np.abs(a["correct"] - b["correct"]).max() < 0.02


def test_tuner_thresholds_lie_in_the_box_and_params_round_trip():
    train = _dev_train(3)
    tuner = MarkovCopulaTuner(max_steps=8).fit(train)
    bounds = tune.threshold_bounds(train.confidence, tuner.eps)
    for t in tuner.thresholds_:
        for j, (lo, hi) in enumerate(bounds):
            assert lo - 1e-9 <= t[j] <= hi + 1e-9
    assert tuner.get_params()["max_steps"] == 8
    assert tuner.diagnostics_["fit_seconds"] >= 0 and tuner.diagnostics_["n_lambdas"] >= 4
