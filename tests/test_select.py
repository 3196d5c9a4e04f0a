"""`cascade select`: every sub-cascade, the train-side frontier, budgets, baselines, outputs, tracking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.data.records import CascadeData
from cascade.evaluate import select
from cascade.tuners.routing import pareto_mask
from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
K3 = ["llama3.2-1b", "llama3.1-8b", "llama3.1-405b"]


def toy(n: int, seed: int, costs=(1.0, 5.0, 50.0), skill=(0.0, 1.0, 3.0)) -> CascadeData:
    """Three models on shared query difficulties: model j is correct with P = sigmoid(skill_j - z), its
    confidence is that probability seen through some noise (calibrated-like, in (0, 1))."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    p = 1 / (1 + np.exp(-(np.array(skill)[None, :] - z[:, None])))
    correct = (rng.random(p.shape) < p).astype(float)
    conf = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + rng.normal(0, 0.5, p.shape))))
    cost = np.broadcast_to(np.array(costs, float), p.shape).copy()
    return CascadeData(["A", "B", "C"], np.arange(n), conf, correct, cost)


@pytest.fixture(scope="module")
def toy_selection():
    return select.select_prepared(toy(1500, 0), toy(3000, 1), method="grid", params={"n_quantiles": 15},
                                  select_on="measured")


def test_subcascades_of_every_ordered_subset():
    subs = select.subcascades_of(["a", "b", "c", "d"])
    assert len(subs) == 2 ** 4 - 1
    assert subs[:4] == [["a"], ["b"], ["c"], ["d"]] and subs[-1] == ["a", "b", "c", "d"]
    assert len({tuple(s) for s in subs}) == len(subs)
    assert all(s == sorted(s, key="abcd".index) for s in subs)  # chain order kept


@pytest.mark.parametrize("select_on", ["measured", "predicted"])
def test_frontier_is_pareto_optimal_on_train_and_covers_every_subcascade(toy_selection, select_on):
    sel = toy_selection
    cand = sel.candidates
    cost_col, err_col = ("measured_train_cost", "measured_train_error") if select_on == "measured" else (
        "train_cost", "train_error")
    front = select.frontier_of(cand, select_on)
    fc, fe = front[cost_col].to_numpy(), front[err_col].to_numpy()
    # no candidate strictly dominates a frontier point
    for c, e in zip(fc, fe):
        dominated = (cand[cost_col] <= c) & (cand[err_col] <= e) & ((cand[cost_col] < c) | (cand[err_col] < e))
        assert not dominated.any()
    # budgets increase along the frontier while the error falls
    assert np.all(np.diff(fc) > 0) and np.all(np.diff(fe) < 0)
    # each sub-cascade's own non-dominated points are on the frontier or weakly dominated by a frontier point
    for name, g in cand.groupby("cascade"):
        own = g[pareto_mask(g[cost_col].to_numpy(), g[err_col].to_numpy())]
        for _, r in own.iterrows():
            on = ((front["cascade"] == name) & (front["point"] == r["point"])).any()
            covered = ((fc <= r[cost_col] + 1e-12) & (fe <= r[err_col] + 1e-12)).any()
            assert on or covered, (name, r["point"])
    assert len(cand) == sum(len(s.curve) for s in sel.subcascades)
    assert cand["on_frontier"].sum() == len(sel.frontier)


def test_toy_best_cascade_changes_with_budget(toy_selection):
    sel = toy_selection
    f = sel.frontier
    assert select.choose(f, 0.5) is None  # below the cheapest model: nothing fits
    assert select.choose(f, 1.0)["cascade"] == "A"  # only the cheap model fits
    mid = select.choose(f, 4.0)["cascade"]
    assert mid.startswith("A -> ") and "C" not in mid  # a cascade from A, without the expensive model
    assert "C" in select.choose(f, 40.0)["cascade"]  # the expensive model once the budget allows it
    assert f["cascade"].nunique() >= 3
    # a budget's choice is the cheapest-to-most-expensive frontier row whose train cost fits
    for b in (1.0, 4.0, 40.0, 1e6):
        r = select.choose(f, b)
        assert r["budget_lo"] <= b < r["budget_hi"]
    # every baseline point is weakly dominated on train by a frontier point (they are candidates too)
    for name, (_, rows) in sel.baselines.items():
        for c, e in zip(rows["measured_train_cost"], rows["measured_train_error"]):
            assert ((f["measured_train_cost"] <= c + 1e-12) & (f["measured_train_error"] <= e + 1e-12)).any(), name
    for name, e in sel.comparison["pairwise"].items():
        assert np.isfinite([e["auc_frontier"], e["auc_baseline"]]).all() and 0 <= e["frontier_better_share"] <= 1
    assert set(sel.baselines) == {"best_single", "full_chain", "best_pair"}
    assert sel.baselines["full_chain"][0] == "A -> B -> C"


