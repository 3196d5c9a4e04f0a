"""Two writers at once into the same tune output: never a curve from one run next to the summary of another.

- two processes call :func:`cascade.evaluate.outputs.write_outputs` on the same folder at the same moment,
  round after round (a barrier starts each round), and after every round the folder holds one run's
  curve and the same run's summary, and no temporary folder is left beside it;
- two real `cascade tune` processes (different methods) into the same --out, with and without
  --all-cascades: both exit 0 and the result is one run's output, whole.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
ROUNDS = 25


def _writer(out: str, tag: str, barrier, rounds: int) -> None:
    from cascade.evaluate.outputs import write_outputs

    # a curve large enough that writing it takes a while, so the two writers overlap
    curve = pd.DataFrame({"method": [tag] * 20000, "test_cost": range(20000), "test_error": [0.5] * 20000})
    for i in range(rounds):
        barrier.wait(timeout=60)
        write_outputs(Path(out), curve, {"method": tag, "round": i})
        barrier.wait(timeout=60)  # the parent checks the folder between rounds


def _consistent(out: Path) -> str:
    assert sorted(p.name for p in out.iterdir()) == ["curve.parquet", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    methods = set(pd.read_parquet(out / "curve.parquet", columns=["method"])["method"])
    assert methods == {summary["method"]}, f"curve of {methods} next to the summary of {summary['method']}"
    return summary["method"]


def test_two_processes_write_the_same_folder(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    out = tmp_path / "out"
    procs = [ctx.Process(target=_writer, args=(str(out), tag, barrier, ROUNDS)) for tag in ("A", "B")]
    for p in procs:
        p.start()
    winners = []
    try:
        for _ in range(ROUNDS):
            barrier.wait(timeout=120)  # start of the round
            barrier.wait(timeout=120)  # both writers done
            winners.append(_consistent(out))
            assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "temporary folders left behind"
    finally:
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert set(winners) <= {"A", "B"}


def _tune(args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", "tune", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("all_cascades", [False, True])
def test_two_tunes_into_one_out(tmp_path, all_cascades):
    out = tmp_path / "out"
    models = "llama3.2-1b,llama3.2-3b,llama3.1-8b"
    extra = ["--all-cascades"] if all_cascades else []
    procs = [_tune(["--results", DEV, "--models", models, "--method", m, "--out", out, *extra])
             for m in ("grid", "random")]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (so, se) in zip(procs, results):
        assert p.returncode == 0, se
    if all_cascades:
        folders = sorted(d for d in out.iterdir() if d.is_dir())
        assert len(folders) == 4  # 1b-3b, 1b-8b, 3b-8b, 1b-3b-8b
        methods = {_consistent(d) for d in folders}
        assert len(methods) == 1, f"cascades of two runs mixed: {methods}"  # one lock for the whole run
    else:
        _consistent(out)
    assert not [p.name for p in tmp_path.iterdir() if p.name != "out"], "temporary folders left behind"
