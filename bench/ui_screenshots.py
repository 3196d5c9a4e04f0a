"""Screenshots of the MLflow UI over a store, as a person would see it (headless Chromium).

Starts ``mlflow ui`` on the store on loopback (a free port), finds through the server's REST API the
experiment, a comparison's parent run (tag ``cascade.comparison=true``, else any ``cascade.kind=parent``)
and one of its tuning runs, and takes PNG screenshots of:

0. the journey (:func:`journey`): home page -> experiment -> parent run -> report.html -> a budget, clicked in a
   fresh Playwright profile (``journey_*.png``, ``journey.json``: where it landed, the answer, clicks per step);
1. ``runs_by_method.png``: with selection runs (``cascade select --method a,b``, the demo), only those, one row per
   method with ``answer_test_error_at_usd<B>`` at every budget as columns; otherwise the experiment's runs
   table grouped by method (tag ``cascade.method``) with the
   ``auc_shared`` column, sorted by it (a shared view: an experiment tag ``mlflow.sharedViewState.<key>``
   holding the view, opened with ``?viewStateShareKey=<key>``, what the UI's own "Share" button writes);
2. ``parent_table.png``: the parent run's comparison table (``comparison_table.json``);
3. ``parent_plot.png``: the parent's overlaid error-cost plot (the first ``*.png`` artifact of the parent);
4. ``tune_run.png`` and ``tune_run_artifacts.png``: one tuning run's overview and its error-cost plot.

On a ``cascade study`` experiment (its parent tagged ``cascade.study=true``) the same views show the study:
the runs grouped by method sorted by ``pct_change`` (% change of AUC vs the reference; the per-n
``pct_change.n_*`` and ``win_share.n_*`` as columns), the parent's ``summary_table.json`` and first plot, and
one chain x method run (``study_run.png``, ``study_run_artifacts.png``: its ``per_cascade_table.json``).

``--optuna``: also ``optuna_dashboard.png``, ``optuna-dashboard`` (the ``dashboard`` extra) on the Optuna storage
beside the store (``optuna.db``, where bayes-opt runs' studies are logged), opened on the newest study.

Usage::

    python bench/ui_screenshots.py [--tracking-uri sqlite:////ABS/mlflow.db] [--experiment NAME] [--out DIR]

Defaults: ``$MLFLOW_TRACKING_URI`` else ``sqlite:///<repo>/mlflow.db``; the experiment ``cascade-eval-demo``;
``runs/ui-screenshots``. Needs Chromium (``chromium`` or ``$CHROMIUM``). Prints each file it wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, body: dict | None = None, query: str = "") -> dict:
    url = f"{base}/api/2.0/mlflow/{path}" + (f"?{query}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}


def _search(base: str, exp_id: str, flt: str, n: int = 50) -> list[dict]:
    return _api(base, "runs/search", {"experiment_ids": [exp_id], "filter": flt, "max_results": n}).get("runs", [])


def _artifacts(base: str, run_id: str, path: str = "", depth: int = 2) -> list[str]:
    """The run's artifact files (folders listed ``depth`` levels down)."""
    q = f"run_id={run_id}" + (f"&path={urllib.parse.quote(path)}" if path else "")
    out = []
    for f in _api(base, "artifacts/list", query=q).get("files", []):
        if not f.get("is_dir"):
            out.append(f["path"])
        elif depth > 0:
            out += _artifacts(base, run_id, f["path"], depth - 1)
    return out


TUNE_COLUMNS = ["metrics.`test_auc`", "metrics.`error_at_50pct_shared_budget`", "tags.`cascade.cascade`",
                "tags.`cascade.degenerate`"]


def grouped_view(method_tag: str = "cascade.method", metric: str = "auc_shared", columns=None) -> dict:
    """The runs table's view state: grouped by a tag, the metric as a column, sorted by it."""
    return {
        "searchFilter": "", "orderByKey": f"metrics.`{metric}`", "orderByAsc": True, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": ["attributes.`Run Name`", f"metrics.`{metric}`",
                            *(TUNE_COLUMNS if columns is None else columns)],
        "runsExpanded": {}, "runsPinned": [], "runsHidden": [], "runsVisibilityMap": {},
        "runsHiddenMode": "SHOWALL", "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": method_tag}]},
        "groupsExpanded": {}, "autoRefreshEnabled": False, "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True, "chartsSearchFilter": "",
    }


