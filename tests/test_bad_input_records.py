"""Bad-input matrix for `cascade import` and the results store, run as a user runs it (a subprocess).

Each case: an input (a mutated records file, a second file into a filled store, a bad option), the exit
status, a fragment the one-line message must contain, and for refusals that the store is untouched
(byte for byte, see tests/badinput.py). Cases with exit 0 are inputs that used to give a wrong answer
silently (or could) and now give the correct one; their check reads the store back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from badinput import run_cli, snapshot
from cascade.data import records

MODELS = ["small", "large"]


def _frame(n: int = 6, models=MODELS, bench: str = "bench") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for split in ("train", "test"):
        for j, model in enumerate(models):
            for q in range(n):
                rows.append({"benchmark": bench, "split": split, "query_id": q, "model": model,
                             "confidence": float(np.log(rng.uniform(0.2, 0.99))), "correct": bool(rng.random() < 0.6),
                             "input_tokens": 100 + q, "output_tokens": 3, "cost": (100 + q) * (1 + 9 * j) * 1e-7})
    return pd.DataFrame(rows)


def _write(df: pd.DataFrame, path: Path, **kw) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, **({"index": False} | kw))
    else:
        df.to_parquet(path, **({"index": False} | kw))
    return path


def _loaded_equals(store: Path, df: pd.DataFrame) -> None:
    back = records.load(store).sort_values(records.KEY).reset_index(drop=True)
    exp = records.validate(df).sort_values(records.KEY).reset_index(drop=True)
    assert len(back) == len(exp)
    for c in records.KEY + ["correct", "cost", "confidence", "input_tokens"]:
        assert back[c].tolist() == exp[c].tolist(), c


def _inside_and_visible(store: Path) -> None:
    root = store.resolve()
    for f in records.parquet_files(store):
        rel = f.resolve().relative_to(root)  # raises if a shard escaped the store
        assert not any(p.startswith(".") for p in rel.parts), rel


@dataclass
class Case:
    id: str
    make: Callable[[Path, Path], list]  # (tmp, store) -> the arguments after `cascade`
    rc: int
    fragment: str
    seed: bool = False  # the store already holds _frame() before the run
    check: Callable[[Path, Path], None] | None = None  # (tmp, store), for rc 0


def _imp(df: pd.DataFrame, name: str = "in.parquet", extra=(), **kw):
    """A case body importing ``df`` (written as ``name``) into the store."""
    def make(tmp, store):
        return ["import", _write(df, tmp / name, **kw), "--out", store, *extra]
    return make


def _mut(fn, **kw):
    df = _frame()
    out = fn(df)
    return _imp(df if out is None else out, **kw)


def _set(col, row, value, dtype=None):
    def fn(df):
        if dtype is not None:
            df[col] = df[col].astype(dtype)
        df.loc[row, col] = value
    return fn


def _model(name):
    def fn(df):
        df["model"] = df["model"].replace({"small": name})
    return fn


def _bench(name):
    def fn(df):
        df["benchmark"] = name
    return fn


def _prices(tmp: Path, text: str) -> Path:
    (tmp / "prices.yaml").write_text(text)
    return tmp / "prices.yaml"


def _second(fn) -> Callable:
    """A second file into the seeded store: model 'extra' built from 'small' and changed by ``fn``."""
    def make(tmp, store):
        df = _frame()
        df = df[df.model == "small"].assign(model="extra")
        df = fn(df)
        return ["import", _write(df, tmp / "second.parquet"), "--out", store]
    return make


def _check_models(*names):
    def check(tmp, store):
        _inside_and_visible(store)
        assert sorted(records.load(store)["model"].unique()) == sorted(names)
        assert len(records.load(store)) == 12 * len(names)
    return check


def _damage_one_shard(tmp, store):
    shard = records.parquet_files(store)[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return ["import", _write(_frame(models=["other1", "other2"]), tmp / "other.parquet"), "--out", store]


def _file_as_out(tmp, store):
    store.parent.mkdir(exist_ok=True)
    store.write_text("not a folder")
    return ["import", _write(_frame(), tmp / "in.parquet"), "--out", store]


def _below_file(tmp, store):
    (tmp / "afile").write_text("x")
    return ["import", _write(_frame(), tmp / "in.parquet"), "--out", tmp / "afile" / "store"]


def _raw(name: str, content: bytes):
    def make(tmp, store):
        (tmp / name).write_bytes(content)
        return ["import", tmp / name, "--out", store]
    return make


CASES = [
    # ---- already handled before issue 8 (kept refused)
    Case("missing-column", _imp(_frame().drop(columns=["correct"])), 2, "correct"),
    Case("missing-cost", _imp(_frame().drop(columns=["cost"])), 2, "--prices"),
    Case("no-signal", _imp(_frame().drop(columns=["confidence"])), 2, "conf_<signal>"),
    Case("query-id-text", _mut(_set("query_id", 3, "q3", str)), 2, "'query_id' must hold integers"),
    Case("fractional-tokens", _mut(_set("input_tokens", 4, 10.5, float)), 2, "'input_tokens' must hold integers"),
    Case("confidence-text", _mut(_set("confidence", 2, "high", str)), 2, "signal column 'confidence'"),
    Case("duplicate-key", _imp(pd.concat([_frame(), _frame().iloc[[1]]])), 2, "duplicate"),
    Case("model-lacks-queries-in-file", _imp(_frame().drop(index=[20])), 2, "lacks 1 queries"),
    Case("nan-correct", _mut(_set("correct", 5, np.nan, float)), 2, "'correct' has NaN"),
    Case("correct-out-of-range", _mut(_set("correct", 0, 2.0, float)), 2, "[0, 1]"),
    Case("negative-cost", _mut(_set("cost", 8, -1e-6)), 2, "'cost' is negative"),
    Case("inf-cost", _mut(_set("cost", 8, np.inf)), 2, "'cost' must be a finite number"),
    Case("nan-confidence", _mut(_set("confidence", 6, np.nan)), 2, "+-inf are allowed, NaN is not"),
    Case("negative-tokens", _mut(_set("output_tokens", 1, -3)), 2, "'output_tokens' is negative"),
    Case("empty-model", _mut(_set("model", 0, None, object)), 2, "'model' is empty"),
    Case("missing-file", lambda tmp, store: ["import", tmp / "nope.parquet", "--out", store], 2, "no such file"),
    Case("unknown-format", _raw("in.xlsx", b"x"), 2, "unknown format"),
    Case("price-negative", lambda tmp, store: [
        "import", _write(_frame().drop(columns=["cost"]), tmp / "in.parquet"), "--out", store, "--prices",
        _prices(tmp, "small: {input: 0.1, output: 0.2}\nlarge: {input: -1, output: 1}\n")], 2, "negative price"),
    Case("price-missing-model", lambda tmp, store: [
        "import", _write(_frame().drop(columns=["cost"]), tmp / "in.parquet"), "--out", store, "--prices",
        _prices(tmp, "small: {input: 0.1, output: 0.2}\n")], 2, "no entry for model 'large'"),
    Case("same-model-again", _imp(_frame()), 2, "pass --overwrite", seed=True),
    # ---- names and paths (issue 8)
    Case("benchmark-dotdot", _mut(_bench("..")), 2, "benchmark name '..' would name the current or parent folder"),
    Case("benchmark-dot", _mut(_bench(".")), 2, "benchmark name '.'"),
    Case("benchmark-empty-string", _mut(_bench("")), 2, "benchmark name '' is empty"),
    Case("model-nul", _mut(_model("a\x00b")), 2, "control character"),
    Case("model-newline", _mut(_model("a\nb")), 2, "control character"),
    Case("model-too-long", _mut(_model("m" * 300)), 2, "too long for a folder name"),
    Case("split-dotdot", _mut(_set("split", slice(None), "..")), 2, "split name '..'"),
    Case("model-leading-dot", _mut(_model(".hidden")), 0, "", check=_check_models(".hidden", "large")),
    Case("model-dotdot-slash", _mut(_model("../../escaped")), 0, "", check=_check_models("../../escaped", "large")),
    Case("model-backslash", _mut(_model("a\\..\\b")), 0, "", check=_check_models("a\\..\\b", "large")),
    Case("models-slash-vs-underscore", _imp(pd.concat([_frame(models=["org/m"]), _frame(models=["org_m"])])), 0, "",
         check=_check_models("org/m", "org_m")),
    # ---- query ids (issue 8)
    Case("query-id-1e20", _mut(_set("query_id", 3, 1e20, float)), 2, "'query_id' must hold integers"),
    Case("query-id-above-2**53-float", _mut(_set("query_id", 3, 2.0 ** 53 + 2, float)), 2, "at most 2**53"),
    Case("query-id-fraction", _mut(_set("query_id", 3, 0.5, float)), 2, "'query_id' must hold integers"),
    Case("query-id-inf", _mut(_set("query_id", 3, np.inf, float)), 2, "'query_id' must hold integers"),
    Case("query-id-nan", _mut(_set("query_id", 3, np.nan, float)), 2, "'query_id' must hold integers"),
    Case("query-id-bool", _mut(lambda df: df.assign(query_id=df["query_id"] % 2 == 0)), 2, "true/false"),
    Case("query-id-uint64-overflow", _mut(lambda df: df.assign(query_id=df["query_id"].astype(np.uint64)
                                                               + np.uint64(2 ** 63))), 2, "must hold integers"),
    Case("query-id-digit-strings", _mut(lambda df: df.assign(query_id=df["query_id"].astype(str))), 0, "",
         check=lambda tmp, store: _loaded_equals(store, _frame())),
    # ---- a second file into a filled store (issue 8)
    Case("second-model-subset-of-queries", _second(lambda d: d[(d.split == "train") | (d.query_id < 2)]), 2,
         "model 'extra' has 2 of the 6 test queries of bench", seed=True),
    Case("second-model-superset-of-queries", _second(
        lambda d: pd.concat([d, d[d.query_id == 0].assign(query_id=99)])), 2, "and 1 queries they lack", seed=True),
    Case("second-model-other-ids", _second(lambda d: d.assign(query_id=d.query_id + 100)), 2,
         "model 'extra' has 0 of the 6", seed=True),
    Case("second-model-same-queries", _second(lambda d: d), 0, "", seed=True,
         check=_check_models("small", "large", "extra")),
    Case("benchmark-case-vs-store", lambda tmp, store: [
        "import", _write(_frame(models=["x", "y"], bench="Bench"), tmp / "b.parquet"), "--out", store], 2,
        "differ only by letter case", seed=True),
    Case("model-case-vs-store", _second(lambda d: d.assign(model="SMALL")), 2, "differ only by letter case",
         seed=True),
    Case("damaged-shard-in-store", _damage_one_shard, 2, "content sha256 differs from its manifest", seed=True),
    # ---- siblings in the import path (issue 8)
    Case("benchmark-case-in-file", _imp(pd.concat([_frame(models=["a", "b"]), _frame(bench="BENCH")])), 2,
         "differ only by letter case"),
    Case("model-case-in-file", _imp(pd.concat([_frame(models=["a", "b"]), _frame(models=["A", "B"])])), 2,
         "differ only by letter case"),
    Case("split-with-spaces", _mut(_set("split", slice(0, 11), " train")), 2, "leading/trailing spaces"),
    Case("csv-with-index-column", _imp(_frame(), "in.csv", index=True), 0, "",
         check=lambda tmp, store: _loaded_equals(store, _frame())),
    Case("parquet-keys-in-index", lambda tmp, store: [
        "import", _write(_frame().set_index(records.KEY), tmp / "in.parquet", index=True), "--out", store], 0, "",
         check=lambda tmp, store: _loaded_equals(store, _frame())),
    Case("csv-with-bom", _raw("in.csv", b"\xef\xbb\xbf" + _frame().to_csv(index=False).encode()), 0, "",
         check=lambda tmp, store: _loaded_equals(store, _frame())),
    Case("prices-and-cost-column", lambda tmp, store: [
        "import", _write(_frame(), tmp / "in.parquet"), "--out", store, "--prices",
        _prices(tmp, "small: {input: 0.1, output: 0.2}\nlarge: {input: 1, output: 2}\n")], 2,
         "has a 'cost' column and a price table"),
    Case("price-not-a-number", lambda tmp, store: [
        "import", _write(_frame().drop(columns=["cost"]), tmp / "in.parquet"), "--out", store, "--prices",
        _prices(tmp, "small: {input: cheap, output: 0.2}\nlarge: {input: 1, output: 2}\n")], 2, "numeric"),
    Case("price-nan", lambda tmp, store: [
        "import", _write(_frame().drop(columns=["cost"]), tmp / "in.parquet"), "--out", store, "--prices",
        _prices(tmp, "small: {input: .nan, output: 0.2}\nlarge: {input: 1, output: 2}\n")], 2, "non-finite price"),
    Case("empty-csv", _raw("in.csv", b""), 2, "in.csv: cannot be read as CSV"),
    Case("garbage-parquet", _raw("in.parquet", b"PAR1 not really"), 2, "in.parquet: cannot be read as Parquet"),
    Case("optional-column-wrong-type", _mut(lambda df: df.assign(accelerator_seconds="fast")), 2,
         "optional column 'accelerator_seconds' must hold double"),
    Case("optional-column-wrong-type-csv", _mut(lambda df: df.assign(ptrue_input_tokens=0.5), name="in.csv"), 2,
         "optional column 'ptrue_input_tokens' must hold int64"),
    Case("out-is-a-file", _file_as_out, 2, "is a file"),
    Case("out-below-a-file", _below_file, 2, "lies below the file"),
    Case("out-inside-a-store", lambda tmp, store: [
        "import", _write(_frame(models=["x", "y"]), tmp / "in.parquet"), "--out", store / "run2"], 2,
         "lies inside the results store", seed=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_matrix(tmp_path, case):
    store = tmp_path / "store"
    if case.seed:
        rc, err = run_cli(["import", _write(_frame(), tmp_path / "seed.parquet"), "--out", store])
        assert rc == 0, err
    args = case.make(tmp_path, store)
    before = snapshot(store)
    rc, err = run_cli(args)
    assert rc == case.rc, err
    if case.rc == 0:
        assert err.strip() == "" or "Traceback" not in err, err
        case.check(tmp_path, store)
        return
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cascade {args[0]}: error: "), err
    assert case.fragment in lines[0], (case.fragment, lines[0])
    assert snapshot(store) == before  # refused: nothing written, moved or deleted
    if not case.seed and case.id not in ("out-is-a-file",):
        assert not store.exists() or not records.parquet_files(store)

