"""Resume after faults: SIGKILL mid-run, then damage a finished shard's bytes (footer intact), rerun.

The damaged shard must be detected by name (its manifest's sha256 no longer matches), moved aside to
``<out>/.corrupt/`` and scored again; every record must exist exactly once; finished intact shards are
not touched; and the store must load (and tune) without error afterwards.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from parquet_readers import assert_every_reader_sees

from cascade.data import records

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "benchmarks"
PY = sys.executable



def _config(tmp_path: Path, n: int = 40, shard: int = 5) -> Path:
    raw = {
        "benchmarks": [{"name": "mmlu", "splits": ["test"], "limit": n}],
        "data_dir": str(EXAMPLES),
        "out": str(tmp_path / "out"),
        "shard_size": shard,
        "signals": ["mean_logprob", "first_logprob", "choice_logprob"],
        "stages": [{"name": "smol", "model": "smollm2-135m", "dtype": "float32", "batch_size": shard,
                    "resources": {"num_cpus": 1, "threads": 2}, "price": {"input": 0.01, "output": 0.02}}],
        "ray": {"progress": False},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _shards(out: Path) -> dict[Path, str]:
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in records.parquet_files(out)} if out.exists() else {}


def _wait_for(cond, timeout, proc):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def damage_keeping_footer(path: Path) -> None:
    """Flip 64 bytes in the middle of the data pages; the Parquet footer (and its length) stays intact."""
    data = bytearray(path.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    data_end = len(data) - 8 - footer_len
    start = 4 + (data_end - 4) // 3
    for i in range(start, min(start + 64, data_end)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    pq.read_metadata(path)  # the footer still reads: only the content hash can tell


def _records(shard) -> "pd.DataFrame":
    import pandas as pd

    n = shard.n
    return pd.DataFrame({"benchmark": shard.benchmark, "split": shard.split, "query_id": range(shard.start, shard.end),
                         "model": "smol", "correct": [1.0] * n, "input_tokens": [10] * n, "output_tokens": [1] * n,
                         "cost": [1e-6] * n, "conf_mean_logprob": [-0.5] * n, "conf_first_logprob": [-0.5] * n,
                         "conf_choice_logprob": [-0.1] * n})


def test_plan_names_sets_aside_and_requeues_damaged_or_short_shards(tmp_path, capsys):
    """The rerun check alone (no Ray): intact shards are skipped, a damaged one (footer intact) and one
    with the wrong row count are named on stderr, moved under .corrupt/ and queued again."""
    from cascade.scoring.config import load_config
    from jobs.score import StageStats, _todo, plan

    cfg = load_config(_config(tmp_path, n=20, shard=5))
    shards, per_split = plan(cfg)
    lst = shards["smol"]
    for sh in lst[:3]:
        records.write_part(records.to_arrow(_records(sh)), sh.path, store=cfg.out)
    damage_keeping_footer(lst[0].path)
    short = _records(lst[2]).iloc[:3]  # a shard written (by another tool) with too few rows
    records.write_part(records.to_arrow(short), lst[2].path, store=cfg.out)
    stats = {"smol": StageStats()}
    todo = _todo(cfg, shards, per_split, stats, "run1")
    err = capsys.readouterr().err
    assert [sh.path.name for sh in todo["smol"]] == [lst[0].path.name, lst[2].path.name, lst[3].path.name]
    assert lst[0].path.name in err and "sha256" in err and lst[2].path.name in err and "3 rows" in err
    assert stats["smol"].skipped_shards == 1 and stats["smol"].rescored_shards == 2
    out = Path(cfg.out)
    assert not lst[0].path.exists() and not records.manifest_path(lst[0].path).exists()
    aside = out / ".corrupt" / "run1" / lst[0].path.relative_to(out).parent
    assert sorted(p.name for p in aside.iterdir()) == sorted(  # both shards and manifests, as *.corrupt
        n + ".corrupt" for sh in (lst[0], lst[2]) for n in (sh.path.name, records.manifest_path(sh.path).name))
    assert records.parquet_files(out) == [lst[1].path]  # readers see only the intact shard
    assert_every_reader_sees(out, _records(lst[1]))
    for sh in todo["smol"]:  # what the rerun then writes: every reader counts each record once
        records.write_part(records.to_arrow(_records(sh)), sh.path, store=cfg.out)
    assert_every_reader_sees(out, pd.concat([_records(sh) for sh in lst[:4]]))


@pytest.mark.slow
def test_sigkill_then_damaged_shard_is_named_set_aside_and_rescored(tmp_path):
    cfg = _config(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([PY, "-m", "jobs.score", str(cfg), "--no-progress"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: len(_shards(out)) >= 2, 600, proc), "no shard was written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the killed run's Ray processes
        except ProcessLookupError:
            pass
    before = _shards(out)
    assert 2 <= len(before) < 8, "the run should have been killed part way"
    assert all(records.verify_part(f) is None for f in before)  # a killed run leaves only whole shards
    victim = sorted(before)[0]
    damage_keeping_footer(victim)
    assert records.verify_part(victim) and "sha256" in records.verify_part(victim)

    r = subprocess.run([PY, "-m", "jobs.score", str(cfg), "--no-progress", "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout[r.stdout.index("{"):])
    assert victim.name in r.stderr and "sha256" in r.stderr  # named on stderr, with the reason
    assert stats["skipped_shards"] == len(before) - 1 and stats["rescored_shards"] == 1
    assert stats["scored_records"] == 40 - 5 * (len(before) - 1)

    after = _shards(out)
    assert len(after) == 8
    assert all(after[f] == h for f, h in before.items() if f != victim)  # intact shards untouched
    assert records.verify_part(victim) is None  # rewritten whole, with a matching manifest
    aside = list((out / ".corrupt").rglob(victim.name + ".corrupt"))
    assert len(aside) == 1 and hashlib.sha256(aside[0].read_bytes()).hexdigest() != after[victim]
    df = records.load(out)  # the hidden .corrupt folder is not part of the store
    assert sorted(df["query_id"]) == list(range(40))  # every record exactly once
    assert_every_reader_sees(out, df)  # and any other reader, globs included, counts them once too
    assert not list(out.rglob(".tmp-*"))

    again = subprocess.run([PY, "-m", "jobs.score", str(cfg), "--no-progress", "--json"], cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads(again.stdout[again.stdout.index("{"):])
    assert s2["scored_records"] == 0 and s2["skipped_shards"] == 8 and s2["rescored_shards"] == 0
