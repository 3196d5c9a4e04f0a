"""Early abstention: routing with abstention, the tuner's limits (abstain cost -> infinity, cost 0), the
adapter from the Markov-copula model to the Markov chain of pair copulas, single models."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.data.records import CascadeData
from cascade.evaluate import curves
from cascade.evaluate import tuning
from cascade.evaluate.select import take
from cascade.tuners import abstention as A
from cascade.tuners.markov_copula import MarkovCopulaTuner


def toy(n: int, seed: int, costs=(1.0, 5.0, 50.0), skill=(0.0, 1.0, 3.0)) -> CascadeData:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    p = 1 / (1 + np.exp(-(np.array(skill)[None, :] - z[:, None])))
    correct = (rng.random(p.shape) < p).astype(float)
    conf = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + rng.normal(0, 0.5, p.shape))))
    cost = np.broadcast_to(np.array(costs, float), p.shape).copy()
    return CascadeData(["A", "B", "C"], np.arange(n), conf, correct, cost)


TRAIN, TEST = toy(800, 0), toy(1500, 1)


def test_route_answers_defers_and_abstains():
    conf = np.array([[0.9, 0.1, 0.1],    # answered by model 0 (above t_0)
                     [0.5, 0.8, 0.1],    # deferred at 0 (between a_0 and t_0), answered by 1
                     [0.1, 0.8, 0.1],    # abstained at 0 (below a_0)
                     [0.5, 0.5, 0.2],    # deferred twice, abstained by the last model (below a_2)
                     [0.5, 0.5, 0.9],    # deferred twice, answered by the last model
                     [0.5, 0.2, 0.9]])   # deferred at 0, abstained at 1
    stage, abstained = A.route([0.7, 0.7], [0.3, 0.3, 0.5], conf)
    assert stage.tolist() == [0, 1, 0, 2, 2, 1]
    assert abstained.tolist() == [False, False, True, True, False, True]
    data = CascadeData(list("abc"), np.arange(6), conf, np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1], [1, 1, 1],
                                                                   [0, 0, 0], [1, 1, 1]], float),
                       np.tile([1.0, 2.0, 4.0], (6, 1)))
    s = A.score_thresholds([0.7, 0.7], [0.3, 0.3, 0.5], data)
    assert s["abstention"] == pytest.approx(3 / 6)
    assert s["error"] == pytest.approx(1 / 6)  # only the last model's answer to query 4 is wrong
    assert s["cost"] == pytest.approx((1 + 3 + 1 + 7 + 7 + 3) / 6)  # an abstention pays for the models it ran
    assert s["shares"].tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6])
    # no abstention thresholds: the plain cascade
    plain, never = A.route([0.7, 0.7], [-np.inf] * 3, conf)
    assert not never.any()
    from cascade.tuners.routing import route as plain_route

    assert plain.tolist() == plain_route([0.7, 0.7], conf).tolist()


@pytest.mark.parametrize("idx", [[0, 2], [0, 1, 2]])
def test_infinite_abstain_cost_is_the_plain_tuner(idx):
    train, test = take(TRAIN, idx), take(TEST, idx)
    plain = A.AbstentionTuner(abstain_cost=np.inf, stages="all").fit(train)
    none = A.AbstentionTuner(abstain_cost=1.0, stages="none").fit(train)
    big = A.AbstentionTuner(abstain_cost=1e6, stages="all").fit(train)
    assert all(np.isneginf(a).all() for t in (plain, none, big) for a in t.abstain_thresholds_)
    for t in (none, big):
        assert len(t.thresholds_) == len(plain.thresholds_)
        assert np.array_equal(np.array(t.thresholds_), np.array(plain.thresholds_))
        assert np.allclose(t.train_abstention_, 0.0)
    curve = A.curve_frame(train.models, 1e6, big.thresholds_, big.abstain_thresholds_, big.train_error_,
                          big.train_abstention_, big.train_cost_, test)
    assert (curve["test_abstention"] == 0).all()
    # and the plain path on the chain of pair copulas is the Markov-copula tuner's (exact closed forms) up to the
    # model difference: predictions at its thresholds agree, and so do the test curves
    mc = MarkovCopulaTuner(integration="exact").fit(train)
    T = np.array(mc.thresholds_)
    exact = mc.model_.expected_batch(T, mc.costs_)
    up, _ = plain.joint_.to_u(upper=T)
    chain = plain.joint_.expected(up, plain.costs_, None, space="u")
    assert np.abs(exact["correct"] - chain["correct"]).max() < 0.01
    assert np.abs(exact["cost"] - chain["cost"]).max() < 0.01 * train.cost.sum(axis=1).mean()
    mc_curve = tuning.curve_frame("markov-copula", train.models, mc.thresholds_, mc.train_error_, mc.train_cost_, test)
    cmp = curves.compare_curves(curve["test_cost"], curve["test_error"], mc_curve["test_cost"], mc_curve["test_error"])
    assert abs(cmp.pct_change) < 2.0


@pytest.mark.parametrize("idx", [[0, 2], [0, 1, 2]])
def test_zero_abstain_cost_abstains_below_the_thresholds(idx):
    train, test = take(TRAIN, idx), take(TEST, idx)
    tu = A.AbstentionTuner(abstain_cost=0.0).fit(train)
    # nothing is ever answered wrong in the model: a free abstention beats any risk of an error
    assert np.all(tu.train_error_ < 1e-3)
    for t, a in zip(tu.thresholds_, tu.abstain_thresholds_):
        for data in (train, test):
            s = A.score_thresholds(t, a, data)
            assert s["error"] <= 0.01
            # only the top of the first model's range is answered, and at most the later models' maxima
            assert s["shares"][1:].sum() <= 0.01
    # once cost counts (the end of the lambda path), every stage abstains on everything below its deferral
    # threshold: no query is deferred, and the first model's abstentions are exactly those below t_1
    t, a = tu.thresholds_[-1], tu.abstain_thresholds_[-1]
    assert np.allclose(a[:-1], t)
    for data in (train, test):
        s = A.score_thresholds(t, a, data)
        c1 = data.confidence[:, 0]
        assert s["abstention"] == pytest.approx(np.mean(c1 <= t[0]))
        assert s["shares"][0] == pytest.approx(np.mean(c1 > t[0]))
        assert s["cost"] == pytest.approx(data.cost[:, 0].mean())


def test_early_abstention_lowers_the_predicted_loss_and_matches_measurement():
    train, test = take(TRAIN, [0, 1, 2]), take(TEST, [0, 1, 2])
    X = 0.3
    early = A.AbstentionTuner(abstain_cost=X, stages="all").fit(train)
    last = A.AbstentionTuner(abstain_cost=X, stages="last").fit(train)
    none = A.AbstentionTuner(abstain_cost=X, stages="none").fit(train)
    assert early.lambdas_ == none.lambdas_[:len(early.lambdas_)] or early.lambdas_[:4] == none.lambdas_[:4]
    # at each lambda the early-abstention solution starts from the plain one and only descends
    for lam in early.lambdas_[:4]:
        ze, zn = early.solve(lam), none.solve(lam)
        fe = early.predict_u(ze[None])["loss"][0] + lam * early.predict_u(ze[None])["cost"][0]
        fn = none.predict_u(zn[None])["loss"][0] + lam * none.predict_u(zn[None])["cost"][0]
        assert fe <= fn + 1e-9
    # final-model abstention abstains only at the last stage
    for t, a in zip(last.thresholds_, last.abstain_thresholds_):
        assert np.isneginf(a[:-1]).all()
    # the model's abstention rate is what the routing measures on train (the adapter maps thresholds right)
    for tu in (early, last):
        meas = A.score_curve(tu.thresholds_, tu.abstain_thresholds_, train)
        assert np.abs(meas["abstention"].to_numpy() - tu.train_abstention_).max() < 0.06
        assert np.abs(meas["cost"].to_numpy() - tu.train_cost_).max() < 0.05 * train.cost.sum(axis=1).mean()
    ce = A.curve_frame(train.models, X, early.thresholds_, early.abstain_thresholds_, early.train_error_,
                       early.train_abstention_, early.train_cost_, test)
    cn = A.curve_frame(train.models, X, none.thresholds_, none.abstain_thresholds_, none.train_error_,
                       none.train_abstention_, none.train_cost_, test)
    assert np.allclose(ce["test_error"], ce["test_wrong"] + X * ce["test_abstention"])
    cmp = curves.compare_curves(ce["test_cost"], ce["test_error"], cn["test_cost"], cn["test_error"])
    assert cmp.auc_a < cmp.auc_b  # lower test loss at equal cost on this toy


def test_single_model_abstains_below_one_minus_the_cost():
    single = take(TRAIN, [1])
    assert A.single_model_threshold(single, 0.3) == pytest.approx(0.7)
    assert np.isneginf(A.single_model_threshold(single, 1.0))
    assert np.isneginf(A.single_model_threshold(single, np.inf))
    curve, summary, tuner = A.tune_prepared(single, take(TEST, [1]), 0.3)
    assert tuner is None and len(curve) == 1
    c = TEST.confidence[:, 1]
    assert curve["test_abstention"].iloc[0] == pytest.approx(np.mean(c < 0.7))
    assert summary["diagnostics"]["abstain_below"] == pytest.approx(0.7)


def test_margin_adapter_is_the_fitted_marginal():
    tu = A.AbstentionTuner(abstain_cost=0.5).fit(take(TRAIN, [0, 1]))
    for mg, margin in zip(tu.model_.marginals_, tu.joint_.margins):
        u = np.linspace(0.001, 0.999, 201)
        x = margin.ppf(u)
        assert np.all(np.diff(x) >= 0) and x.min() >= mg.m_ and x.max() <= mg.M_
        inner = (u > mg.p_min_ + 1e-3) & (u < mg.p_min_ + mg.p_int_ - 1e-3)
        assert np.allclose(margin.cdf(x[inner]), u[inner], atol=2e-3)  # ppf inverts cdf
        assert margin.cdf_left(np.array([mg.m_]))[0] == 0.0 and margin.cdf(np.array([mg.m_]))[0] == pytest.approx(mg.p_min_)


def test_bad_parameters():
    with pytest.raises(ValueError, match="stages"):
        A.AbstentionTuner(stages="some").fit(take(TRAIN, [0, 1]))
    with pytest.raises(ValueError, match="abstain_cost"):
        A.AbstentionTuner(abstain_cost=-1).fit(take(TRAIN, [0, 1]))
    with pytest.raises(ValueError, match="unknown parameter"):
        A.tune_prepared(take(TRAIN, [0, 1]), take(TEST, [0, 1]), 0.5, {"integration": "table"})


# ------------------------------------------------------------------------------------------------
# `cascade tune --abstain-cost` and `cascade compare` on the loss
# ------------------------------------------------------------------------------------------------

def test_tune_and_compare_with_abstention(tmp_path, capsys):
    import json
    from pathlib import Path

    import pandas as pd

    from jobs import cli

    dev = Path(__file__).resolve().parents[1] / "examples" / "medmcqa-llama.parquet"
    models = "llama3.2-3b,llama3.1-70b"

    def run(*args):
        rc = cli.main([str(a) for a in args])
        cap = capsys.readouterr()
        return rc, cap.out, cap.err

    base = ["tune", "--results", dev, "--models", models]
    assert run(*base, "--abstain-cost", "0.3", "--out", tmp_path / "early")[0] == 0
    assert run(*base, "--abstain-cost", "0.5", "--param", "stages=last", "--out", tmp_path / "last5")[0] == 0
    assert run(*base, "--out", tmp_path / "plain")[0] == 0
    summary = json.loads((tmp_path / "early" / "summary.json").read_text())
    assert summary["method"] == "early-abstention" and summary["abstain_cost"] == 0.3
    assert summary["benchmark"] == "medmcqa" and np.isfinite(summary["test_auc"])
    curve = pd.read_parquet(tmp_path / "early" / "curve.parquet")
    assert np.allclose(curve["test_error"], curve["test_wrong"] + 0.3 * curve["test_abstention"])
    assert json.loads((tmp_path / "last5" / "summary.json").read_text())["method"] == "last-model-abstention"
    rc, out, _ = run("compare", tmp_path / "early", tmp_path / "plain")
    assert rc == 0 and "test loss error + X * abstention" in out and "early-abstention vs markov-copula" in out
    # losses with different abstain costs are not comparable
    rc, _, err = run("compare", tmp_path / "early", tmp_path / "last5")
    assert rc == 2 and "abstain_cost" in err
    for bad, needle in ((["--abstain-cost", "-1"], "--abstain-cost"), (["--abstain-cost", "0.3", "--method", "grid"],
                                                                       "markov-copula"),
                        (["--abstain-cost", "0.3", "--param", "integration=table"], "integration")):
        rc, _, err = run(*base, *bad, "--out", tmp_path / "bad")
        assert rc == 2 and needle in err and not (tmp_path / "bad").exists()


def test_abstention_metrics_of_a_curve():
    from cascade.evaluate import metrics

    train, test = take(TRAIN, [0, 2]), take(TEST, [0, 2])
    curve, summary, _ = A.tune_prepared(train, test, 0.3)
    m = metrics.tune_metrics(curve, summary)
    assert m["mean_test_abstention"] == pytest.approx(curve["test_abstention"].mean())
    for f in (25, 50, 75):
        i = curve.index[(curve["test_error"] == m[f"test_error_at_{f}pct_budget"])][0]
        assert m[f"test_abstention_at_{f}pct_budget"] == pytest.approx(curve.loc[i, "test_abstention"])
        assert m[f"test_wrong_at_{f}pct_budget"] == pytest.approx(curve.loc[i, "test_wrong"])
    plain = tuning.curve_frame("markov-copula", train.models, [np.array([0.5])], [0.3], [10.0], test)
    assert "mean_test_abstention" not in metrics.tune_metrics(plain, {})


@pytest.mark.slow
def test_tune_with_abstention_tracked(tmp_path, capsys):
    pytest.importorskip("mlflow")
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from jobs import cli

    dev = Path(__file__).resolve().parents[1] / "examples" / "medmcqa-llama.parquet"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = cli.main(["tune", "--results", str(dev), "--models", "llama3.2-3b,llama3.1-70b", "--abstain-cost", "0.3",
                   "--out", str(tmp_path / "t"), "--track", "--tracking-uri", uri, "--experiment", "abs"])
    assert rc == 0, capsys.readouterr().err
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("abs").experiment_id],
                              filter_string="tags.`cascade.kind` = 'tune'")
    assert len(runs) == 1
    r = runs[0]
    assert r.data.params["abstain_cost"] == "0.3" and r.data.params["method"] == "early-abstention"
    assert 0 < r.data.metrics["mean_test_abstention"] < 1 and "test_wrong_at_50pct_budget" in r.data.metrics
