"""``python -m jobs.demo`` (``make demo``): the whole product on the embedded defaults, in one command.

1. Score an MMLU slice (``examples/score-mmlu-tiny.yaml``: 50 test + 40 dev questions) with the two real
   tiny models (SmolLM2-135M-Instruct and Gemma-3-270M, transformers on CPU) as Ray actor stages on a
   local Ray instance. A rerun skips finished shards.
2. Tune every method on those records (markov-copula, grid, bayes-opt, random on the mean answer-token
   log-prob; margin on the first token's top-2 margin) and on the shipped example results
   (``examples/medmcqa-llama.parquet``: 9 large models' real results, every cascade of the llama chain).
3. Log everything to the local MLflow store (``sqlite:///<repo>/mlflow.db`` unless
   ``MLFLOW_TRACKING_URI`` / ``--tracking-uri`` says otherwise): one parent run, a nested scoring run
   and a nested run per (records, cascade, method) with metrics, curve, plot and data lineage.
4. Print the comparison table (AUC % change against bayes-opt per cascade length, paired Wilcoxon) and
   how to open the MLflow UI.
5. End with the answer for the example results (``cascade select``, docs/select.md): every sub-cascade of
   the llama chain (single models included), the train-side frontier measured on test, as one table of
   budget ranges -> cascade -> test error and cost, next to the baselines. Written to
   ``<scoring out>/../select-medmcqa`` and logged as a nested run of the demo's parent (its sub-cascade
   curves are not logged again: step 2 logged markov-copula on every one of these cascades).

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
from cascade.evaluate.compare import cascades_of, summarize_by_length

ROOT = Path(__file__).resolve().parents[1]
SCORE_CONFIG = ROOT / "examples" / "score-mmlu-tiny.yaml"
EXAMPLE_RESULTS = ROOT / "examples" / "medmcqa-llama.parquet"
LLAMA_CHAIN = ["llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b"]
TINY_CHAIN = ["smollm2-135m", "gemma3-270m"]
METHODS = ["markov-copula", "grid", "bayes-opt", "random"]
REFERENCE = "bayes-opt"


def _tune_all(df: pd.DataFrame, label: str, chain: list[str], methods: list[str], signal: str, benchmark: str,
              records_path: Path, parent_id: str | None, tracking, progress: bool, extra: dict | None = None) -> list[dict]:
    from tqdm import tqdm

    jobs = [(casc, m) for casc in cascades_of(chain) for m in methods]
    extra = extra or {}
    rows = []
    bar = tqdm(jobs, desc=f"tune {label}", unit="fit", disable=not progress, file=sys.stdout)
    for casc, method in bar:
        sig = extra.get(method, {}).get("signal", signal)
        params = {k: v for k, v in extra.get(method, {}).items() if k != "signal"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = tune.run_tuning(df, models=casc, method=method, benchmark=benchmark, signal=sig, params=params)
        run_id = None
        if tracking is not None:
            run_id = tracking.log_tune(res.curve, res.summary, cascade=casc, method=method,
                                       params=res.summary.get("params"), records_path=records_path, records_df=df,
                                       parent_run_id=parent_id, tags={"cascade.demo_records": label})
        rows.append({"records": label, "cascade": " -> ".join(casc), "k": len(casc), "method": method,
                     "test_cost": res.curve["test_cost"].to_numpy(), "test_error": res.curve["test_error"].to_numpy(),
                     "test_auc_own": res.summary["test_auc"], "seconds": res.summary["seconds"], "run_id": run_id,
                     "degenerate": list(res.summary.get("degenerate") or [])})
    return rows


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
    shown = {"2": "k=2", ">=3": "k>=3", "all": "all"}  # the one per-length rule of cascade.evaluate.compare
    for (label, method), g in per.groupby(["records", "method"], sort=False):
        for _, row in summarize_by_length(g).iterrows():
            if row["k"] in shown:
                summ.append({"records": label, "method": method, "cascades": shown[row["k"]],
                             "n": int(row["n_cascades"]), "mean_%_vs_" + reference: row["mean_pct_change"],
                             "wilcoxon_p": row["wilcoxon_p"]})
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

    # 2 + 3. tune and log
    parent_id = None
    ctx = None
    try:
        if tracking is not None:
            parent_ctx = tracking.parent_run(args.experiment, "demo", uri=args.tracking_uri,
                                             params={"score_config": str(Path(args.config).resolve()),
                                                     "example_results": str(EXAMPLE_RESULTS),
                                                     "methods": METHODS + ["margin"], "reference": REFERENCE})
            parent_id = parent_ctx.__enter__().info.run_id
            ctx = parent_ctx
            tracking.log_scoring(stats, config=stats["config"], config_path=args.config, parent_run_id=parent_id)
        print(f"[2/4] tuning {len(METHODS) + 1} methods on the tiny-model records and {len(METHODS)} methods on "
              f"every cascade of {args.max_chain} example models", flush=True)
        for m in ("scorer", "router"):
            try:
                from cascade.tuners.learned import load_encoder

                load_encoder()
                print(f"      {m}: text encoder available, but the demo does not run the learned baselines "
                      "(they need per-query text features: `cascade study`, docs/baselines.md)", flush=True)
            except ImportError:
                print(f"      {m}: skipped (optional text deps missing: pip install 'cascade-eval[text]')", flush=True)
        tiny_chain = [st.name for st in cfg.stages]
        rows = _tune_all(tiny, f"{bench} (tiny models)", tiny_chain, METHODS + ["margin"], "conf_mean_logprob", bench,
                         Path(stats["out_dir"]), parent_id, tracking, progress,
                         extra={"margin": {"signal": "conf_top2_margin"}})
        example = records.load(EXAMPLE_RESULTS)
        rows += _tune_all(example, "medmcqa (example results)", LLAMA_CHAIN[:args.max_chain], METHODS, "confidence",
                          "medmcqa", EXAMPLE_RESULTS, parent_id, tracking, progress)
        # 5. which models, in which order, per budget: every sub-cascade of the example chain
        from cascade.evaluate import select

        selection, select_out = None, None
        if args.max_chain >= 2:
            print(f"[3/4] selecting among the {2 ** args.max_chain - 1} sub-cascades of {args.max_chain} example "
                  "models (cascade select)", flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                selection = select.run_selection(example, models=LLAMA_CHAIN[:args.max_chain], benchmark="medmcqa",
                                                 jobs=2)
            select_out = select.write_selection(selection, Path(stats["out_dir"]).resolve().parent / "select-medmcqa")
            if tracking is not None:
                from tracking.select import log_selection

                log_selection(select_out, experiment=args.experiment, uri=args.tracking_uri,
                              records_path=EXAMPLE_RESULTS, records_df=example, parent_run_id=parent_id,
                              children=False)
        per, summ = comparison(rows)
        if tracking is not None:
            metrics = {}
            for _, r in summ.iterrows():
                key = f"{r['records'].split()[0]}.{r['method']}.{r['cascades']}.mean_pct_vs_{REFERENCE}"
                metrics[key.replace(">=", "ge").replace("=", "")] = r["mean_%_vs_" + REFERENCE]
            table, figures = shared_comparison(rows, tracking)
            tracking.log_summary(tables={"comparison_per_cascade.json": per, "comparison_summary.json": summ,
                                         "comparison_table.json": table},
                                 metrics=metrics, figures=figures,
                                 tags={"cascade.comparison": "true",
                                       "cascade.n_degenerate": str(int(table["degenerate"].sum()))})
    except BaseException as e:
        if ctx is not None:
            ctx.__exit__(*sys.exc_info())  # the parent run ends FAILED; the first error is the one raised
        if tracking is not None and isinstance(e, tracking.TrackingUnavailable):
            e.kept = stats["out_dir"]  # the scored records; the tuning reruns in a minute or two
            e.log_command = f"cascade log {stats['out_dir']}"
        raise
    if ctx is not None:
        ctx.__exit__(None, None, None)

    # 4. report
    pd.set_option("display.width", 160)
    print("\n[4/4] AUC (mean test error over the shared cost range) % change against "
          f"{REFERENCE}; negative = better than {REFERENCE}; one-sided paired Wilcoxon")
    shown = summ.copy()
    pct_col = [c for c in shown.columns if c.startswith("mean_%")][0]
    shown[pct_col] = shown[pct_col].map(lambda v: f"{v:+.3f}")
    shown["wilcoxon_p"] = shown["wilcoxon_p"].map(lambda v: "n/a" if not np.isfinite(v) else f"{v:.2g}")
    print(shown.to_string(index=False))
    tiny_per = per[per.records.str.contains("tiny")]
    if not tiny_per.empty:
        print("\ntiny-model cascade (both models are near chance on MMLU, so this proves the plumbing, not the science):")
        print(tiny_per[["cascade", "method", "auc", "auc_ref", "pct_change"]].to_string(
            index=False, float_format=lambda v: f"{v:.4f}"))
    if selection is not None:
        print(f"\nthe answer for the example results: which models, in which order, per budget ({select_out}):")
        print(select.format_frontier_table(
            selection.frontier, comparison=selection.comparison,
            title=f"medmcqa, {len(selection.subcascades)} sub-cascades of {' > '.join(selection.chain)}, "
                  "markov-copula, chosen on train"))
    print(f"\ndone in {time.perf_counter() - t_start:.0f}s")
    if tracking is not None:
        uri = tracking.tracking_uri(args.tracking_uri)
        print(f"MLflow: experiment {args.experiment!r}, parent run {parent_id} with "
              f"{len(rows) + 1 + (selection is not None)} nested runs (scoring, tuning, selection), in {uri}")
        if uri.startswith("sqlite:///"):
            print(f"open the UI:  {ROOT / '.venv' / 'bin' / 'mlflow'} ui --app-name cascade --backend-store-uri {uri} "
                  "--port 5000   then browse http://127.0.0.1:5000 (experiments open on their runs table)")
        else:
            print(f"open the UI:  {uri}")
    return 0


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
