"""`cascade tune` and `cascade compare` end to end on an imported store (the dev data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.evaluate import curves as evaluate
from cascade.data import records
from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
CHAIN = json.loads((ROOT / "examples" / "medmcqa-paper-auc.json").read_text())["definitions"]["models_llama_chain"]
K3 = ",".join([CHAIN[0], CHAIN[2], CHAIN[4]])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "results"
    assert cli.main(["import", str(DEV), "--out", str(out)]) == 0
    return out


def _run(args, capsys):
    rc = cli.main(list(map(str, args)))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _empty(path: Path) -> bool:
    return not path.exists() or not any(path.rglob("*"))


@pytest.fixture(scope="module")
def tuned(store, tmp_path_factory):
    base = tmp_path_factory.mktemp("tuned")
    outs = {}
    for method, extra in (("markov-copula", []), ("grid", ["--param", "score=calibrated"])):
        out = base / method
        rc = cli.main(["tune", "--results", str(store), "--models", K3, "--method", method, "--cost", "model-mean",
                       "--out", str(out), *extra])
        assert rc == 0
        outs[method] = out
    return outs


@pytest.mark.parametrize("method", ["markov-copula", "grid"])
def test_tune_writes_curve_and_summary(tuned, store, method):
    out = tuned[method]
    assert sorted(p.name for p in out.iterdir()) == ["curve.parquet", "summary.json"]
    curve = pd.read_parquet(out / "curve.parquet")
    for col in ("method", "thresholds", "train_error", "train_cost", "test_error", "test_cost"):
        assert col in curve.columns, col
    share_cols = [c for c in curve.columns if c.startswith("share_")]
    assert len(share_cols) == 3
    assert len(curve) >= 3
    assert (curve["method"] == method).all()
    assert all(len(t) == 2 for t in curve["thresholds"])
    np.testing.assert_allclose(curve[share_cols].sum(axis=1), 1.0)
    assert curve[["train_error", "test_error"]].apply(lambda s: s.between(0, 1).all()).all()
    assert (curve[["train_cost", "test_cost"]] > 0).all().all()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method
    assert summary["models"] == K3.split(",")
    assert summary["seconds"] > 0
    assert summary["test_auc"] == pytest.approx(evaluate.auc(curve.test_cost, curve.test_error))
    assert 0 < summary["test_auc"] < 1
    assert summary["cost_mode"] == "model-mean" and summary["n_train"] == 300 and summary["n_test"] == 1000

    # the measured test columns are what the thresholds give on the test split (model-mean cost)
    df = records.load(store)
    test = records.cascade_data(df, K3.split(","), "test")
    from cascade.evaluate import tuning as tune_mod

    _, cal_test, _ = tune_mod.prepare(df, models=K3.split(","), cost_mode="model-mean")
    for _, row in curve.iloc[[0, len(curve) // 2, -1]].iterrows():
        s = evaluate.score_thresholds(np.array(row.thresholds), cal_test)
        assert s["error"] == pytest.approx(row.test_error) and s["cost"] == pytest.approx(row.test_cost)
        np.testing.assert_allclose(s["shares"], row[share_cols].to_numpy(float))
    assert test.n == 1000


@pytest.mark.parametrize("case,extra", [
    ("unknown-model", ["--models", f"{CHAIN[0]},nosuch-model"]),
    ("unknown-method", ["--models", K3, "--method", "nosuch-method"]),
    ("single-model", ["--models", CHAIN[0]]),
    ("repeated-model", ["--models", f"{CHAIN[0]},{CHAIN[0]}"]),
    ("empty-train-split", ["--models", K3, "--train-split", "validation"]),
    ("empty-test-split", ["--models", K3, "--test-split", "holdout"]),
    ("unknown-benchmark", ["--models", K3, "--benchmark", "nosuch"]),
    ("unknown-signal", ["--models", K3, "--signal", "conf_nosuch"]),
    ("bad-param", ["--models", K3, "--param", "nosuchparam"]),
    ("unknown-model-in-chain", ["--models", f"{CHAIN[0]},{CHAIN[1]},nosuch-model", "--all-cascades"]),
    ("single-model-chain", ["--models", CHAIN[0], "--all-cascades"]),
])
def test_tune_bad_input_exits_2_and_writes_nothing(store, tmp_path, capsys, case, extra):
    out = tmp_path / "out"
    rc, stdout, err = _run(["tune", "--results", store, "--out", out, *extra], capsys)
    assert rc == 2, (case, stdout, err)
    assert err.startswith("cascade tune: error:") and len(err.strip().splitlines()) == 1, err
    assert _empty(out), sorted(out.rglob("*"))
    if "model" in case and case != "single-model-chain":
        assert "nosuch-model" in err or CHAIN[0] in err


def test_tune_empty_split_from_a_store(tmp_path, capsys):
    """A store with a train split but no test split at all."""
    df = records.load(DEV)
    src = tmp_path / "train-only.parquet"
    df[df.split == "train"].to_parquet(src, index=False)
    st = tmp_path / "store"
    assert cli.main(["import", str(src), "--out", str(st)]) == 0
    out = tmp_path / "out"
    rc, _, err = _run(["tune", "--results", st, "--models", K3, "--out", out], capsys)
    assert rc == 2 and "test" in err
    assert _empty(out)


def test_compare_prints_a_table_and_writes_pct_change(tuned, tmp_path, capsys):
    csv = tmp_path / "cmp" / "mc-vs-grid.csv"
    rc, stdout, err = _run(["compare", tuned["markov-copula"], tuned["grid"], "--csv", csv], capsys)
    assert rc == 0, err
    assert "markov-copula vs grid" in stdout and "pct_change" in stdout
    t = pd.read_csv(csv)
    assert len(t) == 1
    row = t.iloc[0]
    assert row["method"] == "markov-copula" and row["baseline"] == "grid" and row["k"] == 3
    mc = pd.read_parquet(tuned["markov-copula"] / "curve.parquet")
    gr = pd.read_parquet(tuned["grid"] / "curve.parquet")
    cmp = evaluate.compare_curves(mc.test_cost, mc.test_error, gr.test_cost, gr.test_error)
    assert row["auc"] == pytest.approx(cmp.auc_a) and row["auc_baseline"] == pytest.approx(cmp.auc_b)
    assert row["pct_change"] == pytest.approx(100 * (row["auc"] - row["auc_baseline"]) / row["auc_baseline"])
    assert row["cost_lo"] == pytest.approx(max(mc.test_cost.min(), gr.test_cost.min()))
    assert row["cost_hi"] == pytest.approx(min(mc.test_cost.max(), gr.test_cost.max()))


def test_compare_needs_two_methods(tuned, capsys):
    rc, _, err = _run(["compare", tuned["grid"]], capsys)
    assert rc == 2 and "two methods" in err


def test_compare_missing_folder(tmp_path, capsys):
    rc, _, err = _run(["compare", tmp_path / "a", tmp_path / "b"], capsys)
    assert rc == 2


def test_all_cascades_per_k_means_and_wilcoxon(store, tmp_path, capsys):
    chain = ",".join(CHAIN[:4])  # 11 cascades: k=2 (6), k=3 (4), k=4 (1)
    for method, extra in (("markov-copula", []), ("grid", ["--param", "n_quantiles=10"])):
        rc, _, err = _run(["tune", "--results", store, "--models", chain, "--all-cascades", "--method", method,
                           "--out", tmp_path / method, *extra], capsys)
        assert rc == 0, err
        assert len(list((tmp_path / method).rglob("summary.json"))) == 11
    csv = tmp_path / "cmp.csv"
    rc, stdout, err = _run(["compare", tmp_path / "markov-copula", tmp_path / "grid", "--csv", csv], capsys)
    assert rc == 0, err
    t = pd.read_csv(csv)
    assert len(t) == 11 and sorted(t.k.value_counts().items()) == [(2, 6), (3, 4), (4, 1)]
    from cascade.evaluate.compare import summarize_by_length

    summ = summarize_by_length(t)
    assert "wilcoxon_p" in stdout and ">=3 (mean of per-k means)" in stdout
    for k in (2, 3, 4):
        row = summ[summ.k == str(k)].iloc[0]
        assert row["mean_pct_change"] == pytest.approx(t[t.k == k]["pct_change"].mean())
    ge3 = summ[summ.k.str.startswith(">=3")].iloc[0]
    assert ge3["mean_pct_change"] == pytest.approx(np.mean([t[t.k == 3]["pct_change"].mean(), t[t.k == 4]["pct_change"].mean()]))
    from scipy import stats

    allrow = summ[summ.k == "all"].iloc[0]
    assert allrow["wilcoxon_p"] == pytest.approx(stats.wilcoxon(t["pct_change"], alternative="less").pvalue)


def test_tune_per_query_cost(store, tmp_path, capsys):
    out = tmp_path / "pq"
    rc, _, err = _run(["tune", "--results", store, "--models", K3, "--method", "grid", "--cost", "per-query",
                       "--out", out], capsys)
    assert rc == 0, err
    curve = pd.read_parquet(out / "curve.parquet")
    from cascade.evaluate import tuning as tune_mod

    df = records.load(store)
    _, test, _ = tune_mod.prepare(df, models=K3.split(","), cost_mode="per-query")
    raw = records.cascade_data(df, K3.split(","), "test")
    row = curve.iloc[len(curve) // 2]
    ans = evaluate.route(np.array(row.thresholds), test.confidence)
    per_query = np.cumsum(raw.cost, axis=1)[np.arange(raw.n), ans] * 1e6  # USD per million queries
    assert row.test_cost == pytest.approx(per_query.mean())
    assert json.loads((out / "summary.json").read_text())["cost_mode"] == "per-query"
