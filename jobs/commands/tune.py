"""``cascade tune`` and ``cascade compare``: argument parsing and printing only.

The work is library code: :mod:`cascade.evaluate.tuning` (transform choice, calibration, fit, curve),
:mod:`cascade.evaluate.outputs` (``--out`` checks, atomic output folders, ``--param`` parsing) and
:mod:`cascade.evaluate.compare` (cascades of a chain, comparison table, per-length summary). Heavy
imports stay inside the functions so that ``cascade --help`` starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs import choices

BENCHMARK_HELP = choices.help_text(
    "benchmark of the records to tune on (required when the records hold several); scoring knows {b}, "
    "imported records may name others", b=choices.BENCHMARKS)
SIGNAL_HELP = choices.help_text(
    "confidence-signal column of the records: 'confidence' or a registered signal's column ({c}); default: "
    "'confidence' if present, else conf_mean_logprob, else the first conf_* column (`cascade list signals`)",
    c=choices.SIGNAL_COLUMNS)
TRANSFORM_HELP = ("calibration transform of the signal: auto (the signal registry for conf_* columns, else the "
                  "values: all <= 0 -> one-sided answer log-probs, in [0, 1] -> identity; prints its choice), "
                  "one-sided (answer log-probs), two-sided (P(True) log-probs), identity (margins, scores)")
#: Most cascades `--all-cascades` (and `cascade select`) tune unless --max-cascades says more: a chain of
#: 8 models has 247 sub-cascades of length >= 2 (255 with single models), one of 10 has 1,013.
MAX_CASCADES = 256
MAX_CASCADES_HELP = (f"most cascades to tune (default {MAX_CASCADES}); a longer chain is refused with the count "
                     "unless this is raised")


def check_cascade_count(n: int, chain: list[str], limit: int, what: str) -> str:
    """Refuse more than ``limit`` cascades (ValueError, exit 2, before any work); else the line that says
    how many cascades the run tunes (printed by the caller once every check passed)."""
    if limit < 1:
        raise ValueError(f"--max-cascades {limit}: use 1 or more")
    if n > limit:
        raise ValueError(f"{what} of the {len(chain)}-model chain are {n:,} cascades, more than --max-cascades "
                         f"{limit}; shorten --models or pass --max-cascades {n} to tune them all")
    return f"tuning {n} cascade(s): {what} of the {len(chain)}-model chain"


def register(sub) -> None:
    p = sub.add_parser(
        "tune", help="pick deferral thresholds on a training split and score the curve on a test split",
        description="Fit a threshold tuner on the training split and score every threshold vector on the test "
                    "split with real labels and costs. Writes DIR/curve.parquet and DIR/summary.json.")
    p.add_argument("--results", required=True, help="results store (folder) or a records Parquet file")
    p.add_argument("--benchmark", help=BENCHMARK_HELP)
    p.add_argument("--models", required=True, help="the cascade in order, comma-separated: m1,m2,...")
    p.add_argument("--all-cascades", action="store_true",
                   help="treat --models as a chain and tune every ordered sub-sequence of length >= 2 "
                        "(written to DIR/<cascade>/; 2^k - k - 1 of them, bounded by --max-cascades)")
    p.add_argument("--max-cascades", type=int, default=MAX_CASCADES, metavar="N", help=MAX_CASCADES_HELP)
    p.add_argument("--method", default="markov-copula", metavar="METHOD",
                   help=choices.help_text("tuning method, one of: {m} (default %(default)s; "
                                          "`cascade list methods` describes them); several, comma-separated: "
                                          "each tuned into OUT/<method>/, then compared on each cascade's shared "
                                          "cost range (OUT/comparison.csv, OUT/comparison/*.png; --param "
                                          "METHOD.NAME=VALUE)", m=choices.METHODS))
    p.add_argument("--train-split", default="train",
                   help="records split the thresholds are tuned on (default %(default)s)")
    p.add_argument("--test-split", default="test",
                   help="records split the curve is scored on (default %(default)s)")
    p.add_argument("--cost", default="model-mean", choices=["per-query", "model-mean"],
                   help="per-query: each query's own cost; model-mean: each model's mean cost on the split "
                        "(train mean to tune, test mean to score)")
    p.add_argument("--calibration", default="auto", choices=["auto", "none"],
                   help="auto: logistic calibration fitted on the training split; none: the signal is P(correct)")
    p.add_argument("--signal", default=None, metavar="COLUMN", help=SIGNAL_HELP)
    p.add_argument("--transform", default="auto", choices=["auto", "one-sided", "two-sided", "identity"],
                   help=TRANSFORM_HELP)
    p.add_argument("--lambda-stop", default="cascade", choices=["cascade", "cheapest"],
                   help="markov-copula, copula: stop the lambda path near the cascade's first model's cost (cascade) or "
                        "near the cheapest model of the benchmark (cheapest, the release's behaviour)")
    p.add_argument("--abstain-cost", type=float, default=None, metavar="X",
                   help="markov-copula: early abstention, every stage may abstain on low confidence at a penalty "
                        "of X errors per abstained query; the curve's error columns hold the loss error + X * "
                        "abstention (--param stages=last: only the last model abstains; see docs/select.md)")
    p.add_argument("--gof", action="store_true", help="markov-copula: add a goodness-of-fit report")
    p.add_argument("--gof-bootstrap", type=int, default=100, help="bootstrap replicates for goodness-of-fit p-values")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter, e.g. --param score=calibrated (grid) or --param integration=exact; "
                        "checked against the method's parameters before any work")
    p.add_argument("--seed", type=int, default=0, help="seed for methods and bootstraps that draw random numbers")
    p.add_argument("--out", required=True, help="output folder")
    add_tracking_args(p)
    p.set_defaults(func=run_tune)

    c = sub.add_parser(
        "compare", help="compare tuned curves on the same cascades (AUC over the shared cost range)",
        description="Compare the test curves of two or more methods. Each DIR is a `cascade tune` output or a "
                    "folder holding several (searched recursively for summary.json).")
    c.add_argument("dirs", nargs="+", metavar="DIR",
                   help="`cascade tune --out` folders (each searched recursively for summary.json), one or more "
                        "per method")
    c.add_argument("--baseline", metavar="METHOD",
                   help="method the others are compared against (default: the last DIR's method)")
    c.add_argument("--csv", help="write the per-cascade table to this CSV file")
    c.set_defaults(func=run_compare)


def add_tracking_args(p) -> None:
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--track", action="store_true",
                   help="log to MLflow after the outputs are written (python -m jobs.tune always does)")
    g.add_argument("--experiment", help="MLflow experiment (default: the benchmark's name)")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<repo>/mlflow.db)")


def _log_command(args, records_path) -> str:
    """The `cascade log` command that logs a tune's kept outputs once the store works."""
    cmd = f"cascade log {args.out} --results {records_path}"
    if getattr(args, "experiment", None):
        cmd += f" --experiment {args.experiment}"
    if getattr(args, "tracking_uri", None):
        cmd += f" --tracking-uri {args.tracking_uri}"
    return cmd


