"""Sweeps: spec validation, cell keys, dry run, run + skip on rerun, resume after SIGKILL, `ray job submit`."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cascade.evaluate import sweep_spec as S

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
TINY = ROOT / "examples" / "sweep-tiny.yaml"
MED = ROOT / "examples" / "sweep-medmcqa.yaml"
PY = sys.executable


def _spec(tmp_path: Path, name="spec.yaml", **over) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["records"][0]["path"] = str(DEV)
    raw["out"] = str(tmp_path / "out")
    raw.update(over)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def _finished(db: Path, experiment: str) -> list[str]:
    """cell keys of FINISHED runs, read straight from the SQLite store (no MLflow client, no writes)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "select t.value from runs r join tags t on t.run_uuid = r.run_uuid "
            "join experiments e on e.experiment_id = r.experiment_id "
            "where t.key = 'cascade.cell_key' and r.status = 'FINISHED' and e.name = ?", (experiment,)).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        con.close()
    return [r[0] for r in rows]


# ------------------------------------------------------------------------------------------------
# Spec
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, needle", [
    (lambda r: r.update(colour="red"), "colour: unknown field"),
    (lambda r: r.update(methods=["markov-copula", "no-such-method"]), "methods"),
    (lambda r: r.update(sample_sizes=[1]), "sample size 1"),
    (lambda r: r.update(seeds=[]), "seeds"),
    (lambda r: r["records"][0].update(path="nope.parquet"), "records.0.path"),
    (lambda r: r["records"][0].update(score="x.yaml"), "exactly one of `path`"),
    (lambda r: r["records"][0].update(cascades=[["llama3.2-1b", "gpt-9"]]), "gpt-9 not in the chain"),
    (lambda r: r["records"][0].update(chain=["llama3.2-1b"]), "records.0.chain"),
    (lambda r: r.update(cost="cheap"), "cost"),
    (lambda r: r.pop("experiment"), "experiment: Field required"),
])
def test_spec_errors_name_the_field(tmp_path, change, needle):
    raw = yaml.safe_load(TINY.read_text())
    raw["records"][0]["path"] = str(DEV)
    change(raw)
    with pytest.raises(S.SpecError) as e:
        S.load_spec(raw)
    assert needle in str(e.value)


def test_spec_files_missing_or_malformed(tmp_path):
    with pytest.raises(S.SpecError, match="no such sweep spec"):
        S.load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(S.SpecError, match="mapping"):
        S.load_spec(bad)


def test_examples_load_and_expand():
    tiny = S.expand(S.load_spec(TINY))
    assert len(tiny) == 4  # 2 cascades x 2 methods x 1 size x 1 seed
    med = S.load_spec(MED)
    cells = S.expand(med)
    assert {c.method for c in cells} == {"markov-copula", "grid", "bayes-opt", "random"}
    assert {c.n for c in cells} == {"30", "all"} and {c.seed for c in cells} == {0, 1}
    n_casc = len(S.cascades_for(med.records[0]))
    assert n_casc == 10  # 4-model chain, lengths 2..3: 6 + 4
    assert len(cells) == n_casc * 4 * 2 * 2
    assert len({c.key for c in cells}) == len(cells)


def test_cell_keys_stable_and_data_sensitive(tmp_path):
    keys = [c.key for c in S.expand(S.load_spec(_spec(tmp_path)))]
    assert keys == [c.key for c in S.expand(S.load_spec(_spec(tmp_path, "again.yaml")))]
    # the same file elsewhere: same cells (the key holds what the data is, not where it lives)
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / DEV.name
    shutil.copy(DEV, copy)
    raw = yaml.safe_load(_spec(tmp_path).read_text())
    raw["records"][0]["path"] = str(copy)
    assert [c.key for c in S.expand(S.load_spec(raw))] == keys
    # different data: every key changes
    df = pd.read_parquet(DEV)
    df.loc[df.index[0], "correct"] = not bool(df.loc[df.index[0], "correct"])
    df.to_parquet(copy, index=False)
    assert set(c.key for c in S.expand(S.load_spec(raw))).isdisjoint(keys)
    # a different method parameter or seed: a different cell
    raw2 = yaml.safe_load(_spec(tmp_path).read_text())
    raw2["methods"] = [{"name": "grid", "params": {"n_quantiles": 9}}, "markov-copula"]
    k2 = {c.key for c in S.expand(S.load_spec(raw2))}
    assert len(k2 & set(keys)) == 2  # the markov-copula cells are unchanged
    raw2["seeds"] = [1]
    assert {c.key for c in S.expand(S.load_spec(raw2))}.isdisjoint(keys)


