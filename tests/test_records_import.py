"""`cascade import`: every bad input gets one clear message, exit status 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade import records
from jobs.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"


@pytest.fixture(scope="module")
def dev() -> pd.DataFrame:
    df = pd.read_parquet(DEV)
    return df[df["model"].isin(["llama3.2-1b", "llama3.2-3b"])].reset_index(drop=True)


def _import(tmp_path, df, capsys, name="in.parquet", extra=()):
    src = tmp_path / name
    if name.endswith(".csv"):
        df.to_csv(src, index=False)
    else:
        df.to_parquet(src, index=False)
    out = tmp_path / "store"
    rc = main(["import", str(src), "--out", str(out), *extra])
    return rc, out, capsys.readouterr()


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.rglob("*.parquet"))


def test_valid_import_round_trips(tmp_path, dev, capsys):
    rc, out, _ = _import(tmp_path, dev, capsys)
    assert rc == 0
    back = records.load(out)
    assert len(back) == len(dev)
    assert set(back["model"]) == {"llama3.2-1b", "llama3.2-3b"}
    # benchmark and model are ordinary columns in every file
    files = records.parquet_files(out)
    assert all({"benchmark", "model"} <= set(pd.read_parquet(f).columns) for f in files)


def test_csv_and_infinite_confidences_are_accepted(tmp_path, dev, capsys):
    df = dev.copy()
    df.loc[0, "confidence"] = np.inf
    df.loc[1, "confidence"] = -np.inf
    rc, out, _ = _import(tmp_path, df, capsys, name="in.csv")
    assert rc == 0
    back = records.load(out)
    assert np.isinf(back["confidence"]).sum() == 2


@pytest.mark.parametrize("case,needle", [
    ("missing_column", "correct"),
    ("wrong_type", "input_tokens"),
    ("duplicate", "duplicate"),
    ("model_lacking_queries", "llama3.2-3b"),
    ("nan_correct", "correct"),
    ("negative_cost", "cost"),
    ("nan_confidence", "confidence"),
])
def test_bad_input_exits_2_names_the_problem_and_writes_nothing(tmp_path, dev, capsys, case, needle):
    df = dev.copy()
    if case == "missing_column":
        df = df.drop(columns=["correct"])
    elif case == "wrong_type":
        df["input_tokens"] = df["input_tokens"].astype(str)
        df.loc[3, "input_tokens"] = "many"
    elif case == "duplicate":
        df = pd.concat([df, df.iloc[[5]]], ignore_index=True)
    elif case == "model_lacking_queries":
        drop = df.index[(df["model"] == "llama3.2-3b") & (df["split"] == "test")][:3]
        df = df.drop(index=drop)
    elif case == "nan_correct":
        df["correct"] = df["correct"].astype(float)
        df.loc[7, "correct"] = np.nan
    elif case == "negative_cost":
        df.loc[9, "cost"] = -1.0
    elif case == "nan_confidence":
        df.loc[11, "confidence"] = np.nan
    rc, out, cap = _import(tmp_path, df, capsys)
    assert rc == 2
    msg = cap.err.strip()
    assert needle in msg, msg
    assert len(msg.splitlines()) == 1
    assert _nothing_written(out)


def test_rows_are_named_in_the_message(tmp_path, dev, capsys):
    df = dev.copy()
    df.loc[9, "cost"] = -1.0
    _, _, cap = _import(tmp_path, df, capsys)
    assert "rows 11" in cap.err  # CSV line numbers: 1-based, after the header


def test_cost_from_a_price_table(tmp_path, dev, capsys):
    df = dev.drop(columns=["cost"])
    prices = tmp_path / "prices.yaml"
    prices.write_text("llama3.2-1b: {input: 0.1, output: 0.2}\nllama3.2-3b: {input: 0.3, output: 0.6}\n")
    rc, out, _ = _import(tmp_path, df, capsys, extra=("--prices", str(prices)))
    assert rc == 0
    back = records.load(out)
    row = back[back["model"] == "llama3.2-3b"].iloc[0]
    assert row["cost"] == pytest.approx((row["input_tokens"] * 0.3 + row["output_tokens"] * 0.6) / 1e6)


def test_price_table_missing_a_model_is_an_error(tmp_path, dev, capsys):
    df = dev.drop(columns=["cost"])
    prices = tmp_path / "prices.yaml"
    prices.write_text("llama3.2-1b: {input: 0.1, output: 0.2}\n")
    rc, out, cap = _import(tmp_path, df, capsys, extra=("--prices", str(prices)))
    assert rc == 2 and "llama3.2-3b" in cap.err
    assert _nothing_written(out)


def test_refuses_to_overwrite_without_the_flag(tmp_path, dev, capsys):
    rc, out, _ = _import(tmp_path, dev, capsys)
    assert rc == 0
    before = sorted(p.name for p in records.parquet_files(out))
    rc, _, cap = _import(tmp_path, dev, capsys)
    assert rc == 2 and "--overwrite" in cap.err
    assert sorted(p.name for p in records.parquet_files(out)) == before
    rc, _, _ = _import(tmp_path, dev, capsys, extra=("--overwrite",))
    assert rc == 0
    assert len(records.load(out)) == len(dev)


def test_load_unifies_shards_with_different_signal_columns(tmp_path, dev):
    a = dev[dev["model"] == "llama3.2-1b"].copy()
    b = dev[dev["model"] == "llama3.2-3b"].copy().rename(columns={"confidence": "conf_mean_logprob"})
    (tmp_path / "s").mkdir()
    a.to_parquet(tmp_path / "s" / "a.parquet", index=False)
    b.to_parquet(tmp_path / "s" / "b.parquet", index=False)
    back = records.load(tmp_path / "s")
    assert {"confidence", "conf_mean_logprob"} <= set(back.columns)
    assert back["confidence"].isna().sum() == len(b)
