"""Where an experiment opens in MLflow's UI: a fresh browser profile, MLflow's home page, one click on the
experiment. With `mlflow ui --app-name cascade` (tracking/ui_app.py) it lands on the runs table; the plain
`mlflow ui` lands on the GenAI overview whatever the experiment's tags say (MLflow 3.17.2 decides from the
browser-wide workflow type, default "genai"), which is why the app exists."""

from __future__ import annotations

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
