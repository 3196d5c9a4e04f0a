"""MLflow logging of a ``cascade select`` output: a parent run with the frontier plot, the frontier table,
the answer and the comparison metrics, and one nested run per sub-cascade (the existing tuning-run shape,
through :func:`tracking.log_tune_dir`). Everything logged is read from the written output folder."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pandas as pd

from cascade.evaluate import select

from .mlflow_log import METRIC_NOTES, _flat_params, _tags, log_budget_curve, log_summary, log_tune_dir, parent_run
from .store import configure, guard, write_lock


@contextlib.contextmanager
def _selection_run(experiment: str, name: str, params: dict, tags: dict, uri: str | None, parent_run_id: str | None):
    """The selection's run: a parent run of its own, or, inside an active run (the demo's) or under
    ``parent_run_id``, a nested run there."""
    import mlflow

    if parent_run_id is None and mlflow.active_run() is None:
        with parent_run(experiment, name, params=params, tags=tags, uri=uri) as run:
            yield run
        return
    if mlflow.active_run() is None:
        configure(uri, experiment)
    with guard(f"starting the selection run {name!r}"), write_lock():
        active = mlflow.active_run()
        if active is not None and parent_run_id in (None, active.info.run_id):
            ctx = mlflow.start_run(run_name=name, nested=True, tags=_tags(tags))
        else:
            ctx = mlflow.start_run(run_name=name, parent_run_id=parent_run_id, tags=_tags(tags))
        run = ctx.__enter__()
    try:
        with guard(f"logging the parameters of {name!r}"), write_lock():
            mlflow.log_params(_flat_params(params))
        yield run
    except BaseException:
        with contextlib.suppress(Exception):
            ctx.__exit__(*sys.exc_info())
        raise
    with guard(f"ending the selection run {name!r}"), write_lock():
        ctx.__exit__(None, None, None)


def log_selection(out_dir: str | os.PathLike, *, experiment: str, uri: str | None = None, records_path=None,
                  records_df: pd.DataFrame | None = None, run_name: str | None = None,
                  parent_run_id: str | None = None, children: bool = True) -> str:
    """Log a written ``cascade select --out DIR``; returns the selection run's id: a parent run, or a run
    nested under ``parent_run_id`` / the active run (e.g. the demo's), with one nested run per sub-cascade
    (``children=False``: none, when the caller logged those curves already).
    Raises :class:`tracking.TrackingUnavailable` when the store fails (the folder on disk is untouched)."""
    import mlflow

    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    frontier = pd.read_parquet(out_dir / "frontier.parquet")
    chain = summary.get("chain") or []
    # leads with what differs from its siblings (the method), says it is a selection, fits the column
    name = run_name or (f"{summary.get('method')} | select | {summary.get('n_subcascades')} sub-cascades"
                        + (f" | abstain {summary['abstain_cost']:g}" if summary.get("abstain_cost") is not None else ""))
    params = {"command": "select", "method": summary.get("method"), "chain": " > ".join(chain),
              "select_on": summary.get("select_on"), "abstain_cost": summary.get("abstain_cost"),
              "benchmark": summary.get("benchmark"), "cost_mode": summary.get("cost_mode"),
              "train_split": summary.get("train_split"), "test_split": summary.get("test_split"),
              "n_subcascades": summary.get("n_subcascades"), "records": str(records_path or summary.get("records")),
              "output": str(out_dir.resolve())}
    ans = pd.DataFrame(summary.get("answer_at_budgets") or [])
    title = (f"{summary.get('benchmark')}: which cascade per budget, {summary.get('method')}, "
             f"{summary.get('n_subcascades')} sub-cascades of {' > '.join(chain)}")
    from cascade.evaluate import answer

    tags = {k: v for k, v in {"cascade.kind": "select", "cascade.benchmark": summary.get("benchmark"),
                              "cascade.method": summary.get("method"), "cascade.chain": " > ".join(chain),
                              "cascade.logged_from": str(out_dir.resolve()),
                              "mlflow.note.content": answer_description(title, answer.markdown_answer(ans))
                              if not ans.empty else None}.items() if v is not None}
    with _selection_run(experiment, name, params, tags, uri, parent_run_id) as parent:
        with guard("logging the selection's artifacts"), write_lock():
            for f in ("report.html", "frontier.png", "frontier.parquet", "summary.json", "answer.txt",
                      "candidates.parquet"):
                if (out_dir / f).exists():
                    mlflow.log_artifact(str(out_dir / f))
        log_summary(tables={"frontier_table.json": select.frontier_log_table(frontier)},
                    metrics=select.selection_metrics(summary))
        log_answer(parent.info.run_id, frontier, summary)
        for d in sorted(p for p in (out_dir / "cascades").iterdir() if children and (p / "summary.json").exists()):
            log_tune_dir(d, records_path=records_path, records_df=records_df, parent_run_id=parent.info.run_id,
                         tags={"cascade.select_parent": parent.info.run_id})
        return parent.info.run_id


def log_answer(run_id: str, frontier: pd.DataFrame, summary: dict) -> None:
    """A selection's numbers at the benchmark's absolute budgets: the frontier's test curve read at each budget
    (``test_error_at_usd<B>``, history ``test_error_curve``: the rule of every tuning run), and the answer it
    runs there, chosen on train (``answer_test_error_at_usd<B>``, ``answer_test_cost_at_usd<B>``, histories
    ``answer_test_error_curve``, ``answer_test_cost_curve``)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    from cascade.evaluate import budgets as B

    budgets = [float(b) for b in summary.get("budgets_usd") or []]
    if not budgets:
        return
    with guard("logging the selection's numbers at the absolute budgets"), write_lock():
        log_budget_curve(run_id, frontier, budgets)
        ts = int(time.time() * 1000)
        metrics = []
        for row in summary.get("answer_at_budgets") or []:
            b, i = float(row["budget"]), int(row["budget_index"])
            for what in ("test_error", "test_cost"):
                metrics.append(Metric(B.metric_name(b, "answer_" + what), float(row[what]), ts, 0))
                metrics.append(Metric(f"answer_{what}_curve", float(row[what]), ts, i))
        if metrics:
            mlflow.MlflowClient().log_batch(run_id, metrics=metrics)


__all__ = ["log_answer", "log_selection"]


def answer_description(title: str, answer_table_md: str) -> str:
    """A run description (``mlflow.note.content``): the answer per budget, then what the metrics mean."""
    return f"### {title}\n\n{answer_table_md}\n\n{METRIC_NOTES}"


def log_methods(out_dir: str | os.PathLike, *, experiment: str, uri: str | None = None, records_path=None,
                records_df: pd.DataFrame | None = None, run_name: str | None = None,
                parent_run_id: str | None = None, children: bool = True) -> str:
    """Log a written ``cascade select --method a,b,...`` folder: a run (a parent of its own, or nested under
    ``parent_run_id`` / the active run) with the answer per budget as its description, ``report.html``,
    ``answer.txt``, the tables and the answer metrics; under it one selection run per method
    (:func:`log_selection`, with its sub-cascade runs when ``children``). Returns the run's id."""
    import mlflow

    from cascade.evaluate import answer

    out_dir = Path(out_dir)
    summary, frontier, ans = answer.read_methods(out_dir)
    chain = summary.get("chain") or []
    methods = summary.get("methods") or []
    name = run_name or f"select | {len(methods)} methods | {' > '.join(chain)}"
    params = {"command": "select", "methods": ",".join(methods), "chain": " > ".join(chain),
              "select_on": summary.get("select_on"), "benchmark": summary.get("benchmark"),
              "budgets_usd": ",".join(f"{b:g}" for b in summary.get("budgets_usd") or []),
              "records": str(records_path or ""), "output": str(out_dir.resolve())}
    title = f"{summary.get('benchmark')}: the answer per budget over {', '.join(methods)} ({' > '.join(chain)})"
    import mlflow as _m

    top = parent_run_id is None and _m.active_run() is None  # its own parent run, or nested in another
    tags = {"cascade.kind": "parent" if top else "select", "cascade.benchmark": summary.get("benchmark"),
            "cascade.answer": "true",
            "cascade.logged_from": str(out_dir.resolve()),
            "mlflow.note.content": answer_description(title, answer.markdown_answer(ans))}
    with _selection_run(experiment, name, params, {k: v for k, v in tags.items() if v is not None}, uri,
                        parent_run_id) as run:
        with guard("logging the answer's artifacts"), write_lock():
            for f in ("report.html", "answer.txt", "frontier.parquet", "answer.parquet", "summary.json"):
                if (out_dir / f).exists():
                    mlflow.log_artifact(str(out_dir / f))
        table = ans.copy()
        table["models"] = table["models"].map(lambda m: " > ".join(m))
        table["thresholds"] = table["thresholds"].map(lambda t: json.dumps([round(float(v), 6) for v in t]))
        log_summary(tables={"answer_table.json": table}, metrics={"frontier_test_auc": summary.get("frontier_test_auc"),
                                                                    "n_frontier": summary.get("n_frontier")})
        log_answer(run.info.run_id, frontier, {"budgets_usd": summary.get("budgets_usd"),
                                               "answer_at_budgets": summary.get("answer")})
        for m in methods:
            log_selection(out_dir / m, experiment=experiment, uri=uri, records_path=records_path,
                          records_df=records_df, parent_run_id=run.info.run_id, children=children,
                          run_name=None)
        return run.info.run_id


__all__ += ["answer_description", "log_methods"]
