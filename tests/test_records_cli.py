"""`cascade import` through the CLI, exhaustively: every bad input exits 2 with a one-line message naming
the column/rows and writes nothing (Parquet and CSV); good inputs (+-inf confidences, CSV, costs from a
price table, --overwrite) are stored and load back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cascade.data import records
from jobs import cli

MODELS = ["small", "large"]


def _frame(n=6, splits=("train", "test")) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for split in splits:
        for m_i, model in enumerate(MODELS):
            for q in range(n):
                rows.append({
                    "benchmark": "bench", "split": split, "query_id": q, "model": model,
                    "confidence": float(np.log(rng.uniform(0.2, 0.99))),
                    "correct": bool(rng.random() < 0.6), "input_tokens": 100 + q, "output_tokens": 3,
                    "cost": (100 + q) * (1 + 9 * m_i) * 1e-7,
                })
    return pd.DataFrame(rows)


def _write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def _import(args, capsys):
    rc = cli.main(["import", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.rglob("*"))


def _bad(kind: str) -> tuple[pd.DataFrame, list[str]]:
    """A broken frame and the words the error message must contain (rows are 1-based + header, as in a CSV)."""
    df = _frame()
    if kind == "missing-column":
        return df.drop(columns=["correct"]), ["correct"]
    if kind == "missing-cost":
        return df.drop(columns=["cost"]), ["cost", "--prices"]
    if kind == "no-signal":
        return df.drop(columns=["confidence"]), ["confidence"]
    if kind == "wrong-type-query-id":
        df["query_id"] = df["query_id"].astype(str)  # a string column, as a CSV with one bad id reads
        df.loc[3, "query_id"] = "q3"
        return df, ["query_id", "rows 5"]
    if kind == "fractional-tokens":
        df["input_tokens"] = df["input_tokens"].astype(float)
        df.loc[4, "input_tokens"] = 10.5
        return df, ["input_tokens", "rows 6"]
    if kind == "wrong-type-confidence":
        df["confidence"] = df["confidence"].astype(str)
        df.loc[2, "confidence"] = "high"
        return df, ["confidence", "rows 4"]
    if kind == "duplicate-key":
        df = pd.concat([df, df.iloc[[1]]], ignore_index=True)
        return df, ["duplicate", f"rows 3, {len(df) + 1}"]
    if kind == "model-lacks-queries":
        drop = (df["model"] == "large") & (df["split"] == "train") & (df["query_id"].isin([2, 4]))
        return df[~drop].reset_index(drop=True), ["large", "train", "2", "4"]
    if kind == "nan-correct":
        df["correct"] = df["correct"].astype(float)
        df.loc[[5, 7], "correct"] = np.nan
        return df, ["correct", "rows 7, 9"]
    if kind == "correct-out-of-range":
        df["correct"] = df["correct"].astype(float)
        df.loc[0, "correct"] = 2.0
        return df, ["correct", "rows 2"]
    if kind == "negative-cost":
        df.loc[8, "cost"] = -1e-6
        return df, ["cost", "negative", "rows 10"]
    if kind == "nan-confidence":
        df.loc[6, "confidence"] = np.nan
        return df, ["confidence", "rows 8"]
    if kind == "negative-tokens":
        df.loc[1, "output_tokens"] = -3
        return df, ["output_tokens", "rows 3"]
    if kind == "empty-model":
        df["model"] = df["model"].astype(object)
        df.loc[0, "model"] = None
        return df, ["model", "rows 2"]
    raise KeyError(kind)


BAD = ["missing-column", "missing-cost", "no-signal", "wrong-type-query-id", "fractional-tokens",
       "wrong-type-confidence", "duplicate-key", "model-lacks-queries", "nan-correct", "correct-out-of-range",
       "negative-cost", "nan-confidence", "negative-tokens", "empty-model"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("kind", BAD)
def test_bad_input_exits_2_names_the_problem_and_writes_nothing(tmp_path, capsys, kind, fmt):
    df, words = _bad(kind)
    src = _write(df, tmp_path / f"bad.{fmt}")
    out = tmp_path / "store"
    rc, stdout, err = _import([src, "--out", out], capsys)
    assert rc == 2, (stdout, err)
    assert err.startswith("cascade import: error:"), err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert _nothing_written(out)


def test_bad_input_leaves_an_existing_store_untouched(tmp_path, capsys):
    out = tmp_path / "store"
    assert _import([_write(_frame(), tmp_path / "good.parquet"), "--out", out], capsys)[0] == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    df, _ = _bad("negative-cost")
    df["model"] = df["model"].map({"small": "other-small", "large": "other-large"})
    rc, _, _ = _import([_write(df, tmp_path / "bad.parquet"), "--out", out], capsys)
    assert rc == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_missing_file_exits_2(tmp_path, capsys):
    rc, _, err = _import([tmp_path / "nope.parquet", "--out", tmp_path / "store"], capsys)
    assert rc == 2 and "nope.parquet" in err
    assert _nothing_written(tmp_path / "store")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_good_input_round_trips_with_infinite_confidences(tmp_path, capsys, fmt):
    df = _frame()
    df.loc[0, "confidence"] = -np.inf
    df.loc[1, "confidence"] = np.inf
    df.loc[2, "confidence"] = 0.0
    out = tmp_path / "store"
    rc, stdout, err = _import([_write(df, tmp_path / f"good.{fmt}"), "--out", out], capsys)
    assert rc == 0, err
    assert f"imported {len(df)} records" in stdout
    back = records.load(out).sort_values(["split", "model", "query_id"]).reset_index(drop=True)
    exp = df.sort_values(["split", "model", "query_id"]).reset_index(drop=True)
    assert len(back) == len(df)
    np.testing.assert_array_equal(back["confidence"].to_numpy(), exp["confidence"].to_numpy())
    np.testing.assert_allclose(back["cost"].to_numpy(), exp["cost"].to_numpy())
    np.testing.assert_array_equal(back["correct"].to_numpy(), exp["correct"].astype(float).to_numpy())
    assert back["correct"].dtype == np.float64 and back["query_id"].dtype == np.int64
    assert sorted(p.name for p in (out / "bench").iterdir()) == sorted(MODELS)
    assert not [p for p in out.rglob(".*")]  # no staging folders or temp files left behind


def test_into_an_existing_empty_folder(tmp_path, capsys):
    """`--out` names a folder the user created beforehand (mkdir results): nothing to clash with."""
    out = tmp_path / "store"
    out.mkdir()
    rc, _, err = _import([_write(_frame(), tmp_path / "good.parquet"), "--out", out], capsys)
    assert rc == 0, err
    assert len(records.load(out)) == len(_frame())


def test_cost_from_a_price_table(tmp_path, capsys):
    df = _frame().drop(columns=["cost"])
    prices = {"small": {"input": 0.1, "output": 0.2}, "large": {"input": 3.0, "output": 15.0}}
    (tmp_path / "prices.yaml").write_text(yaml.safe_dump(prices))
    out = tmp_path / "store"
    rc, _, err = _import([_write(df, tmp_path / "good.csv"), "--out", out, "--prices", tmp_path / "prices.yaml"],
                         capsys)
    assert rc == 0, err
    back = records.load(out)
    for model, p in prices.items():
        b = back[back.model == model].sort_values(["split", "query_id"])
        exp = (b["input_tokens"] * p["input"] + b["output_tokens"] * p["output"]) / 1e6
        np.testing.assert_allclose(b["cost"].to_numpy(), exp.to_numpy(), rtol=1e-12)


def test_price_table_negative_price_exits_2(tmp_path, capsys):
    df = _frame().drop(columns=["cost"])
    (tmp_path / "prices.yaml").write_text(yaml.safe_dump(
        {"small": {"input": 0.1, "output": 0.2}, "large": {"input": -1, "output": 1}}))
    rc, _, err = _import([_write(df, tmp_path / "x.parquet"), "--out", tmp_path / "s", "--prices",
                          tmp_path / "prices.yaml"], capsys)
    assert rc == 2 and "large" in err and "negative" in err
    assert _nothing_written(tmp_path / "s")


def test_refuses_to_overwrite_without_flag_and_replaces_with_it(tmp_path, capsys):
    out = tmp_path / "store"
    assert _import([_write(_frame(), tmp_path / "a.parquet"), "--out", out], capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    changed = _frame()
    changed["cost"] *= 2
    src2 = _write(changed, tmp_path / "b.parquet")
    rc, _, err = _import([src2, "--out", out], capsys)
    assert rc == 2 and "--overwrite" in err and "bench/small" in err
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before
    rc, _, err = _import([src2, "--out", out, "--overwrite"], capsys)
    assert rc == 0, err
    back = records.load(out)
    assert len(back) == len(changed)  # replaced, not duplicated
    np.testing.assert_allclose(np.sort(back["cost"].to_numpy()), np.sort(changed["cost"].to_numpy()))


def test_another_model_adds_to_the_store(tmp_path, capsys):
    out = tmp_path / "store"
    assert _import([_write(_frame(), tmp_path / "a.parquet"), "--out", out], capsys)[0] == 0
    more = _frame()
    more = more[more.model == "small"].assign(model="medium")
    rc, _, err = _import([_write(more, tmp_path / "b.parquet"), "--out", out], capsys)
    assert rc == 0, err
    assert sorted(records.load(out)["model"].unique()) == ["large", "medium", "small"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_correct_as_true_false_strings_is_accepted(tmp_path, capsys, fmt):
    """validate() documents 'use true/false or a number'; a string column must be mapped, not rejected."""
    df = _frame()
    df["correct"] = df["correct"].map({True: "true", False: "false"}).astype(str)
    if fmt == "csv":  # read_csv would parse bare true/false as bool
        df["correct"] = df["correct"].map({"true": " TRUE ", "false": " False "})
    out = tmp_path / "store"
    rc, _, err = _import([_write(df, tmp_path / f"s.{fmt}"), "--out", out], capsys)
    assert rc == 0, err
    back = records.load(out)
    assert set(back["correct"].unique()) <= {0.0, 1.0} and back["correct"].dtype == np.float64


def test_overwrite_replaces_only_the_named_model_even_if_folder_names_collide(tmp_path, capsys):
    out = tmp_path / "store"
    a = _frame()
    a["model"] = a["model"].map({"small": "org/m", "large": "big"})
    assert _import([_write(a, tmp_path / "a.parquet"), "--out", out], capsys)[0] == 0
    b = a.copy()
    b["model"] = b["model"].map({"org/m": "org_m", "big": "big2"})
    assert _import([_write(b, tmp_path / "b.parquet"), "--out", out], capsys)[0] == 0
    assert _import([_write(b, tmp_path / "b.parquet"), "--out", out, "--overwrite"], capsys)[0] == 0
    back = records.load(out)
    assert sorted(back["model"].unique()) == ["big", "big2", "org/m", "org_m"]
    assert len(back) == 2 * len(a)