def track_outputs(args, out_dirs: list[Path], benchmark: str, records_path, records_df, run_name: str) -> int:
    """Log written `cascade tune` outputs to MLflow; the outputs stay on disk whatever happens here."""
    import tracking

    experiment = args.experiment or benchmark
    try:
        with tracking.parent_run(experiment, run_name, uri=args.tracking_uri,
                                 params={"command": "tune", "method": args.method, "records": str(records_path),
                                         "n_cascades": len(out_dirs)}) as parent:
            for d in out_dirs:
                tracking.log_tune_dir(d, records_path=records_path, records_df=records_df,
                                      parent_run_id=parent.info.run_id)
            from cascade.data import records as R
            from cascade.evaluate import metrics as M

            runs = []
            for d in out_dirs:  # the parent's report: every cascade's curve, the lowest test error per budget
                curve, summary = M.read_tune_output(d)
                runs.append({"method": summary["method"], "cascade": list(summary["models"]), "curve": curve,
                             "summary": summary})
            df = records_df if records_df is not None else R.load(records_path, benchmark=benchmark)
            data, desc = tracking.comparison_report(f"{benchmark}: {args.method} on {len(runs)} cascade(s)", runs,
                                                    tracking.run_budgets(runs[0]["summary"], df, benchmark))
            tracking.log_report(data, run_id=parent.info.run_id, description=desc)
    except tracking.TrackingUnavailable as e:
        tracking.save_open_runs(args.out)  # `cascade log OUT` marks them KILLED once the store answers
        print(e.line("cascade tune", kept=args.out, log_command=_log_command(args, records_path)), file=sys.stderr)
        return 3
    print(f"logged {len(out_dirs)} run(s) to MLflow experiment {experiment!r} at "
          f"{tracking.tracking_uri(args.tracking_uri)}")
    return 0


