"""Names become folder names through records.folder_name only: reversible, injective, never leaving or
hiding in its parent; every reader finds what every writer wrote, stores written with the old `_safe`
folder names included; cascade_data refuses what it used to drop silently."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.data import records
from cascade.data.records import RecordsError, folder_name, name_from_folder
from jobs import cli


def _frame(models=("small", "large"), bench="bench", n=6) -> pd.DataFrame:
    rows = []
    for split in ("train", "test"):
        for j, m in enumerate(models):
            for q in range(n):
                rows.append({"benchmark": bench, "split": split, "query_id": q, "model": m, "confidence": -0.1 * q,
                             "correct": float(q % 2), "input_tokens": 10, "output_tokens": 2,
                             "cost": 1e-6 * (j + 1)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("name, folder", [
    ("llama3.2-1b", "llama3.2-1b"), ("org_m", "org_m"), ("a=b", "a=b"),  # old-safe names keep their folder
    ("org/m", "org%2Fm"), ("a\\b", "a%5Cb"), (".hidden", "%2Ehidden"), ("../x", "%2E.%2Fx"), ("...", "%2E.."),
    ("100%", "100%25"), ("a b", "a%20b"), ("modèle", "mod%C3%A8le"), ("x.", "x."), ("_m", "%5Fm"), ("a_", "a_"),
])
def test_folder_name_encodes(name, folder):
    assert folder_name(name, "model") == folder
    assert name_from_folder(folder) == name


def test_folder_name_is_reversible_injective_and_stays_in_its_parent():
    rng = np.random.default_rng(1)
    alphabet = list(string.printable.strip()) + ["/", "\\", ".", "%", "é", "漢", "\u200b", "\u202e", " "]
    names = {"".join(rng.choice(alphabet, size=rng.integers(1, 12))) for _ in range(3000)}
    names -= {"", ".", ".."}
    folders = {}
    for n in names:
        if any(ord(c) < 32 or ord(c) == 127 for c in n):
            continue
        f = folder_name(n, "model")
        assert name_from_folder(f) == n
        assert "/" not in f and "\\" not in f and not f.startswith((".", "_")) and f not in (".", "..") and f
        assert all(32 < ord(c) < 127 for c in f), f  # visible ASCII only: no zero-width or bidi tricks
        assert folders.setdefault(f, n) == n  # two names never share a folder
        assert Path("store", f).resolve().parent == Path("store").resolve()


@pytest.mark.parametrize("name, words", [
    ("", "is empty"), (".", "current or parent folder"), ("..", "current or parent folder"),
    ("a\x00b", "control character"), ("a\tb", "control character"), ("a\x7fb", "control character"),
    ("x" * 201, "too long"), ("é" * 67, "too long"), (3, "must be a string"),
])
def test_folder_name_refuses(name, words):
    with pytest.raises(RecordsError) as e:
        folder_name(name, "benchmark")
    assert "benchmark" in str(e.value) and words in str(e.value)


def test_longest_accepted_name():
    assert folder_name("x" * records.MAX_FOLDER_NAME, "model") == "x" * records.MAX_FOLDER_NAME


def test_names_that_used_to_escape_or_hide_are_stored_inside_and_read_back(tmp_path):
    models = ["../../escaped", ".hidden", "org/m", "org_m", "a\\b"]
    df = _frame(models)
    df.to_parquet(tmp_path / "in.parquet")
    store = tmp_path / "deep" / "store"
    assert cli.main(["import", str(tmp_path / "in.parquet"), "--out", str(store)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "in.parquet"]  # nothing beside the store
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["store"]
    folders = sorted(p.name for p in (store / "bench").iterdir())
    assert folders == sorted(folder_name(m, "model") for m in models)
    back = records.load(store)
    assert sorted(back["model"].unique()) == sorted(models)
    assert len(back) == len(df) and not back.duplicated(records.KEY).any()
    # every reader: existing_groups, fingerprint and cascade_data see them all
    assert records.existing_groups(store) == {("bench", m) for m in models}
    data = records.cascade_data(back, ["../../escaped", ".hidden"], "test")
    assert data.n == 6


def _old_store(tmp_path) -> Path:
    """A store as the pre-folder_name writer left it: `_safe` folder names, no manifests, no lock."""
    store = tmp_path / "old"
    df = _frame(["org/m", "big"])
    for model in ("org/m", "big"):
        folder = records.legacy_folder_name(model)
        (store / "bench" / folder).mkdir(parents=True)
        df[df.model == model].to_parquet(store / "bench" / folder / "part-0123456789ab.parquet", index=False)
    return store


def test_legacy_folder_name_is_the_old_mapping():
    assert records.legacy_folder_name("org/m") == records.legacy_folder_name("org_m") == "org_m"
    assert records.legacy_folder_name("../x") == ".._x"  # why it had to go
    assert records.legacy_folder_name("llama3.2-1b") == folder_name("llama3.2-1b", "model")


def test_old_store_is_read_extended_and_overwritten_by_columns(tmp_path):
    store = _old_store(tmp_path)
    assert (store / "bench" / "org_m").is_dir()
    assert len(records.load(store)) == 24
    assert records.existing_groups(store) == {("bench", "org/m"), ("bench", "big")}
    # a new model named org_m: a folder the old writer would have shared with org/m
    _frame(["org_m"]).to_parquet(tmp_path / "b.parquet")
    assert cli.main(["import", str(tmp_path / "b.parquet"), "--out", str(store)]) == 0
    assert sorted(records.load(store)["model"].unique()) == ["big", "org/m", "org_m"]
    # the same model again: refused, wherever its old file lies
    changed = _frame(["org/m"]).assign(cost=5e-6)
    changed.to_parquet(tmp_path / "c.parquet")
    assert cli.main(["import", str(tmp_path / "c.parquet"), "--out", str(store)]) == 2
    # --overwrite replaces exactly org/m: its old-name file goes, org_m's records (same old folder) stay
    assert cli.main(["import", str(tmp_path / "c.parquet"), "--out", str(store), "--overwrite"]) == 0
    back = records.load(store)
    assert len(back) == 36 and not back.duplicated(records.KEY).any()
    assert (back[back.model == "org/m"]["cost"] == 5e-6).all()
    assert (back[back.model == "org_m"]["cost"] == 1e-6).all()
    assert not list((store / "bench" / "org_m").glob("part-0123456789ab.parquet"))
    assert list((store / "bench" / "org%2Fm").glob("part-*.parquet"))
    assert not [p for p in store.rglob(".*")]  # nothing moved aside is left


def test_overwrite_refuses_a_file_mixing_replaced_and_kept_records(tmp_path):
    store = tmp_path / "s"
    (store / "bench").mkdir(parents=True)
    _frame(["a", "b"]).to_parquet(store / "bench" / "both.parquet", index=False)
    _frame(["a"]).to_parquet(tmp_path / "a.parquet")
    before = (store / "bench" / "both.parquet").read_bytes()
    with pytest.raises(RecordsError, match="both.parquet holds records being replaced and others"):
        records.import_file(tmp_path / "a.parquet", store, overwrite=True)
    assert (store / "bench" / "both.parquet").read_bytes() == before


def test_overwrite_that_fails_midway_puts_the_old_shards_back(tmp_path, monkeypatch):
    store = tmp_path / "s"
    records.write_records(records.validate(_frame()), store)
    before = records.load(store).sort_values(records.KEY).reset_index(drop=True)
    real = records.os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if "staging" in str(src) and str(src).endswith(".parquet" + records.TEMP_SUFFIX) and calls["n"] > 4:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(records.os, "replace", flaky)
    with pytest.raises(OSError):
        records.write_records(records.validate(_frame().assign(cost=9e-6)), store, overwrite=True)
    monkeypatch.undo()
    after = records.load(store).sort_values(records.KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    assert not [p for p in store.rglob(".*")]


def test_cascade_data_refuses_models_lacking_queries(tmp_path, capsys):
    df = _frame(["a", "b"])
    df = df[~((df.model == "b") & (df.split == "test") & (df.query_id >= 2))]  # b: 2 of the 6 test queries
    with pytest.raises(RecordsError, match=r"model 'b' has 2 of the 6 test queries of bench"):
        records.cascade_data(df, ["a", "b"], "test")
    # a store holding such records (written by hand, no validation): cascade tune refuses, exit 2
    (tmp_path / "s").mkdir()
    df.to_parquet(tmp_path / "s" / "x.parquet", index=False)
    rc = cli.main(["tune", "--results", str(tmp_path / "s"), "--models", "a,b", "--method", "grid",
                   "--out", str(tmp_path / "out")])
    assert rc == 2 and "model 'b' has 2 of the 6 test queries" in capsys.readouterr().err


def test_cascade_data_refuses_mixed_benchmarks_and_missing_signals():
    a = _frame(["a"], bench="x")
    b = _frame(["b"], bench="y")
    with pytest.raises(RecordsError, match="span benchmarks x, y; pass --benchmark"):
        records.cascade_data(pd.concat([a, b]), ["a", "b"], "test")
    b2 = _frame(["b"]).rename(columns={"confidence": "conf_other"})
    mixed = pd.concat([_frame(["a"]), b2], ignore_index=True)  # b has no 'confidence': nulls after concat
    with pytest.raises(RecordsError, match="signal 'confidence' is missing for model.s. b"):
        records.cascade_data(mixed, ["a", "b"], "test")
