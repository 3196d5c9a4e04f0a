"""Two `cascade score` of one config and output at once: each shard is claimed (a lock under
``<out>/.claims/``, the mechanism sweeps claim cells with) by the run that scores it, so each shard is scored
once and every record is stored once; a claim held by a process that died does not block a rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cascade.data import records

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
N, SHARD = 40, 5


def _config(tmp_path: Path) -> Path:
    cfg = {
        "benchmarks": [{"name": "mmlu", "splits": ["test"], "limit": N}],
        "data_dir": str(ROOT / "examples" / "benchmarks"),
        "out": str(tmp_path / "store"),
        "shard_size": SHARD,
        "signals": ["mean_logprob"],
        "stages": [{"name": "smol", "model": "smollm2-135m", "dtype": "float32", "batch_size": SHARD,
                    "resources": {"num_cpus": 1, "threads": 1}, "price": {"input": 0.01, "output": 0.02}}],
        "ray": {"progress": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_dead_owners_shard_claim_does_not_block_a_rerun(tmp_path):
    from cascade.scoring.config import load_config
    from jobs import score
    from jobs.claims import Claims

    cfg = load_config(_config(tmp_path))
    shards, per_split = score.plan(cfg)
    first = shards["smol"][0]
    key = score.claim_key(cfg, first)
    code = ("import sys, time; from pathlib import Path; from jobs.claims import Claims; "
            "c = Claims(Path(sys.argv[1])); assert c.try_claim(sys.argv[2]); print('held', flush=True); "
            "time.sleep(600)")
    root = Path(cfg.out) / score.CLAIMS_DIR
    owner = subprocess.Popen([PY, "-c", code, str(root), key], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert owner.stdout.readline().strip() == "held"
        stats = {"smol": score.StageStats()}
        mine = Claims(root)
        todo = score._todo(cfg, shards, per_split, stats, "r1", mine)
        assert first not in todo["smol"] and len(todo["smol"]) == N // SHARD - 1  # a live owner holds it
        assert stats["smol"].claimed_elsewhere == 1
        mine.release_all()
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        stats = {"smol": score.StageStats()}
        todo = score._todo(cfg, shards, per_split, stats, "r2", mine)
        assert len(todo["smol"]) == N // SHARD and stats["smol"].claimed_elsewhere == 0  # the OS dropped it
        mine.release_all()
    finally:
        owner.kill()
        owner.wait(timeout=30)


@pytest.mark.slow
def test_two_scores_of_one_config_at_once_score_each_shard_once(tmp_path):
    path = _config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(2):
        with open(tmp_path / f"out{i}", "w") as out, open(tmp_path / f"err{i}", "w") as err:
            procs.append(subprocess.Popen([PY, "-m", "jobs.cli", "score", str(path), "--json", "--no-progress"],
                                          cwd=tmp_path, env=env, stdout=out, stderr=err, start_new_session=True))
    try:
        for p in procs:
            p.wait(timeout=900)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stats = []
    for i, p in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"err{i}").read_text()[-3000:]
        stats.append(json.loads((tmp_path / f"out{i}").read_text()))
    scored = [s["scored_records"] for s in stats]
    assert sum(scored) == N, scored  # each shard scored by one run only
    stages = [s["stages"]["smol"] for s in stats]
    for st, n in zip(stages, scored):  # every shard this run did not score was finished or claimed by the other
        assert n // SHARD + st["skipped_shards"] + st["claimed_elsewhere"] == N // SHARD, st
    df = records.load(tmp_path / "store")
    assert len(df) == N and df["query_id"].nunique() == N  # every record exactly once
