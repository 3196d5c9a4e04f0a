"""Where an experiment opens in MLflow's UI: a fresh browser profile, MLflow's home page, one click on the
experiment. With `mlflow ui --app-name cascade` (tracking/ui_app.py) it lands on the runs table; the plain
`mlflow ui` lands on the GenAI overview whatever the experiment's tags say (MLflow 3.17.2 decides from the
browser-wide workflow type, default "genai"), which is why the app exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import chromium_path, fresh_browser, mlflow_ui


def test_index_html_sets_the_default_before_the_ui_scripts():
    from tracking import ui_app

    html = '<!doctype html><html><head><meta charset="utf-8"/><script src="x.js"></script></head></html>'
    out = ui_app.index_html(html)
    assert out.index(ui_app.WORKFLOW_KEY) < out.index("x.js")
    assert 'localStorage.getItem("mlflow.workflowType_v1")===null' in out  # a user's own choice is kept
    assert '"\\"machine_learning\\""' in out  # the UI stores JSON: the string "machine_learning"


def test_the_workflow_key_is_the_one_mlflow_reads():
    """The key and values in this MLflow's UI bundle (a new MLflow that renames them fails here)."""
    from pathlib import Path

    import mlflow

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "".join(p.read_text(errors="ignore") for p in js.glob("main.*.js"))
    assert 'key:"mlflow.workflowType",version:1' in text
    assert 'MACHINE_LEARNING="machine_learning"' in text


@pytest.mark.slow
def test_fresh_browser_lands_on_the_runs_table(tmp_path):
    import mlflow

    chromium = chromium_path()
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    import tracking

    tracking.configure(uri, "landing-test")
    with mlflow.start_run(run_name="a run"):
        mlflow.log_metric("x", 1.0)
    with mlflow_ui(uri, tmp_path / "ui.log") as base, fresh_browser(chromium) as page:
        page.goto(base + "/")
        page.get_by_role("link", name="landing-test").first.click(timeout=120_000)
        page.wait_for_url("**/experiments/*/runs*", timeout=120_000)
        assert "/runs" in page.url and "overview" not in page.url
        page.get_by_text("a run").first.wait_for(timeout=120_000)  # the runs table shows the run


@pytest.mark.slow
def test_report_in_a_fresh_browser_shows_the_frontier_row_at_the_chosen_budget(tmp_path):
    """report.html opened offline (every request but the file itself refused): pick each budget in the
    dropdown, read the answer box, compare with frontier.parquet's row for that budget."""
    import warnings

    import pandas as pd

    from cascade.evaluate import answer, select

    chromium = chromium_path()
    df = pd.read_parquet(Path(__file__).resolve().parents[1] / "examples" / "medmcqa-llama.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ma = answer.select_methods(df, models=["llama3.2-1b", "llama3.2-3b", "llama3.1-8b"], methods=["grid", "random"],
                                   params={"grid": {"n_quantiles": 6}}, benchmark="medmcqa")
    out = answer.write_methods(ma, tmp_path / "sel")
    front = pd.read_parquet(out / "frontier.parquet")
    with fresh_browser(chromium) as page:
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                   else route.abort())
        page.goto((out / "report.html").as_uri())
        page.locator("#front-plot .main-svg").first.wait_for(timeout=60_000)  # plotly drew without the network
        for b in ma.budgets:
            page.locator("#budget").select_option(f"{b:g}")
            row = select.choose(front, b)
            line = page.locator("#answer-line").inner_text()
            assert " > ".join(row["models"]) in line and str(row["method"]) in line
            assert float(page.locator("#answer-test-error").inner_text()) == pytest.approx(row["test_error"], abs=1e-4)
            assert float(page.locator("#answer-test-cost").inner_text()) == pytest.approx(row["test_cost"], abs=1e-2)
