"""Any Parquet reader reads a results store as the table it is: pandas and pyarrow.dataset given the
folder, DuckDB and Polars given the glob STORE/**/*.parquet, each counting every record once. Manifests
and the lock carry names Arrow skips (leading `_`); shards being written, moved aside by --overwrite or
set aside as damaged end in a suffix after `.parquet`, so no glob takes them. Stores of older versions
(`X.parquet.manifest.json`, `store.lock`) are read as they are and converted by their next write."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pytest
from parquet_readers import assert_every_reader_sees
from test_store_names import _frame

from cascade.data import records
from jobs import cli

ROOT = Path(__file__).resolve().parents[1]


def _not_records(store: Path) -> list[Path]:
    """Files of the store outside hidden folders that are not shards yet would be taken by a reader."""
    return [p for p in store.rglob("*") if p.is_file() and not p.name.startswith(("_", "."))
            and not any(part.startswith(".") for part in p.relative_to(store).parts[:-1])
            and not p.name.endswith(".parquet")]


def test_a_store_reads_the_same_in_every_reader(tmp_path):
    store = tmp_path / "s"
    a, b = _frame(["org/small", "_large"]), _frame(["m"], bench="other")
    records.write_records(records.validate(a), store)
    records.write_records(records.validate(b), store)
    assert _not_records(store) == []
    assert (store / records.LOCK_NAME).is_file()
    assert all(records.manifest_path(f).is_file() for f in records.parquet_files(store))
    assert_every_reader_sees(store, pd.concat([a, b]))
    assert "_large" in set(pd.read_parquet(store)["model"])  # a leading `_` no longer hides a model's folder


def test_old_store_is_read_then_converted_by_its_next_write(tmp_path):
    store = tmp_path / "s"
    records.write_records(records.validate(_frame()), store)
    for f in records.parquet_files(store):  # as an older version left it: sidecars beside, lock store.lock
        records.manifest_path(f).rename(records.legacy_manifest_path(f))
    (store / records.LOCK_NAME).rename(store / records.LEGACY_LOCK_NAME)
    with pytest.raises(Exception, match="magic bytes|Parquet"):
        pads.dataset(store, format="parquet").count_rows()  # the failure older stores gave
    assert len(records.load(store)) == 24  # read as it is, manifests checked
    victim = records.parquet_files(store)[0]
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert "sha256 differs" in records.verify_part(victim)  # an old manifest still catches damage
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))

    extra = _frame(["third"])
    records.write_records(records.validate(extra), store)  # the next write converts the store
    assert not (store / records.LEGACY_LOCK_NAME).exists()
    manifests = list(store.rglob(f"*{records.MANIFEST_SUFFIX}"))
    assert len(manifests) == 3 and all(p.name.startswith("_") for p in manifests)
    assert all(records.verify_part(f, require_manifest=True) is None for f in records.parquet_files(store))
    assert_every_reader_sees(store, pd.concat([_frame(), extra]))


def _killed_at(store: Path, tmp_path: Path, where: str, action: str) -> subprocess.CompletedProcess:
    """Run ``action`` in a real process that SIGKILLs itself at the first os.replace whose source
    contains ``where`` (the moment a crash leaves the most behind)."""
    script = textwrap.dedent(f"""
        import os, signal, pandas as pd
        from cascade.data import records
        real = os.replace
        def replace(src, dst):
            if {where!r} in str(src):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        records.os.replace = replace
        df = pd.read_parquet({str(tmp_path / "new.parquet")!r})
        {action}
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)


def test_an_overwrite_killed_midway_leaves_nothing_a_reader_double_counts(tmp_path):
    store = tmp_path / "s"
    old, kept = _frame(), _frame(["k"], bench="keep")
    records.write_records(records.validate(old), store)
    records.write_records(records.validate(kept), store)
    new = _frame().assign(cost=7e-6)
    new.to_parquet(tmp_path / "new.parquet")
    # killed after the old shards were moved aside, with the new ones staged but not yet renamed in
    r = _killed_at(store, tmp_path, ".staging-", "records.write_records(records.validate(df), "
                                               f"{str(store)!r}, overwrite=True)")
    assert r.returncode == -9, r.stderr
    assert list(store.glob(".replaced-*")) and list(store.glob(".staging-*"))  # what a killed writer leaves
    assert [p for p in store.rglob(".replaced-*/**/*") if p.is_file()]
    assert all(p.name.endswith(records.REPLACED_SUFFIX) for p in store.rglob(".replaced-*/**/*") if p.is_file())
    assert _not_records(store) == []
    assert_every_reader_sees(store, kept)  # neither the moved-aside shards nor the staged ones are read

    assert cli.main(["import", str(tmp_path / "new.parquet"), "--out", str(store), "--overwrite"]) == 0
    assert not list(store.glob(".staging-*"))  # a killed writer's staging is cleared by the next write
    assert_every_reader_sees(store, pd.concat([new, kept]))
    back = records.load(store)
    assert (back[back.benchmark == "bench"]["cost"] >= 7e-6).all()


def test_a_shard_write_killed_midway_leaves_only_names_readers_skip(tmp_path):
    store = tmp_path / "s"
    records.write_records(records.validate(_frame(["a"])), store)
    _frame(["b"]).to_parquet(tmp_path / "new.parquet")
    target = store / "bench" / "b" / "test-000000-000006.parquet"
    r = _killed_at(store, tmp_path, records.TEMP_SUFFIX,
                   f"records.write_part(records.to_arrow(records.validate(df)), {str(target)!r}, store={str(store)!r})")
    assert r.returncode == -9, r.stderr
    left = list(target.parent.iterdir())
    assert left and all(p.name.startswith(".tmp-") and p.name.endswith(records.TEMP_SUFFIX) for p in left)
    assert_every_reader_sees(store, _frame(["a"]))
