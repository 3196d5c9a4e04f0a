"""The answer across tuning methods: ``cascade select --method a,b,...``.

Each method runs the whole selection (:func:`cascade.evaluate.select.run_selection`: every sub-cascade of the
chain tuned with that method, its train-side frontier measured on test). Then every method's candidates are
pooled (a single model is one candidate whatever the method: it is kept once, with method ``single model``)
and one train-side Pareto frontier is taken over all of them, exactly as within one method
(:func:`cascade.evaluate.select.frontier_of`): the method is one more thing chosen on the training split. At
each of the benchmark's absolute budgets (:mod:`cascade.evaluate.budgets`) the answer is that frontier's point
with the largest train-side cost within the budget: its method, cascade (models in order), thresholds, the
train-side error and cost it was chosen by (the prediction) and its measured test error and cost.

Outputs (one folder, :func:`write_methods`): ``<method>/`` (each method's ``cascade select`` output),
``frontier.parquet`` (the pooled frontier, a ``method`` column added), ``answer.parquet`` (one row per
budget), ``summary.json``, ``answer.txt`` and ``report.html`` (:mod:`cascade.evaluate.report`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cascade.evaluate import budgets as B
from cascade.evaluate import curves, select

SINGLE = "single model"
FILES = frozenset({"frontier.parquet", "answer.parquet", "summary.json", "answer.txt", "report.html"})


@dataclass
class MethodsAnswer:
    chain: list[str]
    methods: list[str]
    benchmark: str | None
    select_on: str
    selections: dict  # method -> select.Selection
    candidates: pd.DataFrame
    frontier: pd.DataFrame
    budgets: list[float]
    answer: pd.DataFrame
    summary: dict = field(default_factory=dict)


def pool(selections: dict) -> pd.DataFrame:
    """Every method's candidates in one frame (column ``method``), each single model once."""
    frames, singles_done = [], False
    for method, sel in selections.items():
        c = sel.candidates.copy()
        c["method"] = method
        if singles_done:
            c = c[c["k"] > 1]
        else:
            c.loc[c["k"] == 1, "method"] = SINGLE
            singles_done = True
        frames.append(c)
    out = pd.concat(frames, ignore_index=True)
    return out.drop(columns=[col for col in ("on_frontier",) if col in out])


def combine(selections: dict, chain: list[str], benchmark: str | None, select_on: str,
            budgets: list[float]) -> MethodsAnswer:
    cand = pool(selections)
    front = select.frontier_of(cand, select_on)
    ans = B.answer_at_budgets(front, budgets, select_on)
    methods = list(selections)
    summary = {
        "kind": "select-methods", "benchmark": benchmark, "chain": chain, "methods": methods,
        "select_on": select_on, "cost_unit": "USD per million queries", "budgets_usd": budgets,
        "n_candidates": len(cand), "n_frontier": len(front),
        "frontier_test_auc": curves.auc(front["test_cost"], front["test_error"]),
        "per_method": {m: {"frontier_test_auc": s.summary.get("frontier_test_auc"),
                           "n_frontier": s.summary.get("n_frontier"),
                           "test_error_at_budgets": B.curve_at_budgets(s.frontier, budgets),
                           "on_pooled_frontier": int((front["method"] == m).sum())}
                       for m, s in selections.items()},
        "answer": ans.to_dict("records"),
        "seconds": float(sum(s.summary.get("seconds", 0.0) for s in selections.values())),
    }
    return MethodsAnswer(chain, methods, benchmark, select_on, selections, cand, front, budgets, ans, summary)


def select_methods(records: pd.DataFrame, *, models: list[str], methods: list[str],
                   params: dict[str, dict] | None = None, benchmark: str | None = None,
                   select_on: str = select.DEFAULT_SELECT_ON,
                   jobs: int = 1, **kwargs) -> MethodsAnswer:
    """:func:`cascade.evaluate.select.run_selection` for each method (``params``: method -> its parameters;
    ``kwargs``: the data options of ``run_selection``), then the pooled answer."""
    if len(set(methods)) != len(methods) or not methods:
        raise ValueError(f"--method: give distinct methods, got {methods}")
    sels = {}
    for m in methods:
        sels[m] = select.run_selection(records, models=models, method=m, benchmark=benchmark, select_on=select_on,
                                       params=(params or {}).get(m), jobs=jobs, **kwargs)
    first = next(iter(sels.values()))
    return combine(sels, list(models), first.summary.get("benchmark"), select_on, first.summary["budgets_usd"])