def test_format_frontier_table_reads_at_a_glance(toy_selection):
    sel = toy_selection
    text = select.format_frontier_table(sel.frontier, comparison=sel.comparison, max_rows=4)
    lines = text.splitlines()
    assert lines[0].startswith("budget (USD/1M q)") and "cascade" in lines[0] and "test error" in lines[0]
    body = lines[2:lines.index("")]
    assert 1 <= len(body) <= 4
    assert body[0].split()[1] == "A"  # the cheapest band is the cheap model
    assert body[-1].startswith(">= ")
    assert "best_single" in text and "full_chain" in text and "best_pair" in text
    # every frontier point is in exactly one band
    bands = select.table_bands(sel.frontier, max_rows=4)
    assert sum(b["n_points"] for b in bands) == len(sel.frontier)


def test_interp_error_is_nan_outside_a_curve():
    e = select.interp_error([1.0, 3.0], [0.5, 0.3], [0.5, 1.0, 2.0, 3.0, 4.0])
    assert np.isnan(e[0]) and np.isnan(e[-1])
    assert np.allclose(e[1:4], [0.5, 0.4, 0.3])


def test_per_query_losses_average_to_the_measured_train_columns(toy_selection):
    cand = toy_selection.candidates
    err, cost = select.per_query_losses(cand, toy(1500, 0))
    assert err.shape == cost.shape == (1500, len(cand)) and set(np.unique(err)) <= {0.0, 1.0}
    np.testing.assert_allclose(err.mean(axis=0), cand["measured_train_error"], atol=1e-12)
    np.testing.assert_allclose(cost.mean(axis=0), cand["measured_train_cost"], rtol=1e-12)


def test_robust_frontier_rules(toy_selection):
    cand, train = toy_selection.candidates, toy(1500, 0)
    measured = select.frontier_of(cand, "measured")
    # no weight on the prediction: the measured frontier; all weight: the shifted prediction's
    for rule in ("blend:0", "shrink:0"):
        pd.testing.assert_frame_equal(select.frontier_of(cand, rule, train=train), measured)
    pd.testing.assert_frame_equal(select.frontier_of(cand, "shrink:1e12", train=train)[["cascade", "point"]],
                                  select.frontier_of(cand, "shifted")[["cascade", "point"]])
    # shifted: per sub-cascade, the predictions moved to the measured mean
    shifted_err = cand["train_error"] + (cand["measured_train_error"] - cand["train_error"]).groupby(
        cand["cascade"]).transform("mean")
    f = select.frontier_of(cand, "shifted")
    mask = pareto_mask(cand["measured_train_cost"].to_numpy(), shifted_err.to_numpy())
    assert set(zip(f["cascade"], f["point"])) == set(zip(cand["cascade"][mask], cand["point"][mask]))
    for rule in ("shrink", "blend:30", "bagged:40", "hull", "paired:1", "switch:1"):
        f = select.frontier_of(cand, rule, train=train)
        assert len(f) >= 2 and np.all(np.diff(f["budget_lo"].to_numpy()) > 0)
        assert np.isinf(f["budget_hi"].iloc[-1]) and np.all(f["budget_hi"].to_numpy()[:-1] == f["budget_lo"].to_numpy()[1:])
        keys = set(zip(cand["cascade"], cand["point"]))
        assert set(zip(f["cascade"], f["point"])) <= keys  # frontier points are candidates
    # bagging is seeded; with the same seed the same frontier
    a = select.frontier_of(cand, "bagged:40", train=train, seed=3)
    pd.testing.assert_frame_equal(a, select.frontier_of(cand, "bagged:40", train=train, seed=3))
    b = select.frontier_of(cand, "bagged:40", train=train)
    # on 1500 training queries the bagged frontier keeps most of the measured one's budget range
    assert b["budget_lo"].iloc[0] == measured["budget_lo"].iloc[0]
    with pytest.raises(ValueError, match="select_on"):
        select.frontier_of(cand, "bootstrap")
    with pytest.raises(ValueError, match="number"):
        select.frontier_of(cand, "blend:x")
    for rule in ("bagged", "paired", "switch"):  # per-query losses: the training data themselves
        with pytest.raises(ValueError, match="training data"):
            select.frontier_of(cand, rule)
    # n-weighted rules read n from the candidates (pooled candidates of several selections have no train)
    assert (cand["n_train"] == 1500).all()
    pd.testing.assert_frame_equal(select.frontier_of(cand, "shrink"), select.frontier_of(cand, "shrink", train=train))
    with pytest.raises(ValueError, match="training data"):
        select.frontier_of(cand.drop(columns="n_train"), "shrink")
    # fewer points: the hull's and the thinned frontiers are subsets of the measured one
    keys = set(zip(measured["cascade"], measured["point"]))
    for rule in ("hull", "paired:1", "switch:1"):
        f = select.frontier_of(cand, rule, train=train)
        assert set(zip(f["cascade"], f["point"])) <= keys and len(f) <= len(measured)


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------

