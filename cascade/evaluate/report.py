"""A self-contained interactive HTML report (plotly, its JavaScript inlined: no network when viewed; MLflow's
artifact viewer shows it): the answer at a budget the reader picks, the frontiers, every method x cascade test
curve overlaid.

The page holds its data as JSON in ``<script id="report-data" type="application/json">`` (:func:`read_data`
reads it back, the tests compare it with ``frontier.parquet``):

- ``budgets``: the benchmark's absolute budgets (USD per million queries, :mod:`cascade.evaluate.budgets`);
- ``answer``: one row per budget (method, cascade, models, thresholds, predicted and test error and cost);
- ``frontiers``: name -> test cost and error of a frontier (each method's, and the pooled one);
- ``curves``: every method x cascade test curve.

A dropdown picks the budget; the answer box and a vertical line on the frontier plot follow it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

DATA_ID = "report-data"
COST_UNIT = "USD per million queries"


def _xy(df: pd.DataFrame) -> dict:
    d = df[np.isfinite(df["test_cost"].to_numpy(float)) & np.isfinite(df["test_error"].to_numpy(float))]
    d = d.sort_values("test_cost")
    return {"test_cost": [float(v) for v in d["test_cost"]], "test_error": [float(v) for v in d["test_error"]]}


def _answer_rows(ans: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in ans.iterrows():
        rows.append({"budget": float(r["budget"]), "method": None if r.get("method") is None else str(r["method"]),
                     "cascade": str(r["cascade"]), "models": [str(m) for m in r["models"]],
                     "thresholds": [float(t) for t in r["thresholds"]], "frontier_row": int(r["frontier_row"]),
                     "predicted_error": float(r["predicted_error"]), "predicted_cost": float(r["predicted_cost"]),
                     "test_error": float(r["test_error"]), "test_cost": float(r["test_cost"])})
    return rows


def _subcascade_curves(method: str, sel) -> list[dict]:
    return [{"method": method, "cascade": " -> ".join(s.models), **_xy(s.curve)}
            for s in sel.subcascades if len(s.models) > 1]


def methods_report_data(ma, title: str | None = None) -> dict:
    """The data of a several-method selection (:class:`cascade.evaluate.answer.MethodsAnswer`)."""
    curves = [c for m, sel in ma.selections.items() for c in _subcascade_curves(m, sel)]
    frontiers = {f"{m} frontier": _xy(sel.frontier) for m, sel in ma.selections.items()}
    frontiers["frontier over all methods (the answer)"] = _xy(ma.frontier)
    return {"title": title or f"{ma.benchmark}: which method, which cascade, at which budget "
                              f"({' > '.join(ma.chain)})",
            "benchmark": ma.benchmark, "chain": ma.chain, "methods": ma.methods, "select_on": ma.select_on,
            "cost_unit": COST_UNIT, "budgets": [float(b) for b in ma.budgets], "answer": _answer_rows(ma.answer),
            "frontiers": frontiers, "answer_frontier": "frontier over all methods (the answer)", "curves": curves}


def selection_report_data(sel, title: str | None = None) -> dict:
    """The data of a one-method selection (:class:`cascade.evaluate.select.Selection`)."""
    from cascade.evaluate import budgets as B

    method = sel.summary.get("method", sel.method)
    budgets = [float(b) for b in sel.summary.get("budgets_usd") or []]
    ans = B.answer_at_budgets(sel.frontier, budgets, sel.select_on)
    name = f"{method} frontier (the answer)"
    return {"title": title or f"{sel.summary.get('benchmark')}: which cascade at which budget "
                              f"({' > '.join(sel.chain)}, {method})",
            "benchmark": sel.summary.get("benchmark"), "chain": sel.chain, "methods": [method],
            "select_on": sel.select_on, "cost_unit": COST_UNIT, "budgets": budgets, "answer": _answer_rows(ans),
            "frontiers": {name: _xy(sel.frontier)}, "answer_frontier": name,
            "curves": _subcascade_curves(method, sel)}


def curves_report_data(title: str, curves: list[dict], budgets: list[float], benchmark: str | None = None) -> dict:
    """The data of a comparison without a selection (a `cascade tune --method a,b`, a sweep, a study): its
    curves (dicts with method, cascade, test_cost, test_error); the "answer" at a budget is the lowest test
    error any curve reaches there, read on test (not chosen on train: a comparison, not a selection)."""
    from cascade.evaluate import budgets as B

    rows = []
    for b in budgets:
        best = None
        for c in curves:
            e = B.error_at(pd.DataFrame({"test_cost": c["test_cost"], "test_error": c["test_error"]}), b)
            if np.isfinite(e) and (best is None or e < best[0]):
                best = (e, c)
        if best is not None:
            e, c = best
            cost = min(x for x, y in zip(c["test_cost"], c["test_error"]) if y == e and x <= b * (1 + 1e-9))
            rows.append({"budget": float(b), "method": c["method"], "cascade": c["cascade"],
                         "models": c["cascade"].split(" -> "), "thresholds": [], "frontier_row": -1,
                         "predicted_error": None, "predicted_cost": None, "test_error": float(e),
                         "test_cost": float(cost)})
    return {"title": title, "benchmark": benchmark, "chain": [], "methods": sorted({c["method"] for c in curves}),
            "select_on": "test (a comparison: the lowest test error among the curves)", "cost_unit": COST_UNIT,
            "budgets": [float(b) for b in budgets], "answer": rows, "frontiers": {}, "answer_frontier": None,
            "curves": [{k: c[k] for k in ("method", "cascade", "test_cost", "test_error")} for c in curves]}


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------

def _figures(data: dict):
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    method_colours = dict(zip(data["methods"] + ["single model"], qualitative.Set1 + qualitative.Dark2))
    dashes = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
    front = go.Figure()
    for i, (name, xy) in enumerate(data["frontiers"].items()):
        main = name == data.get("answer_frontier")
        method = name.split(" frontier")[0]
        front.add_trace(go.Scatter(x=xy["test_cost"], y=xy["test_error"], mode="lines+markers", name=name,
                                   line={"width": 3 if main else 1.5, "color": "black" if main
                                         else method_colours.get(method, None), "dash": "solid" if main else
                                         dashes[i % len(dashes)]}, marker={"size": 5 if main else 3}))
    if not data["frontiers"]:
        for c in data["curves"]:
            front.add_trace(go.Scatter(x=c["test_cost"], y=c["test_error"], mode="lines", name=f"{c['method']} | "
                                       f"{c['cascade']}", line={"width": 1, "color": method_colours.get(c["method"])}))
    ans = data["answer"]
    front.add_trace(go.Scatter(x=[a["test_cost"] for a in ans], y=[a["test_error"] for a in ans], mode="markers",
                               name="the answer at each budget (test)", marker={"symbol": "star", "size": 11,
                                                                                "color": "#d62728"},
                               text=[f"{a['budget']:g}: {a['method']} | {' > '.join(a['models'])}" for a in ans],
                               hoverinfo="text+x+y"))
    b0 = data["budgets"][0] if data["budgets"] else None
    front.update_layout(
        title={"text": "Test error against test cost: frontiers chosen on train, measured on test", "x": 0.01,
               "font": {"size": 14}},
        xaxis={"title": f"test cost ({COST_UNIT}, log scale)", "type": "log"}, yaxis={"title": "test error"},
        legend={"orientation": "h", "y": -0.25, "x": 0}, margin={"t": 50, "r": 20, "l": 60, "b": 40},
        height=560, shapes=[{"type": "line", "x0": b0, "x1": b0, "yref": "paper", "y0": 0, "y1": 1,
                             "line": {"color": "#d62728", "dash": "dot"}}] if b0 else [])
    curves = go.Figure()
    cascades = list(dict.fromkeys(c["cascade"] for c in data["curves"]))
    palette = qualitative.Dark24 + qualitative.Alphabet
    cas_colour = {c: palette[i % len(palette)] for i, c in enumerate(cascades)}
    seen = set()
    for c in data["curves"]:
        mi = data["methods"].index(c["method"]) if c["method"] in data["methods"] else 0
        curves.add_trace(go.Scatter(
            x=c["test_cost"], y=c["test_error"], mode="lines", name=c["cascade"], legendgroup=c["method"],
            legendgrouptitle={"text": c["method"]} if c["method"] not in seen else None,
            line={"color": cas_colour[c["cascade"]], "dash": dashes[mi % len(dashes)], "width": 1.3},
            hovertemplate=f"{c['method']} | {c['cascade']}<br>cost %{{x:.1f}}, error %{{y:.3f}}<extra></extra>"))
        seen.add(c["method"])
    curves.update_layout(
        title={"text": "Every method x cascade test curve (colour: cascade, dash: method; click the legend to "
                       "hide or show)", "x": 0.01, "font": {"size": 14}},
        xaxis={"title": f"test cost ({COST_UNIT}, log scale)", "type": "log"}, yaxis={"title": "test error"},
        legend={"groupclick": "toggleitem", "font": {"size": 10}}, margin={"t": 50, "r": 20, "l": 60, "b": 40},
        height=620)
    return front, curves


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 6px 0; }} h2 {{ font-size: 16px; margin: 18px 0 6px 0; }}
#answer {{ border: 2px solid #d62728; border-radius: 6px; padding: 10px 14px; margin: 8px 0; max-width: 980px; }}
#answer .big {{ font-size: 17px; font-weight: 600; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 3px 7px; }}
th {{ background: #f3f3f3; }} tr.current td {{ background: #fde8e8; }} td.num {{ text-align: right; }}
.note {{ color: #555; font-size: 12px; max-width: 980px; }}
</style></head><body>
<h1>{title}</h1>
<div class="note">{note}</div>
<h2>The answer at a budget</h2>
<label for="budget">budget ({unit}): </label><select id="budget">{options}</select>
<div id="answer"></div>
{front}
<h2>Every budget</h2>
<table id="answer-table"><thead><tr><th>budget</th><th>method</th><th>cascade (in order)</th><th>thresholds</th>
<th>predicted error</th><th>test error</th><th>test cost</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Curves</h2>
{curves}
<script id="{data_id}" type="application/json">{data}</script>
<script>
(function() {{
  var data = JSON.parse(document.getElementById("{data_id}").textContent);
  var sel = document.getElementById("budget"), box = document.getElementById("answer");
  function fmt(v, d) {{ return (v === null || v === undefined) ? "n/a" : Number(v).toFixed(d); }}
  function show() {{
    var b = Number(sel.value), a = null;
    data.answer.forEach(function(r) {{ if (r.budget === b) a = r; }});
    document.querySelectorAll("#answer-table tbody tr").forEach(function(tr) {{
      tr.className = Number(tr.dataset.budget) === b ? "current" : ""; }});
    if (!a) {{ box.innerHTML = "<span class='big'>No cascade runs within " + b + " {unit}.</span>"; return; }}
    box.innerHTML = "<div class='big' id='answer-line'>At " + b + " {unit}: " + (a.method || "") + " | " +
      a.models.join(" &gt; ") + "</div><div>thresholds: [" + a.thresholds.map(function(t) {{ return fmt(t, 4); }})
      .join(", ") + "]; predicted (train) error " + fmt(a.predicted_error, 3) + " at cost " +
      fmt(a.predicted_cost, 1) + "; measured test error <b id='answer-test-error'>" + fmt(a.test_error, 4) +
      "</b> at test cost <b id='answer-test-cost'>" + fmt(a.test_cost, 2) + "</b> {unit}</div>";
    var g = document.getElementById("front-plot");
    if (g && window.Plotly) {{ Plotly.relayout(g, {{"shapes[0].x0": b, "shapes[0].x1": b}}); }}
  }}
  sel.addEventListener("change", show); show();
}})();
</script>
</body></html>
"""


