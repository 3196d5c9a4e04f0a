"""A real `mlflow server` on loopback killed in the middle of a `cascade sweep` and of a
`cascade tune --all-cascades --track`: each exits 3 within a bound (MLflow's own HTTP retries kept it silent
for 9 to 13 minutes), keeps its results, and once the server is back `cascade log` marks the runs it left
RUNNING as KILLED and logs each output once; a sweep rerun runs only the cells without a FINISHED run."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
TINY = ROOT / "examples" / "sweep-tiny.yaml"
PY = sys.executable
BOUND_S = 60  # docs/tracking.md, "When tracking fails"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` with a SQLite store and artifacts in the test's folder, in its own process group."""

    def __init__(self, tmp: Path):
        self.db, self.art, self.port = tmp / "srv.db", tmp / "art", _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.proc = subprocess.Popen(
            [str(Path(PY).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.db}", "--default-artifact-root", "mlflow-artifacts:/",
             "--artifacts-destination", str(self.art), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, "mlflow server exited"
            assert time.time() < deadline, "mlflow server did not answer /health"
            time.sleep(0.5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def runs(self, kind: str | None = None) -> list[tuple[str, str, dict]]:
        """(run id, status, tags) of every run in the server's store, read from its SQLite file."""
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            rows = con.execute("select run_uuid, status from runs").fetchall()
            tags: dict = {}
            for rid, k, v in con.execute("select run_uuid, key, value from tags"):
                tags.setdefault(rid, {})[k] = v
        except sqlite3.OperationalError:  # tables not there yet
            return []
        finally:
            con.close()
        out = [(rid, st, tags.get(rid, {})) for rid, st in rows]
        return [r for r in out if kind is None or r[2].get("cascade.kind") == kind]


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    yield s
    s.kill()


def _cli(args: list[str], tmp: Path, name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        proc = subprocess.Popen([PY, "-m", "jobs.cli", *args], cwd=tmp, env=env, stdout=out, stderr=err,
                                start_new_session=True)
    proc.files = (tmp / f"{name}.out", tmp / f"{name}.err")
    return proc


def _run(args: list[str], tmp: Path, name: str, timeout: float = 600) -> tuple[int, str, str]:
    proc = _cli(args, tmp, name)
    try:
        proc.wait(timeout=timeout)
    finally:
        _kill_group(proc)
    return proc.returncode, proc.files[0].read_text(), proc.files[1].read_text()


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything the group left (Ray processes)
    except ProcessLookupError:
        pass


def _kill_server_mid_run(server: Server, proc, ready, timeout: float) -> tuple[int, float, str]:
    """Once ``ready()`` (the command still running), SIGKILL the server; (exit status, seconds from the kill
    to the exit, stderr)."""
    deadline = time.time() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"ended before the server was killed (rc {proc.returncode}): "
                            f"{proc.files[1].read_text()[-3000:]}")
            assert time.time() < deadline, "never got to the middle of the run"
            time.sleep(0.2)
        server.kill()
        t0 = time.time()
        proc.wait(timeout=300)
        took = time.time() - t0
        print(f"exit {proc.returncode} {took:.1f} s after the server was killed")
        return proc.returncode, took, proc.files[1].read_text()
    finally:
        _kill_group(proc)


def _one_tracking_line(err: str, command: str) -> None:
    assert "Traceback" not in err, err[-4000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"cascade {command}: tracking failed"), err[-4000:]


def _finished(runs) -> list:
    return [r for r in runs if r[1] == "FINISHED"]


def test_server_killed_during_tune_all_cascades(tmp_path, server):
    out = tmp_path / "tuned"
    chain = "llama3.2-1b,llama3.2-3b,llama3.1-8b,llama3.1-70b,llama3.1-405b"  # 26 cascades: many runs to log
    args = ["tune", "--results", str(DEV), "--models", chain, "--all-cascades", "--method", "random",
            "--out", str(out), "--track", "--experiment", "lost", "--tracking-uri", server.url]
    proc = _cli(args, tmp_path, "tune")
    rc, took, err = _kill_server_mid_run(server, proc, lambda: len(_finished(server.runs("tune"))) >= 1, 600)
    assert rc == 3 and took < BOUND_S, (rc, took, err[-3000:])
    _one_tracking_line(err, "tune")
    assert f"cascade log {out}" in err
    folders = sorted(p.parent for p in out.rglob("summary.json"))
    assert len(folders) == 26 and all((f / "curve.parquet").exists() for f in folders)  # results kept
    assert (out / ".mlflow-open-runs.json").exists()

    server.start()  # back, same store
    left = [r for r in server.runs() if r[1] == "RUNNING"]
    assert left, "the kill left no run open: it did not hit the middle of the logging"
    log = ["log", str(out), "--results", str(DEV), "--experiment", "lost", "--tracking-uri", server.url]
    rc, so, se = _run(log, tmp_path, "log1")
    assert rc == 0, se[-3000:]
    assert "marked KILLED" in so
    runs = server.runs()
    assert not [r for r in runs if r[1] == "RUNNING"]
    assert {r[0] for r in left} <= {r[0] for r in runs if r[1] == "KILLED"}
    from cascade.evaluate.metrics import output_fingerprint

    fps = [r[2].get("cascade.output_fingerprint") for r in _finished(server.runs("tune"))]
    assert sorted(fps) == sorted(output_fingerprint(f) for f in folders)  # each output logged exactly once
    rc, so, _ = _run(log, tmp_path, "log2")
    assert rc == 0 and "already logged" in so
    assert len(server.runs()) == len(runs)  # nothing new


def _spec(tmp_path: Path) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["records"][0]["path"] = str(DEV)
    raw["out"] = str(tmp_path / "sweeps")
    raw["experiment"] = "lost-sweep"
    raw["methods"] = ["grid", "random"]
    raw["sample_sizes"] = [30, "all"]
    raw["seeds"] = [0, 1, 2]  # 2 cascades x 2 methods x 2 sizes x 3 seeds = 24 cells
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_server_killed_during_sweep(tmp_path, server):
    spec = _spec(tmp_path)
    sweep = ["sweep", str(spec), "--tracking-uri", server.url, "--no-progress", "--jobs", "1"]
    proc = _cli(sweep, tmp_path, "sweep")
    rc, took, err = _kill_server_mid_run(server, proc, lambda: len(_finished(server.runs("tune"))) >= 2, 600)
    assert rc == 3 and took < BOUND_S, (rc, took, err[-3000:])
    _one_tracking_line(err, "sweep")
    root = tmp_path / "sweeps" / "lost-sweep"
    assert f"cascade log {root} --experiment lost-sweep" in err
    written = sorted(p.parent for p in root.rglob("summary.json"))
    assert 2 <= len(written) < 24 and all((f / "curve.parquet").exists() for f in written)

    server.start()
    left = {r[0] for r in server.runs() if r[1] == "RUNNING"}
    assert left  # at least the sweep's parent
    rc, so, se = _run(["log", str(root), "--results", str(DEV), "--experiment", "lost-sweep", "--tracking-uri",
                       server.url], tmp_path, "log")
    assert rc == 0, se[-3000:]
    runs = server.runs()
    assert not [r for r in runs if r[1] == "RUNNING"] and left <= {r[0] for r in runs if r[1] == "KILLED"}
    keys = [r[2].get("cascade.cell_key") for r in _finished(server.runs("tune"))]
    assert len(keys) == len(set(keys)) == len(written)  # each written cell logged once

    rc, so, se = _run(sweep, tmp_path, "rerun")
    assert rc == 0, se[-3000:]
    assert f"{len(written)} already finished, {24 - len(written)} to run" in so
    assert f"ran {24 - len(written)} cells" in so
    keys = [r[2].get("cascade.cell_key") for r in _finished(server.runs("tune"))]
    assert len(keys) == len(set(keys)) == 24  # every cell once
    assert not [r for r in server.runs() if r[1] == "RUNNING"]
