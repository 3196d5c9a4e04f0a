"""Ctrl-C: SIGINT sent to a real `cascade tune` (bayes-opt), `cascade sweep` and `cascade score` process
group, as a terminal sends it, mid-work. Each ends with one line (no traceback), exit status 130, no
partial output folder, and no MLflow run left RUNNING."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cascade.data import records

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
TINY = ROOT / "examples" / "sweep-tiny.yaml"
PY = sys.executable


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    """``python -m ARGS`` in its own process group, stdout and stderr to tmp_path/out and tmp_path/err."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([PY, "-m", *args], cwd=tmp_path, env=env, stdout=out, stderr=err,
                                start_new_session=True)
    proc.files = (tmp_path / "out", tmp_path / "err")
    return proc


def _interrupt(proc: subprocess.Popen, ready, timeout: float) -> tuple[int, str, str]:
    """Wait until ``ready(stderr so far)`` (the process must still run), send SIGINT to its process group, as a
    terminal's Ctrl-C does, and return (exit status, stdout, stderr)."""
    deadline = time.time() + timeout
    try:
        while not ready(proc.files[1].read_text()):
            if proc.poll() is not None:
                pytest.fail(f"ended before it was interrupted (rc {proc.returncode}): "
                            f"{proc.files[1].read_text()[-3000:]}")
            assert time.time() < deadline, "never got ready to be interrupted"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
        return proc.returncode, proc.files[0].read_text(), proc.files[1].read_text()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the group left (Ray processes)
        except ProcessLookupError:
            pass


def _one_interrupt_line(err: str, command: str) -> None:
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-4000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"cascade {command}: interrupted (Ctrl-C)"), err[-4000:]
    assert sum("interrupted" in line for line in lines) == 1, err[-4000:]


def _statuses(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(con.execute("select status, count(*) from runs group by status").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def test_ctrl_c_during_bayes_opt_tune(tmp_path):
    out = tmp_path / "tuned"
    seen: list[float] = []

    def in_the_fit(err: str) -> bool:  # the transform line is printed just before the fit: 2 s into Optuna's loop
        if "cascade tune: transform" in err and not seen:
            seen.append(time.time())
        return bool(seen) and time.time() - seen[0] > 2

    proc = _start(["jobs.cli", "tune", "--results", str(DEV), "--models", "llama3.2-1b,llama3.2-3b", "--method",
                   "bayes-opt", "--param", "n_trials=100000", "--out", str(out)], tmp_path)
    rc, _, err = _interrupt(proc, in_the_fit, 240)
    assert rc == 130, err[-3000:]
    _one_interrupt_line(err, "tune")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tuned")]


def _sweep_spec(tmp_path: Path) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["records"][0]["path"] = str(DEV)
    raw["out"] = str(tmp_path / "sweeps")
    raw["methods"] = [{"name": "bayes-opt", "params": {"n_trials": 3000}}, "grid"]
    raw["sample_sizes"] = [30, "all"]
    raw["seeds"] = [0, 1, 2]
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_leaves_no_running_run(tmp_path):
    db = tmp_path / "m.db"
    spec = _sweep_spec(tmp_path)
    proc = _start(["jobs.cli", "sweep", str(spec), "--tracking-uri", f"sqlite:///{db}", "--no-progress", "--jobs",
                   "1"], tmp_path)
    # interrupt once the parent run is open and a cell is in flight
    rc, out, err = _interrupt(proc, lambda _: _statuses(db).get("RUNNING", 0) >= 1 and time.sleep(3) is None, 300)
    assert rc == 130, out[-2000:] + err[-3000:]
    _one_interrupt_line(err, "sweep")
    st = _statuses(db)
    assert st.get("RUNNING", 0) == 0 and st.get("KILLED", 0) >= 1, st  # the parent (and any open cell) KILLED
    cells = tmp_path / "sweeps"
    if cells.exists():  # every cell folder there is whole (curve and summary), nothing half-written
        for s in cells.rglob("summary.json"):
            assert (s.parent / "curve.parquet").exists()
        assert not [p for p in cells.rglob("*.tmp-*")]


@pytest.mark.slow
def test_ctrl_c_during_score_keeps_whole_shards_only(tmp_path):
    cfg = {
        "benchmarks": [{"name": "mmlu", "splits": ["test"], "limit": 40}],
        "data_dir": str(ROOT / "examples" / "benchmarks"),
        "out": str(tmp_path / "store"),
        "shard_size": 5,
        "signals": ["mean_logprob"],
        "stages": [{"name": "smol", "model": "smollm2-135m", "dtype": "float32", "batch_size": 5,
                    "resources": {"num_cpus": 1, "threads": 1}, "price": {"input": 0.01, "output": 0.02}}],
        "ray": {"progress": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store = tmp_path / "store"
    proc = _start(["jobs.cli", "score", str(path), "--no-progress"], tmp_path)
    rc, _, err = _interrupt(proc, lambda _: store.exists() and len(records.parquet_files(store)) >= 1, 600)
    assert rc == 130, err[-3000:]
    _one_interrupt_line(err, "score")
    assert "shards finished so far are kept" in err
    shards = records.parquet_files(store)
    assert 1 <= len(shards) < 8
    assert all(records.verify_part(f, require_manifest=True) is None for f in shards)
    assert not [p for p in store.rglob(".tmp-*")]
