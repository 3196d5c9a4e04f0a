"""Two processes writing one store at once (real subprocesses started together, several repetitions):
the same file twice into a new store gives one success and one clean refusal, never doubled records;
different models both land, each record once; concurrent rewrites of one shard always leave it
consistent with its manifest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.data import records

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
REPS = 4


def _start(args: list) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _together(*argvs) -> list[tuple[int, str]]:
    procs = [_start(a) for a in argvs]
    return [(p.wait(timeout=600), p.communicate()[1]) for p in procs]


def test_same_file_twice_into_a_new_store_one_success_one_refusal(tmp_path):
    n = len(pd.read_parquet(DEV))
    for rep in range(REPS):
        store = tmp_path / f"store{rep}"
        res = _together(["import", DEV, "--out", store], ["import", DEV, "--out", store])
        codes = sorted(rc for rc, _ in res)
        assert codes == [0, 2], res
        err = next(e for rc, e in res if rc == 2)
        assert "already holds records for medmcqa/" in err and "--overwrite" in err
        assert len(err.strip().splitlines()) == 1, err
        back = records.load(store)
        assert len(back) == n and not back.duplicated(records.KEY).any()  # every record exactly once
        assert len(records.parquet_files(store)) == 5
        assert not [p for p in store.rglob(".*")]  # no staging left behind by either


def test_different_models_at_once_both_land_once(tmp_path):
    dev = pd.read_parquet(DEV)
    a = dev[dev.model.isin(["llama3.2-1b", "llama3.2-3b"])]
    b = dev[dev.model.isin(["llama3.1-8b", "llama3.1-70b"])]
    a.to_parquet(tmp_path / "a.parquet")
    b.to_parquet(tmp_path / "b.parquet")
    for rep in range(REPS // 2):
        store = tmp_path / f"store{rep}"
        res = _together(["import", tmp_path / "a.parquet", "--out", store],
                        ["import", tmp_path / "b.parquet", "--out", store])
        assert [rc for rc, _ in res] == [0, 0], res
        back = records.load(store)
        assert len(back) == len(a) + len(b) and not back.duplicated(records.KEY).any()


_REWRITER = """
import sys, pandas as pd
from pathlib import Path
from cascade.data import records
path, k = Path(sys.argv[1]), int(sys.argv[2])
t = records.to_arrow(records.validate(pd.DataFrame({
    "benchmark": "b", "split": "test", "query_id": range(5000), "model": "m", "confidence": float(k),
    "correct": 1.0, "input_tokens": 1, "output_tokens": 1, "cost": 1.0})))
for _ in range(15):
    records.write_part(t, path)
"""


def test_two_processes_rewriting_one_shard_leave_it_consistent(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    path = tmp_path / "store" / "b" / "m" / "test-000000-005000.parquet"
    for _ in range(2):
        procs = [subprocess.Popen([sys.executable, "-c", _REWRITER, str(path), str(k)], env=env) for k in (1, 2)]
        assert [p.wait(timeout=600) for p in procs] == [0, 0]
        assert records.verify_part(path, require_manifest=True) is None
        conf = pq_conf(path)
        assert len(conf) == 5000 and np.unique(conf).size == 1 and conf[0] in (1.0, 2.0)


def pq_conf(path: Path) -> np.ndarray:
    return records.load(path)["confidence"].to_numpy()
