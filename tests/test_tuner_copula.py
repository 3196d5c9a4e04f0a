"""The `copula` tuner: joint.py integrals against Monte Carlo, family selection, the tuner end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyvinecopulib as pv
import pytest
from scipy import stats

from cascade.data import records
from cascade.data.records import CascadeData
from cascade.evaluate import gof
from cascade.evaluate import tuning as tune
from cascade.tuners.copula import (CopulaModel, CopulaTuner, EcdfMargin, BetaMargin, fit_correctness, pseudo_obs,
                                   select_pair)
from cascade.tuners.joint import DVineJoint, MarkovJoint, empirical

ROOT = Path(__file__).resolve().parents[1]
QWEN = ROOT / "examples" / "medmcqa-qwen_oai.parquet"


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


def test_dvine_joint_matches_monte_carlo_and_differs_from_markov():
    margins, copulas = _chain()
    tree2 = [pv.Bicop(pv.BicopFamily.frank, parameters=np.array([[4.0]])),
             pv.Bicop(pv.BicopFamily.clayton, parameters=np.array([[2.0]]))]

    def g(xp, x):
        return x * (0.5 + np.asarray(xp) / 2)

    corr = [None, g, None, g]
    joint = DVineJoint(margins, copulas, tree2, correctness=corr)
    X = joint.sample(300_000, rng=4)
    T = np.array([[0.6, 0.7, 0.8], [0.9, 0.5, 0.95], [0.99, 0.97, 0.99], [0.3, 0.9, 0.6]])
    L = np.array([[0.3, 0.4, -np.inf, 0.6]] * 4)
    model, mc = joint.evaluate(T, L), empirical(X, T, L, correctness=corr)
    markov = MarkovJoint(margins, copulas, correctness=corr).evaluate(T, L)
    for key in model:
        assert np.abs(model[key] - mc[key]).max() < 4e-3, key
    assert np.abs(markov["reach"] - mc["reach"]).max() > 5e-3  # the second tree matters here
    # a D-vine whose second tree is independence is the Markov chain
    same = DVineJoint(margins, copulas, [None, None]).evaluate(T)
    plain = MarkovJoint(margins, copulas, n_cells=48).evaluate(T)
    for key in same:
        np.testing.assert_allclose(same[key], plain[key], atol=1e-10)


# ------------------------------------------------------------------------------------------------
# margins, pair selection, correctness
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [BetaMargin, EcdfMargin])
def test_margins_cdf_ppf_and_atoms(cls):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.beta(5, 2, 400) * 0.6 + 0.3, np.full(150, 0.95), [0.3]])  # 27% mass at the max
    mg = cls().fit(x)
    u = np.linspace(0.001, 0.999, 500)
    q = mg.ppf(u)
    assert np.all(np.diff(q) >= -1e-12)
    assert np.all(mg.cdf(q) >= u - 1e-3)  # F(Q(u)) >= u
    assert np.all(mg.cdf_left(q) <= u + 1e-3)  # F(Q(u)-) <= u
    top = float(mg.cdf(0.95) - mg.cdf_left(0.95))
    assert top == pytest.approx(150 / len(x), abs=0.01)
    assert any(abs(a - (1 - top)) < 1e-9 for a in mg.atoms_u())


def test_select_pair_picks_the_smallest_criterion_and_finds_the_family():
    cop = pv.Bicop(pv.BicopFamily.clayton, parameters=np.array([[3.0]]))
    u = cop.sample(800, seeds=[1])
    chosen, rows = select_pair(u[:, 0], u[:, 1], criterion="bic")
    ok = [r for r in rows if "error" not in r]
    best = min(ok, key=lambda r: r["bic"])
    assert best["chosen"] and sum(r["chosen"] for r in rows) == 1
    assert best["family"] in ("clayton", "bb1", "bb7")  # Clayton or a family that nests it
    assert chosen.tau == pytest.approx(0.6, abs=0.06)
    rng = np.random.default_rng(2)
    _, rows = select_pair(rng.random(500), rng.random(500), criterion="bic")
    assert next(r for r in rows if r["chosen"])["family"] == "indep"
    with pytest.raises(ValueError, match="criterion"):
        select_pair(u[:, 0], u[:, 1], criterion="hqc")
    with pytest.raises(ValueError, match="families"):
        select_pair(u[:, 0], u[:, 1], families=("gumbel", "nope"))


def test_small_samples_restrict_families_by_points_per_parameter():
    cop = pv.Bicop(pv.BicopFamily.student, parameters=np.array([[0.6], [4.0]]))
    u = cop.sample(40, seeds=[3])
    _, free = select_pair(u[:, 0], u[:, 1], criterion="aicc")
    chosen, rows = select_pair(u[:, 0], u[:, 1], criterion="aicc", obs_per_par=10)
    for r in rows:
        if "error" in r:
            continue
        assert r["eligible"] == (r["npars"] <= 0 or 40 >= 10 * r["npars"])
        p = r["npars"]
        assert r["aicc"] == pytest.approx(r["aic"] + 2 * p * (p + 1) / (40 - p - 1) if 40 > p + 1 else np.inf,
                                          abs=0.05)  # npars is rounded in the rows
    pick = next(r for r in rows if r["chosen"])
    assert pick["eligible"] and pick["npars"] <= 4
    assert pick["aicc"] == min(r["aicc"] for r in rows if r.get("eligible"))
    assert all(r["eligible"] for r in free if "error" not in r)  # no rule: every family competes
    tll = next(r for r in rows if r["family"] == "tll")
    assert tll["npars"] > 4 and not tll["eligible"]  # the nonparametric family needs many more points
    # on many points the rule changes nothing
    u = cop.sample(600, seeds=[4])
    a, _ = select_pair(u[:, 0], u[:, 1], criterion="aic", obs_per_par=10)
    b, _ = select_pair(u[:, 0], u[:, 1], criterion="aic")
    assert (a.family, a.rotation) == (b.family, b.rotation) and np.allclose(a.parameters, b.parameters)
    # the conditional correctness model (3 parameters) needs 3 * obs_per_par points
    rng = np.random.default_rng(7)
    prev, c = rng.uniform(0.05, 0.95, 25), rng.uniform(0.05, 0.95, 25)
    y = (rng.random(25) < np.where(prev > 0.5, 0.95, 0.05)).astype(float)
    g, info = fit_correctness(prev, c, y, "aic", obs_per_par=10)
    assert g is None and info["eligible"] is False and info["chosen"] == "calibrated"
    g, info = fit_correctness(prev, c, y, "aic")
    assert info["eligible"] is True


def test_ties_enter_as_discrete_variables():
    rng = np.random.default_rng(3)
    u, ul = pseudo_obs(np.array([0.1, 0.5, 0.5, 0.9]), True, rng)
    np.testing.assert_allclose(u, [0.2, 0.6, 0.6, 0.8])
    np.testing.assert_allclose(ul, [0.0, 0.2, 0.2, 0.6])
    u, ul = pseudo_obs(np.array([0.1, 0.5, 0.5, 0.9]), False, rng)
    assert ul is None and sorted(u) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    x = np.column_stack([rng.random(300), np.where(rng.random(300) < 0.3, 1.0, rng.random(300))])
    model = CopulaModel(correctness="calibrated").fit(x)
    assert model.discrete_ == [False, True]
    assert model.describe()["pairs"][0]["var_types"] == ["c", "d"]


def test_conditional_correctness_is_kept_only_when_it_pays():
    rng = np.random.default_rng(5)
    n = 3000
    prev, c = rng.uniform(0.05, 0.95, n), rng.uniform(0.05, 0.95, n)
    logit = np.log(c / (1 - c))
    y_dep = (rng.random(n) < 1 / (1 + np.exp(-(logit + 1.5 * (prev - 0.5))))).astype(float)
    y_cal = (rng.random(n) < c).astype(float)
    g, info = fit_correctness(prev, c, y_dep, "bic")
    assert g is not None and info["chosen"] == "conditional" and info["coef"][2] > 0
    assert np.all(g(np.full(3, 0.1), np.full(3, 0.6)) < g(np.full(3, 0.9), np.full(3, 0.6)))
    g, info = fit_correctness(prev, c, y_cal, "bic")
    assert g is None and info["chosen"] == "calibrated"


# ------------------------------------------------------------------------------------------------
# the model and the tuner
# ------------------------------------------------------------------------------------------------

def _synthetic_cascade(n, rng):
    margins, copulas = _chain()
    joint = MarkovJoint(margins, copulas)
    X = joint.sample(n, rng)
    correct = (rng.random(X.shape) < X).astype(float)
    cost = np.broadcast_to(np.array([1.0, 3.0, 10.0, 30.0]), X.shape).copy()
    return CascadeData(["a", "b", "c", "d"], np.arange(n), X, correct, cost)


@pytest.mark.parametrize("kw", [{}, {"margin": "ecdf", "criterion": "bic"}, {"structure": "auto"}])
def test_tuner_predictions_match_fresh_data_from_the_same_law(kw):
    """Fit on 2000 draws of a known cascade law; the curve's predicted error and cost hold on 200,000 fresh
    draws (the model, its integrals and the optimiser together)."""
    rng = np.random.default_rng(6)
    train, fresh = _synthetic_cascade(2000, rng), _synthetic_cascade(200_000, rng)
    tuner = CopulaTuner(**kw).fit(train)
    assert len(tuner.thresholds_) >= 5
    scored = tune.evaluate.score_curve(tuner.thresholds_, fresh)
    assert np.abs(scored["error"].to_numpy() - tuner.train_error_).max() < 0.03
    rel = np.abs(scored["cost"].to_numpy() - tuner.train_cost_) / scored["cost"].to_numpy()
    assert rel.max() < 0.08
    # the curve spans from the first model alone to (nearly) the most accurate point
    assert tuner.train_cost_.min() < 1.3 and tuner.train_error_.min() < scored["error"].max()
    json.dumps(tuner.diagnostics_)


def test_tuner_on_dev_data_with_gof_report():
    df = records.load(QWEN)
    models = ["gpt-4o-mini", "qwen2.5-72b-instruct", "gpt-4o"]
    train, test, _ = tune.prepare(df, models=models)
    curve, summary, tuner = tune.tune_prepared(train, test, "copula", {"criterion": "bic"})
    assert len(curve) >= 5 and np.isfinite(summary["test_auc"])
    lo = train.confidence[:, :-1].min(axis=0)
    hi = train.confidence[:, :-1].max(axis=0)
    T = np.array(tuner.thresholds_)
    assert np.all(T >= lo) and np.all(T <= hi)
    pairs = summary["diagnostics"]["model"]["pairs"]
    assert pairs[0]["var_types"] == ["d", "c"]  # gpt-4o-mini: 38% of its training confidences at the max
    rep = gof.report(tuner.model_, train, test, n_boot=5)
    json.dumps(rep)
    text = gof.format_report(rep)
    for fam in rep["families"]:
        assert f"chosen {fam['family']}" in text
        assert len(fam["candidates"]) == 12 and "aic" in fam["candidates"][0]
    assert "Gumbel" in text and "correctness given" in text


def test_cli_tune_copula(tmp_path, capsys):
    from jobs import cli

    out = tmp_path / "cop"
    rc = cli.main(["tune", "--results", str(QWEN), "--models", "gpt-4o-mini,qwen2.5-72b-instruct", "--method",
                   "copula", "--param", "criterion=bic", "--param", "margin=ecdf", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "copula" and summary["params"]["criterion"] == "bic"
    assert summary["diagnostics"]["model"]["pairs"][0]["candidates"]


def test_bad_parameters_are_refused():
    train = _synthetic_cascade(200, np.random.default_rng(0))
    for kw, match in (({"margin": "kde"}, "margin"), ({"criterion": "hqc"}, "criterion"), ({"ties": "x"}, "ties"),
                      ({"structure": "cvine"}, "structure"), ({"correctness": "x"}, "correctness")):
        with pytest.raises(ValueError, match=match):
            CopulaTuner(**kw).fit(train)