def render(data: dict) -> str:
    """The page (plotly.js inlined once)."""
    front, curves = _figures(data)
    front_html = front.to_html(full_html=False, include_plotlyjs=True, div_id="front-plot",
                               config={"displaylogo": False})
    curves_html = curves.to_html(full_html=False, include_plotlyjs=False, div_id="curves-plot",
                                 config={"displaylogo": False})
    rows = []
    for a in data["answer"]:
        pe = "n/a" if a["predicted_error"] is None else f"{a['predicted_error']:.3f}"
        rows.append(f"<tr data-budget='{a['budget']:g}'><td class='num'>{a['budget']:g}</td>"
                    f"<td>{html.escape(str(a['method']))}</td><td>{html.escape(' > '.join(a['models']))}</td>"
                    f"<td>{html.escape(', '.join(f'{t:.3g}' for t in a['thresholds']) or '-')}</td>"
                    f"<td class='num'>{pe}</td><td class='num'>{a['test_error']:.3f}</td>"
                    f"<td class='num'>{a['test_cost']:.1f}</td></tr>")
    options = "".join(f"<option value='{b:g}'>{b:g}</option>" for b in data["budgets"])
    note = (f"Budgets and costs in {COST_UNIT} (one fixed set for the benchmark: every run's "
            "<code>test_error_at_usd&lt;B&gt;</code> metric uses the same). "
            f"The answer at a budget is chosen on the training split ({html.escape(str(data['select_on']))}): the "
            "point with the largest train-side cost within the budget; <i>predicted error</i> is its train-side "
            "error, <i>test error/cost</i> what it measured on the test split (its test cost can differ from the "
            "train-side cost, and exceed the budget: train and test queries differ). Lower error is better.")
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    return _PAGE.format(title=html.escape(data["title"]), note=note, unit=COST_UNIT, options=options,
                        front=front_html, rows="".join(rows), curves=curves_html, data_id=DATA_ID, data=payload)