def _default_signal(columns) -> str:
    from cascade.data import records

    if "confidence" in columns:
        return "confidence"
    sigs = records.signal_columns(columns)
    if "conf_mean_logprob" in sigs:
        return "conf_mean_logprob"
    if sigs:
        return sigs[0]
    raise ValueError("the records hold no confidence-signal column")


def _warn(cmd: str, msg: str) -> None:
    print(f"cascade {cmd}: warning: {msg}", file=sys.stderr)


def run_tune(args) -> int:
    if "," in args.method:
        return run_tune_many(args)
    import pandas as pd

    from cascade.data import records
    from cascade.evaluate import compare, outputs
    from cascade.evaluate import tuning as tune

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not getattr(args, "_one_of_many", False):  # with --method a,b each option applies where it can
        if args.gof and args.method != "markov-copula":
            raise ValueError(f"--gof works with --method markov-copula (it tests that model's fit), not {args.method!r}")
        if args.lambda_stop == "cheapest" and args.method not in ("markov-copula", "copula"):
            raise ValueError(f"--lambda-stop cheapest works with --method markov-copula or copula (their lambda path), "
                             f"not {args.method!r}")
    if len(models) < 2:
        raise ValueError(f"--models {args.models!r}: a cascade needs at least two models, e.g. --models small,large")
    if len(set(models)) != len(models):
        raise ValueError(f"--models lists a model twice: {models}")
    abstain = getattr(args, "abstain_cost", None)
    if abstain is not None:
        from cascade.tuners.abstention import AbstentionTuner

        if not abstain >= 0:  # NaN too
            raise ValueError(f"--abstain-cost {abstain}: use a number >= 0 (errors per abstained query; inf = never "
                             "abstain)")
        if args.method != "markov-copula":
            raise ValueError(f"--abstain-cost works with --method markov-copula (its model gives the abstention "
                             f"probabilities), not {args.method!r}")
        cls = AbstentionTuner
    else:
        cls = tune.get_method(args.method)
    params = cls.validate_params(outputs.parse_params(args.param))
    cascades = compare.cascades_of(models) if args.all_cascades else [models]
    count_line = None
    if args.all_cascades and not getattr(args, "_one_of_many", False):
        count_line = check_cascade_count(len(cascades), models, getattr(args, "max_cascades", MAX_CASCADES),
                                         "--all-cascades: every ordered sub-sequence of length >= 2")
    out = outputs.check_out(args.out, unit=not args.all_cascades)
    folders = outputs.cascade_folders(cascades) if args.all_cascades else [None]
    if args.all_cascades:
        for f in folders:
            outputs.check_out(out / f, unit=True)
    # only what the cascades need is read: the files' footers, then --models' columns of the two splits
    info = records.describe(args.results)
    if not info.benchmarks or (args.benchmark is not None and args.benchmark not in info.benchmarks):
        raise ValueError(f"benchmark {args.benchmark!r} has no records in {args.results}")
    if args.benchmark is None and len(info.benchmarks) > 1:
        raise ValueError(f"{args.results} holds several benchmarks ({', '.join(info.benchmarks)}); pass --benchmark")
    args.benchmark = args.benchmark or info.benchmarks[0]  # recorded in summary.json
    signal = args.signal or _default_signal(info.columns)
    # unknown model, empty split, unknown signal, models with different queries: refused here
    data = records.load_cascade(args.results, models, (args.train_split, args.test_split), signal=signal,
                                benchmark=args.benchmark)
    # one transform for every cascade of the run, chosen on all of --models (train and test splits)
    choice = tune.choose_transform(data, models=models, signal=signal, splits=(args.train_split, args.test_split),
                                   benchmark=args.benchmark, transform=args.transform, calibration=args.calibration)
    print(f"cascade tune: transform {choice.name} for {signal}: {choice.reason}", file=sys.stderr)
    if abstain is None:  # the longest cascade needs the most: refused before any cascade is tuned
        from cascade.tuners.base import check_memory

        check_memory(cls, data[args.train_split].n, max(len(c) for c in cascades), params)
    if count_line:
        print(f"cascade tune: {count_line}")
    if "seed" in cls.param_names() and "seed" not in params:
        params["seed"] = args.seed
    if args.method in ("markov-copula", "copula") and args.lambda_stop == "cheapest":
        means = records.mean_costs(args.results, args.train_split, benchmark=args.benchmark)
        params.setdefault("stop_reference", "chain")
        params.setdefault("reference_cost", float(min(means.values()) * tune.COST_SCALE))
    rows, results = [], []
    for casc, folder in zip(cascades, folders):
        res = tune.run_tuning(
            data, models=casc, method=args.method, benchmark=args.benchmark, train_split=args.train_split,
            test_split=args.test_split, cost_mode=args.cost, calibration=args.calibration, signal=signal,
            transform=choice, params=params, abstain_cost=abstain)
        if args.gof and args.method == "markov-copula":
            from cascade.evaluate import gof

            train, test, _ = tune.prepare(data, models=casc, train_split=args.train_split, test_split=args.test_split,
                                          benchmark=args.benchmark, signal=signal, calibration=args.calibration,
                                          transform=choice, cost_mode=args.cost)
            res.summary["goodness_of_fit"] = gof.report(res.tuner.model_, train, test,
                                                        n_boot=args.gof_bootstrap, seed=args.seed)
            print(f"goodness of fit, {' -> '.join(casc)}:\n{gof.format_report(res.summary['goodness_of_fit'])}")
        for reason in res.summary["degenerate"]:
            _warn("tune", f"{' -> '.join(casc)}: degenerate fit: {reason}")
        results.append((folder, res))
        rows.append({"cascade": " -> ".join(casc), "k": len(casc), "points": len(res.curve),
                     "test_auc": res.summary["test_auc"], "seconds": res.summary["seconds"]})
        if abstain is not None:  # the AUC is of the loss; show the parts too
            rows[-1].update({"mean_abstention": float(res.curve["test_abstention"].mean()),
                             "mean_error": float(res.curve["test_wrong"].mean())})
    # every cascade is tuned before anything is written: a bad cascade leaves no partial output
    if args.all_cascades:
        written = outputs.write_many(out, [(f, r.curve, r.summary) for f, r in results])
    else:
        written = [outputs.write_outputs(out, results[0][1].curve, results[0][1].summary)]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {len(cascades)} curve(s) under {out}")
    if getattr(args, "track", False):
        return track_outputs(args, written, args.benchmark, Path(args.results).resolve(), None,
                             run_name=f"tune | {'>'.join(models)} | method={args.method}")
    return 0


