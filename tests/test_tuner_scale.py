"""The fast paths a tune takes at scale give the results of the plain computations they replace:

- calibration fitted on the distinct transformed values with counts (:func:`grouped_logit`) equals the
  point-wise ``Logit`` fit, and separated data still take the point-wise path and its fallbacks;
- test curves scored on collapsed queries (:func:`routing.score_many`) equal routing every query
  (:func:`routing.score_thresholds`), ties between thresholds and confidences included;
- importing the tuners loads none of the heavy optional libraries (they load where they are used).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cascade.data.records import CascadeData
from cascade.tuners import routing
from cascade.tuners.calibration import LogisticCalibrator, grouped_logit, pointwise_logit

ROOT = Path(__file__).resolve().parents[1]


def _plain_curve(thresholds, data):
    return [routing.score_thresholds(t, data) for t in thresholds]


@pytest.mark.parametrize("seed,n,levels,soft", [(0, 5000, 7, False), (1, 20000, 300, False), (2, 3000, 40, True),
                                                (3, 800, 2000, False)])
def test_grouped_logit_equals_pointwise_fit(seed, n, levels, soft):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, levels, n) / levels * 6 - 3  # ties: few distinct values
    p = 1 / (1 + np.exp(-(0.3 + 1.7 * t)))
    y = rng.random(n) if soft else (rng.random(n) < p).astype(float)
    if soft:
        y = np.clip(p + 0.2 * (y - 0.5), 0, 1)  # soft labels in [0, 1]: the same quasi-likelihood
    fast = grouped_logit(t, y)
    slow = pointwise_logit(t, y)
    assert fast is not None and slow is not None
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-8)


def test_separated_data_take_the_pointwise_path():
    t = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 3.0])
    y = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # every wrong answer below every correct one
    assert grouped_logit(t, y) is None
    assert grouped_logit(-t, y) is None  # separated the other way
    # quasi-separated (a tie at the boundary): no finite maximum either
    assert grouped_logit(np.array([0.0, 1.0, 1.0, 2.0]), np.array([0.0, 0.0, 1.0, 1.0])) is None
    assert grouped_logit(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 0.0, 1.0])) is not None
    logp = -np.exp(-t)  # a log-probability signal increasing with t
    cal = LogisticCalibrator("one-sided").fit(logp, y)
    ref = pointwise_logit(cal._prepare(logp), y)
    expected = ref if ref is not None else np.array([np.log((0.5 + 1e-9) / (0.5 + 1e-9)), 0.0])
    np.testing.assert_array_equal(cal.coef_, expected)
    assert np.isfinite(cal.predict(logp)).all()


def test_calibrator_fit_predict_is_fit_then_predict():
    rng = np.random.default_rng(5)
    logp = np.log(rng.integers(1, 50, 4000) / 50.0)
    logp[:3] = [0.0, -np.inf, -1e-300]
    y = (rng.random(4000) < np.exp(logp)).astype(float)
    a = LogisticCalibrator("one-sided")
    got = a.fit_predict(logp, y)
    b = LogisticCalibrator("one-sided").fit(logp, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(got, b.predict(logp))


def _data(rng, n, k, levels, soft=False):
    conf = rng.integers(0, levels, (n, k)) / levels
    correct = rng.random((n, k)) if soft else (rng.random((n, k)) < 0.6).astype(float)
    cost = rng.random((n, k)) * 1e-3
    return CascadeData([f"m{j}" for j in range(k)], np.arange(n), conf, correct, cost)


@pytest.mark.parametrize("seed,n,k,levels,soft", [(0, 2000, 2, 5, False), (1, 5000, 3, 20, False),
                                                  (2, 4000, 5, 9, True), (3, 300, 4, 1000, False)])
def test_score_many_equals_routing_every_query(seed, n, k, levels, soft):
    rng = np.random.default_rng(seed)
    data = _data(rng, n, k, levels, soft)
    thresholds = [rng.random(k - 1) for _ in range(15)]
    # thresholds equal to confidences (ties: c > t is false), shared between vectors, and +-inf
    thresholds += [data.confidence[rng.integers(0, n), : k - 1] for _ in range(15)]
    thresholds += [np.full(k - 1, np.inf), np.full(k - 1, -np.inf), np.array([0.5] * (k - 1)),
                   np.array([0.5] * (k - 1))]
    got = routing.score_many(thresholds, data)
    want = _plain_curve(thresholds, data)
    for b, w in enumerate(want):
        np.testing.assert_array_equal(got["shares"][b], w["shares"])
        if soft:
            assert got["error"][b] == pytest.approx(w["error"], abs=1e-12)
        else:
            assert got["error"][b] == w["error"]  # sums of 0/1 labels: exact
        assert got["cost"][b] == pytest.approx(w["cost"], rel=1e-12)
    frame = routing.score_curve(thresholds, data)
    assert list(frame.columns) == ["error", "cost"] + [f"share_{j}" for j in range(k)]
    np.testing.assert_array_equal(frame["error"].to_numpy(), got["error"])


def test_score_many_with_nan_confidences_and_wide_codes():
    rng = np.random.default_rng(7)
    data = _data(rng, 500, 3, 10)
    data.confidence[:7, 0] = np.nan  # NaN > t is false: such a query goes on
    thresholds = [rng.random(2) for _ in range(6)]
    got = routing.score_many(thresholds, data)
    for b, w in enumerate(_plain_curve(thresholds, data)):
        assert got["error"][b] == w["error"]
        np.testing.assert_array_equal(got["shares"][b], w["shares"])
    # keys that do not fit one int64 (mixed radix): grouped with np.unique(axis=0), same groups
    codes = rng.integers(0, 3, (1000, 7))
    sizes = [2 ** 10] * 7
    group, distinct = routing._group_rows(codes, sizes)
    np.testing.assert_array_equal(distinct[group], codes)
    group2, distinct2 = routing._group_rows(codes, [3] * 7)
    np.testing.assert_array_equal(distinct2[group2], codes)
    assert len(distinct) == len(distinct2) == len(np.unique(codes, axis=0))


def test_test_curve_of_a_tune_equals_plain_routing():
    from cascade.evaluate import tuning as tune

    rng = np.random.default_rng(11)
    raw = _data(rng, 3000, 3, 30)
    test = _data(rng, 2000, 3, 30)
    curve, _, tuner = tune.tune_prepared(raw, test, "grid", {"n_quantiles": 8})
    want = _plain_curve(tuner.thresholds_, test)
    assert curve["test_error"].tolist() == [w["error"] for w in want]
    np.testing.assert_allclose(curve["test_cost"], [w["cost"] for w in want], rtol=1e-12)


def test_importing_the_tuners_loads_no_heavy_optional_library():
    code = ("import sys, cascade.tuners, cascade.evaluate.tuning, cascade.evaluate.curves; "
            "heavy = [m for m in ('pyvinecopulib', 'matplotlib', 'statsmodels', 'optuna', 'sklearn', 'scipy.stats') "
            "if m in sys.modules]; print(heavy); assert not heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("values", [
    [np.array([-3.0, -0.1]), np.array([0.0, -np.inf])],  # log-probs: one-sided
    [np.array([0.0, 0.3]), np.array([1.0])],  # probabilities: identity
    [np.linspace(-3, 0, 50), np.linspace(0, 3, 50)],  # both signs: identity
    [np.array([-3.0, -0.1]), np.array([np.inf])],  # log-probs with +inf: refused
    [-np.linspace(0.1, 3, 99), np.array([0.5])],  # log-probs with one value above 0: refused
    [np.array([np.nan, -1.0]), np.array([-2.0])],
])
def test_transform_choice_on_parts_equals_the_concatenation(values):
    from cascade.tuners.calibration import Parts, TransformError, auto_transform, out_of_domain

    def outcome(v):
        try:
            return auto_transform("confidence", v)
        except TransformError as e:
            return str(e)

    assert outcome(Parts(values)) == outcome(np.concatenate(values))
    for name in ("one-sided", "two-sided", "identity"):
        bad = np.concatenate(values)
        assert out_of_domain(name, Parts(values)) == bool((np.isnan(bad) | (bad > 1e-6)).any() and name != "identity")


@pytest.mark.parametrize("seed,n,levels", [(0, 40, 3), (1, 2000, 30), (2, 50000, 300), (3, 500, 10 ** 6)])
def test_kendall_tau_from_counts_is_scipys_bit_for_bit(seed, n, levels):
    from scipy import stats

    from cascade.tuners.markov_copula import kendall_tau_b

    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, n) / levels
    for y in (np.round(x + rng.normal(0, 0.3, n), 2), np.round(-x + rng.normal(0, 0.3, n), 1), rng.random(n)):
        want = float(stats.kendalltau(x, y)[0])
        assert kendall_tau_b(x, y) == want
        assert kendall_tau_b(x, y, max_cells=1) == want  # scipy's own path
    assert np.isnan(kendall_tau_b(np.ones(10), np.arange(10.0)))  # every pair tied in x


def test_score_many_refuses_vectors_of_the_wrong_length():
    data = _data(np.random.default_rng(0), 50, 3, 5)
    with pytest.raises(ValueError, match="need 2 thresholds for 3 models, got 3"):
        routing.score_many([np.zeros(3), np.zeros(3)], data)
    with pytest.raises(ValueError, match="need 2 thresholds"):
        routing.score_curve([np.zeros(2), np.zeros(1)], data)
