"""Contract tests of the baseline tuners: bayes-opt, random, margin (issue 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cascade.evaluate import curves as evaluate
from cascade.evaluate import tuning as tune
from cascade.tuners import margin as margin_mod
from cascade.tuners.random_routing import expected_score, vertex_thresholds
from cascade.data.records import CascadeData


def make_data(n=200, k=3, seed=0) -> CascadeData:
    """Calibrated-looking confidences whose models get better and dearer along the cascade."""
    rng = np.random.default_rng(seed)
    skill = np.linspace(0.4, 0.85, k)
    conf = np.clip(rng.beta(2, 2, size=(n, k)) * 0.5 + skill[None, :] - 0.25, 0.01, 0.99)
    correct = (rng.random((n, k)) < conf).astype(float)
    cost = np.broadcast_to(np.geomspace(10, 1000, k), (n, k)).copy()
    return CascadeData([f"m{j}" for j in range(k)], np.arange(n), conf, correct, cost)


METHODS = [("bayes-opt", {"n_trials": 40}), ("random", {}), ("margin", {}), ("bayes-opt", {"mode": "scalar", "n_trials": 15})]


@pytest.mark.parametrize("method,params", METHODS)
@pytest.mark.parametrize("k", [2, 4])
def test_contract(method, params, k):
    train, test = make_data(300, k, 1), make_data(400, k, 2)
    t = tune.get_method(method)(**params, seed=3).fit(train)
    assert len(t.thresholds_) >= 2
    assert len(t.train_error_) == len(t.train_cost_) == len(t.thresholds_)
    lo = train.confidence[:, :-1].min(axis=0)
    hi = train.confidence[:, :-1].max(axis=0)
    for th in t.thresholds_:
        th = np.asarray(th, float)
        assert th.shape == (k - 1,)
        finite = np.isfinite(th)
        # finite thresholds lie in the training confidence range; +-inf only encode "always"/"never"
        assert np.all(th[finite] >= lo[finite] - 1e-12) and np.all(th[finite] <= hi[finite] + 1e-12)
        if method == "bayes-opt":
            assert finite.all()
    # the tuner's own train numbers are what the routing gives on train
    for th, e, c in zip(t.thresholds_, t.train_error_, t.train_cost_):
        s = evaluate.score_thresholds(th, train)
        assert s["error"] == pytest.approx(e) and s["cost"] == pytest.approx(c)
    # test curve after Pareto filtering: cost up, error strictly down
    sc = evaluate.score_curve(t.thresholds_, test)
    keep = evaluate.pareto_mask(sc["cost"], sc["error"])
    f = sc[keep].sort_values("cost")
    assert np.all(np.diff(f["cost"]) > 0) and np.all(np.diff(f["error"]) < 0)
    # train curve as returned is already sorted by cost
    assert np.all(np.diff(t.train_cost_) >= 0)


def test_bayes_opt_train_front_is_pareto():
    train = make_data(300, 3, 4)
    t = tune.get_method("bayes-opt")(n_trials=60, seed=0).fit(train)
    assert evaluate.pareto_mask(t.train_cost_, t.train_error_).all()
    assert np.all(np.diff(t.train_error_) < 0)
    assert t.diagnostics_["n_candidates"] == 60


@pytest.mark.parametrize("params", [{"n_trials": 30}, {"mode": "scalar", "n_trials": 10, "lambdas": [0.0, 1e-3, 1e-2]}])
def test_bayes_opt_seeded(params):
    train = make_data(200, 3, 5)
    cls = tune.get_method("bayes-opt")
    a = cls(**params, seed=11).fit(train)
    b = cls(**params, seed=11).fit(train)
    c = cls(**params, seed=12).fit(train)
    assert len(a.thresholds_) == len(b.thresholds_)
    assert all(np.array_equal(x, y) for x, y in zip(a.thresholds_, b.thresholds_))
    flat = lambda t: np.concatenate([np.ravel(x) for x in t.thresholds_])  # noqa: E731
    assert flat(a).shape != flat(c).shape or not np.array_equal(flat(a), flat(c))


def test_bayes_opt_gp_sampler():
    train = make_data(150, 2, 6)
    t = tune.get_method("bayes-opt")(sampler="gp", n_trials=14, n_startup_trials=8, seed=0).fit(train)
    assert t.diagnostics_["sampler"] == "gp" and len(t.thresholds_) >= 1


def test_bayes_opt_storage_persists_and_resumes(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    train = make_data(150, 3, 7)
    cls = tune.get_method("bayes-opt")
    cls(n_trials=12, seed=0, storage=url, study_name="s1").fit(train)
    assert len(optuna.load_study(study_name="s1", storage=url).trials) == 12
    t = cls(n_trials=12, seed=0, storage=url, study_name="s1").fit(train)  # resumes: 24 trials
    assert len(optuna.load_study(study_name="s1", storage=url).trials) == 24
    assert t.diagnostics_["n_candidates"] == 24


@pytest.mark.parametrize("bad", [{"sampler": "nope"}, {"mode": "nope"}, {"n_trials": 0}])
def test_bayes_opt_bad_params(bad):
    with pytest.raises(ValueError):
        tune.get_method("bayes-opt")(**bad).fit(make_data(50, 2, 0))


def test_random_routing_is_exact_mixture():
    data = make_data(500, 3, 8)
    t = tune.get_method("random")().fit(data)
    # vertices: model j answers everything
    for j, th in enumerate(t.thresholds_):
        assert np.all(evaluate.route(th, data.confidence) == j)
    # a random policy escalating 0 -> 1 with probability p lies on the segment between vertices 0 and 1
    rng = np.random.default_rng(0)
    p = 0.3
    probs = np.array([1 - p, p, 0.0])
    exact = expected_score(probs, data)
    sims = []
    for _ in range(400):
        a = (rng.random(data.n) < p).astype(int)
        sims.append(evaluate.score_routing(a, data)["error"])
    assert np.mean(sims) == pytest.approx(exact["error"], abs=3e-3)
    v0, v1 = evaluate.score_thresholds(t.thresholds_[0], data), evaluate.score_thresholds(t.thresholds_[1], data)
    assert exact["error"] == pytest.approx((1 - p) * v0["error"] + p * v1["error"])
    assert exact["cost"] == pytest.approx((1 - p) * v0["cost"] + p * v1["cost"])
    # so the piecewise-linear AUC of the vertices is the AUC of random routing
    with pytest.raises(ValueError):
        expected_score([0.5, 0.6, 0.0], data)


def test_vertex_thresholds_shape():
    assert [list(v) for v in vertex_thresholds(2)] == [[-np.inf], [np.inf]]


def test_margin_offline_rates_monotone():
    train = make_data(300, 2, 9)
    t = tune.get_method("margin")(n_rates=11).fit(train)
    assert np.all(np.diff(t.train_cost_) >= 0)
    shares = [np.mean(evaluate.route(th, train.confidence) == 1) for th in t.thresholds_]
    assert shares[0] == 0.0 and shares[-1] == 1.0
    assert np.all(np.diff(shares) >= 0)
    for r, s in zip(t.rates_, shares):
        assert abs(s - r) <= 1.0 / train.n + 1e-9  # escalation share ~ target rate


def _stream(n=300, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.random(n)
    correct = np.column_stack([(rng.random(n) < m).astype(float), (rng.random(n) < 0.9).astype(float)])
    return m, correct


@pytest.mark.parametrize("warmup", [0, 20])
def test_margin_online_budget_never_exceeded(warmup):
    m, correct = _stream(250, 1)
    c0, c1 = 10.0, 90.0
    frame, area = margin_mod.online_margin_curve(m, correct, c0, c1, n_budgets=25, n_orders=3, warmup=warmup, seed=0)
    assert (frame["max_spend_ratio"] <= 1.0 + 1e-12).all()
    assert frame["escalation_rate"].iloc[0] == 0.0
    assert np.all(frame["escalation_rate"] <= (frame["budget"] - c0) / c1 + 1e-12)
    assert frame["accuracy"].iloc[-1] > frame["accuracy"].iloc[0]
    assert 0 <= area <= 1
    frame2, area2 = margin_mod.online_margin_curve(m, correct, c0, c1, n_budgets=25, n_orders=3, warmup=warmup, seed=0)
    pd.testing.assert_frame_equal(frame, frame2)
    assert area == area2


def test_margin_online_warmup_and_budget_cap():
    m, correct = _stream(100, 2)
    order = np.arange(100)
    r = margin_mod.online_margin_run(m, correct, 1.0, 1.0, budget=2.0, order=order, warmup=100)
    assert r["escalation_rate"] == 0.0  # everything inside the warm-up
    r = margin_mod.online_margin_run(m, correct, 1.0, 1.0, budget=2.0, order=order, warmup=20)
    assert r["escalation_rate"] == pytest.approx(80 / 100)  # rate 1: every query after the warm-up
    r = margin_mod.online_margin_run(m, correct, 1.0, 1.0, budget=1.1, order=order, warmup=0)
    assert r["spent"] <= r["total_budget"] + 1e-9 and r["escalation_rate"] <= 0.1 + 1e-12


def test_margin_escalates_low_margins():
    m, correct = _stream(400, 3)
    r = margin_mod.online_margin_run(m, correct, 1.0, 1.0, budget=1.3, order=np.arange(400), warmup=0)
    # the cheap model is right more often on high margins, so margin sampling beats random routing
    acc_random = 0.7 * correct[:, 0].mean() + 0.3 * correct[:, 1].mean()
    assert r["accuracy"] > acc_random


@pytest.mark.parametrize("method", ["bayes-opt", "random", "margin"])
def test_empty_split_and_single_model(method):
    cls = tune.get_method(method)
    d = make_data(50, 3, 0)
    with pytest.raises(ValueError, match="empty"):
        cls().fit(d.subset(np.array([], int)))
    one = CascadeData(["m0"], d.query_id, d.confidence[:, :1], d.correct[:, :1], d.cost[:, :1])
    with pytest.raises(ValueError, match="two models"):
        cls().fit(one)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        tune.get_method("no-such-method")


def test_registered():
    import cascade.tuners  # noqa: F401  (the package registers every tuner)
    for m in ("bayes-opt", "random", "margin"):
        assert m in tune.METHODS