def _split_method_params(items, methods) -> dict[str, list[str]]:
    """Several methods: ``--param METHOD.NAME=VALUE`` -> {method: ["NAME=VALUE", ...]}, checked up front."""
    from cascade.evaluate import outputs
    from cascade.evaluate import tuning as tune

    parsed = outputs.parse_method_params(items)  # refuses NAME=VALUE without a method
    for m, p in parsed.items():
        if m not in methods:
            raise ValueError(f"--param {m}.*: {m} is not among --method ({', '.join(methods)})")
        tune.get_method(m).validate_params(p)
    raw: dict[str, list[str]] = {m: [] for m in methods}
    for item in items or []:
        key, value = item.split("=", 1)
        m, name = key.split(".", 1)
        raw[m].append(f"{name}={value}")
    return raw


def run_tune_many(args) -> int:
    """``--method a,b,...``: every method on the same cascades (OUT/<method>/...), then one comparison on each
    cascade's shared cost range (OUT/comparison.csv, OUT/comparison/<cascade>.png); with --track one parent
    run, a child per method x cascade with the shared-range metrics, the table on the parent."""
    import copy

    from cascade.evaluate import compare, comparison, outputs
    from cascade.evaluate import tuning as tune

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if len(set(methods)) != len(methods):
        raise ValueError(f"--method lists a method twice: {args.method}")
    for m in methods:  # unknown methods and parameters: refused before any work
        tune.get_method(m)
    params = _split_method_params(args.param, methods)
    if args.all_cascades:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        n = len(compare.cascades_of(models))
        line = check_cascade_count(n * len(methods), models, getattr(args, "max_cascades", MAX_CASCADES),
                                   f"--all-cascades: {len(methods)} methods x {n} ordered sub-sequences of length >= 2")
    else:
        line = None
    out = outputs.check_out(args.out, unit=False)
    for m in methods:
        outputs.check_out(out / m, unit=not args.all_cascades)
    if line:
        print(f"cascade tune: {line}")
    for m in methods:
        a = copy.copy(args)
        a.method, a.out, a.track, a.param = m, str(out / m), False, params[m]
        a._one_of_many = True
        print(f"\n== {m}")
        code = run_tune(a)
        if code:
            return code
    found = compare.load_tune_outputs([out / m for m in methods])
    runs = [{"cascade": o.summary["models"], "method": o.method, "curve": o.curve, "summary": o.summary,
             "benchmark": o.summary.get("benchmark"), "folder": o.folder} for o in found]
    table, shared = comparison.comparison_table(runs)
    plots = out / "comparison"
    plots.mkdir(exist_ok=True)
    for key, s in shared.items():
        curves = {r["method"]: r["curve"] for r in runs if tuple(r["cascade"]) == key[1]}
        fig = comparison.overlay_figure(curves, f"{key[0]}: {' -> '.join(key[1])}: test error vs cost", s)
        fig.savefig(plots / f"{outputs.cascade_folder(key[1])}.png", dpi=110)
    table.to_csv(out / "comparison.csv", index=False)
    cols = ["cascade", "method", "auc_shared", "rank_shared", "test_auc_own_range", "shared_cost_lo",
            "shared_cost_hi", "degenerate"]
    print("\nmethods on each cascade's shared cost range (auc_shared: mean test error there, lower is better):")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for _, r in table[table["shared_note"] != ""].iterrows():
        _warn("tune", f"{r['cascade']} ({r['method']}): {r['shared_note']}")
    print(f"wrote {out / 'comparison.csv'} and {len(shared)} overlaid plot(s) under {plots}")
    if getattr(args, "track", False):
        return track_comparison(args, runs, table, shared, plots)
    return 0