def selection_view(columns: list[str]) -> dict:
    """The runs table showing only the selection runs (one per method), the answer's test error at every
    absolute budget as columns: each method's answer per budget side by side, nothing averaged."""
    view = grouped_view(metric=columns[len(columns) // 2].split("`")[1], columns=["tags.`cascade.method`", *columns])
    view["groupBy"] = None
    view["searchFilter"] = "tags.`cascade.kind` = 'select' and tags.`cascade.method` != ''"
    return view


def screenshot(chromium: str, url: str, path: Path, size: str, wait_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
                        f"--screenshot={path}", url],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180, check=True)


@contextlib.contextmanager
def _serve(cmd: list[str], ready_url: str, log_path: Path, timeout: float, what: str):
    """Run ``cmd`` in its own process group until ``ready_url`` answers; yield True, or False (a line printed)
    when it exits or does not answer within ``timeout`` s. The server is stopped on leaving."""
    log = open(log_path, "wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    print(f"ui_screenshots: {what} did not start; see {log_path}", file=sys.stderr)
                    yield False
                    return
                time.sleep(1)
        yield True
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def journey(chromium: str, base: str, experiment: str, parent_name: str, out: Path, size: str,
            budget: float | None = None, timeout_ms: int = 180_000) -> dict:
    """What a new user does, in a fresh Chromium profile driven by Playwright: MLflow's home page, a click on the
    experiment (where does it land?), a click on the parent run (its description: the answer table), the
    Artifacts tab, report.html, a budget picked in the report (the answer read back). Screenshots
    ``journey_*.png``; returns what it saw and the clicks each step took."""
    import tempfile

    from playwright.sync_api import sync_playwright

    w, h = (int(v) for v in size.split(","))
    seen: dict = {"clicks": {}}
    clicks = 0
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium, args=CHROMIUM_ARGS,
                                                   headless=True, viewport={"width": w, "height": h})
        ctx.set_default_timeout(timeout_ms)
        page = ctx.new_page()
        page.goto(base + "/")
        page.get_by_role("link", name=experiment).first.wait_for()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "journey_1_home.png"))
        page.get_by_role("link", name=experiment).first.click()
        clicks += 1
        page.wait_for_url("**/experiments/*/**")
        page.wait_for_timeout(3000)
        seen["landed_url"] = page.url
        if "/runs" in page.url:
            page.get_by_text(parent_name, exact=True).first.wait_for()  # the table has loaded
            page.wait_for_timeout(1500)
        seen["landed_on"] = ("runs table" if "/runs" in page.url else "GenAI overview" if "overview" in page.url
                             else page.url)
        page.screenshot(path=str(out / "journey_2_landing.png"))
        seen["clicks"]["see the runs"] = clicks
        page.get_by_text(parent_name, exact=True).first.click()
        clicks += 1
        page.wait_for_url("**/runs/*")
        page.get_by_text("budget (USD/1M q)").first.wait_for()  # the description's answer table
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "journey_3_parent_run.png"), full_page=True)
        seen["clicks"]["read the answer table (parent's description)"] = clicks
        page.get_by_role("tab", name="Artifacts").or_(page.get_by_text("Artifacts", exact=True)).first.click()
        clicks += 1
        page.get_by_text("report.html", exact=True).first.click()
        clicks += 1
        page.wait_for_timeout(5000)
        frame = None
        for f in page.frames:
            try:
                if f.locator("#budget").count():
                    frame = f
                    break
            except Exception:  # noqa: BLE001 - a frame that went away
                continue
        if frame is None:
            page.screenshot(path=str(out / "journey_4_report.png"))
            seen["report"] = "report.html did not render in the artifact viewer"
            ctx.close()
            return seen
        page.screenshot(path=str(out / "journey_4_report.png"))
        seen["clicks"]["open the interactive report"] = clicks
        options = frame.locator("#budget option").all_inner_texts()
        pick = f"{budget:g}" if budget is not None else options[len(options) // 2]
        frame.locator("#budget").select_option(pick)
        clicks += 1
        frame.locator("#answer-line").wait_for()
        seen["budget"] = pick
        seen["answer"] = frame.locator("#answer").inner_text()
        seen["clicks"]["the answer at a chosen budget"] = clicks
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "journey_5_answer.png"))
        ctx.close()
    return seen