def write_report(data: dict, path) -> Path:
    path = Path(path)
    path.write_text(render(data), encoding="utf-8")
    return path


def read_data(path_or_text) -> dict:
    """The JSON data embedded in a report (a path or the page's text)."""
    text = path_or_text
    if not str(path_or_text).lstrip().startswith("<"):
        text = Path(path_or_text).read_text(encoding="utf-8")
    start = text.index(f'<script id="{DATA_ID}" type="application/json">')
    start = text.index(">", start) + 1
    end = text.index("</script>", start)
    return json.loads(text[start:end].replace("<\\/", "</"))


__all__ = ["DATA_ID", "curves_report_data", "methods_report_data", "read_data", "render", "selection_report_data",
           "write_report"]


def markdown_table(data: dict) -> str:
    """The answer rows of a report's data as a markdown table (a run description)."""
    chosen = bool(data.get("frontiers"))
    head = ("| budget (USD/1M q) | method | cascade (in order) | thresholds | predicted error | test error | "
            "test cost (USD/1M q) |" if chosen else
            "| budget (USD/1M q) | method | cascade (in order) | lowest test error | at test cost (USD/1M q) |")
    rows = [head, "|---:|---|---|---|---:|---:|---:|" if chosen else "|---:|---|---|---:|---:|"]
    for a in data["answer"]:
        casc = " > ".join(a["models"])
        if chosen:
            rows.append(f"| {a['budget']:g} | {a['method']} | {casc} | "
                        f"{', '.join(f'{t:.3g}' for t in a['thresholds']) or '-'} | {a['predicted_error']:.3f} | "
                        f"{a['test_error']:.3f} | {a['test_cost']:.1f} |")
        else:
            rows.append(f"| {a['budget']:g} | {a['method']} | {casc} | {a['test_error']:.3f} | {a['test_cost']:.1f} |")
    return "\n".join(rows)


__all__ += ["markdown_table"]
