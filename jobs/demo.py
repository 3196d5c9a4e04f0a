"""``python -m jobs.demo`` (``make demo``): the whole product on the embedded defaults, in one command.

1. Score an MMLU slice (``examples/score-mmlu-tiny.yaml``: 50 test + 40 dev questions) with the two real
   tiny models (SmolLM2-135M-Instruct and Gemma-3-270M, transformers on CPU) as Ray actor stages on a
   local Ray instance. A rerun skips finished shards.
2. Per benchmark (the tiny-model MMLU records; the shipped example results ``examples/medmcqa-llama.parquet``,
   9 large models' real MedMCQA results, its llama chain): ``cascade select --method
   markov-copula,grid,bayes-opt,random`` (every sub-cascade of the chain tuned with each method, single
   models included; one train-side frontier over all methods; the answer at each of the benchmark's absolute
   budgets: method, cascade, thresholds, predicted and test error and cost), plus margin on the tiny pair.
   Written to ``<scoring out>/../select-<benchmark>`` (``report.html`` in it: the interactive answer).
3. Log it to the local MLflow store (``sqlite:///<repo>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` /
   ``--tracking-uri`` says otherwise), one experiment per benchmark (``<experiment>-mmlu``,
   ``<experiment>-medmcqa``): a parent run ``demo | <benchmark> | answer over 4 methods`` whose description
   is the answer table and which holds ``report.html``, the comparison tables and plots; under it one
   selection run per method, under each its sub-cascade tuning runs (and the scoring run on MMLU's).
4. Print the comparison table (AUC % change against bayes-opt per cascade length, one-sided paired
   Wilcoxon), the answer per budget for each benchmark, and how to open the MLflow UI.

The learned ``scorer``/``router`` baselines need per-query text features; see docs/baselines.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.data import records
from cascade.evaluate import curves as evaluate
from cascade.evaluate import tuning as tune
from cascade.evaluate.compare import summarize_by_length

ROOT = Path(__file__).resolve().parents[1]
SCORE_CONFIG = ROOT / "examples" / "score-mmlu-tiny.yaml"
EXAMPLE_RESULTS = ROOT / "examples" / "medmcqa-llama.parquet"
LLAMA_CHAIN = ["llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b"]
TINY_CHAIN = ["smollm2-135m", "gemma3-270m"]
METHODS = ["markov-copula", "grid", "bayes-opt", "random"]
REFERENCE = "bayes-opt"


def shared_comparison(rows: list[dict], tracking) -> tuple[pd.DataFrame, dict]:
    """Each cascade's shared cost range, computed once for all its methods: ``auc_shared`` and the errors at
    shared budgets logged on every tuning run (next to its own-range metrics); returns the comparison table
    and one overlaid error-cost figure per cascade for the parent."""
    from cascade.evaluate import comparison as C
    from cascade.evaluate.outputs import cascade_folder

    runs = [{"cascade": r["cascade"].split(" -> "), "method": r["method"], "benchmark": r["records"],
             "curve": pd.DataFrame({"test_cost": r["test_cost"], "test_error": r["test_error"]}),
             "summary": {"test_auc": r["test_auc_own"], **({"degenerate": r["degenerate"]} if "degenerate" in r
                                                           else {})},
             "run_id": r.get("run_id")} for r in rows]
    table, shared = C.comparison_table(runs)
    for r in runs:
        s = shared[(r["benchmark"], tuple(r["cascade"]), "all", 0)]
        if r["run_id"]:
            note = s.notes.get(r["method"])
            tracking.log_summary(metrics=s.metrics[r["method"]], run_id=r["run_id"],
                                 tags={"cascade.shared_note": note} if note else None)
    figures = {}
    for key, s in shared.items():
        curves = {r["method"]: r["curve"] for r in runs if (r["benchmark"], tuple(r["cascade"])) == key[:2]}
        name = f"comparison/{key[0].split()[0]}_{cascade_folder(key[1])}.png"
        figures[name] = C.overlay_figure(curves, f"{key[0]}: {' -> '.join(key[1])}: test error vs cost", s)
    return table, figures


def comparison(rows: list[dict], reference: str = REFERENCE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per cascade: each method's AUC against the reference over their shared cost range; per length: k=2, k>=3
    (the mean of the per-k means, as `cascade compare` and `cascade study`) and all (the plain mean)."""
    per = []
    by = {(r["records"], r["cascade"], r["method"]): r for r in rows}
    for (label, casc, method), r in by.items():
        if method == reference or (label, casc, reference) not in by:
            continue
        ref = by[(label, casc, reference)]
        cmp = evaluate.compare_curves(r["test_cost"], r["test_error"], ref["test_cost"], ref["test_error"])
        per.append({"records": label, "cascade": casc, "k": r["k"], "method": method, "auc": cmp.auc_a,
                    "auc_ref": cmp.auc_b, "pct_change": cmp.pct_change})
    per = pd.DataFrame(per)
    summ = []
    # the one per-length rule of cascade.evaluate.compare: k>=3 is the mean of the per-length means, all the plain mean
    shown = {"2": "k=2", ">=3": "k>=3 (mean of per-k means)", "all": "all (plain mean)"}
    for (label, method), g in per.groupby(["records", "method"], sort=False):
        for _, row in summarize_by_length(g).iterrows():
            if row["k"] in shown:
                summ.append({"records": label, "method": method, "cascades": shown[row["k"]],
                             "n_cascades": int(row["n_cascades"]), "mean_%_vs_" + reference: row["mean_pct_change"],
                             "wilcoxon_p_one_sided": row["wilcoxon_p"]})
    return per, pd.DataFrame(summ)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(SCORE_CONFIG), help="scoring config (default: the MMLU tiny-model slice)")
    ap.add_argument("--limit", type=int, help="override the scoring config's limit (queries per split)")
    ap.add_argument("--out", help="scoring output folder (default: the config's)")
    ap.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db")
    ap.add_argument("--experiment", default="cascade-eval-demo")
    ap.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    ap.add_argument("--max-chain", type=int, default=len(LLAMA_CHAIN),
                    help="use the first N models of the example llama chain (default: all 5, 26 cascades)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    progress = not args.no_progress
    t_start = time.perf_counter()

    from cascade.scoring.config import load_config

    cfg = load_config(args.config)
    upd = {}
    if args.limit:  # the per-benchmark limit wins over the top-level one, so set both
        upd["limit"] = args.limit
        upd["benchmarks"] = [b.model_copy(update={"limit": args.limit}) for b in cfg.benchmarks]
    if args.out:
        upd["out"] = str(Path(args.out).resolve())
    if upd:
        cfg = load_config(cfg.model_copy(update=upd))

    tracking = None
    if not args.no_tracking:
        import tracking as tracking_mod

        tracking = tracking_mod
        uri = tracking.tracking_uri(args.tracking_uri)
        tracking.check_reachable(uri)  # fail before any work if the store cannot be written

    # 1. score (records are written shard by shard before anything is logged)
    print(f"[1/4] scoring {', '.join(st.name for st in cfg.stages)} on "
          f"{', '.join(b.name for b in cfg.benchmarks)} (local Ray, CPU) -> {cfg.out}", flush=True)
    from jobs.score import run as score_run
    from jobs.score import save_stats

    stats = score_run(cfg, progress=progress)
    print(f"      {stats['scored_records']} records scored, {stats['skipped_shards']} finished shards skipped, "
          f"{stats['seconds']:.0f}s", flush=True)
    stats = save_stats(stats, cfg)  # on a rerun that scored nothing: the stats of the run that did
    tiny = records.load(stats["out_dir"])
    bench = sorted(tiny["benchmark"].unique())[0]
    acc = tiny[tiny.split == "test"].groupby("model")["correct"].mean()
    print("      test accuracy: " + ", ".join(f"{m} {a:.1%}" for m, a in acc.items()), flush=True)

    # 2 + 3. tune, select and log: one experiment per benchmark (a group mean never mixes two benchmarks)
    from cascade.evaluate import answer

    tiny_chain = [st.name for st in cfg.stages]
    chain = LLAMA_CHAIN[:args.max_chain]
    exp_tiny, exp_med = f"{args.experiment}-{bench}", f"{args.experiment}-medmcqa"
    for m in ("scorer", "router"):
        try:
            from cascade.tuners.learned import load_encoder

            load_encoder()
            print(f"      {m}: text encoder available, but the demo does not run the learned baselines "
                  "(they need per-query text features: `cascade study`, docs/baselines.md)", flush=True)
        except ImportError:
            print(f"      {m}: skipped (optional text deps missing: pip install 'cascade-eval[text]')", flush=True)
    print(f"[2/4] {bench} (tiny models): tuning {len(METHODS) + 1} methods on {' -> '.join(tiny_chain)}, selecting "
          f"per budget over {len(METHODS)} methods", flush=True)
    tiny_label = f"{bench} (tiny models)"
    scoring = ("score", stats, args.config)
    med_rows, med_answer, med_parent = [], None, None
    try:
        tiny_rows, tiny_answer, tiny_parent = _demo_benchmark(
            tiny, tiny_label, bench, tiny_chain, "conf_mean_logprob", Path(stats["out_dir"]),
            Path(stats["out_dir"]).resolve().parent / f"select-{bench}", exp_tiny, args, tracking, progress,
            extra_tune={"margin": {"signal": "conf_top2_margin"}}, scoring=scoring)
        example = records.load(EXAMPLE_RESULTS)
        if args.max_chain >= 2:
            print(f"[3/4] medmcqa (example results): selecting among the {2 ** args.max_chain - 1} sub-cascades of "
                  f"{args.max_chain} models with each of {len(METHODS)} methods (cascade select --method "
                  f"{','.join(METHODS)})", flush=True)
            med_rows, med_answer, med_parent = _demo_benchmark(
                example, "medmcqa (example results)", "medmcqa", chain, "confidence", EXAMPLE_RESULTS,
                Path(stats["out_dir"]).resolve().parent / "select-medmcqa", exp_med, args, tracking, progress)
    except BaseException as e:
        if tracking is not None and isinstance(e, tracking.TrackingUnavailable):
            e.kept = stats["out_dir"]  # the scored records; the tuning reruns in a minute or two
            e.log_command = f"cascade log {stats['out_dir']}"
        raise
    rows = tiny_rows + med_rows
    per, summ = comparison(rows)

    # 4. report
    pd.set_option("display.width", 160)
    print("\n[4/4] AUC (mean test error over the cost range both curves cover) % change against "
          f"{REFERENCE}; negative = better than {REFERENCE}; k>=3 = mean of the per-length means, all = plain "
          "mean over cascades; wilcoxon_p_one_sided: H1 = the method's AUC is lower")
    print(format_summary(summ, rows).to_string(index=False))
    tiny_per = per[per.records.str.contains("tiny")]
    if not tiny_per.empty:
        print("\ntiny-model cascade (both models are near chance on MMLU, so this proves the plumbing, not the science):")
        print(tiny_per[["cascade", "method", "auc", "auc_ref", "pct_change"]].to_string(
            index=False, float_format=lambda v: f"{v:.4f}"))
    for ma, where in ((tiny_answer, f"select-{bench}"), (med_answer, "select-medmcqa")):
        if ma is not None:
            print(f"\nthe answer for {ma.benchmark}: which method, which models in which order, per budget "
                  f"({Path(stats['out_dir']).resolve().parent / where}):")
            print(answer.format_answer(ma.answer))
    print(f"\ndone in {time.perf_counter() - t_start:.0f}s")
    if tracking is not None:
        uri = tracking.tracking_uri(args.tracking_uri)
        print(f"MLflow: experiments {exp_tiny!r} (parent run {tiny_parent}) and {exp_med!r} (parent run "
              f"{med_parent}) in {uri}; each parent's description holds the answer table, its report.html the "
              "interactive answer")
        if uri.startswith("sqlite:///"):
            print(f"open the UI:  {ROOT / '.venv' / 'bin' / 'mlflow'} ui --app-name cascade --backend-store-uri {uri} "
                  "--port 5000   then browse http://127.0.0.1:5000 (experiments open on their runs table)")
        else:
            print(f"open the UI:  {uri}")
    return 0


def _demo_benchmark(df: pd.DataFrame, label: str, benchmark: str, chain: list[str], signal: str, records_path: Path,
                    select_out: Path, experiment: str, args, tracking, progress: bool, extra_tune: dict | None = None,
                    scoring: tuple | None = None):
    """One benchmark of the demo: a selection per method over every sub-cascade of ``chain`` (the answer per
    budget), extra methods tuned on the full chain only (``extra_tune``), all logged under one parent run of
    ``experiment`` (the answer's run: its description and report.html). Returns (comparison rows, answer,
    parent run id)."""
    from cascade.evaluate import answer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ma = answer.select_methods(df, models=chain, methods=METHODS, benchmark=benchmark, signal=signal, jobs=2)
    title = (f"{benchmark}: the answer per budget over {', '.join(METHODS)} "
             f"({len(ma.selections[METHODS[0]].subcascades)} sub-cascades of {' > '.join(chain)} each)")
    answer.write_methods(ma, select_out, title)
    rows = []
    for method, sel in ma.selections.items():  # the comparison: every cascade (k >= 2) of the chain
        for s in sel.subcascades:
            if len(s.models) > 1:
                rows.append(_row(label, s.models, method, s.curve, s.summary))
    extra_res = []
    for method, opts in (extra_tune or {}).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = tune.run_tuning(df, models=chain, method=method, benchmark=benchmark,
                                  signal=opts.get("signal", signal))
        extra_res.append((method, res))
        rows.append(_row(label, chain, method, res.curve, res.summary))
    if tracking is None:
        return rows, ma, None
    from tracking.select import log_methods

    parent = log_methods(select_out, experiment=experiment, uri=args.tracking_uri, records_path=records_path,
                         records_df=df, run_name=f"demo | {benchmark} | answer over {len(METHODS)} methods",
                         children=True)
    ids = tune_run_ids(tracking, experiment, parent, args.tracking_uri)
    for r in rows:
        r["run_id"] = ids.get((r["method"], r["cascade"]))
    with tracking.parent_run(experiment, "demo", uri=args.tracking_uri, run_id=parent) as run:
        if scoring is not None:
            _, stats, config = scoring
            tracking.log_scoring(stats, config=stats["config"], config_path=config, parent_run_id=run.info.run_id)
        for (method, res), r in zip(extra_res, rows[-len(extra_res):] if extra_res else []):
            r["run_id"] = tracking.log_tune(res.curve, res.summary, cascade=chain, method=method,
                                            params=res.summary.get("params"), records_path=records_path,
                                            records_df=df, parent_run_id=run.info.run_id,
                                            tags={"cascade.demo_records": label})
        per, summ = comparison(rows)
        table, figures = shared_comparison(rows, tracking)
        metrics = {}
        for _, r in summ.iterrows():
            if np.isfinite(r["mean_%_vs_" + REFERENCE]):
                k = r["cascades"].split(" ")[0].replace(">=", "ge").replace("=", "")
                metrics[f"auc_change_pct_vs_{REFERENCE}.{r['method']}.{k}"] = r["mean_%_vs_" + REFERENCE]
        tracking.log_summary(tables={"comparison_per_cascade.json": per, "comparison_summary.json": summ,
                                     "comparison_table.json": table},
                             metrics=metrics, figures=figures, run_id=run.info.run_id,
                             tags={"cascade.comparison": "true", "cascade.demo": "true",
                                   "cascade.n_degenerate": str(int(table["degenerate"].sum()))})
    return rows, ma, parent


def tune_run_ids(tracking, experiment: str, answer_run: str, uri) -> dict:
    """(method, cascade) -> the id of the sub-cascade tuning run logged under the answer run's selections."""
    from tracking.mlflow_log import _search

    sels = _search(experiment, f"tags.`mlflow.parentRunId` = '{answer_run}'", uri, max_results=100)
    out = {}
    for s in sels:
        for r in _search(experiment, f"tags.`cascade.select_parent` = '{s.info.run_id}'", uri, max_results=1000):
            out[(r.data.tags.get("cascade.method"), r.data.tags.get("cascade.cascade"))] = r.info.run_id
    return out


def _row(label: str, models, method: str, curve: pd.DataFrame, summary: dict) -> dict:
    return {"records": label, "cascade": " -> ".join(models), "k": len(models), "method": method,
            "test_cost": curve["test_cost"].to_numpy(), "test_error": curve["test_error"].to_numpy(),
            "test_auc_own": summary.get("test_auc"), "seconds": summary.get("seconds"), "run_id": None,
            "degenerate": list(summary.get("degenerate") or [])}


def format_summary(summ: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """The headline table as printed: a % change that cannot be computed says why instead of '+nan'."""
    shown = summ.copy()
    col = "mean_%_vs_" + REFERENCE
    why = {}
    for r in rows:
        if r["degenerate"]:
            reason = r["degenerate"][0]
            why.setdefault((r["records"], r["method"]),
                           f"n/a: degenerate fit ({reason if len(reason) <= 70 else reason[:67] + '...'})")
    shown[col] = [f"{v:+.3f}" if np.isfinite(v) else why.get((rec, m), "n/a: no shared cost range")
                  for v, rec, m in zip(shown[col], shown["records"], shown["method"])]
    shown["wilcoxon_p_one_sided"] = shown["wilcoxon_p_one_sided"].map(
        lambda v: "n/a" if not np.isfinite(v) else f"{v:.2g}")
    return shown


def cli(argv: list[str] | None = None) -> int:
    """``main`` with the exit statuses of the docs: 2 bad input, 3 tracking failed (one line each)."""
    try:
        return main(argv)
    except Exception as e:  # a clear one-line error for what a user can fix
        from cascade.data.records import RecordsError
        from cascade.scoring.config import ConfigError

        if type(e).__name__ == "TrackingUnavailable":
            print(e.line("demo", kept=getattr(e, "kept", None), log_command=getattr(e, "log_command", None))
                  + "; rerun once the store works (finished shards are skipped) or with --no-tracking",
                  file=sys.stderr)
            return 3
        if isinstance(e, (ConfigError, RecordsError, ValueError, FileNotFoundError)):
            print(f"demo: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(cli())