def format_answer(ans: pd.DataFrame, title: str | None = None) -> str:
    """The answer per budget, one short line each (fits a terminal and MLflow's text viewer)."""
    head = ["budget", "method", "cascade", "thresholds", "pred err", "test err", "test cost"]
    body = []
    for _, r in ans.iterrows():
        body.append([f"{r['budget']:g}", str(r["method"]), ">".join(r["models"]),
                     ",".join(f"{t:.3g}" for t in r["thresholds"]) or "-", f"{r['predicted_error']:.3f}",
                     f"{r['test_error']:.3f}", f"{r['test_cost']:.1f}"])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    import textwrap

    out = (textwrap.wrap(title, 100) if title else []) + [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    out.append("budget and costs: USD per million queries")
    out.append("pred err: the train-side error the point was chosen by; test err/cost: measured on the test split")
    return "\n".join(out)


def markdown_answer(ans: pd.DataFrame) -> str:
    """The answer per budget as a markdown table (an MLflow run description)."""
    rows = ["| budget (USD/1M q) | method | cascade (in order) | thresholds | predicted error | test error | "
            "test cost (USD/1M q) |", "|---:|---|---|---|---:|---:|---:|"]
    for _, r in ans.iterrows():
        rows.append(f"| {r['budget']:g} | {r['method']} | {' > '.join(r['models'])} | "
                    f"{', '.join(f'{t:.3g}' for t in r['thresholds']) or '-'} | {r['predicted_error']:.3f} | "
                    f"{r['test_error']:.3f} | {r['test_cost']:.1f} |")
    return "\n".join(rows)


def _clean(o):
    return select._json_clean(o)


def check_out(out) -> Path:
    from cascade.evaluate import outputs

    out = outputs.check_out(out, unit=False)
    if out.is_dir() and any(out.iterdir()):
        prev = out / "summary.json"
        kind = None
        if prev.is_file():
            try:
                kind = json.loads(prev.read_text()).get("kind")
            except ValueError:
                kind = None
        if kind != "select-methods":
            raise ValueError(f"--out {out}: the folder is not empty and not a previous `cascade select --method "
                             "a,b,...` output; give a new or empty folder")
    return out


def write_methods(ma: MethodsAnswer, out, title: str | None = None) -> Path:
    """Write the folder (module doc) atomically: built beside ``out``, then renamed into place."""
    from cascade.evaluate import report

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for m, sel in ma.selections.items():
            select.write_selection(sel, tmp / m)
        ma.frontier.to_parquet(tmp / "frontier.parquet", index=False)
        ma.answer.to_parquet(tmp / "answer.parquet", index=False)
        (tmp / "summary.json").write_text(json.dumps(_clean(ma.summary), indent=2))
        (tmp / "answer.txt").write_text(format_answer(ma.answer, title) + "\n")
        report.write_report(report.methods_report_data(ma, title), tmp / "report.html")
        if out.exists():
            check_out(out)
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_methods(out) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    out = Path(out)
    return (json.loads((out / "summary.json").read_text()), pd.read_parquet(out / "frontier.parquet"),
            pd.read_parquet(out / "answer.parquet"))


def is_methods_dir(d) -> bool:
    d = Path(d)
    try:
        return json.loads((d / "summary.json").read_text()).get("kind") == "select-methods"
    except (OSError, ValueError):
        return False


__all__ = ["SINGLE", "MethodsAnswer", "check_out", "combine", "format_answer", "is_methods_dir", "markdown_answer",
           "pool", "read_methods", "select_methods", "write_methods"]
