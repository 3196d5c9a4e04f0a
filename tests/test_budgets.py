"""Absolute budgets (USD per million queries): one set per benchmark, the same metric names on every tuning
and selection run of it, the test curve as a metric history. Checked through MLflow's client on a real store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.evaluate import budgets as B

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "examples" / "medmcqa-llama.parquet"


def test_grid_is_preferred_numbers_from_the_cheapest_model_up():
    assert B.grid(16.871, 506.2) == [17.0, 20.0, 30.0, 50.0, 70.0, 100.0, 150.0, 200.0, 300.0, 500.0]
    assert B.grid(0.0123, 0.09) == [0.013, 0.015, 0.02, 0.03, 0.05, 0.07]
    assert B.grid(5.0, 5.0) == [5.0]
    assert B.metric_name(17.0) == "test_error_at_usd17" and B.metric_name(0.015) == "test_error_at_usd0.015"


def test_benchmark_budgets_use_every_model_of_the_benchmark():
    df = pd.read_parquet(RECORDS)
    costs = B.model_costs(df, "medmcqa")
    assert len(costs) == 5
    got = B.benchmark_budgets(df, "medmcqa")
    assert got[0] >= min(costs.values()) and got[-1] <= max(costs.values())
    # a sub-chain's records on the same benchmark get the same budgets only through the full records: the rule
    # sees the benchmark's models, never a curve
    assert B.benchmark_budgets(df[df.model.isin(["llama3.2-1b", "llama3.2-3b"])], "medmcqa") != got


def test_error_at_reads_the_curve_like_a_person():
    curve = pd.DataFrame({"test_cost": [10.0, 20.0, 40.0], "test_error": [0.5, 0.3, 0.35]})
    assert np.isnan(B.error_at(curve, 9.0))  # nothing affordable
    assert B.error_at(curve, 10.0) == 0.5
    assert B.error_at(curve, 30.0) == 0.3
    assert B.error_at(curve, 100.0) == 0.3  # the best affordable point
    assert B.budget_metrics(curve, [5.0, 20.0]) == {"test_error_at_usd20": 0.3}


def test_answer_at_budgets_is_the_frontier_row_chosen_on_train():
    from cascade.evaluate import select

    f = pd.DataFrame({"cascade": ["a", "a -> b", "b"], "models": [["a"], ["a", "b"], ["b"]],
                      "thresholds": [[], [0.5], []], "measured_train_cost": [10.0, 20.0, 50.0],
                      "measured_train_error": [0.5, 0.4, 0.3], "train_cost": [10.0, 19.0, 50.0],
                      "train_error": [0.5, 0.41, 0.3], "test_cost": [11.0, 21.0, 52.0],
                      "test_error": [0.52, 0.38, 0.31]})
    front = select.frontier_of(f, "measured")
    ans = B.answer_at_budgets(front, [5.0, 10.0, 30.0, 60.0])
    assert ans["budget"].tolist() == [10.0, 30.0, 60.0]  # 5 affords nothing
    for _, r in ans.iterrows():
        row = select.choose(front, r["budget"])
        assert r["cascade"] == row["cascade"] and r["test_error"] == row["test_error"]
        assert r["predicted_cost"] == row["measured_train_cost"] <= r["budget"]


@pytest.mark.slow
def test_every_run_of_a_benchmark_logs_the_same_budget_metrics_and_a_curve_history(tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs import cli

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    chain = "llama3.2-1b,llama3.2-3b,llama3.1-8b"
    assert cli.main(["tune", "--results", str(RECORDS), "--models", chain, "--all-cascades",
                     "--method", "grid,random", "--param", "grid.n_quantiles=8", "--out", str(tmp_path / "t"),
                     "--track", "--tracking-uri", uri, "--experiment", "budgets"]) == 0
    assert cli.main(["select", "--results", str(RECORDS), "--models", chain, "--method", "grid",
                     "--param", "n_quantiles=8", "--jobs", "1", "--out", str(tmp_path / "s"), "--track",
                     "--tracking-uri", uri, "--experiment", "budgets"]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("budgets")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=500)
            if r.data.tags.get("cascade.kind") in ("tune", "select")]
    assert {r.data.tags["cascade.kind"] for r in runs} == {"tune", "select"}
    budgets = B.benchmark_budgets(pd.read_parquet(RECORDS), "medmcqa")
    expected = {B.metric_name(b) for b in budgets}
    for r in runs:
        assert r.data.tags["cascade.budgets_usd"] == ",".join(f"{b:g}" for b in budgets)
        names = {k for k in r.data.metrics if k.startswith("test_error_at_usd")}
        # one set of names; a budget below the cascade's cheapest test point (it cannot run there) is absent
        cheapest = r.data.metrics.get("test_cost_min", 0.0)
        affordable = {B.metric_name(b) for b in budgets if b >= cheapest}
        assert names == (expected if r.data.tags["cascade.kind"] == "select" else affordable), r.info.run_name
        hist = client.get_metric_history(r.info.run_id, "test_error_curve")
        assert [m.step for m in hist] == [i for i, b in enumerate(budgets) if B.metric_name(b) in names]
        assert [m.value for m in hist] == [r.data.metrics[B.metric_name(b)] for b in budgets if B.metric_name(b) in names]
        steps = client.get_metric_history(r.info.run_id, "budget_usd")
        assert [m.value for m in sorted(steps, key=lambda m: m.step)] == budgets
    (sel,) = [r for r in runs if r.data.tags["cascade.kind"] == "select"]
    front = pd.read_parquet(tmp_path / "s" / "frontier.parquet")
    from cascade.evaluate import select

    for b in budgets:
        row = select.choose(front, b)
        assert sel.data.metrics[B.metric_name(b, "answer_test_error")] == pytest.approx(row["test_error"])
        assert sel.data.metrics[B.metric_name(b, "answer_test_cost")] == pytest.approx(row["test_cost"])
