"""``cascade select``: which models, in which order, with which thresholds, per budget.

Argument parsing and printing only; the work is :mod:`cascade.evaluate.select` (tuning every
sub-cascade, the frontier, baselines, outputs) and, with ``--track``, :mod:`tracking.select`. Heavy
imports stay inside the functions so that ``cascade --help`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jobs.commands.tune import MAX_CASCADES, MAX_CASCADES_HELP, check_cascade_count


def register(sub) -> None:
    p = sub.add_parser(
        "select", help="tune every sub-cascade of a chain and pick, per budget, the cascade and thresholds",
        description="Tune every ordered sub-cascade of a chain of models (single models included: 2^k - 1), "
                    "take the Pareto frontier over all (sub-cascade, thresholds) on the training split and "
                    "measure it on the test split, next to the best single model per budget, the full chain "
                    "and the best two-model cascade. Writes DIR/frontier.parquet, DIR/candidates.parquet, "
                    "DIR/summary.json, DIR/frontier.png, DIR/answer.txt and DIR/cascades/<cascade>/ (each in "
                    "`cascade tune`'s format), as one folder.")
    p.add_argument("--results", required=True, help="results store (folder) or a records Parquet file")
    p.add_argument("--benchmark", help="benchmark name (required when the store holds several)")
    p.add_argument("--models", required=True,
                   help="the chain in cost order, comma-separated: m1,m2,... (every ordered sub-sequence is tried)")
    p.add_argument("--method", default="markov-copula",
                   help="tuning method of each sub-cascade (markov-copula, grid, ...); several, comma-separated: "
                        "a selection per method into OUT/<method>/, then one answer over all of them per budget "
                        "(OUT/answer.txt, OUT/answer.parquet, OUT/report.html; --param METHOD.NAME=VALUE)")
    p.add_argument("--select-on", default="shrink", metavar="RULE",
                   help="how candidates are compared on the training split: shrink (the default: the error "
                        "on the training labels shrunk toward the tuner's prediction at small n; it won on "
                        "MedMCQA, see docs/select.md), measured (the training labels alone), predicted (the "
                        "tuner's own estimate), or shifted, blend:N0, hull, switch:Z, paired:Z, bagged:B")
    p.add_argument("--abstain-cost", type=float, default=None, metavar="X",
                   help="early abstention: every stage may abstain (not answer) on low confidence, at a penalty "
                        "of X errors per abstained query; the error axis becomes the loss error + X * abstention "
                        "(markov-copula model; see docs/select.md)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--cost", default="model-mean", choices=["per-query", "model-mean"],
                   help="per-query: each query's own cost; model-mean: each model's mean cost on the split")
    p.add_argument("--calibration", default="auto", choices=["auto", "none"],
                   help="auto: logistic calibration fitted on the training split; none: the signal is P(correct)")
    p.add_argument("--signal", default=None,
                   help="confidence-signal column (default: 'confidence', else 'conf_mean_logprob')")
    p.add_argument("--transform", default="auto", choices=["auto", "one-sided", "two-sided", "identity"],
                   help="calibration transform of the signal (as `cascade tune --transform`)")
    p.add_argument("--lambda-stop", default="cascade", choices=["cascade", "cheapest"],
                   help="markov-copula: stop each lambda path near the sub-cascade's first model's cost (cascade) "
                        "or near the chain's cheapest model (cheapest)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the method (of the early-abstention tuner with --abstain-cost), for "
                        "every sub-cascade")
    p.add_argument("--seed", type=int, default=0, help="seed for methods that draw random numbers")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes for the sub-cascades (default: the CPU count, at most 2)")
    p.add_argument("--max-rows", type=int, default=12, help="rows of the printed answer table")
    p.add_argument("--max-cascades", type=int, default=MAX_CASCADES, metavar="N", help=MAX_CASCADES_HELP)
    p.add_argument("--out", required=True, help="output folder (new, empty, or a previous select output)")
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--track", action=argparse.BooleanOptionalAction, default=False,
                   help="log to MLflow after the outputs are written: a parent run with the frontier plot and "
                        "table, one nested run per sub-cascade (default: --no-track)")
    g.add_argument("--experiment", help="MLflow experiment (default: the benchmark's name)")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<repo>/mlflow.db)")
    p.set_defaults(func=run_select)


def _default_signal(df) -> str:
    from cascade.data import records

    if "confidence" in df.columns:
        return "confidence"
    sigs = records.signal_columns(df.columns)
    if "conf_mean_logprob" in sigs:
        return "conf_mean_logprob"
    if sigs:
        return sigs[0]
    raise ValueError("the records hold no confidence-signal column")


def run_select(args) -> int:
    if "," in args.method:
        return run_select_many(args)
    import math

    from cascade.evaluate import outputs, select
    from cascade.evaluate import tuning as tune

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(models) < 2:
        raise ValueError(f"--models {args.models!r}: a chain needs at least two models, e.g. --models small,large")
    if len(set(models)) != len(models):
        raise ValueError(f"--models lists a model twice: {models}")
    if args.abstain_cost is not None and not (args.abstain_cost >= 0 and not math.isnan(args.abstain_cost)):
        raise ValueError(f"--abstain-cost {args.abstain_cost}: use a number >= 0 (errors per abstained query; "
                         "inf = never abstain)")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: use 1 or more")
    if args.max_rows < 1:
        raise ValueError(f"--max-rows {args.max_rows}: use 1 or more")
    select._rule(args.select_on)  # an unknown rule is refused before any work
    params = outputs.parse_params(args.param)
    if args.abstain_cost is not None:
        from cascade.tuners.abstention import AbstentionTuner

        if args.method != "markov-copula":
            raise ValueError(f"--abstain-cost works with --method markov-copula (its model gives the abstention "
                             f"probabilities), not {args.method!r}")
        cls = AbstentionTuner
    else:
        cls = tune.get_method(args.method)
    params = cls.validate_params(params)
    subs = select.subcascades_of(models)
    count_line = check_cascade_count(len(subs), models, args.max_cascades,
                                     "every ordered sub-cascade (single models included: 2^k - 1)")
    out = select.check_out(args.out)
    outputs.cascade_folders(subs)  # refuse model names that cannot be folders, now
    df, benchmark = _load(args)
    signal = args.signal or _default_signal(df)
    if "seed" in cls.param_names() and "seed" not in params:
        params["seed"] = args.seed
    if args.abstain_cost is None:  # the full chain needs the most: refused before any sub-cascade is tuned
        from cascade.tuners.base import check_memory

        n_train = int(((df["split"] == args.train_split) & (df["model"] == models[0])).sum())
        check_memory(cls, n_train, len(models), params)
    print(f"cascade select: {count_line}")
    if args.lambda_stop == "cheapest" and "reference_cost" in cls.param_names():
        train = df[(df["split"] == args.train_split) & df["model"].isin(models)]
        params.setdefault("stop_reference", "chain")
        params.setdefault("reference_cost", float(train.groupby("model")["cost"].mean().min() * tune.COST_SCALE))
    jobs = args.jobs or max(1, min(2, os.cpu_count() or 1))
    sel = select.run_selection(
        df, models=models, method=args.method, benchmark=benchmark, train_split=args.train_split,
        test_split=args.test_split, cost_mode=args.cost, calibration=args.calibration, signal=signal,
        transform=args.transform, params=params, select_on=args.select_on, abstain_cost=args.abstain_cost, jobs=jobs)
    sel.summary["records"] = str(args.results)
    for s in sel.subcascades:
        for reason in s.summary.get("degenerate") or []:
            print(f"cascade select: warning: {' -> '.join(s.models)}: degenerate fit: {reason}", file=sys.stderr)
    written = select.write_selection(sel, out)
    title = (f"{benchmark}: {len(sel.subcascades)} sub-cascades of {' > '.join(models)}, {sel.summary['method']}"
             + (f", abstain cost {args.abstain_cost:g}" if args.abstain_cost is not None else "")
             + f", chosen on train ({args.select_on})")
    print(select.format_frontier_table(sel.frontier, comparison=sel.comparison, title=title, max_rows=args.max_rows))
    print(f"\n{len(sel.subcascades)} sub-cascades tuned in {sel.summary['seconds_tuning']:.1f} s "
          f"({jobs} process{'es' if jobs > 1 else ''}); wrote {written}")
    if args.track:
        return track(args, written, benchmark, Path(args.results).resolve(), df)
    return 0


def _load(args):
    """The records of --results (one benchmark) and that benchmark's name; bad input is one line."""
    from cascade.data import records

    df = records.load(args.results, benchmark=args.benchmark)
    if df.empty:
        raise ValueError(f"benchmark {args.benchmark!r} has no records in {args.results}")
    benchmarks = sorted(df["benchmark"].unique())
    if args.benchmark is None and len(benchmarks) > 1:
        raise ValueError(f"{args.results} holds several benchmarks ({', '.join(benchmarks)}); pass --benchmark")
    return df, args.benchmark or benchmarks[0]


