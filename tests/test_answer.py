"""`cascade select --method a,b`: a selection per method, one answer per absolute budget over all of them, the
HTML report's embedded answer equal to frontier.parquet's rows, and what MLflow holds (description, report)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cascade.evaluate import answer, report, select
from cascade.evaluate import budgets as B
from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
CHAIN = "llama3.2-1b,llama3.2-3b,llama3.1-8b"


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("many")
    uri = f"sqlite:///{tmp / 'm.db'}"
    code = cli.main(["select", "--results", str(DEV), "--models", CHAIN, "--method", "grid,random",
                     "--param", "grid.n_quantiles=8", "--jobs", "1", "--out", str(tmp / "out"), "--track",
                     "--tracking-uri", uri, "--experiment", "answer-test"])
    assert code == 0
    return tmp / "out", uri


def test_the_answer_is_the_pooled_frontier_chosen_on_train(many):
    out, _ = many
    summary, front, ans = answer.read_methods(out)
    assert summary["methods"] == ["grid", "random"] and (out / "grid" / "frontier.parquet").exists()
    assert set(front["method"]) <= {"grid", "random", answer.SINGLE}
    budgets = B.benchmark_budgets(pd.read_parquet(DEV), "medmcqa")
    assert summary["budgets_usd"] == budgets and ans["budget"].tolist() == budgets
    # no candidate of any method beats a pooled frontier point on train at no more train cost
    cand = pd.concat([pd.read_parquet(out / m / "candidates.parquet") for m in ("grid", "random")])
    for _, r in front.iterrows():
        better = (cand["measured_train_cost"] <= r["measured_train_cost"]) & (
            cand["measured_train_error"] < r["measured_train_error"] - 1e-12)
        assert not better.any()
    for _, a in ans.iterrows():
        row = select.choose(front, a["budget"])
        assert a["method"] == row["method"] and a["cascade"] == row["cascade"]
        assert a["test_error"] == row["test_error"] and a["test_cost"] == row["test_cost"]
        assert a["predicted_cost"] <= a["budget"] * (1 + 1e-9)
    text = (out / "answer.txt").read_text()
    assert max(len(line) for line in text.splitlines()) <= 140  # fits MLflow's text viewer
    assert "USD per million queries" in text


def test_report_embeds_the_frontier_rows_and_needs_no_network(many):
    out, _ = many
    html = (out / "report.html").read_text()
    assert "<script src=" not in html and "<link" not in html  # plotly.js inlined: nothing fetched
    data = report.read_data(out / "report.html")
    front = pd.read_parquet(out / "frontier.parquet")
    assert data["budgets"] == B.benchmark_budgets(pd.read_parquet(DEV), "medmcqa")
    for a in data["answer"]:
        row = front.iloc[a["frontier_row"]]
        assert row.equals(select.choose(front, a["budget"]))
        assert a["cascade"] == row["cascade"] and a["method"] == row["method"]
        assert a["test_error"] == pytest.approx(row["test_error"]) and a["test_cost"] == pytest.approx(row["test_cost"])
        assert a["thresholds"] == pytest.approx([float(t) for t in row["thresholds"]])
    methods = {c["method"] for c in data["curves"]}
    assert methods == {"grid", "random"} and len(data["curves"]) == 2 * 4  # every method x cascade (k >= 2)
    one = report.read_data(out / "grid" / "report.html")  # a one-method selection's report, the same rule
    gfront = pd.read_parquet(out / "grid" / "frontier.parquet")
    for a in one["answer"]:
        assert a["cascade"] == select.choose(gfront, a["budget"])["cascade"]


def test_tracking_holds_the_answer_description_and_report(many):
    from mlflow.tracking import MlflowClient

    out, uri = many
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("answer-test")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    (top,) = [r for r in runs if r.data.tags.get("cascade.answer") == "true"]
    desc = top.data.tags["mlflow.note.content"]
    assert "| budget (USD/1M q) | method |" in desc and "USD per million queries" in desc
    assert top.info.run_name == "select | 2 methods | llama3.2-1b > llama3.2-3b > llama3.1-8b"
    arts = {a.path for a in client.list_artifacts(top.info.run_id)}
    assert {"report.html", "answer.txt", "answer_table.json"} <= arts
    per_method = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id]
    assert sorted(r.data.tags["cascade.method"] for r in per_method) == ["grid", "random"]
    for r in per_method:
        assert r.info.run_name.startswith(r.data.tags["cascade.method"] + " | select | 7 sub-cascades")
        assert "report.html" in {a.path for a in client.list_artifacts(r.info.run_id)}
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["answer"]:
        assert top.data.metrics[B.metric_name(row["budget"], "answer_test_error")] == pytest.approx(row["test_error"])


def test_several_methods_bad_input(tmp_path, capsys):
    code = cli.main(["select", "--results", str(DEV), "--models", CHAIN, "--method", "grid,nope",
                     "--out", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()
    code = cli.main(["select", "--results", str(DEV), "--models", CHAIN, "--method", "grid,random",
                     "--param", "bayes-opt.n_trials=3", "--out", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()