def _run(args, capsys):
    rc = cli.main(list(map(str, args)))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    out = tmp_path_factory.mktemp("select") / "out"
    rc = cli.main(["select", "--results", str(DEV), "--models", ",".join(K3), "--out", str(out), "--jobs", "1"])
    assert rc == 0
    return out


def test_select_writes_one_folder(selected):
    out = selected
    assert sorted(p.name for p in out.iterdir()) == sorted(select.SELECT_FILES)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "select" and summary["chain"] == K3 and summary["n_subcascades"] == 7
    assert summary["select_on"] == "shrink" and summary["benchmark"] == "medmcqa"
    assert set(summary["baselines"]) == {"best_single", "full_chain", "best_pair"}
    front = pd.read_parquet(out / "frontier.parquet")
    for col in ("budget", "budget_lo", "budget_hi", "cascade", "thresholds", "train_error", "train_cost",
                "measured_train_error", "test_error", "test_cost"):
        assert col in front.columns, col
    assert len(front) == summary["n_frontier"] and front["budget"].is_monotonic_increasing
    # thresholds: one per deferring model of the chosen cascade
    assert all(len(t) == k - 1 for t, k in zip(front["thresholds"], front["k"]))
    subs = sorted(p.name for p in (out / "cascades").iterdir())
    assert len(subs) == 7 and "llama3.2-1b" in subs and "llama3.2-1b-llama3.1-8b-llama3.1-405b" in subs
    sub = json.loads((out / "cascades" / "llama3.2-1b-llama3.1-405b" / "summary.json").read_text())
    assert sub["models"] == ["llama3.2-1b", "llama3.1-405b"] and sub["method"] == "markov-copula"
    # the frontier's test points are those of the sub-cascades' curves
    for _, r in front.iterrows():
        curve = pd.read_parquet(out / "cascades" / "-".join(r["models"]) / "curve.parquet")
        assert np.isclose(curve.loc[curve["point"] == r["point"], "test_error"].iloc[0], r["test_error"])
    assert (out / "frontier.png").stat().st_size > 10_000
    assert "budget (USD/1M q)" in (out / "answer.txt").read_text()


def test_select_same_answer_with_two_processes(selected, tmp_path):
    out = tmp_path / "par"
    assert cli.main(["select", "--results", str(DEV), "--models", ",".join(K3), "--out", str(out), "--jobs", "2"]) == 0
    a = pd.read_parquet(selected / "frontier.parquet")
    b = pd.read_parquet(out / "frontier.parquet")
    assert a["cascade"].tolist() == b["cascade"].tolist()
    assert np.allclose(a["test_error"], b["test_error"]) and np.allclose(a["test_cost"], b["test_cost"])


