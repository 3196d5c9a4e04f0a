"""Concurrent sweeps: cell claims (a lock file per cell) released when their owner dies, and two `cascade sweep`
of one spec started together (two real processes, each with its own local Ray) -> each cell runs and is
logged exactly once, into a store neither process had created."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cascade.evaluate import sweep_spec as S

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
PY = sys.executable


def test_claim_is_exclusive_and_released_when_its_owner_is_killed(tmp_path):
    from jobs.sweep import CellClaims

    code = ("import sys, time; from pathlib import Path; from jobs.sweep import CellClaims; "
            "c = CellClaims(Path(sys.argv[1])); assert c.try_claim('cell-a'); print('held', flush=True); "
            "time.sleep(600)")
    owner = subprocess.Popen([PY, "-c", code, str(tmp_path / "claims")], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert owner.stdout.readline().strip() == "held"
        mine = CellClaims(tmp_path / "claims")
        assert not mine.try_claim("cell-a")  # a live owner holds it
        assert mine.try_claim("cell-b")  # other cells are free
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        assert mine.try_claim("cell-a")  # the OS dropped the dead owner's lock: a rerun is not blocked
        other = CellClaims(tmp_path / "claims")
        assert not other.try_claim("cell-a")  # and now it is ours alone
        mine.release_all()
        assert other.try_claim("cell-a")
        other.release_all()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def _runs(db: Path, experiment: str) -> list[tuple[str, str]]:
    """(cell key or '', status) of every run of the experiment, read straight from SQLite."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(
            "select coalesce((select t.value from tags t where t.run_uuid = r.run_uuid and "
            "t.key = 'cascade.cell_key'), ''), r.status from runs r join experiments e on "
            "e.experiment_id = r.experiment_id where e.name = ?", (experiment,)).fetchall()
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_sweeps_of_one_spec_at_once_run_each_cell_once(tmp_path):
    raw = yaml.safe_load((ROOT / "examples" / "sweep-tiny.yaml").read_text())
    raw["records"][0]["path"] = str(DEV)
    raw["out"] = str(tmp_path / "out")
    raw["seeds"] = [0, 1]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    keys = {c.key for c in S.expand(S.load_spec(spec))}
    assert len(keys) == 8
    db = tmp_path / "m.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    cmd = [PY, "-m", "jobs.sweep", str(spec), "--tracking-uri", f"sqlite:///{db}", "--no-progress", "--jobs", "2"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for _ in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=800)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    runs = _runs(db, "sweep-tiny")
    cell_runs = [(k, st) for k, st in runs if k]
    assert sorted(k for k, st in cell_runs if st == "FINISHED") == sorted(keys)  # each cell exactly once
    assert len(cell_runs) == len(keys)  # and no second run of a cell in any state
    assert [st for k, st in runs if not k] == ["FINISHED"]  # one parent run, shared
    ran = []
    for out in outs:
        m = re.search(r"ran (\d+) cells, logged (\d+), failed 0", out)
        if m:
            assert m.group(1) == m.group(2)
            ran.append(int(m.group(1)))
        else:  # a driver that started after the other had finished everything
            assert "8 already finished, 0 to run" in out, out[-3000:]
            ran.append(0)
    assert sum(ran) == len(keys), outs
    for k in keys:
        assert (tmp_path / "out" / "sweep-tiny" / k / "curve.parquet").exists()
