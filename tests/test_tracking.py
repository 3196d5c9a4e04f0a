"""tracking/: MLflow logging of tune and scoring runs, read back through MlflowClient and the REST API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("mlflow")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

import tracking  # noqa: E402
from cascade.evaluate import tuning as tune  # noqa: E402
from jobs import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
PAIR = ["llama3.2-1b", "llama3.1-70b"]


@pytest.fixture(scope="module")
def records_df():
    from cascade.data import records

    return records.load(DEV)


@pytest.fixture()
def uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _client(uri):
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{ROOT / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.org:5000")
    assert tracking.tracking_uri() == "http://example.org:5000"
    assert tracking.tracking_uri(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    monkeypatch.chdir(tmp_path)  # relative SQLite paths become absolute (Ray jobs run in a temp folder)
    assert tracking.tracking_uri("sqlite:///rel.db") == f"sqlite:///{tmp_path.resolve() / 'rel.db'}"


def test_log_tune_roundtrip(uri, tmp_path, records_df):
    res = tune.run_tuning(records_df, models=PAIR, method="grid", benchmark="medmcqa")
    with tracking.parent_run("exp-a", "parent", uri=uri) as parent:
        run_id = tracking.log_tune(res, cascade=PAIR, method="grid", records_path=DEV, records_df=records_df,
                                   parent_run_id=parent.info.run_id, cell_key="cell-1")
    client = _client(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["cascade.cell_key"] == "cell-1"
    p = run.data.params
    assert p["cascade"] == " -> ".join(PAIR) and p["method"] == "grid" and p["benchmark"] == "medmcqa"
    assert p["data_fingerprint"] == tracking.data_fingerprint(DEV) and len(p["git_commit"]) >= 7
    m = run.data.metrics
    assert abs(m["test_auc"] - res.summary["test_auc"]) < 1e-12
    for k in ("test_error_at_25pct_budget", "test_error_at_50pct_budget", "test_error_at_75pct_budget", "seconds"):
        assert k in m
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"curve.parquet", "summary.json", "thresholds.json", "model.json", "error_cost.png"} <= arts
    local = Path(client.download_artifacts(run_id, "curve.parquet", str(tmp_path)))
    assert len(pd.read_parquet(local)) == len(res.curve)
    contexts = sorted(d.tags[0].value for d in run.inputs.dataset_inputs)
    assert contexts == ["test", "train"]
    # artifacts of a SQLite store live next to it, absolute
    exp = client.get_experiment_by_name("exp-a")
    assert exp.artifact_location.startswith("file://") and str(tmp_path) in exp.artifact_location


def test_log_tune_curve_and_summary_form_and_gof(uri, records_df):
    res = tune.run_tuning(records_df, models=PAIR, method="markov-copula", benchmark="medmcqa")
    summary = dict(res.summary, gof={"marginals": [{"p_value": 0.3}, {"p_value": 0.01}], "copulas": [],
                                     "markov": [], "rejected": {"marginals": 1}})
    tracking.configure(uri, "exp-b")
    run_id = tracking.log_tune(res.curve, summary)
    run = _client(uri).get_run(run_id)
    assert run.data.params["method"] == "markov-copula"
    assert run.data.metrics["gof_marginals_min_p"] == pytest.approx(0.01)
    assert run.data.metrics["gof_marginals_rejected"] == 1
    assert "fit_seconds" in run.data.metrics and "tune_seconds" in run.data.metrics


def test_find_finished(uri, records_df):
    assert tracking.find_finished("no-such-exp", "k", uri=uri) is None
    res = tune.run_tuning(records_df, models=PAIR, method="grid", benchmark="medmcqa")
    tracking.configure(uri, "exp-c")
    run_id = tracking.log_tune(res, cell_key="abc123")
    assert tracking.find_finished("exp-c", "abc123", uri=uri) == run_id
    assert tracking.find_finished("exp-c", "other", uri=uri) is None


def test_log_scoring(uri, tmp_path):
    out = tmp_path / "scored"
    out.mkdir()
    shutil.copy(DEV, out / "records.parquet")
    stats = {"out_dir": str(out), "run_id": "r1", "n_records": 10, "scored_records": 10, "seconds": 2.0,
             "queries_per_s": 5.0, "output_tokens_per_s": 40.0,
             "stages": {"a": {"input_tokens": 100, "output_tokens": 20, "queries_per_s": 5.0}}}
    config = {"benchmarks": [{"name": "medmcqa"}], "signals": ["mean_logprob"],
              "stages": [{"name": "a", "model": "m", "engine": "transformers", "batch_size": 8}]}
    tracking.configure(uri, "scoring")
    run_id = tracking.log_scoring(stats, out, config)
    run = _client(uri).get_run(run_id)
    assert run.data.metrics["queries_per_s"] == 5.0 and run.data.metrics["total_input_tokens"] == 100
    assert any(k.endswith(".test.accuracy") for k in run.data.metrics)
    assert run.data.params["stages.a.engine"] == "transformers"
    assert [d.tags[0].value for d in run.inputs.dataset_inputs] == ["scored"]


def test_unreachable_server_keeps_results_then_cascade_log(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(tracking.TrackingUnavailable, match="unreachable"):
        tracking.configure("http://127.0.0.1:1", "x")
    out = tmp_path / "tuned"
    rc = cli.main(["tune", "--results", str(DEV), "--models", ",".join(PAIR), "--method", "grid", "--out", str(out),
                   "--track", "--tracking-uri", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "unreachable" in err and "cascade log" in err and str(out) in err
    assert (out / "curve.parquet").exists() and (out / "summary.json").exists()
    uri = f"sqlite:///{tmp_path / 'later.db'}"
    assert cli.main(["log", str(out), "--results", str(DEV), "--tracking-uri", uri]) == 0
    client = _client(uri)
    exp = client.get_experiment_by_name("medmcqa")
    runs = client.search_runs([exp.experiment_id])
    kinds = sorted(r.data.tags["cascade.kind"] for r in runs)
    assert kinds == ["parent", "tune"]


def test_jobs_tune_parent_and_nested(tmp_path, monkeypatch, capsys):
    from jobs import tune as jobs_tune

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    chain = ["llama3.2-1b", "llama3.2-3b", "llama3.1-70b"]
    rc = jobs_tune.main(["--results", str(DEV), "--models", ",".join(chain), "--all-cascades", "--method", "grid",
                         "--out", str(tmp_path / "o"), "--experiment", "sweep-x", "--tracking-uri", uri])
    assert rc == 0
    client = _client(uri)
    exp = client.get_experiment_by_name("sweep-x")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cascade.kind") == "parent"]
    nested = [r for r in runs if r.data.tags.get("cascade.kind") == "tune"]
    assert len(parents) == 1 and len(nested) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in nested} == {parents[0].info.run_id}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_rest_api(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
                             "--artifacts-destination", str(tmp_path / "art"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow server exited"
            assert time.time() < deadline, "mlflow server did not answer /health"
            time.sleep(0.5)
        out = tmp_path / "o"
        assert cli.main(["tune", "--results", str(DEV), "--models", ",".join(PAIR), "--method", "grid",
                         "--out", str(out), "--track", "--experiment", "rest", "--tracking-uri", url]) == 0

        def post(path, body):
            req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        with urllib.request.urlopen(url + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=rest") as r:
            exp_id = json.loads(r.read())["experiment"]["experiment_id"]
        runs = post("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
        assert len(runs) == 2
        tune_run = next(r for r in runs if {"key": "cascade.kind", "value": "tune"} in r["data"]["tags"])
        metrics = {m["key"]: m["value"] for m in tune_run["data"]["metrics"]}
        assert "test_auc" in metrics
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/artifacts/list?run_id={tune_run['info']['run_id']}") as r:
            paths = {f["path"] for f in json.loads(r.read()).get("files", [])}
        assert "curve.parquet" in paths
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_bayes_opt_study_is_linked(uri, tmp_path, records_df):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    res = tune.run_tuning(records_df, models=PAIR, method="bayes-opt", benchmark="medmcqa",
                          params={"n_trials": 12, "storage": storage, "study_name": "study-x"})
    tracking.configure(uri, "exp-d")
    run = _client(uri).get_run(tracking.log_tune(res))
    assert run.data.tags["optuna.storage"] == storage
    assert run.data.tags["optuna.study_name"] == "study-x"


# ------------------------------------------------------------------------------------------------
# Failures, idempotent `cascade log`, degenerate/transform, secrets, layout
# ------------------------------------------------------------------------------------------------

def test_store_failure_mid_run_is_one_line_and_leaves_no_run_open(uri, tmp_path, records_df, capsys):
    """The store answers, but writing a run's artifacts fails half-way (the experiment's artifact folder is a
    file): one-line TrackingUnavailable, the run ends FAILED, no run stays active, `cascade tune --track` exits
    3 with the `cascade log` command, and `cascade log` logs the kept outputs once the store is fixed."""
    res = tune.run_tuning(records_df, models=PAIR, method="grid", benchmark="medmcqa")
    tracking.configure(uri, "medmcqa")
    art = tmp_path / "mlartifacts" / "medmcqa"
    assert not art.exists()
    art.parent.mkdir(parents=True)
    art.write_text("not a folder")
    with pytest.raises(tracking.TrackingUnavailable) as e:
        tracking.log_tune(res)
    assert "\n" not in str(e.value) and "logging the tuning run grid" in str(e.value)
    assert mlflow.active_run() is None
    client = _client(uri)
    exp = client.get_experiment_by_name("medmcqa")
    assert [r.info.status for r in client.search_runs([exp.experiment_id])] == ["FAILED"]

    out = tmp_path / "tuned"
    capsys.readouterr()
    rc = cli.main(["tune", "--results", str(DEV), "--models", ",".join(PAIR), "--method", "grid", "--out", str(out),
                   "--track", "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err and f"cascade log {out}" in err
    assert mlflow.active_run() is None
    art.unlink()  # the store is fixed
    assert cli.main(["log", str(out), "--results", str(DEV), "--tracking-uri", uri]) == 0
    finished = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")
    assert sorted(r.data.tags["cascade.kind"] for r in finished) == ["parent", "tune"]


def test_cascade_log_is_idempotent(uri, tmp_path, capsys):
    out = tmp_path / "tuned"
    chain = ["llama3.2-1b", "llama3.2-3b", "llama3.1-70b"]
    assert cli.main(["tune", "--results", str(DEV), "--models", ",".join(chain), "--all-cascades", "--method",
                     "grid", "--out", str(out)]) == 0
    assert cli.main(["log", str(out), "--results", str(DEV), "--tracking-uri", uri]) == 0
    capsys.readouterr()
    assert cli.main(["log", str(out), "--results", str(DEV), "--tracking-uri", uri]) == 0
    assert "already logged" in capsys.readouterr().out
    client = _client(uri)
    exp = client.get_experiment_by_name("medmcqa")
    kinds = sorted(r.data.tags["cascade.kind"] for r in client.search_runs([exp.experiment_id]))
    assert kinds == ["parent"] + ["tune"] * 4  # one run per cascade, once
    fps = {r.data.tags[tracking.OUTPUT_FINGERPRINT_TAG] for r in client.search_runs([exp.experiment_id])
           if r.data.tags["cascade.kind"] == "tune"}
    assert len(fps) == 4
    # a changed output is new: that folder alone is logged again
    one = sorted(p for p in out.iterdir() if p.is_dir())[0]
    s = json.loads((one / "summary.json").read_text())
    s["note"] = "edited"
    (one / "summary.json").write_text(json.dumps(s))
    capsys.readouterr()
    assert cli.main(["log", str(out), "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert "logged 1 run(s)" in printed and "3 already logged before" in printed
    assert len(client.search_runs([exp.experiment_id], filter_string="tags.`cascade.kind` = 'tune'")) == 5
    # outputs logged by `cascade tune --track` are recognised too
    out2 = tmp_path / "tracked"
    assert cli.main(["tune", "--results", str(DEV), "--models", ",".join(PAIR), "--method", "grid", "--out",
                     str(out2), "--track", "--tracking-uri", uri, "--experiment", "t2"]) == 0
    capsys.readouterr()
    assert cli.main(["log", str(out2), "--tracking-uri", uri, "--experiment", "t2"]) == 0
    assert "already logged" in capsys.readouterr().out


def test_scoring_log_is_idempotent(uri, tmp_path, capsys):
    out = tmp_path / "scored"
    out.mkdir()
    shutil.copy(DEV, out / "records.parquet")
    (out / "score_stats.json").write_text(json.dumps({"out_dir": str(out), "run_id": "r1", "n_records": 10,
                                                      "config": {"stages": []}}))
    assert cli.main(["log", str(out), "--tracking-uri", uri]) == 0
    capsys.readouterr()
    assert cli.main(["log", str(out), "--tracking-uri", uri]) == 0
    assert "already logged" in capsys.readouterr().out
    client = _client(uri)
    exp = client.get_experiment_by_name("scoring")
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_transform_and_degenerate_logged(uri, records_df):
    res = tune.run_tuning(records_df, models=PAIR, method="grid", benchmark="medmcqa")
    tracking.configure(uri, "exp-deg")
    client = _client(uri)
    # the tuning step's own keys
    s = dict(res.summary, transform="two-sided", transform_reason="P(True) log-probs (conf_ptrue)",
             degenerate=["2 training queries", "all training answers correct"])
    run = client.get_run(tracking.log_tune(res.curve, s))
    assert run.data.params["transform"] == "two-sided"
    assert run.data.tags["cascade.transform"] == "two-sided"
    assert run.data.tags["cascade.transform_reason"].startswith("P(True)")
    assert run.data.tags["cascade.degenerate"] == "true" and run.data.metrics["degenerate"] == 1.0
    assert run.data.tags["cascade.degenerate_reason"] == "2 training queries; all training answers correct"
    # fine
    run = client.get_run(tracking.log_tune(res.curve, dict(res.summary, degenerate=[])))
    assert run.data.tags["cascade.degenerate"] == "false" and run.data.metrics["degenerate"] == 0.0
    # an older summary without the keys: judged from the curve (a single test cost)
    old = {k: v for k, v in res.summary.items() if k not in ("transform", "transform_reason", "degenerate")}
    flat = res.curve.assign(test_cost=float(res.curve["test_cost"].iloc[0]))
    run = client.get_run(tracking.log_tune(flat, old))
    assert run.data.metrics["degenerate"] == 1.0 and "single point" in run.data.tags["cascade.degenerate_reason"]
    assert "transform" not in run.data.params
    run = client.get_run(tracking.log_tune(res.curve, old))
    assert run.data.metrics["degenerate"] == 0.0


def test_redact_secrets():
    cfg = {"engine_options": {"api_key": "sk-123", "HF_TOKEN": "hf_abc", "max_tokens": 16, "tokenizer": "t/x"},
           "auth": {"user": "u", "password": "pw"}, "clientSecret": "s", "cell_key": "abc", "secrets": ["a", "b"],
           "storage": "postgresql://user:pa55@db:5432/optuna", "input_tokens": 120, "api_key_count": 3}
    red = tracking.redact_secrets(cfg)
    assert red["engine_options"] == {"api_key": "***", "HF_TOKEN": "***", "max_tokens": 16, "tokenizer": "t/x"}
    assert red["auth"] == {"user": "***", "password": "***"} and red["clientSecret"] == "***"
    assert red["secrets"] == ["***", "***"] and red["cell_key"] == "abc" and red["input_tokens"] == 120
    assert red["storage"] == "postgresql://user:***@db:5432/optuna" and red["api_key_count"] == 3
    assert cfg["engine_options"]["api_key"] == "sk-123"  # the input is not changed


def test_secrets_never_reach_the_store(uri, tmp_path, records_df):
    secrets = ["sk-live-123", "hf_SeCrEt", "pa55word", "db-pa55"]
    out = tmp_path / "scored"
    out.mkdir()
    shutil.copy(DEV, out / "records.parquet")
    config = {"benchmarks": [{"name": "medmcqa"}], "signals": ["mean_logprob"],
              "stages": [{"name": "a", "model": "m", "engine": "vllm", "api_key": secrets[0],
                          "engine_options": {"hf_token": secrets[1], "max_tokens": 8}}],
              "tracking": {"password": secrets[2]}}
    cfg_file = tmp_path / "score.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    stats = {"out_dir": str(out), "run_id": "r1", "n_records": 10, "config": config}
    tracking.configure(uri, "scoring")
    tracking.log_scoring(stats, out, config, config_path=cfg_file,
                         tags={"note": f"postgresql://u:{secrets[3]}@h/db"})
    res = tune.run_tuning(records_df, models=PAIR, method="grid", benchmark="medmcqa")
    tracking.log_tune(res, params={"storage": f"postgresql://u:{secrets[3]}@h/db", "api_token": secrets[0]})
    # nothing in the database, nothing in any artifact
    db = Path(uri[len("sqlite:///"):])
    blob = db.read_bytes()
    for art in (tmp_path / "mlartifacts").rglob("*"):
        if art.is_file():
            blob += art.read_bytes()
    for s in secrets:
        assert s.encode() not in blob, s
    assert b"***" in blob
    assert cfg_file.read_text().count(secrets[0]) == 1  # the user's file is untouched


def test_layout_only_tracking_calls_mlflow():
    """No `import mlflow` outside tracking/; tracking/ imports no Ray; cascade/ imports neither jobs nor tracking."""
    import re

    bad = []
    for folder in ("cascade", "jobs", "bench", "tracking"):
        for f in (ROOT / folder).rglob("*.py"):
            text = f.read_text()
            rel = f.relative_to(ROOT).as_posix()
            if folder != "tracking" and re.search(r"^\s*(import mlflow|from mlflow)", text, re.M):
                bad.append(f"{rel}: imports mlflow")
            if folder == "tracking" and re.search(r"^\s*(import ray|from ray)", text, re.M):
                bad.append(f"{rel}: imports ray")
            if folder == "cascade" and re.search(r"^\s*(import|from) (jobs|tracking)\b", text, re.M):
                bad.append(f"{rel}: imports jobs/tracking")
    assert not bad, bad