def optuna_shot(chromium: str, tracking_uri: str, out: Path, size: str, wait_ms: int) -> int:
    """optuna-dashboard on the Optuna storage beside the store, screenshot of its newest study."""
    import optuna

    sys.path.insert(0, str(ROOT))
    from tracking.optuna_studies import storage_for

    url = storage_for(tracking_uri)
    dash = Path(sys.executable).parent / "optuna-dashboard"
    if url is None or not dash.exists():
        print("ui_screenshots: --optuna needs optuna-dashboard (pip install -e '.[dashboard]') and a SQLite store "
              "(or $CASCADE_OPTUNA_STORAGE)", file=sys.stderr)
        return 2
    studies = optuna.get_all_study_summaries(url)
    if not studies:
        print(f"ui_screenshots: no Optuna study in {url} (log a bayes-opt run first)", file=sys.stderr)
        return 2
    newest = max(studies, key=lambda st: st._study_id)
    port = _free_port()
    with _serve([str(dash), url, "--host", "127.0.0.1", "--port", str(port)], f"http://127.0.0.1:{port}/api/studies",
                out / "optuna-dashboard.log", 120, "optuna-dashboard") as up:
        if not up:
            return 3
        page = f"http://127.0.0.1:{port}/dashboard/studies/{newest._study_id}"
        w, h = size.split(",")
        screenshot(chromium, page, out / "optuna_dashboard.png", f"{w},{int(h) * 14 // 10}", wait_ms)
        print(f"{out / 'optuna_dashboard.png'}  <- {page} (study {newest.study_name})")
        return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI")
                    or f"sqlite:///{ROOT / 'mlflow.db'}")
    ap.add_argument("--experiment", default="cascade-eval-demo-medmcqa")
    ap.add_argument("--budget", type=float, default=None,
                    help="the budget (USD per million queries) to pick in the report (default: the middle one)")
    ap.add_argument("--no-journey", action="store_true", help="skip the clicked journey (direct links only)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "ui-screenshots"))
    ap.add_argument("--size", default="1600,1000", help="window size W,H")
    ap.add_argument("--wait-ms", type=int, default=20000, help="virtual time the page gets to render")
    ap.add_argument("--optuna", action="store_true", help="also screenshot optuna-dashboard on the store's optuna.db")
    args = ap.parse_args(argv)
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("ui_screenshots: chromium not found (install Debian's chromium, or set $CHROMIUM)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    with _serve([str(mlflow_bin), "ui", "--app-name", "cascade", "--backend-store-uri", args.tracking_uri,
                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], f"{base}/health",
                 out / "mlflow-ui.log", 300, "mlflow ui") as up:
        if not up:
            return 3
        exp = _api(base, "experiments/get-by-name", query=f"experiment_name={args.experiment}")["experiment"]
        exp_id = exp["experiment_id"]
        parents = (_search(base, exp_id, "tags.`cascade.comparison` = 'true' and tags.`cascade.kind` = 'parent'")
                   or _search(base, exp_id, "tags.`cascade.kind` = 'parent'"))
        if not parents:
            print(f"ui_screenshots: experiment {args.experiment!r} has no parent run", file=sys.stderr)
            return 2
        parent = parents[0]["info"]["run_id"]
        if not args.no_journey:
            seen = journey(chromium, base, args.experiment, parents[0]["info"]["run_name"], out, args.size,
                           args.budget)
            (out / "journey.json").write_text(json.dumps(seen, indent=2))
            print(json.dumps(seen, indent=2))
        study = _tags(parents[0]).get("cascade.study") == "true"
        kind = "study" if study else "tune"
        children = _search(base, exp_id, f"tags.`mlflow.parentRunId` = '{parent}' and tags.`cascade.kind` = '{kind}'")
        if study:  # the per-n % changes and win shares the children carry, as columns
            names = sorted({m["key"] for c in children for m in c.get("data", {}).get("metrics", [])})
            cols = [f"metrics.`{m}`" for m in names if (m.startswith("pct_change.n_") and ".k" not in m)
                    or m.startswith("win_share.n_all")]
            view = grouped_view(metric="pct_change", columns=cols + ["tags.`cascade.chain`"])
        else:
            view = grouped_view()
            sels = _search(base, exp_id, "tags.`cascade.kind` = 'select' and tags.`cascade.method` != ''")
            budgets = (_tags(parents[0]).get("cascade.budgets_usd") or "").split(",")
            if sels and budgets != [""]:  # one row per method's selection, its answer at every budget: no means
                view = selection_view([f"metrics.`answer_test_error_at_usd{b}`" for b in budgets])
        key = hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:16]
        _api(base, "experiments/set-experiment-tag",
             {"experiment_id": exp_id, "key": f"mlflow.sharedViewState.{key}", "value": json.dumps(view)})
        shots = [("runs_by_method.png", f"{base}/#/experiments/{exp_id}/runs?viewStateShareKey={key}")]
        parent_files = _artifacts(base, parent)
        table = next((p for p in parent_files
                      if p.endswith("summary_table.json" if study else "comparison_table.json")), None)
        plot = next((p for p in parent_files if p.endswith(".png")), None)
        if table:
            shots.append(("parent_table.png", f"{base}/#/experiments/{exp_id}/runs/{parent}/artifacts/{table}"))
        if plot:
            shots.append(("parent_plot.png", f"{base}/#/experiments/{exp_id}/runs/{parent}/artifacts/{plot}"))
        if children:
            child = children[0]["info"]["run_id"]
            shots.append((f"{kind}_run.png", f"{base}/#/experiments/{exp_id}/runs/{child}"))
            art = "per_cascade_table.json" if study else "error_cost.png"
            shots.append((f"{kind}_run_artifacts.png", f"{base}/#/experiments/{exp_id}/runs/{child}/artifacts/{art}"))
        for name, url in shots:
            screenshot(chromium, url, out / name, args.size, args.wait_ms)
            print(f"{out / name}  <- {url}")
        if not plot:
            print("ui_screenshots: the parent run has no .png artifact (no overlaid plot logged)", file=sys.stderr)
        if args.optuna:
            return optuna_shot(chromium, args.tracking_uri, out, args.size, args.wait_ms)
        return 0


if __name__ == "__main__":
    sys.exit(main())