def run_select_many(args) -> int:
    """``--method a,b,...``: a selection per method, then the answer per absolute budget over all of them."""
    from cascade.evaluate import answer, outputs
    from cascade.evaluate import tuning as tune

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if len(set(methods)) != len(methods):
        raise ValueError(f"--method lists a method twice: {args.method}")
    if args.abstain_cost is not None:
        raise ValueError("--abstain-cost works with one --method (markov-copula), not with several")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(models) < 2 or len(set(models)) != len(models):
        raise ValueError(f"--models {args.models!r}: give a chain of at least two distinct models")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: use 1 or more")
    parsed = outputs.parse_method_params(args.param)
    params = {}
    for m in methods:
        cls = tune.get_method(m)  # an unknown method is refused before any work
        params[m] = cls.validate_params(parsed.pop(m, {}))
        if "seed" in cls.param_names() and "seed" not in params[m]:
            params[m]["seed"] = args.seed
    if parsed:
        raise ValueError(f"--param {next(iter(parsed))}.*: not among --method ({', '.join(methods)})")
    subs = answer.select.subcascades_of(models)
    count_line = check_cascade_count(len(subs), models, args.max_cascades,
                                     "every ordered sub-cascade (single models included: 2^k - 1)")
    out = answer.check_out(args.out)
    outputs.cascade_folders(subs)
    df, benchmark = _load(args)
    print(f"cascade select: {count_line}, for each of {len(methods)} methods")
    jobs = args.jobs or max(1, min(2, os.cpu_count() or 1))
    ma = answer.select_methods(
        df, models=models, methods=methods, params=params, benchmark=benchmark, select_on=args.select_on, jobs=jobs,
        train_split=args.train_split, test_split=args.test_split, cost_mode=args.cost, calibration=args.calibration,
        signal=args.signal or _default_signal(df), transform=args.transform)
    title = (f"{benchmark}: the answer per budget over {', '.join(methods)} ({len(ma.selections[methods[0]].subcascades)}"
             f" sub-cascades of {' > '.join(models)} each, chosen on train ({args.select_on}))")
    written = answer.write_methods(ma, out, title)
    print(answer.format_answer(ma.answer, title))
    print(f"\nwrote {written} (report.html: pick a budget, read the answer)")
    if args.track:
        return track(args, written, benchmark, Path(args.results).resolve(), df, many=True)
    return 0


def track(args, out: Path, benchmark: str, records_path, records_df, many: bool = False) -> int:
    """Log a written selection to MLflow; the outputs stay on disk whatever happens here (exit 3 on failure)."""
    import tracking
    from tracking import select as track_select

    experiment = args.experiment or benchmark
    try:
        log = track_select.log_methods if many else track_select.log_selection
        run_id = log(out, experiment=experiment, uri=args.tracking_uri, records_path=records_path,
                     records_df=records_df)
    except tracking.TrackingUnavailable as e:
        print(f"cascade select: tracking failed: {e}\n  the results are safe under {out}", file=sys.stderr)
        return 3
    print(f"logged the selection (parent run {run_id}) to MLflow experiment {experiment!r} at "
          f"{tracking.tracking_uri(args.tracking_uri)}")
    return 0


__all__ = ["register", "run_select"]