def track_comparison(args, runs, table, shared, plots) -> int:
    """Log a several-method `cascade tune`: parent run (comparison table), a child per method x cascade."""
    from pathlib import Path as _P

    import tracking
    from cascade.data import records
    from cascade.evaluate import comparison, metrics, outputs

    benchmark = runs[0]["benchmark"]
    experiment = args.experiment or benchmark
    records_path = _P(args.results).resolve()
    df = records.load(args.results, benchmark=benchmark)
    try:
        with tracking.parent_run(experiment, f"tune | {'>'.join(args.models.split(','))} | methods={args.method}",
                                 uri=args.tracking_uri,
                                 params={"command": "tune", "methods": args.method, "records": str(records_path),
                                         "n_cascades": len(shared), "all_cascades": bool(args.all_cascades)},
                                 tags={"cascade.comparison": "true"}) as parent:
            for r in runs:
                key = (r["benchmark"], tuple(r["cascade"]), "all", 0)
                s = shared[key]
                note = s.notes.get(r["method"], "")
                tracking.log_tune(r["curve"], r["summary"], parent_run_id=parent.info.run_id,
                                  records_path=records_path, records_df=df,
                                  run_name=comparison.run_name(r["method"], r["cascade"], "all", args.seed),
                                  extra_metrics={k: v for k, v in s.metrics[r["method"]].items()},
                                  tags={"cascade.logged_from": str(r["folder"]),
                                        **({"cascade.shared_note": note} if note else {})},
                                  output_fingerprint=metrics.output_fingerprint(r["folder"]))
            figures = {f"comparison/{outputs.cascade_folder(key[1])}.png": comparison.overlay_figure(
                {r["method"]: r["curve"] for r in runs if tuple(r["cascade"]) == key[1]},
                f"{key[0]}: {' -> '.join(key[1])}: test error vs cost", s) for key, s in shared.items()}
            degenerate = table[table["degenerate"]]
            tracking.log_summary(tables={"comparison_table.json": table}, figures=figures, run_id=parent.info.run_id,
                                 tags={"cascade.n_degenerate": str(len(degenerate))})
            data, desc = tracking.comparison_report(
                f"{benchmark}: {args.method} on {len(shared)} cascade(s) of {' > '.join(args.models.split(','))}",
                runs, tracking.run_budgets(runs[0]["summary"], df, benchmark))
            tracking.log_report(data, run_id=parent.info.run_id, description=desc)
    except tracking.TrackingUnavailable as e:
        tracking.save_open_runs(args.out)  # `cascade log OUT` marks them KILLED once the store answers
        print(e.line("cascade tune", kept=args.out, log_command=_log_command(args, records_path)), file=sys.stderr)
        return 3
    print(f"logged {len(runs)} run(s) to MLflow experiment {experiment!r} at "
          f"{tracking.tracking_uri(args.tracking_uri)}")
    return 0


