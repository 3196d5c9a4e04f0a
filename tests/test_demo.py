"""jobs.demo: the comparison table (fast) and an end-to-end smoke run on a tiny slice (slow: real models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobs import demo

ROOT = Path(__file__).resolve().parents[1]


def _row(label, casc, method, err):
    cost = np.linspace(1.0, 10.0, 5)
    return {"records": label, "cascade": casc, "k": casc.count("->") + 1, "method": method,
            "test_cost": cost, "test_error": np.asarray(err, float)}


def test_comparison_table_against_reference():
    rows = [_row("r", "a -> b", "bayes-opt", [0.5, 0.4, 0.3, 0.2, 0.1]),
            _row("r", "a -> b", "markov-copula", [0.45, 0.36, 0.27, 0.18, 0.09]),
            _row("r", "a -> b -> c", "bayes-opt", [0.5, 0.4, 0.3, 0.2, 0.1]),
            _row("r", "a -> b -> c", "markov-copula", [0.5, 0.4, 0.3, 0.2, 0.1])]
    per, summ = demo.comparison(rows, reference="bayes-opt")
    assert set(per["method"]) == {"markov-copula"}
    got = per.set_index("cascade")["pct_change"]
    assert got["a -> b"] == pytest.approx(-10.0, abs=1e-6) and got["a -> b -> c"] == pytest.approx(0.0, abs=1e-9)
    assert set(summ["cascades"]) == {"k=2", "k>=3 (mean of per-k means)", "all (plain mean)"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_smoke(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = demo.main(["--limit", "8", "--out", str(tmp_path / "scored"), "--max-chain", "2", "--no-progress",
                    "--tracking-uri", uri, "--experiment", "demo-smoke"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "AUC" in out and "mlflow ui --app-name cascade --backend-store-uri" in out
    assert "+nan" not in out
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for bench, n_score in (("mmlu", 1), ("medmcqa", 0)):
        exp = client.get_experiment_by_name(f"demo-smoke-{bench}")  # one experiment per benchmark
        runs = client.search_runs([exp.experiment_id], max_results=500)
        kinds = [r.data.tags.get("cascade.kind") for r in runs]
        # the answer's parent, 4 selection runs (one per method) with 3 sub-cascades each (+ margin on mmlu)
        assert kinds.count("parent") == 1 and kinds.count("score") == n_score and kinds.count("select") == 4
        assert kinds.count("tune") == 12 + n_score
        assert {r.data.tags.get("cascade.benchmark") for r in runs if r.data.tags.get("cascade.kind") == "tune"} == {bench}
        (parent,) = [r for r in runs if r.data.tags.get("cascade.kind") == "parent"]
        assert "| budget (USD/1M q) |" in parent.data.tags["mlflow.note.content"]
        assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_comparison_k_ge_3_is_the_mean_of_per_length_means():
    """The demo's k>=3 row uses the shared rule (cascade.evaluate.compare): every length weighs the same."""
    ref = [0.5, 0.4, 0.3, 0.2, 0.1]
    rows = []
    for casc, pct in (("a -> b", -10.0), ("a -> b -> c", -20.0), ("a -> c -> d", -20.0), ("b -> c -> d", -20.0),
                      ("a -> b -> c -> d", 0.0)):
        rows += [_row("r", casc, "bayes-opt", ref),
                 _row("r", casc, "grid", [v * (1 + pct / 100) for v in ref])]
    per, summ = demo.comparison(rows, reference="bayes-opt")
    got = summ.set_index("cascades")["mean_%_vs_bayes-opt"]
    assert got["k>=3 (mean of per-k means)"] == pytest.approx((-20.0 + 0.0) / 2, abs=1e-6)  # not the plain mean -15
    assert got["all (plain mean)"] == pytest.approx(-70.0 / 5, abs=1e-6)
    assert got["k=2"] == pytest.approx(-10.0, abs=1e-6)
    assert summ.set_index("cascades")["n_cascades"]["k>=3 (mean of per-k means)"] == 4
