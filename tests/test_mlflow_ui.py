"""What a person sees in the MLflow UI when several methods are tuned on the same cascades: the shared-range
metrics on every child (so grouping the runs table by method compares like with like), the one run-name
scheme, the comparison table on the parent, degenerate curves flagged. Checked through MLflow's client
(the REST API's view of the store)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.evaluate import comparison
from cascade.evaluate import curves as C

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "examples" / "medmcqa-llama.parquet"


def _curve(cost, error):
    return pd.DataFrame({"test_cost": np.asarray(cost, float), "test_error": np.asarray(error, float)})


def test_shared_metrics_use_one_range_for_every_method():
    a = _curve([10, 20, 40], [0.5, 0.4, 0.3])
    b = _curve([12, 30, 50], [0.5, 0.35, 0.3])
    s = comparison.shared_metrics({"a": a, "b": b})
    assert (s.lo, s.hi) == (12.0, 40.0)
    assert s.metrics["a"]["auc_shared"] == pytest.approx(C.auc(a["test_cost"], a["test_error"], 12, 40))
    assert s.metrics["b"]["auc_shared"] == pytest.approx(C.auc(b["test_cost"], b["test_error"], 12, 40))
    # own-range AUCs differ in range; the shared ones are on [12, 40] for both
    assert C.auc(a["test_cost"], a["test_error"]) != pytest.approx(s.metrics["a"]["auc_shared"])
    # error at 50% of the shared range = budget 26: best error among points costing <= 26
    assert s.metrics["a"]["error_at_50pct_shared_budget"] == 0.4
    assert s.metrics["b"]["error_at_50pct_shared_budget"] == 0.5
    assert s.notes == {}


def test_a_degenerate_curve_is_left_out_of_the_range_and_says_why():
    good1 = _curve([10, 20, 40], [0.5, 0.4, 0.3])
    good2 = _curve([12, 30, 50], [0.5, 0.35, 0.3])
    flat = _curve([25, 25], [0.4, 0.4])
    s = comparison.shared_metrics({"a": good1, "b": good2, "flat": flat})
    assert (s.lo, s.hi) == (12.0, 40.0)  # not collapsed to the single cost 25
    assert np.isnan(s.metrics["flat"]["auc_shared"])
    assert "single value" in s.notes["flat"]
    table, _ = comparison.comparison_table([
        {"cascade": ["x", "y"], "method": m, "curve": c, "summary": {"benchmark": "b", "degenerate": d}}
        for m, c, d in [("a", good1, []), ("b", good2, []), ("flat", flat, ["the test cost range is a single point"])]])
    row = table.set_index("method").loc["flat"]
    assert bool(row["degenerate"]) and "single point" in row["degenerate_reason"]
    assert np.isnan(row["rank_shared"])
    ranks = table.set_index("method")["rank_shared"]
    better = "a" if s.metrics["a"]["auc_shared"] < s.metrics["b"]["auc_shared"] else "b"
    assert ranks[better] == 1.0 and sorted(ranks[["a", "b"]]) == [1.0, 2.0]


def test_run_name_leads_with_the_method():
    assert comparison.run_name("markov-copula", ["llama3.2-1b", "llama3.2-3b"]) == \
        "markov-copula | llama3.2-1b>llama3.2-3b | n=all | seed=0"
    assert comparison.run_name("grid", "a -> b -> c", 30, 2) == "grid | a>b>c | n=30 | seed=2"


def test_overlay_figure_has_one_line_per_method():
    a = _curve([10, 20, 40], [0.5, 0.4, 0.3])
    b = _curve([12, 30, 50], [0.5, 0.35, 0.3])
    fig = comparison.overlay_figure({"a": a, "b": b}, "t")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(lb.startswith("a (auc_shared") for lb in labels) and "shared cost range" in labels


def test_tune_several_methods_logs_comparable_children_and_a_parent_table(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs import cli

    out, db = tmp_path / "out", tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    code = cli.main(["tune", "--results", str(RECORDS), "--models", "llama3.2-1b,llama3.2-3b",
                     "--method", "grid,random", "--param", "grid.n_quantiles=10", "--out", str(out),
                     "--track", "--tracking-uri", uri, "--experiment", "ui-test"])
    assert code == 0
    assert (out / "grid" / "summary.json").exists() and (out / "random" / "summary.json").exists()
    assert json.loads((out / "grid" / "summary.json").read_text())["params"]["n_quantiles"] == 10
    table = pd.read_csv(out / "comparison.csv")
    assert sorted(table["method"]) == ["grid", "random"]
    assert table["shared_cost_lo"].nunique() == 1 and table["shared_cost_hi"].nunique() == 1
    assert len(list((out / "comparison").glob("*.png"))) == 1

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ui-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cascade.kind") == "parent"]
    children = [r for r in runs if r.data.tags.get("cascade.kind") == "tune"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        method = r.data.tags["cascade.method"]
        assert r.info.run_name == f"{method} | llama3.2-1b>llama3.2-3b | n=all | seed=0"
        row = table.set_index("method").loc[method]
        assert r.data.metrics["auc_shared"] == pytest.approx(row["auc_shared"])
        assert r.data.metrics["shared_cost_lo"] == pytest.approx(row["shared_cost_lo"])
        for f in (25, 50, 75):
            assert f"error_at_{f}pct_shared_budget" in r.data.metrics
        assert "test_auc" in r.data.metrics  # the own-range metric stays, next to the shared one
    # the experiment opens on the runs (not MLflow 3's GenAI overview) and says how to compare
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "auc_shared" in exp.tags["mlflow.note.content"]
    # provenance: the commit (and where it came from) on parent and children
    for r in [parent, *children]:
        assert r.data.tags["mlflow.source.git.commit"]
        assert r.data.tags["cascade.git_commit_source"] in ("repository", "env CASCADE_GIT_COMMIT")
    arts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "comparison_table.json" in arts
    assert "report.html" in arts  # the interactive comparison, its table as the parent's description
    assert "| budget (USD/1M q) | method |" in parent.data.tags["mlflow.note.content"]
    plots = [a.path for a in client.list_artifacts(parent.info.run_id, "comparison")]
    assert plots == ["comparison/llama3.2-1b-llama3.2-3b.png"]
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="comparison_table.json",
                                                tracking_uri=uri, dst_path=str(tmp_path / "dl"))
    logged = json.loads(Path(local).read_text())
    assert "auc_shared" in logged["columns"] and len(logged["data"]) == 2


def test_tune_several_methods_refuses_a_param_without_method(tmp_path):
    from jobs import cli

    code = cli.main(["tune", "--results", str(RECORDS), "--models", "llama3.2-1b,llama3.2-3b",
                     "--method", "grid,random", "--param", "n_quantiles=10", "--out", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()


def test_provenance_under_a_ray_job(tmp_path, monkeypatch):
    """In a `ray job submit` driver: the submitting side's commit from the runtime env, the job's submission id,
    and a relative or missing tracking URI refused (it would land in the job's temporary folder)."""
    import tracking
    from tracking import mlflow_log

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_X1"}}))
    monkeypatch.setenv("CASCADE_GIT_COMMIT", "abc123")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_log.git_commit() == "abc123"
    assert mlflow_log.provenance_tags() == {"cascade.git_commit_source": "env CASCADE_GIT_COMMIT",
                                            "ray.job_submission_id": "raysubmit_X1"}
    with pytest.raises(tracking.TrackingUnavailable, match="relative"):
        tracking.tracking_uri("sqlite:///mlflow.db")
    with pytest.raises(tracking.TrackingUnavailable, match="no tracking URI was given"):
        tracking.tracking_uri(None)
    assert tracking.tracking_uri(f"sqlite:///{tmp_path / 'm.db'}") == f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert tracking.tracking_uri("sqlite:///mlflow.db").endswith("/mlflow.db")  # outside a job: made absolute


@pytest.mark.slow
def test_sweep_logs_shared_metrics_on_every_cell_and_the_comparison_on_its_parent(tmp_path):
    """examples/sweep-tiny.yaml: 2 cascades x (markov-copula, grid): every cell's run carries auc_shared on its
    cascade's shared range, the parent the table and one overlaid plot per cascade."""
    from mlflow.tracking import MlflowClient

    from jobs import sweep

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert sweep.main([str(ROOT / "examples" / "sweep-tiny.yaml"), "--no-progress", "--tracking-uri", uri,
                       "--out", str(tmp_path / "out")]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sweep-tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    cells = [r for r in runs if r.data.tags.get("cascade.kind") == "tune"]
    (parent,) = [r for r in runs if r.data.tags.get("cascade.kind") == "parent"]
    assert len(cells) == 4
    by_cascade: dict = {}
    for r in cells:
        assert r.info.run_name.startswith(r.data.tags["cascade.method"] + " | ")
        assert np.isfinite(r.data.metrics["auc_shared"])
        by_cascade.setdefault(r.data.tags["cascade.cascade"], set()).add(
            (r.data.metrics["shared_cost_lo"], r.data.metrics["shared_cost_hi"]))
    assert all(len(v) == 1 for v in by_cascade.values())  # one shared range per cascade, on every method's run
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "comparison_table.json" in arts
    assert len(client.list_artifacts(parent.info.run_id, "comparison")) == 2
    assert "report.html" in arts


@pytest.mark.slow
def test_demo_logs_shared_metrics_and_the_parent_comparison(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from mlflow.tracking import MlflowClient

    from jobs import demo

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert demo.main(["--limit", "8", "--out", str(tmp_path / "scored"), "--max-chain", "2", "--no-progress",
                      "--tracking-uri", uri, "--experiment", "demo-ui"]) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = []
    for bench in ("mmlu", "medmcqa"):  # one experiment per benchmark
        exp = client.get_experiment_by_name(f"demo-ui-{bench}")
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        runs += client.search_runs([exp.experiment_id], max_results=500)
    # the demo's method comparisons: every cascade of k >= 2 (the tiny pair x 5 methods, the example pair x 4)
    tunes = [r for r in runs if r.data.tags.get("cascade.kind") == "tune" and r.data.params.get("k") == "2"]
    # a curve spanning no cost range (the tiny 8-query pair often does) has NaN shared metrics, which MLflow
    # cannot store: its run says why instead
    assert len(tunes) == 9
    assert all("auc_shared" in r.data.metrics or r.data.tags.get("cascade.shared_note") for r in tunes)
    assert any("auc_shared" in r.data.metrics for r in tunes)
    assert all(r.info.run_name.startswith(r.data.tags["cascade.method"] + " | ") for r in tunes)
    parents = [r for r in runs if r.data.tags.get("cascade.kind") == "parent"]
    assert len(parents) == 2
    for parent in parents:
        assert "comparison_table.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert len(client.list_artifacts(parent.info.run_id, "comparison")) == 1  # one cascade of k >= 2 each
