"""Grid search: the difference-array totals against brute force, the tuner's curve against brute force,
and the Pareto filter."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cascade.evaluate import curves as evaluate
from cascade.tuners.grid import GridSearchTuner, grid_totals
from cascade.data.records import CascadeData


def _data(n=80, k=3, seed=0, ties=True) -> CascadeData:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.2, 0.95, size=(n, k)).round(2 if ties else 12)  # rounding gives ties with grid values
    correct = (rng.random((n, k)) < conf).astype(float)
    cost = rng.uniform(0.5, 1.5, size=(n, k)) * np.array([1.0, 5.0, 30.0, 80.0, 200.0])[:k]
    return CascadeData([f"m{j}" for j in range(k)], np.arange(n), conf, correct, cost)


def _brute(conf, value, cum_cost, grids):
    shape = tuple(len(g) for g in grids)
    corr, cost = np.zeros(shape), np.zeros(shape)
    for idx in itertools.product(*[range(s) for s in shape]):
        t = np.array([grids[j][i] for j, i in enumerate(idx)])
        ans = evaluate.route(t, conf)
        rows = np.arange(len(conf))
        corr[idx] = value[rows, ans].sum()
        cost[idx] = cum_cost[rows, ans].sum()
    return corr, cost


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (3, 2), (4, 3)])
def test_grid_totals_equal_brute_force(k, seed):
    d = _data(k=k, seed=seed)
    levels = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    grids = [np.quantile(d.confidence[:, j], levels) for j in range(k - 1)]
    # include exact data values so ties c == t (model must defer: answers only when c > t) are exercised
    grids[0] = np.unique(np.concatenate([grids[0], d.confidence[:3, 0]]))
    cum = np.cumsum(d.cost, axis=1)
    corr, cost = grid_totals(d.confidence, d.correct, cum, grids)
    bc, bk = _brute(d.confidence, d.correct, cum, grids)
    np.testing.assert_allclose(corr, bc, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cost, bk, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("score", ["labels", "calibrated"])
def test_grid_tuner_curve_is_the_brute_force_pareto_front(score):
    d = _data(n=120, k=3, seed=5)
    tuner = GridSearchTuner(n_quantiles=6, score=score).fit(d)
    levels = np.arange(0.01, 0.99, 1 / 6)
    grids = [np.quantile(d.confidence[:, j], levels) for j in range(2)]
    errs, costs, vecs = [], [], []
    value = d.correct if score == "labels" else d.confidence
    for t in itertools.product(*grids):
        t = np.array(t)
        ans = evaluate.route(t, d.confidence)
        rows = np.arange(d.n)
        errs.append(1 - value[rows, ans].mean())
        costs.append(np.cumsum(d.cost, axis=1)[rows, ans].mean())
        vecs.append(t)
    errs, costs = np.array(errs), np.array(costs)
    keep = evaluate.pareto_mask(costs, errs)
    front = sorted(zip(costs[keep], errs[keep]))
    got = sorted(zip(tuner.train_cost_, tuner.train_error_))
    np.testing.assert_allclose(np.array(got), np.array(front), rtol=1e-12, atol=1e-12)
    assert tuner.diagnostics_["n_candidates"] == len(errs)
    # each reported threshold vector really achieves its reported train error and cost
    for t, e, c in zip(tuner.thresholds_, tuner.train_error_, tuner.train_cost_):
        if score == "labels":
            s = evaluate.score_thresholds(t, d)
            assert s["error"] == pytest.approx(e, abs=1e-12) and s["cost"] == pytest.approx(c, rel=1e-12)
    # the curve is sorted by cost and is a trade-off: strictly cheaper -> strictly higher error
    assert np.all(np.diff(tuner.train_cost_) > 0)
    assert np.all(np.diff(tuner.train_error_) < 0)


def test_pareto_mask_is_correct_and_monotone():
    rng = np.random.default_rng(7)
    cost = rng.integers(0, 20, 300).astype(float)
    error = rng.integers(0, 20, 300).astype(float)
    keep = evaluate.pareto_mask(cost, error)
    for i in range(len(cost)):
        dominated = np.any((cost <= cost[i]) & (error <= error[i]) & ((cost < cost[i]) | (error < error[i])))
        dup_before = np.any((cost[:i] == cost[i]) & (error[:i] == error[i]))
        assert keep[i] == (not dominated and not dup_before), i
    c, e = cost[keep], error[keep]
    o = np.argsort(c)
    assert np.all(np.diff(c[o]) > 0) and np.all(np.diff(e[o]) < 0)


def test_pareto_mask_exact_ties_keep_first():
    keep = evaluate.pareto_mask([1.0, 1.0, 2.0, 0.5], [0.3, 0.3, 0.1, 0.5])
    assert keep.tolist() == [True, False, True, True]


def test_grid_rejects_unknown_score():
    with pytest.raises(ValueError, match="score"):
        GridSearchTuner(score="bogus").fit(_data())


def test_auc_is_the_mean_error_over_the_shared_cost_range():
    """AUC against an independent computation: linear interpolation with linear extrapolation at the ends
    (scipy interp1d fill_value='extrapolate'), integrated on a fine grid."""
    from scipy.interpolate import interp1d

    rng = np.random.default_rng(3)
    ca, ea = np.sort(rng.uniform(1, 10, 12)), np.sort(rng.uniform(0.1, 0.5, 12))[::-1]
    cb, eb = np.sort(rng.uniform(0.5, 8, 9)), np.sort(rng.uniform(0.1, 0.5, 9))[::-1]
    cmp = evaluate.compare_curves(ca, ea, cb, eb)
    assert cmp.lo == pytest.approx(max(ca.min(), cb.min())) and cmp.hi == pytest.approx(min(ca.max(), cb.max()))
    grid = np.linspace(cmp.lo, cmp.hi, 200_001)
    for c, e, got in ((ca, ea, cmp.auc_a), (cb, eb, cmp.auc_b)):
        acc = interp1d(c, 1 - e, fill_value="extrapolate")(grid)
        assert got == pytest.approx(1 - np.trapezoid(acc, grid) / (cmp.hi - cmp.lo), abs=1e-9)
    assert cmp.pct_change == pytest.approx(100 * (cmp.auc_a - cmp.auc_b) / cmp.auc_b)
    # extrapolation beyond a curve's own range
    assert evaluate.auc([1.0, 2.0], [0.4, 0.2], 0.0, 3.0) == pytest.approx(0.3)