def test_duplicate_cells_rejected(tmp_path, capsys):
    from jobs import sweep as J

    spec = _spec(tmp_path, seeds=[0, 0])
    assert J.main([str(spec), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert "same cell twice" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Runner
# ------------------------------------------------------------------------------------------------

def test_dry_run_touches_nothing(tmp_path, capsys):
    from jobs import sweep as J

    db = tmp_path / "m.db"
    spec = _spec(tmp_path)
    assert J.main([str(spec), "--dry-run", "--tracking-uri", f"sqlite:///{db}"]) == 0
    out = capsys.readouterr().out
    assert "4 cells, 0 already finished, 4 to run" in out
    assert out.count("to run  ") == 4
    assert not db.exists() and not (tmp_path / "out").exists() and not (tmp_path / "mlartifacts").exists()


def test_cli_registers_sweep(capsys):
    from jobs import cli

    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    assert "--dry-run" in capsys.readouterr().out


@pytest.mark.slow
def test_run_then_rerun_skips_everything(tmp_path, capsys):
    import mlflow
    import ray

    from jobs import sweep as J

    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    spec = _spec(tmp_path)
    try:
        assert J.main([str(spec), "--tracking-uri", uri, "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert "ran 4 cells, logged 4, failed 0" in out
        keys = {c.key for c in S.expand(S.load_spec(spec))}
        assert sorted(_finished(db, "sweep-tiny")) == sorted(keys)
        for k in keys:
            assert (tmp_path / "out" / "sweep-tiny" / k / "curve.parquet").exists()
        # nested under one parent run
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("sweep-tiny")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("cascade.kind") == "parent"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        cells = [r for r in runs if "cascade.cell_key" in r.data.tags]
        assert {r.data.tags["mlflow.parentRunId"] for r in cells} == {parents[0].info.run_id}
        # provenance: the records' benchmark and fingerprint (tracking.mlflow_log.records_provenance, as for tune)
        from cascade.data import records as R

        fp = R.fingerprint(DEV)
        for r in cells:
            assert r.data.tags["cascade.benchmark"] == "medmcqa" and r.data.params["benchmark"] == "medmcqa"
            assert r.data.tags["cascade.data_fingerprint"] == fp and r.data.params["data_fingerprint"] == fp
            assert {d.dataset.name for d in r.inputs.dataset_inputs} == {"medmcqa-records:train",
                                                                         "medmcqa-records:test"}

        t0 = time.perf_counter()
        assert J.main([str(spec), "--tracking-uri", uri, "--no-progress"]) == 0
        assert "4 already finished, 0 to run" in capsys.readouterr().out
        assert time.perf_counter() - t0 < 30
        assert len(_finished(db, "sweep-tiny")) == 4
        assert J.main([str(spec), "--dry-run", "--tracking-uri", uri]) == 0
        assert capsys.readouterr().out.count("done ") == 4
    finally:
        if ray.is_initialized():
            ray.shutdown()


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started (our own process group)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_part_way_then_rerun_finishes_only_the_missing_cells(tmp_path):
    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    spec = _spec(tmp_path, methods=["markov-copula", "grid"], sample_sizes=[30, "all"], seeds=[0, 1])
    keys = {c.key for c in S.expand(S.load_spec(spec))}
    assert len(keys) == 16
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [PY, "-m", "jobs.sweep", str(spec), "--tracking-uri", uri, "--no-progress", "--jobs", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while len(_finished(db, "sweep-tiny")) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "no cells finished in time"
            time.sleep(0.2)
    finally:
        _killpg(proc)
    done_before = set(_finished(db, "sweep-tiny"))
    assert 3 <= len(done_before) < len(keys), "killed too late to test a resume"

    r = subprocess.run(cmd[:-1] + ["4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{len(done_before)} already finished, {len(keys) - len(done_before)} to run" in r.stdout
    assert f"ran {len(keys) - len(done_before)} cells" in r.stdout
    after = _finished(db, "sweep-tiny")
    assert sorted(after) == sorted(keys)  # every cell exactly once FINISHED
    # the cell the kill interrupted (if its run was open) is not left RUNNING
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    statuses = dict(con.execute("select status, count(*) from runs group by status").fetchall())
    con.close()
    assert statuses.get("RUNNING", 0) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_to_a_local_head(tmp_path):
    """`ray start --head` (our own temp dir, ports, token) + `ray job submit --working-dir .` of the tiny sweep."""
    ray_bin = Path(PY).parent / "ray"
    if not ray_bin.exists():
        pytest.skip("the ray CLI is not installed next to this Python")
    try:  # `ray job submit` needs the dashboard (the job server), i.e. ray[default]
        import aiohttp_cors  # noqa: F401
        import opencensus  # noqa: F401
    except ImportError:
        pytest.skip("ray[default] (dashboard, job server) is not installed: pip install 'ray[default]==2.60.*'")
    temp_dir = Path("/tmp") / f"ray-sweep-test-{secrets.token_hex(4)}"  # short: Ray's socket paths are length-limited
    gcs, dash, agent, agent_grpc, metrics, rt_env = (_free_port() for _ in range(6))
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={rt_env}", "--num-cpus=2",
         f"--temp-dir={temp_dir}", "--include-dashboard=true", "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    db = tmp_path / "m.db"
    try:
        import urllib.request

        deadline = time.time() + 120
        while True:
            assert head.poll() is None, "ray start --head exited:\n" + (tmp_path / "head.log").read_text()[-3000:]
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{dash}/api/version",
                                             headers={"Authorization": f"Bearer {token}"})
                urllib.request.urlopen(req, timeout=2)
                break
            except Exception:
                assert time.time() < deadline, "Ray dashboard did not come up"
                time.sleep(1)
        excludes = '{"excludes": [".venv", ".venv-vllm", ".git", "runs", "out", "mlflow.db", "mlartifacts"]}'
        cmd = [str(ray_bin), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".",
               "--runtime-env-json", excludes, "--",
               "python", "-m", "jobs.sweep", "examples/sweep-tiny.yaml", "--no-progress",
               "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "out")]
        # without the token the submission is refused
        env_no = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        env_no["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token")
        (tmp_path / "no-token").write_text("not-the-token")
        bad = subprocess.run(cmd, cwd=ROOT, env=env_no, capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0
        r = subprocess.run(cmd[:-1] + ["4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        assert "ran 4 cells, logged 4" in r.stdout + r.stderr
        keys = {c.key for c in S.expand(S.load_spec(TINY))}
        assert sorted(_finished(db, "sweep-tiny")) == sorted(keys)
        # (skipping on rerun is the same code path as in-process: test_run_then_rerun_skips_everything)
    finally:
        # stop only our head: SIGTERM to `ray start --block`, then SIGKILL whatever is left of its process group
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_dry_run_with_a_scoring_stage(tmp_path, capsys):
    """A records entry may name a scoring config: the dry run says it would score and lists the cells."""
    from jobs import sweep as J

    cfg = yaml.safe_load((ROOT / "examples" / "score-mmlu-tiny.yaml").read_text())
    cfg["data_dir"] = str(ROOT / "examples" / "benchmarks")
    cfg["out"] = str(tmp_path / "scored")
    (tmp_path / "score.yaml").write_text(yaml.safe_dump(cfg))
    spec = {"experiment": "sweep-scored", "out": str(tmp_path / "out"), "methods": ["markov-copula"],
            "records": [{"name": "mmlu-tiny", "score": str(tmp_path / "score.yaml"), "benchmark": "mmlu",
                         "chain": ["smollm2-135m", "gemma3-270m"], "signal": "conf_mean_logprob"}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert J.main([str(tmp_path / "spec.yaml"), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    out = capsys.readouterr().out
    assert "would score" in out and "1 cells, 0 already finished, 1 to run" in out
    assert not (tmp_path / "scored").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.slow
def test_tracking_failure_mid_sweep_keeps_outputs_then_log_and_rerun_finish(tmp_path, capsys):
    """The store accepts the sweep's parent but fails on the first cell's artifacts: the sweep stops submitting,
    keeps the outputs of the cells that ran, exits 3 with one line naming `cascade log`; that command logs them
    (tagged with their cell keys) and a rerun runs only the remaining cells: every cell exactly once."""
    import mlflow
    import ray

    import tracking
    from jobs import cli
    from jobs import sweep as J

    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    spec = _spec(tmp_path)
    keys = {c.key for c in S.expand(S.load_spec(spec))}
    exp_id = tracking.configure(uri, "sweep-tiny")
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(exp_id, tags={"cascade.kind": "parent",
                                             "cascade.sweep_key": J._sweep_key(S.load_spec(spec))})
    client.set_terminated(parent.info.run_id)
    art = tmp_path / "mlartifacts" / "sweep-tiny"
    shutil.rmtree(art, ignore_errors=True)
    art.parent.mkdir(parents=True, exist_ok=True)
    art.write_text("the artifact store is broken")
    try:
        capsys.readouterr()
        rc = cli.main(["sweep", str(spec), "--tracking-uri", uri, "--no-progress", "--jobs", "1"])
        cap = capsys.readouterr()
        assert rc == 3, cap.err[-3000:]
        lines = [ln for ln in cap.err.splitlines() if "tracking failed" in ln]
        assert len(lines) == 1 and "Traceback" not in cap.err
        out_root = tmp_path / "out" / "sweep-tiny"
        assert f"cascade log {out_root} --experiment sweep-tiny" in lines[0]
        kept = [p.parent.name for p in out_root.glob("*/summary.json")]
        assert kept and set(kept) <= keys
        assert _finished(db, "sweep-tiny") == []
        assert mlflow.active_run() is None
        art.unlink()  # the store is fixed
        assert cli.main(["log", str(out_root), "--experiment", "sweep-tiny", "--tracking-uri", uri]) == 0
        assert sorted(_finished(db, "sweep-tiny")) == sorted(kept)
        capsys.readouterr()
        assert cli.main(["sweep", str(spec), "--tracking-uri", uri, "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert f"{len(kept)} already finished, {len(keys) - len(kept)} to run" in out
        assert sorted(_finished(db, "sweep-tiny")) == sorted(keys)  # every cell exactly once
    finally:
        if ray.is_initialized():
            ray.shutdown()