def test_select_replaces_a_previous_output_only(selected, tmp_path, capsys):
    out = tmp_path / "again"
    args = ["select", "--results", DEV, "--models", ",".join(K3[:2]), "--out", out, "--jobs", "1"]
    assert _run(args, capsys)[0] == 0
    assert _run(args, capsys)[0] == 0  # a previous select output is replaced
    assert len(list((out / "cascades").iterdir())) == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    rc, _, err = _run(["select", "--results", DEV, "--models", ",".join(K3[:2]), "--out", foreign], capsys)
    assert rc == 2 and "not a `cascade select` output" in err and (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("extra, needle", [
    (["--models", "llama3.2-1b"], "at least two models"),
    (["--models", "llama3.2-1b,llama3.2-1b"], "twice"),
    (["--models", "llama3.2-1b,nope"], "nope"),
    (["--models", "llama3.2-1b,llama3.1-8b", "--abstain-cost", "-1"], "--abstain-cost"),
    (["--models", "llama3.2-1b,llama3.1-8b", "--abstain-cost", "nan"], "--abstain-cost"),
    (["--models", "llama3.2-1b,llama3.1-8b", "--abstain-cost", "0.5", "--method", "grid"], "markov-copula"),
    (["--models", "llama3.2-1b,llama3.1-8b", "--param", "bogus=1"], "bogus"),
    (["--models", "llama3.2-1b,llama3.1-8b", "--method", "nope"], "nope"),
    (["--models", "llama3.2-1b,llama3.1-8b", "--jobs", "0"], "--jobs"),
    (["--models", "llama3.2-1b,llama3.1-8b", "--select-on", "nope"], "--select-on"),
    (["--models", "llama3.2-1b,llama3.1-8b", "--select-on", "shrink:x"], "number"),
])
def test_select_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    rc, _, err = _run(["select", "--results", DEV, "--out", out, *extra], capsys)
    assert rc == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_select_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = _run(["select", "--results", DEV, "--models", "llama3.2-1b,llama3.1-8b", "--out", f], capsys)
    assert rc == 2 and "is a file" in err and f.read_text() == "x"


def test_select_with_early_abstention(tmp_path, capsys):
    out = tmp_path / "abs"
    rc, text, _ = _run(["select", "--results", DEV, "--models", "llama3.2-3b,llama3.1-70b", "--abstain-cost", "0.3",
                        "--out", out, "--jobs", "1"], capsys)
    assert rc == 0
    assert "abstain" in text.splitlines()[1] and "test loss" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "early-abstention" and summary["abstain_cost"] == 0.3
    front = pd.read_parquet(out / "frontier.parquet")
    assert np.allclose(front["test_error"], front["test_wrong"] + 0.3 * front["test_abstention"])
    assert (front["test_abstention"] > 0).any()
    assert all(len(a) == k for a, k in zip(front["abstain_thresholds"], front["k"]))


@pytest.mark.slow
def test_select_tracking(selected, tmp_path, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    out = tmp_path / "tracked"
    rc, text, err = _run(["select", "--results", DEV, "--models", ",".join(K3[:2]), "--out", out, "--jobs", "1",
                          "--track", "--tracking-uri", f"sqlite:///{db}", "--experiment", "sel"], capsys)
    assert rc == 0, err
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("sel")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cascade.kind") == "select"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    assert "full_chain.auc_frontier" in parent.data.metrics and "frontier_test_auc" in parent.data.metrics
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"frontier.png", "frontier_table.json", "answer.txt"} <= arts
    # inside another run (the demo's): the selection is a nested run there, its sub-cascades nested under it
    import tracking
    from tracking.select import log_selection

    with tracking.parent_run("sel", "demo", uri=f"sqlite:///{db}") as demo:
        sel_id = log_selection(out, experiment="sel", uri=f"sqlite:///{db}")
    run = client.get_run(sel_id)
    assert run.data.tags.get("mlflow.parentRunId") == demo.info.run_id and run.data.tags["cascade.kind"] == "select"
    kids = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{sel_id}'")
    assert len(kids) == 3
    # a store that cannot be written: exit 3, the results stay on disk
    bad = tmp_path / "afile"
    bad.write_text("x")
    out2 = tmp_path / "kept"
    rc, _, err = _run(["select", "--results", DEV, "--models", ",".join(K3[:2]), "--out", out2, "--jobs", "1",
                       "--track", "--tracking-uri", f"sqlite:///{bad}/sub/mlflow.db"], capsys)
    assert rc == 3 and "tracking failed" in err
    assert (out2 / "frontier.parquet").exists()
