"""Optuna studies of bayes-opt runs persisted beside the MLflow store (study name = run id), a tuning run's
records provenance (benchmark, fingerprint) from one function, and `cascade study` logged as a parent run with
one child per chain x method. Checked through MLflow's client (the REST API's view of the store) and Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("mlflow")
optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "examples" / "medmcqa-llama.parquet"
PAIR = "llama3.2-1b,llama3.2-3b"


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri, experiment):
    c = _client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id])


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CASCADE_OPTUNA_STORAGE", raising=False)


# ------------------------------------------------------------------------------------------------
# Optuna studies
# ------------------------------------------------------------------------------------------------

def test_tune_bayes_opt_study_lands_in_optuna_db_under_the_run_id(tmp_path, no_env):
    from jobs import cli

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert cli.main(["tune", "--results", str(RECORDS), "--models", PAIR, "--method", "bayes-opt",
                     "--param", "n_trials=15", "--out", str(tmp_path / "out"), "--track", "--tracking-uri", uri,
                     "--experiment", "opt"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["diagnostics"]["optuna"]["studies"][0]["trials"]) == 15  # exported: `cascade log` can rebuild
    (run,) = [r for r in _runs(uri, "opt") if r.data.tags.get("cascade.kind") == "tune"]
    storage = f"sqlite:///{tmp_path / 'store' / 'optuna.db'}"
    assert run.data.tags["optuna.storage"] == storage
    assert run.data.tags["optuna.study_name"] == run.info.run_id
    study = optuna.load_study(study_name=run.info.run_id, storage=storage)
    assert len(study.trials) == 15 and len(study.directions) == 2
    assert study.metric_names == ["train_error", "train_cost"]
    assert study.user_attrs["mlflow_run_id"] == run.info.run_id and study.user_attrs["cascade"] == "llama3.2-1b -> llama3.2-3b"
    # the rebuilt trials are the tuner's: its Pareto points are among them
    pts = {(round(t.values[0], 12), round(t.values[1], 9)) for t in study.trials}
    curve = pd.read_parquet(tmp_path / "out" / "curve.parquet")
    assert {(round(e, 12), round(c, 9)) for e, c in zip(curve["train_error"], curve["train_cost"])} <= pts


def test_scalar_mode_one_study_per_lambda_and_explicit_storage_is_linked_not_copied(tmp_path, no_env):
    import tracking
    from cascade.data import records
    from cascade.evaluate import tuning as tune

    df = records.load(RECORDS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = tune.run_tuning(df, models=PAIR.split(","), method="bayes-opt",
                          params={"mode": "scalar", "lambdas": [0.0, 0.01], "n_trials": 6})
    tracking.configure(uri, "scalar")
    run_id = tracking.log_tune(res, records_df=df)
    run = _client(uri).get_run(run_id)
    names = [f"{run_id}/lambda=0", f"{run_id}/lambda=0.01"]
    assert run.data.tags["optuna.study_name"] == ", ".join(names)
    for name, lam in zip(names, (0.0, 0.01)):
        st = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        assert len(st.trials) == 6 and st.user_attrs["lambda"] == lam
        assert all(t.value == pytest.approx(t.user_attrs["error"] + lam * t.user_attrs["cost"]) for t in st.trials)

    own = f"sqlite:///{tmp_path / 'mine.db'}"
    res = tune.run_tuning(df, models=PAIR.split(","), method="bayes-opt",
                          params={"n_trials": 5, "storage": own, "study_name": "mine"})
    assert "optuna" not in res.summary["diagnostics"]
    run = _client(uri).get_run(tracking.log_tune(res, records_df=df))
    assert run.data.tags["optuna.storage"] == own and run.data.tags["optuna.study_name"] == "mine"
    beside = {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")}
    assert beside == set(names)  # not copied beside the store


def test_storage_choice_env_and_artifact_fallback(tmp_path, monkeypatch, no_env):
    import mlflow

    import tracking
    from tracking import optuna_studies as O

    assert O.storage_for("sqlite:////a/b/mlflow.db") == "sqlite:////a/b/optuna.db"
    assert O.storage_for("http://127.0.0.1:5000") is None
    monkeypatch.setenv(O.STORAGE_ENV, f"sqlite:///{tmp_path / 'env.db'}")
    assert O.storage_for("http://127.0.0.1:5000") == f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.delenv(O.STORAGE_ENV)
    export = {"mode": "multi", "sampler": "tpe", "seed": 0, "studies": [{
        "name": "", "directions": ["minimize", "minimize"], "metric_names": ["e", "c"], "param_names": ["t0"],
        "bounds": [[0.0, 1.0]], "user_attrs": [], "trials": [[0.1, 0.5, 10.0], [0.7, 0.4, 20.0]]}]}
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking.configure(uri, "fallback")
    with mlflow.start_run() as run:  # a server store (no shared file): the study goes with the run
        tags = O.log_studies(export, run.info.run_id, "http://127.0.0.1:5000")
    assert tags == {"optuna.storage": "artifact:optuna/study.db", "optuna.study_name": run.info.run_id}
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="optuna/study.db",
                                                tracking_uri=uri, dst_path=str(tmp_path / "dl"))
    st = optuna.load_study(study_name=run.info.run_id, storage=f"sqlite:///{local}")
    assert [t.values for t in st.trials] == [[0.5, 10.0], [0.4, 20.0]]


def test_two_tunes_at_once_write_one_optuna_db(tmp_path, no_env):
    """Two processes logging bayes-opt runs to one new store at once: both succeed, each study complete."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-m", "jobs.tune", "--results", str(RECORDS), "--models", models,
                               "--method", "bayes-opt", "--param", f"n_trials={n}", "--out", str(tmp_path / f"o{i}"),
                               "--tracking-uri", uri, "--experiment", "two"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, (models, n) in enumerate([(PAIR, 12), ("llama3.2-1b,llama3.1-8b", 9)])]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    runs = [r for r in _runs(uri, "two") if r.data.tags.get("cascade.kind") == "tune"]
    assert len(runs) == 2
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    counts = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    want = {r.info.run_id: (12 if r.data.tags["cascade.cascade"] == "llama3.2-1b -> llama3.2-3b" else 9) for r in runs}
    assert counts == want


