"""The fast grid and random fits give exactly what straightforward implementations give: the same
threshold vectors (same cells, same tie-breaking), the same train error and cost, bit for bit.

References written here: (1) the previous grid fit, which accumulated the difference array with
``np.add.at`` one (model, sign) block at a time, compared bit for bit on random data with ties, on
k = 2..5, and on the example MedMCQA results; (2) a brute-force grid fit that routes the whole
training set for every cell, compared exactly on data whose sums are exact (0/1 labels, integer
costs), so that even ties between cells are decided identically; (3) the random tuner's vertices
scored by routing, and its former per-vertex formula."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.data.records import CascadeData
from cascade.tuners.grid import GridSearchTuner, grid_totals, pareto_candidates
from cascade.tuners.random_routing import RandomRoutingTuner, expected_score
from cascade.tuners.routing import pareto_mask, route, score_thresholds

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "medmcqa-llama.parquet"


def _addat_grid_totals(confidence, value, cum_cost, grids):
    """The previous implementation: np.add.at into the difference array, block by block."""
    n, k = confidence.shape
    sizes = [len(g) for g in grids]
    a = np.column_stack([np.searchsorted(grids[j], confidence[:, j], side="left") for j in range(k - 1)])
    shape = tuple(s + 1 for s in sizes)
    totals = []
    for vals in (value, cum_cost):
        D = np.zeros(shape)
        for j in range(k):
            idx_prefix = [a[:, i] for i in range(j)]
            if j < k - 1:
                zeros = [np.zeros(n, int)] * (k - 2 - j)
                np.add.at(D, tuple(idx_prefix + [np.zeros(n, int)] + zeros), vals[:, j])
                np.add.at(D, tuple(idx_prefix + [a[:, j]] + zeros), -vals[:, j])
            else:
                np.add.at(D, tuple(idx_prefix), vals[:, j])
        for ax in range(k - 1):
            np.cumsum(D, axis=ax, out=D)
        totals.append(D[tuple(slice(0, s) for s in sizes)])
    return totals[0], totals[1]


def _reference_fit(train: CascadeData, n_quantiles=40, eps=0.01, score="labels", brute=False):
    """The grid fit written plainly: all cells' totals (add.at difference array, or routing the whole
    training set per cell when ``brute``), then the Pareto filter over every cell, sorted by cost."""
    conf = train.confidence
    n, k = conf.shape
    levels = np.arange(eps, 1 - eps, 1.0 / n_quantiles)
    grids = [np.quantile(conf[:, j], levels) for j in range(k - 1)]
    value = train.correct if score == "labels" else conf
    cum = np.cumsum(train.cost, axis=1)
    if brute:
        shape = tuple(len(g) for g in grids)
        corr, cost = np.zeros(shape), np.zeros(shape)
        rows = np.arange(n)
        for cell in itertools.product(*[range(s) for s in shape]):
            ans = route(np.array([grids[j][i] for j, i in enumerate(cell)]), conf)
            corr[cell] = value[rows, ans].sum()
            cost[cell] = cum[rows, ans].sum()
    else:
        corr, cost = _addat_grid_totals(conf, value, cum, grids)
    error = 1.0 - corr.ravel() / n
    cost_m = cost.ravel() / n
    keep = np.flatnonzero(pareto_mask(cost_m, error))
    keep = keep[np.argsort(cost_m[keep], kind="stable")]
    idx = np.unravel_index(keep, corr.shape)
    thresholds = [np.array([grids[j][idx[j][p]] for j in range(k - 1)]) for p in range(len(keep))]
    return thresholds, error[keep], cost_m[keep], error.size


def _assert_same_fit(tuner, ref, cost_rtol=0.0):
    """Same cells (thresholds) in the same order, same train error; same train cost bit for bit, or
    within ``cost_rtol`` where the reference sums costs in another order (brute force on real costs)."""
    thresholds, error, cost, n_cells = ref
    assert len(tuner.thresholds_) == len(thresholds)
    assert np.array_equal(np.array(tuner.thresholds_), np.array(thresholds))
    assert np.array_equal(tuner.train_error_, error)
    if cost_rtol:
        np.testing.assert_allclose(tuner.train_cost_, cost, rtol=cost_rtol, atol=0)
    else:
        assert np.array_equal(tuner.train_cost_, cost)
    assert tuner.diagnostics_["n_candidates"] == n_cells and tuner.diagnostics_["n_pareto"] == len(thresholds)


def _tied_data(n, k, seed, decimals=2, integer_cost=False, model_mean_cost=False) -> CascadeData:
    """Confidences rounded to few distinct values (ties among queries and with grid quantiles)."""
    rng = np.random.default_rng(seed)
    conf = rng.beta(2, 2, size=(n, k)).round(decimals)
    correct = (rng.random((n, k)) < conf).astype(float)
    scale = np.array([1.0, 4.0, 9.0, 30.0, 70.0, 200.0])[:k]
    if integer_cost:
        cost = rng.integers(1, 4, size=(n, k)) * scale
    elif model_mean_cost:
        cost = np.broadcast_to(scale * 1.37e-4, (n, k)).copy()
    else:
        cost = rng.uniform(0.5, 1.5, size=(n, k)) * scale
    return CascadeData([f"m{j}" for j in range(k)], np.arange(n), conf, correct, cost)


@pytest.mark.parametrize("k,seed,decimals", [(2, 0, 2), (3, 1, 1), (3, 2, 12), (4, 3, 2), (5, 4, 2), (5, 5, 1)])
def test_grid_totals_bitwise_equal_to_add_at(k, seed, decimals):
    d = _tied_data(3000, k, seed, decimals)
    levels = np.arange(0.01, 0.99, 1 / 9)
    grids = [np.quantile(d.confidence[:, j], levels) for j in range(k - 1)]
    cum = np.cumsum(d.cost, axis=1)
    for value in (d.correct, d.confidence):
        got = grid_totals(d.confidence, value, cum, grids)
        want = _addat_grid_totals(d.confidence, value, cum, grids)
        for g, w in zip(got, want):
            assert g.shape == w.shape and np.array_equal(g, w)


@pytest.mark.parametrize("score", ["labels", "calibrated"])
@pytest.mark.parametrize("k,seed,decimals,cost_kind", [
    (2, 0, 2, "uniform"), (3, 1, 1, "model-mean"), (4, 2, 2, "uniform"), (5, 3, 2, "model-mean"), (5, 4, 12, "uniform"),
])
def test_grid_fit_bitwise_equal_to_add_at_reference(score, k, seed, decimals, cost_kind):
    d = _tied_data(20_000, k, seed, decimals, model_mean_cost=cost_kind == "model-mean")
    nq = 40 if k <= 4 else 12
    tuner = GridSearchTuner(n_quantiles=nq, score=score).fit(d)
    _assert_same_fit(tuner, _reference_fit(d, n_quantiles=nq, score=score))


@pytest.mark.parametrize("k,seed,decimals", [(2, 0, 1), (3, 1, 1), (3, 2, 2), (4, 3, 1)])
def test_grid_fit_equal_to_brute_force_routing_with_exact_sums(k, seed, decimals):
    """0/1 labels and integer costs: every cell's totals are exact in any order, so the brute force and
    the fast fit must agree on every cell kept, tie-breaking included (many cells tie)."""
    d = _tied_data(400, k, seed, decimals, integer_cost=True)
    nq = 7 if k <= 3 else 5
    tuner = GridSearchTuner(n_quantiles=nq).fit(d)
    ref = _reference_fit(d, n_quantiles=nq, brute=True)
    _assert_same_fit(tuner, ref)
    # and the reported train numbers are what routing gives
    for t, e, c in zip(tuner.thresholds_, tuner.train_error_, tuner.train_cost_):
        s = score_thresholds(t, d)
        assert s["error"] == pytest.approx(e, abs=1e-12) and s["cost"] == pytest.approx(c, rel=1e-12)


def _example_train() -> CascadeData:
    from cascade.evaluate.tuning import prepare

    recs = pd.read_parquet(EXAMPLE)
    models = list(dict.fromkeys(recs["model"]))
    train, _, _ = prepare(recs, models=models)
    return train


@pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/medmcqa-llama.parquet is not in this checkout")
def test_grid_and_random_fit_on_the_example_equal_the_references():
    train = _example_train()
    assert train.k == 5
    # the example itself, and resampled to 30k queries (many repeated rows, as in bench/scale.py)
    big = train.subset(np.random.default_rng(0).integers(0, train.n, 30_000))
    for d in (train, big):
        for score in ("labels", "calibrated"):
            _assert_same_fit(GridSearchTuner(score=score).fit(d), _reference_fit(d, score=score))
        _assert_random_fit_exact(d)
    sub = train.select(train.models[:3])
    # brute force sums the (non-integer) costs in another order: equal up to rounding
    _assert_same_fit(GridSearchTuner(n_quantiles=10).fit(sub), _reference_fit(sub, n_quantiles=10, brute=True),
                     cost_rtol=1e-12)


def _assert_random_fit_exact(d: CascadeData):
    t = RandomRoutingTuner().fit(d)
    k = d.k
    for j in range(k):
        # the former formula, one vertex at a time
        p = np.eye(k)[j]
        acc = d.correct.mean(axis=0)
        cum = np.cumsum(d.cost, axis=1).mean(axis=0)
        assert t.train_error_[j] == float(1.0 - p @ acc) and t.train_cost_[j] == float(p @ cum)
        assert expected_score(p, d)["error"] == t.train_error_[j]
        # vertex j routes every query to model j
        assert np.all(route(t.thresholds_[j], d.confidence) == j)
        s = score_thresholds(t.thresholds_[j], d)
        assert s["error"] == pytest.approx(t.train_error_[j], abs=1e-12)
        assert s["cost"] == pytest.approx(t.train_cost_[j], rel=1e-12)


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (5, 2)])
def test_random_fit_equals_per_vertex_scoring(k, seed):
    _assert_random_fit_exact(_tied_data(5000, k, seed, 2))


@pytest.mark.parametrize("seed", range(6))
def test_pareto_candidates_keep_exactly_the_pareto_front(seed):
    rng = np.random.default_rng(seed)
    n = 50_000
    kind = seed % 3
    if kind == 0:  # heavy exact ties in both coordinates
        cost = rng.integers(0, 300, n).astype(float)
        error = rng.integers(0, 300, n).astype(float) / 300
    elif kind == 1:  # continuous, with a few points at the extremes
        cost = rng.lognormal(size=n)
        error = rng.random(n)
        cost[:5] = cost.max()
    else:  # costs clustered far from the range ends (most points in one bin)
        cost = np.concatenate([[0.0, 1e6], 1.0 + rng.integers(0, 50, n - 2) * 1e-9])
        error = rng.integers(0, 40, n) / 40.0
    want = np.flatnonzero(pareto_mask(cost, error))
    cand = pareto_candidates(cost, error)
    assert np.all(np.diff(cand) > 0)
    assert np.array_equal(cand[pareto_mask(cost[cand], error[cand])], want)
    if kind == 0:
        assert len(cand) < n // 10  # the filter does drop most dominated points


def test_pareto_candidates_degenerate_inputs_keep_everything():
    assert pareto_candidates(np.zeros(0), np.zeros(0)).size == 0
    assert np.array_equal(pareto_candidates(np.ones(4), np.array([0.3, 0.1, 0.2, 0.1])), np.arange(4))
    cost, error = np.array([1.0, np.inf, 2.0]), np.array([0.5, 0.1, 0.2])
    assert np.array_equal(pareto_candidates(cost, error), np.arange(3))
    cost = np.array([0.0, 5e-324, 1e-320])  # range too small to scale: no filtering
    assert np.array_equal(pareto_candidates(cost, np.array([0.1, 0.2, 0.3])), np.arange(3))
    cost = np.array([-1e308, 1e308, 0.0])  # range overflows: no filtering
    assert np.array_equal(pareto_candidates(cost, np.array([0.1, 0.2, 0.3])), np.arange(3))
