"""Per-shard manifests: written with every shard (sha256, bytes, rows), checked by verify_part and load;
a damaged shard is named with the fix; shards without a manifest (older stores, plain Parquet files)
stay readable; a writer killed at any moment never leaves a shard that verifies but is wrong."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascade.data import records
from cascade.data.records import RecordsError, manifest_path, verify_part
from jobs import cli

ROOT = Path(__file__).resolve().parents[1]


def _frame(models=("small", "large"), n=200) -> pd.DataFrame:
    rows = [{"benchmark": "bench", "split": split, "query_id": q, "model": m, "confidence": -0.001 * q,
             "correct": float(q % 2), "input_tokens": 10 + q, "output_tokens": 2, "cost": 1e-6 * (j + 1)}
            for split in ("train", "test") for j, m in enumerate(models) for q in range(n)]
    return pd.DataFrame(rows)


@pytest.fixture
def store(tmp_path) -> Path:
    s = tmp_path / "store"
    records.write_records(records.validate(_frame()), s)
    return s


def _flip_middle_byte(f: Path) -> None:
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3] ^= 0x55  # a data page, not the footer: the file still opens
    f.write_bytes(bytes(raw))


def test_every_shard_has_a_matching_manifest(store):
    files = records.parquet_files(store)
    assert len(files) == 2
    for f in files:
        man = json.loads(manifest_path(f).read_text())
        assert man["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert man["bytes"] == f.stat().st_size and man["rows"] == pq.read_metadata(f).num_rows == 400
        assert man["file"] == f.name
        assert verify_part(f) is None and verify_part(f, require_manifest=True) is None
    assert (store / records.LOCK_NAME).exists()
    assert sorted(p.name for p in store.iterdir()) == sorted(["bench", records.LOCK_NAME])


def test_damaged_bytes_with_an_intact_footer_are_detected_by_name(store, capsys):
    f = records.parquet_files(store)[1]
    _flip_middle_byte(f)
    pq.read_metadata(f)  # the footer is intact: a footer/row-count check alone would call it finished
    reason = verify_part(f)
    assert reason.startswith(str(f)) and "sha256" in reason
    with pytest.raises(RecordsError) as e:
        records.load(store)
    assert str(f) in str(e.value) and "delete it and its manifest (_<shard>.manifest.json)" in str(e.value)
    rc = cli.main(["tune", "--results", str(store), "--models", "small,large", "--method", "grid",
                   "--out", str(store.parent / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and str(f) in err and "Traceback" not in err


@pytest.mark.parametrize("damage, words", [
    ("truncate", "bytes, its manifest says"),
    ("append", "bytes, its manifest says"),
    ("manifest-rows", "rows, its manifest says"),
    ("manifest-garbage", "unreadable shard manifest"),
    ("delete", "missing"),
])
def test_verify_part_reasons(store, damage, words):
    f = records.parquet_files(store)[0]
    mp = manifest_path(f)
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "append":
        f.write_bytes(f.read_bytes() + b"x")
    elif damage == "manifest-rows":
        man = json.loads(mp.read_text())
        mp.write_text(json.dumps(man | {"rows": man["rows"] + 1}))
    elif damage == "manifest-garbage":
        mp.write_text("{not json")
    elif damage == "delete":
        f.unlink()
    reason = verify_part(f)
    assert reason is not None and words in reason and (str(f) in reason or str(mp) in reason), reason


def test_shards_without_a_manifest_stay_readable(tmp_path):
    legacy = tmp_path / "legacy" / "bench" / "small"
    legacy.mkdir(parents=True)
    df = _frame(["small"])
    df.to_parquet(legacy / "part-000000000000.parquet", index=False)
    f = legacy / "part-000000000000.parquet"
    assert verify_part(f) is None
    assert "has no manifest" in verify_part(f, require_manifest=True)
    assert len(records.load(tmp_path / "legacy")) == len(df)
    # a single Parquet file passed as records
    df.to_parquet(tmp_path / "one.parquet", index=False)
    assert len(records.load(tmp_path / "one.parquet")) == len(df)
    # a store mixing legacy shards and new ones (string vs large_string columns)
    records.write_records(records.validate(_frame(["large"])), tmp_path / "legacy")
    assert len(records.load(tmp_path / "legacy")) == 2 * len(df)


def test_an_unreadable_legacy_shard_is_named(tmp_path):
    (tmp_path / "s").mkdir()
    _frame().to_parquet(tmp_path / "s" / "a.parquet", index=False)
    f = tmp_path / "s" / "a.parquet"
    raw = bytearray(f.read_bytes())
    f.write_bytes(bytes(raw[:50]) + b"\0" * (len(raw) - 58) + bytes(raw[-8:]))  # footer length now lies
    with pytest.raises(RecordsError, match="a.parquet"):
        records.load(tmp_path / "s")


def test_fingerprint_and_parquet_files_ignore_manifests_and_the_lock(store):
    fp = records.fingerprint(store)
    files = records.parquet_files(store)
    assert all(f.suffix == ".parquet" for f in files)
    for f in files:
        manifest_path(f).unlink()
    (store / records.LOCK_NAME).unlink()
    assert records.fingerprint(store) == fp and records.parquet_files(store) == files


def test_crash_between_manifest_and_shard_never_leaves_a_verified_wrong_shard(store, monkeypatch):
    f = records.parquet_files(store)[0]
    old = f.read_bytes()
    table = records.to_arrow(records.validate(_frame(["small"]).assign(cost=7e-6)))
    real = os.replace

    def die_before_the_shard(src, dst):
        if str(dst).endswith(".parquet"):
            raise KeyboardInterrupt  # the process stops between the two renames
        return real(src, dst)

    monkeypatch.setattr(records.os, "replace", die_before_the_shard)
    with pytest.raises(KeyboardInterrupt):
        records.write_part(table, f)  # rewriting an existing shard
    with pytest.raises(KeyboardInterrupt):
        records.write_part(table, f.parent / "new-shard.parquet")  # a new shard
    monkeypatch.undo()
    reason = verify_part(f)  # the old bytes under the new manifest: reported, not taken as finished
    assert f.read_bytes() == old and reason is not None and ("sha256" in reason or "bytes" in reason), reason
    assert not (f.parent / "new-shard.parquet").exists()  # only an orphan manifest, which no reader lists
    assert manifest_path(f.parent / "new-shard.parquet").exists()
    assert f.parent / "new-shard.parquet" not in records.parquet_files(store)
    assert not [p for p in f.parent.iterdir() if p.name.startswith(".tmp-")]


def test_write_part_locks_the_store_two_levels_up(tmp_path):
    store = tmp_path / "out"
    path = store / "bench" / "stage" / "test-000000-000010.parquet"
    table = records.to_arrow(records.validate(_frame(["stage"], n=5)))
    records.write_part(table, path)
    assert (store / records.LOCK_NAME).exists() and verify_part(path, require_manifest=True) is None
    other = tmp_path / "elsewhere"
    records.write_part(table, tmp_path / "x" / "y.parquet", store=other)
    assert (other / records.LOCK_NAME).exists()


_WRITER = """
import sys, pandas as pd
from pathlib import Path
from cascade.data import records
out, mode = Path(sys.argv[1]), sys.argv[2]
tables = [records.to_arrow(records.validate(pd.DataFrame({
    "benchmark": "b", "split": "test", "query_id": range(2000), "model": "m", "confidence": float(k),
    "correct": 1.0, "input_tokens": 1, "output_tokens": 1, "cost": float(k)}))) for k in range(3)]
i = 0
while True:
    path = out / "b" / "m" / (f"s-{i:05d}.parquet" if mode == "new" else "same.parquet")
    records.write_part(tables[i % 3], path)
    if i == 0:
        print("ready", flush=True)  # one shard written: the kill lands while later ones are written
    i += 1
"""


@pytest.mark.parametrize("mode", ["new", "same"])
def test_sigkill_at_random_moments_never_leaves_a_verified_wrong_shard(tmp_path, mode):
    """A writer killed with SIGKILL: every shard left either verifies and reads back exactly one of the
    tables written, or is reported by verify_part (only possible when a shard was being replaced)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    allowed = {float(k) for k in range(3)}
    for rep, delay in enumerate((0.05, 0.3, 0.7)):
        out = tmp_path / f"{mode}-{rep}"
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), mode], env=env, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        shards = records.parquet_files(out)
        assert shards
        for f in shards:
            reason = verify_part(f, require_manifest=True)
            if reason is None:
                t = pq.read_table(f).to_pandas()
                assert len(t) == 2000 and set(t["confidence"]) <= allowed and t["confidence"].nunique() == 1
            else:
                assert mode == "same", reason  # new shards are never left half-done
        if mode == "new":
            assert len(records.load(out)) == 2000 * len(shards)