# ------------------------------------------------------------------------------------------------
# Records provenance (one function for tune, log, sweep)
# ------------------------------------------------------------------------------------------------

def test_records_provenance_finds_the_benchmark_when_the_summary_lacks_it():
    from cascade.data import records
    from tracking.mlflow_log import records_provenance

    df = records.load(RECORDS)
    fp = records.fingerprint(RECORDS)
    assert records_provenance({"benchmark": "medmcqa"}, RECORDS) == ("medmcqa", fp)
    assert records_provenance({}, RECORDS) == ("medmcqa", fp)  # from the file's footers
    assert records_provenance({}, None, df) == ("medmcqa", records.fingerprint(df))
    assert records_provenance({}, None, None) == ("unknown", "unknown")


# ------------------------------------------------------------------------------------------------
# cascade study
# ------------------------------------------------------------------------------------------------

def test_study_logs_a_parent_and_one_run_per_chain_and_method(tmp_path, no_env, capsys):
    from jobs import cli

    out, uri = tmp_path / "study", f"sqlite:///{tmp_path / 'm.db'}"
    chain = "llama3.2-1b,llama3.2-3b,llama3.1-8b"
    assert cli.main(["study", "--results", f"{RECORDS}:{chain}", "--methods", "grid,random", "--reference", "random",
                     "--n-values", "20,all", "--subsamples", "2", "--out", str(out), "--tracking-uri", uri]) == 0
    runs = _runs(uri, "medmcqa-study")
    (parent,) = [r for r in runs if r.data.tags.get("cascade.kind") == "parent"]
    children = {r.data.tags["cascade.method"]: r for r in runs if r.data.tags.get("cascade.kind") == "study"}
    assert sorted(children) == ["grid", "random"]  # one per chain x method, not one per fit (32 here)
    assert parent.data.tags["cascade.study"] == "true" and parent.data.tags["cascade.reference"] == "random"
    assert parent.data.metrics["n_fits"] == 32  # 4 cascades x 2 n x 2 subsamples x 2 methods
    exp = _client(uri).get_experiment_by_name("medmcqa-study")  # opens on its runs, says how to compare
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "sort by `pct_change`" in exp.tags["mlflow.note.content"]
    summary = pd.read_csv(out / "summary.csv", dtype={"n": str, "k": str})
    per_cascade = pd.read_csv(out / "per_cascade.csv", dtype={"n": str})
    for method, r in children.items():
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.info.run_name == f"{method} | llama3.2-1b>llama3.2-3b>llama3.1-8b | n=20,all | seed=0"
        assert r.data.tags["cascade.benchmark"] == "medmcqa" and r.data.params["reference"] == "random"
        for n in ("20", "all"):
            for m in ("pct_change", "auc", "auc_ref", "auc_own", "win_share"):
                assert f"{m}.n_{n}" in r.data.metrics
    grid, ref = children["grid"].data.metrics, children["random"].data.metrics
    assert ref["pct_change"] == 0.0 and ref["pct_change.n_all"] == 0.0  # the reference against itself
    row = summary[(summary["n"] == "all") & (summary["method"] == "grid") & (summary["k"] == "all")].iloc[0]
    assert grid["pct_change.n_all.kall"] == pytest.approx(row["mean_pct_change"])
    assert grid["pct_change"] == pytest.approx(row["mean_pct_change"])  # headline: the largest n
    pc = per_cascade[(per_cascade["n"] == "all") & (per_cascade["method"] == "grid")]
    assert grid["pct_change.n_all"] == pytest.approx(pc["pct_change"].mean())
    assert grid["auc.n_all"] == pytest.approx(pc["auc"].mean())
    assert grid["wilcoxon_p.n_all.k2"] == pytest.approx(
        summary[(summary["n"] == "all") & (summary["method"] == "grid") & (summary["k"] == "2")].iloc[0]["wilcoxon_p_less"])
    c = _client(uri)
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"summary_table.json", "per_cascade_table.json", "table.txt", "summary.csv", "meta.json", "plots"} <= arts
    assert len(c.list_artifacts(parent.info.run_id, "plots")) == 4
    assert "report.html" in arts  # every method x cascade curve, the lowest test error per budget
    parent_now = c.get_run(parent.info.run_id)
    assert "| budget (USD/1M q) | method |" in parent_now.data.tags["mlflow.note.content"]
    assert "per_cascade_table.json" in {a.path for a in c.list_artifacts(children["grid"].info.run_id)}
    # logged once: `cascade log` of the same folder adds nothing
    capsys.readouterr()
    assert cli.main(["log", str(out), "--tracking-uri", uri]) == 0
    assert "already logged" in capsys.readouterr().out
    assert len(_runs(uri, "medmcqa-study")) == 3


def test_study_with_a_bad_store_runs_nothing_and_exits_3(tmp_path, no_env, capsys):
    from jobs import cli

    (tmp_path / "dir.db").mkdir()
    out = tmp_path / "study"
    code = cli.main(["study", "--results", str(RECORDS), "--methods", "grid,random", "--reference", "random",
                     "--n-values", "all", "--subsamples", "1", "--out", str(out),
                     "--tracking-uri", f"sqlite:///{tmp_path / 'dir.db'}"])
    err = capsys.readouterr().err
    assert code == 3
    (line,) = [ln for ln in err.splitlines() if ln.startswith("cascade study: tracking failed")]
    assert "is a folder" in line and "nothing was run" in line
    assert not (out / "runs.csv").exists()
