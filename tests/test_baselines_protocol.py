"""The comparison protocol and the `cascade study` command (issue 4)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cascade.evaluate import study as protocol


def make_records(models=("a", "b", "c"), n_train=60, n_test=120, seed=0, margin=True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        difficulty = rng.random(n)
        for j, m in enumerate(models):
            skill = 0.3 + 0.25 * j
            p = np.clip(skill + 0.5 * (0.5 - difficulty) + 0.1 * rng.standard_normal(n), 0.02, 0.98)
            correct = rng.random(n) < p
            conf = np.log(np.clip(p + 0.1 * rng.standard_normal(n), 0.01, 0.999))
            df = pd.DataFrame({"benchmark": "syn", "split": split, "query_id": np.arange(n), "model": m,
                               "correct": correct, "confidence": conf, "input_tokens": 100, "output_tokens": 2,
                               "cost": 1e-6 * 10 ** j * (1 + 0.1 * rng.random(n))})
            if margin:
                df["conf_top2_margin"] = np.clip(p + 0.15 * rng.standard_normal(n), 0, 1)
            rows.append(df)
    return pd.concat(rows, ignore_index=True)


def test_cascades_of_counts():
    assert len(protocol.cascades_of(list("abcde"))) == 26
    assert len(protocol.cascades_of(list("abcd"))) == 11
    assert ["a", "c"] in protocol.cascades_of(list("abc"))
    with pytest.raises(ValueError):
        protocol.cascades_of(["a"])


def test_subsamples_seeded_and_distinct():
    ids = np.arange(300)
    a = protocol.subsample_ids(ids, 10, 20, seed=0, chain_name="x")
    b = protocol.subsample_ids(ids, 10, 20, seed=0, chain_name="x")
    assert len(a) == 20 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({tuple(x) for x in a}) == 20
    assert all(len(np.unique(x)) == 10 for x in a)
    with pytest.raises(ValueError):
        protocol.subsample_ids(ids, 301, 2, 0, "x")


def _study(**kw):
    recs = make_records()
    args = dict(methods=["bayes-opt", "random", "margin"], n_values=["10", "all"], n_subsamples=3, seed=1,
                overrides={"bayes-opt": {"n_trials": 25}})
    args.update(kw)
    return protocol.run_study({"syn": recs}, **args)


def test_study_reproducible_and_complete():
    r1, r2 = _study(), _study()
    pd.testing.assert_frame_equal(r1.summary, r2.summary)
    pd.testing.assert_frame_equal(r1.runs.drop(columns="seconds"), r2.runs.drop(columns="seconds"))
    runs = r1.runs
    assert (runs["error"] == "").all()
    # 4 cascades x 2 n x 3 subsamples x 3 methods
    assert len(runs) == 4 * 2 * 3 * 3
    ref = runs[runs["method"] == "bayes-opt"]
    assert np.allclose(ref["pct_change"], 0.0)
    other = runs[runs["method"] != "bayes-opt"]
    assert np.isfinite(other["pct_change"]).all()
    assert (other["cost_lo"] <= other["cost_hi"]).all()
    assert (other["cost_lo"] < other["cost_hi"]).mean() > 0.8  # zero-width only for one-point curves
    # the table has per-k rows, k>=3, all, and the <=30 group
    assert {"2", "3", ">=3", "all"} <= set(r1.summary["k"])
    assert {"10", "all", "<=30"} == set(r1.summary["n"])
    row = r1.summary[(r1.summary.n == "all") & (r1.summary.k == "all") & (r1.summary.method == "random")].iloc[0]
    assert row["ci95_lo"] <= row["mean_pct_change"] <= row["ci95_hi"]
    text = protocol.format_table(r1.summary)
    assert "random" in text and "bayes-opt" in text


def test_study_seed_changes_subsamples():
    r1, r3 = _study(), _study(seed=2)
    a = r1.runs[r1.runs.n == "10"]["auc"].to_numpy()
    b = r3.runs[r3.runs.n == "10"]["auc"].to_numpy()
    assert not np.allclose(a, b)


def test_study_bad_input():
    recs = make_records()
    with pytest.raises(ValueError, match="unknown method"):
        protocol.run_study({"syn": recs}, methods=["bayes-opt", "nope"], n_values=["all"], n_subsamples=1)
    with pytest.raises(ValueError, match="reference"):
        protocol.run_study({"syn": recs}, methods=["random"], n_values=["all"], n_subsamples=1)
    with pytest.raises(ValueError, match="at least two"):
        protocol.run_study({"syn": recs[recs.model == "a"]}, methods=["bayes-opt"], n_values=["all"], n_subsamples=1)
    with pytest.raises(ValueError, match="empty"):
        protocol.run_study({"syn": recs[recs.split == "test"]}, methods=["bayes-opt"], n_values=["all"],
                           n_subsamples=1)


def test_study_select_method():
    """`select` in a study: each cascade's frontier over its sub-cascades, compared like a tuner's curve."""
    recs = make_records()
    protocol._SUB_CACHE.clear()
    res = protocol.run_study({"syn": recs}, methods=["bayes-opt", "select"], n_values=["20", "all"], n_subsamples=2,
                             seed=1, overrides={"bayes-opt": {"n_trials": 10},
                                                "select": {"method": "grid", "n_quantiles": 8}})
    sel = res.runs[res.runs["method"] == "select"]
    assert len(sel) == 4 * 2 * 2 and (sel["error"] == "").all()
    assert np.isfinite(sel["pct_change"]).all() and (sel["n_points"] >= 1).all()
    # sub-cascades shared by the cascades of one cell are tuned once: the 7 sub-cascades of a, b, c per cell
    # (3 cells with distinct training data: 2 subsamples of 20, and all), not 3 + 3 + 3 + 7 = 16
    assert len(protocol._SUB_CACHE) == 3 * 7
    # the frontier of the full cascade a -> b -> c holds points of several of its sub-cascades
    train, test, _ = protocol.tune.prepare(recs, models=["a", "b", "c"])
    front = protocol.select_frontier(train, test, {"method": "grid", "n_quantiles": 8})
    assert front["cascade"].nunique() >= 2 and np.all(np.diff(front["budget_lo"]) > 0)
    with pytest.raises(ValueError, match="select itself"):
        protocol.run_study({"syn": recs}, methods=["bayes-opt", "select"], n_values=["all"], n_subsamples=1,
                           overrides={"select": {"method": "select"}})
    with pytest.raises(ValueError, match="select_on"):
        protocol.run_study({"syn": recs}, methods=["bayes-opt", "select"], n_values=["all"], n_subsamples=1,
                           overrides={"select": {"select_on": "nope"}})
    with pytest.raises(ValueError, match="n_quantile"):
        protocol.run_study({"syn": recs}, methods=["bayes-opt", "select"], n_values=["all"], n_subsamples=1,
                           overrides={"select": {"method": "grid", "n_quantile": 3}})


def test_cli_study_writes_outputs(tmp_path):
    from jobs.cli import main

    path = tmp_path / "recs.parquet"
    make_records(models=("a", "b")).to_parquet(path)
    out = tmp_path / "out"
    rc = main(["study", "--results", f"syn={path}", "--methods", "bayes-opt,random", "--n-values", "10,all",
               "--subsamples", "2", "--param", "bayes-opt.n_trials=15", "--out", str(out)])
    assert rc == 0
    for f in ("table.txt", "summary.csv", "per_cascade.csv", "runs.csv", "meta.json"):
        assert (out / f).exists()
    assert list((out / "plots").glob("*.png"))
    assert json.loads((out / "meta.json").read_text())["n_failed_fits"] == 0
    # same command, same table
    out2 = tmp_path / "out2"
    main(["study", "--results", f"syn={path}", "--methods", "bayes-opt,random", "--n-values", "10,all",
          "--subsamples", "2", "--param", "bayes-opt.n_trials=15", "--out", str(out2), "--no-plots"])
    assert (out / "table.txt").read_text() == (out2 / "table.txt").read_text()
    assert main(["study", "--results", str(path), "--methods", "nope", "--out", str(out)]) == 2


def test_margin_study(tmp_path):
    from jobs.cli import main

    recs = make_records(models=("a", "b"), n_train=80, n_test=200)
    frame, summary = protocol.margin_study(recs, ["a", "b"], n_budgets=20, n_orders=3)
    assert len(frame) == 20 and (frame["max_spend_ratio"] <= 1 + 1e-12).all()
    assert set(summary["form"]) == {"online (test stream)", "offline (train quantiles)", "random routing"}
    lo, hi = summary["cheap_accuracy"].iloc[0], summary["expensive_accuracy"].iloc[0]
    rnd = summary.set_index("form").loc["random routing", "area"]
    assert rnd == pytest.approx((lo + hi) / 2)  # the mean of the straight line
    with pytest.raises(ValueError):
        protocol.margin_study(recs, ["a"])
    path = tmp_path / "r.parquet"
    recs.to_parquet(path)
    assert main(["study", "--protocol", "margin", "--results", str(path), "--models", "a,b", "--budgets", "10",
                 "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "margin_summary.csv").exists()
