"""Reading and importing at scale (issue 13), checked for sameness, not speed (bench/scale.py prints times):

- records.load_cascade (only the cascade's columns, models and row groups; arrays built without a pivot)
  gives exactly the arrays of the pandas pivot (records._cascade_data_pandas over records.load), on
  stores laid out every way a writer leaves them, and refuses what it refuses with the same message;
- only the files a cascade reads are hashed; a damaged one of them is named;
- records.cascade_data (Arrow/numpy) equals the pivot, column-major as the pivot gave;
- import validated in Arrow/numpy column by column stores the same records as the pandas (CSV) path,
  sorted by (split, query_id) per shard, whatever the input's row order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascade.data import records
from cascade.data.records import RecordsError
from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
MODELS = ["llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b"]


@pytest.fixture(scope="module")
def dev() -> pd.DataFrame:
    return pd.read_parquet(DEV)


@pytest.fixture(scope="module")
def store(tmp_path_factory, dev) -> Path:
    s = tmp_path_factory.mktemp("scale") / "store"
    records.write_records(records.validate(dev), s)
    return s


def _same(a: records.CascadeData, b: records.CascadeData) -> None:
    assert a.models == b.models
    for f in ("query_id", "confidence", "correct", "cost"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape and x.dtype == y.dtype, f
        assert np.array_equal(x, y), f
    for f in ("confidence", "correct", "cost"):  # one layout, whatever pandas' pivot happened to give
        assert getattr(a, f).flags["F_CONTIGUOUS"], f


def _reference(path, models, split, **kw) -> records.CascadeData:
    return records._cascade_data_pandas(records.load(path), models, split, **kw)


@pytest.mark.parametrize("models", [MODELS, MODELS[::-1], ["llama3.1-70b", "llama3.2-1b"], MODELS[1:4]])
def test_load_cascade_equals_the_pivot(store, models):
    got = records.load_cascade(store, models, ("train", "test"))
    for split in ("train", "test"):
        _same(got[split], _reference(store, models, split))
        _same(records.cascade_data(records.load(store), models, split), got[split])
        _same(records.cascade_data(records.load_table(store), models, split), got[split])
        _same(records.cascade_data(got, models, split), got[split])  # what load_cascade returned, picked again


def _layouts(tmp: Path, dev: pd.DataFrame) -> dict[str, Path]:
    """The same records laid out as writers leave them."""
    rng = np.random.default_rng(3)
    out = {}
    # one file, rows shuffled, small row groups holding several models
    shuffled = dev.iloc[rng.permutation(len(dev))]
    pq.write_table(pa.Table.from_pandas(shuffled, preserve_index=False), tmp / "shuffled.parquet", row_group_size=700)
    out["one shuffled file"] = tmp / "shuffled.parquet"
    # one file per model sorted by model then split, row groups of ~one model
    by_model = dev.sort_values(["model", "split", "query_id"])
    pq.write_table(pa.Table.from_pandas(by_model, preserve_index=False), tmp / "bymodel.parquet",
                   row_group_size=650)
    out["one file, row group per model"] = tmp / "bymodel.parquet"
    # scoring-like: several shards per (model, split), each a range of queries, ids descending inside
    s = tmp / "shards"
    for (model, split), g in dev.groupby(["model", "split"]):
        g = g.sort_values("query_id", ascending=False)
        for i, rows in enumerate(np.array_split(np.arange(len(g)), 3)):
            part = g.iloc[rows]
            d = s / "medmcqa" / records.folder_name(model, "model")
            d.mkdir(parents=True, exist_ok=True)
            records.write_part(records.to_arrow(records.validate(part)), d / f"{split}-{i}.parquet", store=s)
    out["several shards per model"] = s
    # a second benchmark in the same store (read with --benchmark)
    two = tmp / "two"
    records.write_records(records.validate(dev), two)
    other = dev.assign(benchmark="other", confidence=dev["confidence"] - 1.0)
    records.write_records(records.validate(other), two)
    out["two benchmarks"] = two
    return out


def test_every_layout_gives_the_pivot(tmp_path, dev):
    for name, path in _layouts(tmp_path, dev).items():
        bench = "medmcqa" if name == "two benchmarks" else None
        for models in (MODELS, ["llama3.1-8b", "llama3.2-3b"]):
            got = records.load_cascade(path, models, ("train", "test"), benchmark=bench)
            for split in ("train", "test"):
                ref = records._cascade_data_pandas(records.load(path), models, split, benchmark=bench)
                _same(got[split], ref)
                _same(records.cascade_data(records.load(path), models, split, benchmark=bench), ref)
    other = records.load_cascade(tmp_path / "two", MODELS[:2], ["test"], benchmark="other")["test"]
    mine = records.load_cascade(tmp_path / "two", MODELS[:2], ["test"], benchmark="medmcqa")["test"]
    assert np.allclose(other.confidence, mine.confidence - 1.0)


def _errors(fn) -> str:
    with pytest.raises(RecordsError) as e:
        fn()
    return str(e.value)


def _broken_stores(tmp: Path, dev: pd.DataFrame) -> dict[str, tuple[Path, list[str], dict]]:
    """Stores written by hand (no validation) holding what cascade_data refuses."""
    cases = {}

    def put(name, df, models, **kw):
        d = tmp / name
        d.mkdir()
        for m, g in df.groupby("model"):
            g.to_parquet(d / f"{records.folder_name(m, 'model')}.parquet", index=False)
        cases[name] = (d, models, kw)

    small = dev[dev.model.isin(MODELS[:2])]
    put("lacking-queries", small[~((small.model == MODELS[1]) & (small.split == "test") & (small.query_id % 7 == 0))],
        MODELS[:2])
    put("unknown-model", small, [MODELS[0], "nope"])
    put("no-such-split", small, MODELS[:2], splits=("train", "dev"))
    put("duplicate", pd.concat([small, small[(small.model == MODELS[0]) & (small.split == "train")].head(3)]),
        MODELS[:2])
    sig = small.copy()
    sig.loc[(sig.model == MODELS[1]) & (sig.split == "train"), "confidence"] = np.nan
    put("missing-signal", sig, MODELS[:2])
    put("two-benchmarks", pd.concat([small[small.model == MODELS[0]],
                                     small[small.model == MODELS[1]].assign(benchmark="other")]), MODELS[:2])
    put("unknown-signal", small, MODELS[:2], signal="conf_nope")
    return cases


def test_refusals_match_cascade_data(tmp_path, dev):
    for name, (path, models, kw) in _broken_stores(tmp_path, dev).items():
        splits = kw.pop("splits", ("train", "test"))
        fast = _errors(lambda: records.load_cascade(path, models, splits, **kw))
        df = records.load(path)

        def every_split():
            for split in splits:
                records._cascade_data_pandas(df, models, split, **kw)

        assert fast == _errors(every_split), name
        assert fast == _errors(lambda: [records.cascade_data(df, models, s, **kw) for s in splits]), name


def test_only_the_files_read_are_hashed_and_a_damaged_one_is_named(tmp_path, dev, monkeypatch):
    s = tmp_path / "s"
    records.write_records(records.validate(dev), s)
    files = {records.load(f)["model"].iloc[0]: f for f in records.parquet_files(s)}
    hashed = []
    real = records._sha256
    monkeypatch.setattr(records, "_sha256", lambda p: hashed.append(Path(p)) or real(p))
    records.load_cascade(s, ["llama3.2-1b", "llama3.1-8b"])
    assert sorted(hashed) == sorted([files["llama3.2-1b"], files["llama3.1-8b"]])
    # a damaged shard of a model the cascade does not use is not read; one it uses is named
    raw = bytearray(files["llama3.1-70b"].read_bytes())
    raw[len(raw) // 3] ^= 0x55
    files["llama3.1-70b"].write_bytes(bytes(raw))
    records.load_cascade(s, ["llama3.2-1b", "llama3.1-8b"])
    msg = _errors(lambda: records.load_cascade(s, ["llama3.2-1b", "llama3.1-70b"]))
    assert str(files["llama3.1-70b"]) in msg and "sha256" in msg and "delete it" in msg
    assert str(files["llama3.1-70b"]) in _errors(lambda: records.load(s))


def test_a_truncated_shard_is_named_before_its_footer_is_trusted(tmp_path, dev):
    """Statistics come from footers: one that cannot be read is reported as damage, by name."""
    s = tmp_path / "s"
    small = dev[dev.model.isin(MODELS[:2])]
    records.write_records(records.validate(small), s)
    f = next(f for f in records.parquet_files(s) if records.load(f)["model"].iloc[0] == MODELS[1])
    f.write_bytes(f.read_bytes()[:-10])  # truncated: the footer is gone
    msg = _errors(lambda: records.load_cascade(s, MODELS[:2]))
    assert str(f) in msg and "manifest says" in msg


def test_row_groups_are_pruned_by_statistics(tmp_path, dev):
    path = tmp_path / "bymodel.parquet"
    pq.write_table(pa.Table.from_pandas(dev.sort_values(["model", "split"]), preserve_index=False), path,
                   row_group_size=1300)  # exactly one model per row group
    meta = pq.read_metadata(path)
    assert meta.num_row_groups == 5
    assert records._row_groups(meta, {"model": {"llama3.1-8b"}}) == [2]
    assert records._row_groups(meta, {"model": {"nope"}}) == []
    assert records._row_groups(meta, {"benchmark": {"medmcqa"}}) == [0, 1, 2, 3, 4]
    assert records._single_value(meta, "benchmark") == "medmcqa" and records._single_value(meta, "model") is None


def test_describe_and_mean_costs(store, tmp_path, dev):
    info = records.describe(store)
    assert info.benchmarks == ["medmcqa"] and info.signals == ["confidence"] and len(info.files) == 5
    ref = records.load(store)
    ref = ref[ref.split == "train"].groupby("model")["cost"].mean()
    got = records.mean_costs(store, "train")
    assert list(got) == sorted(ref.index) and all(got[m] == ref[m] for m in ref.index)  # exactly, same sums
    dev.assign(benchmark=np.where(dev.query_id % 2 == 0, "a", "b")).to_parquet(tmp_path / "mixed.parquet")
    assert records.describe(tmp_path / "mixed.parquet").benchmarks == ["a", "b"]


def _shuffled_input(dev: pd.DataFrame, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = dev.iloc[rng.permutation(len(dev))].reset_index(drop=True)
    return df.assign(answer=df["query_id"].astype(str), accelerator_seconds=0.5)


def test_import_parquet_and_csv_store_the_same_sorted_shards(tmp_path, dev):
    df = _shuffled_input(dev)
    df.to_parquet(tmp_path / "in.parquet", index=False)
    df.to_csv(tmp_path / "in.csv", index=False)
    for fmt in ("parquet", "csv"):
        assert cli.main(["import", str(tmp_path / f"in.{fmt}"), "--out", str(tmp_path / fmt)]) == 0
    a, b = (records.load(tmp_path / fmt).sort_values(records.KEY).reset_index(drop=True) for fmt in ("parquet", "csv"))
    pd.testing.assert_frame_equal(a, b)
    exp = records.validate(df).sort_values(records.KEY).reset_index(drop=True)
    for c in records.KEY + ["confidence", "correct", "cost", "input_tokens", "output_tokens", "answer"]:
        assert a[c].tolist() == exp[c].tolist(), c
    for f in records.parquet_files(tmp_path / "parquet"):
        t = pq.read_table(f)
        assert t.schema.equals(records.arrow_schema(["confidence"], ["answer", "accelerator_seconds"]))
        part = t.to_pandas()
        assert part["model"].nunique() == 1
        assert part[["split", "query_id"]].equals(part.sort_values(["split", "query_id"])[["split", "query_id"]])
        assert records.verify_part(f, require_manifest=True) is None


def test_import_prints_models_and_queries_per_split(tmp_path, dev, capsys):
    dev.to_parquet(tmp_path / "in.parquet", index=False)
    assert cli.main(["import", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"imported {len(dev)} records into {tmp_path / 's'}"
    assert out[-2].split() == ["medmcqa", "test", "5", "1000"] and out[-1].split() == ["train", "5", "300"]


@pytest.mark.parametrize("arrow_type, value, fragment", [
    (pa.float64(), 0.5, "'query_id' must hold integers"),
    (pa.float64(), 2.0 ** 60, "at most 2**53"),
    (pa.uint64(), 2 ** 63 + 5, "'query_id' must hold integers"),
    (pa.bool_(), True, "holds true/false values"),
])
def test_query_id_refusals_on_arrow_columns_name_the_rows(tmp_path, dev, arrow_type, value, fragment):
    """Plain-number columns are checked as arrays: same refusals and row numbers as the pandas path."""
    df = dev.head(20).copy()
    df = pd.concat([df.assign(split="train"), df.assign(split="test")], ignore_index=True)
    t = pa.Table.from_pandas(df, preserve_index=False)
    if arrow_type == pa.bool_():
        qid = pa.array(np.arange(len(df)) % 2 == 0)
    else:
        vals = df["query_id"].to_numpy().astype(arrow_type.to_pandas_dtype())
        vals[3] = value
        qid = pa.array(vals, arrow_type)
    t = t.set_column(t.schema.get_field_index("query_id"), "query_id", qid)
    msg = _errors(lambda: records.validate_table(t, source="x"))
    assert fragment in msg and ("rows 2," in msg if arrow_type == pa.bool_() else "rows 5" in msg), msg
    pandas_msg = _errors(lambda: records.validate(t.to_pandas().astype({"query_id": object}), source="x"))
    assert msg == pandas_msg