def run_compare(args) -> int:
    import pandas as pd

    from cascade.evaluate import compare

    if args.csv:
        from cascade.evaluate.outputs import check_out

        csv = Path(args.csv)
        if csv.is_dir():
            raise ValueError(f"--csv {csv}: is a folder; give a file path")
        check_out(csv.parent, unit=False, option="--csv's folder")
    found = compare.load_tune_outputs(args.dirs)
    table, baseline = compare.compare_outputs(found, args.baseline)
    for o in found:
        for reason in o.summary.get("degenerate") or []:
            _warn("compare", f"{o.folder}: degenerate fit: {reason}")
    for _, r in table[table["note"] != ""].iterrows():
        _warn("compare", f"{r['cascade']} ({r['method']} vs {baseline}): {r['note']}; its % change is NaN and left "
                         "out of the means")
    fmt = lambda v: f"{v:.4f}"  # noqa: E731
    pd.set_option("display.width", 160)
    print(table.drop(columns=["baseline", "note"]).to_string(index=False, float_format=fmt))
    if "abstain_cost" in table:
        print("\nearly abstention: the AUCs are of the test loss error + X * abstention (X = the abstaining curve's "
              "--abstain-cost; a curve without abstention has loss = error), at equal cost")
    for method, g in table.groupby("method"):
        print(f"\n{method} vs {baseline}: % change of AUC (negative = {method} better), one-sided paired Wilcoxon")
        print(compare.summarize_by_length(g, ge3_label=">=3 (mean of per-k means)").to_string(
            index=False, float_format=fmt))
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
        print(f"\nwrote {args.csv}")
    return 0


__all__ = ["register", "run_tune", "run_compare"]
