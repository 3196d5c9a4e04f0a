"""`cascade import` on the real dev results, price tables naming too few models, and reading stores whose
shards carry different signal columns. The full bad-input matrix is in test_records_cli.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cascade.data import records
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


def test_price_table_missing_a_model_is_an_error(tmp_path, dev, capsys):
    df = dev.drop(columns=["cost"])
    prices = tmp_path / "prices.yaml"
    prices.write_text("llama3.2-1b: {input: 0.1, output: 0.2}\n")
    rc, out, cap = _import(tmp_path, df, capsys, extra=("--prices", str(prices)))
    assert rc == 2 and "llama3.2-3b" in cap.err
    assert _nothing_written(out)


def test_load_unifies_shards_with_different_signal_columns(tmp_path, dev):
    a = dev[dev["model"] == "llama3.2-1b"].copy()
    b = dev[dev["model"] == "llama3.2-3b"].copy().rename(columns={"confidence": "conf_mean_logprob"})
    (tmp_path / "s").mkdir()
    a.to_parquet(tmp_path / "s" / "a.parquet", index=False)
    b.to_parquet(tmp_path / "s" / "b.parquet", index=False)
    back = records.load(tmp_path / "s")
    assert {"confidence", "conf_mean_logprob"} <= set(back.columns)
    assert back["confidence"].isna().sum() == len(b)
