"""``cascade study``: the baselines comparison protocol and the margin-sampling study.

Argument parsing only; the protocol is :mod:`cascade.evaluate.study`. Heavy imports stay inside the
functions so that ``cascade --help`` starts fast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DEFAULT_METHODS = "markov-copula,bayes-opt,grid,random"  # cascade.evaluate.study.DEFAULT_METHODS
DEFAULT_N_VALUES = "10,20,30,50,100,all"  # cascade.evaluate.study.DEFAULT_N_VALUES


def _chains(specs, benchmark, info=None):
    """{name: records}, {name: model order}; ``info`` (a dict) gets {name: {records, models, benchmark}} for
    meta.json (what tracking logs)."""
    from cascade.data import records

    chains, orders = {}, {}
    for spec in specs:
        name, _, rest = spec.partition("=") if "=" in spec else (None, None, spec)
        path, _, models = rest.partition(":") if ":" in rest and not Path(rest).exists() else (rest, None, "")
        df = records.load(path, benchmark=benchmark)
        if benchmark is None and df["benchmark"].nunique() > 1:
            raise ValueError(f"{path} holds several benchmarks; pass --benchmark")
        name = name or Path(path).stem
        chains[name] = df
        if models:
            orders[name] = [m.strip() for m in models.split(",") if m.strip()]
        if info is not None:
            info[name] = {"records": str(Path(path).resolve()),
                          "models": orders.get(name) or list(dict.fromkeys(df["model"])),
                          "benchmark": str(df["benchmark"].iloc[0]) if df["benchmark"].nunique() == 1 else None}
    return chains, orders


def register(sub) -> None:
    from jobs import choices

    p = sub.add_parser(
        "study", help="compare tuning methods on every cascade of one or more chains, on the same training "
                      "subsamples",
        description="Protocol 'compare': every method on the same seeded training subsamples (n values), AUC "
                    "on the shared cost range against a reference method, mean percent change per cascade "
                    "length, one-sided Wilcoxon, bootstrap CI. Writes OUT/table.txt, summary.csv, "
                    "per_cascade.csv, runs.csv, curves.json, plots/*.png. Protocol 'margin': online vs offline "
                    "margin sampling vs random routing on a two-model cascade.")
    p.add_argument("--results", action="append", required=True, metavar="CHAIN",
                   help="a chain: [NAME=]PATH[:m1,m2,...] (records file or store; model order defaults to the "
                        "order in the records). Repeat for several chains.")
    p.add_argument("--benchmark", help=choices.help_text(
        "benchmark of the records (required when a records file holds several); scoring knows {b}",
        b=choices.BENCHMARKS))
    p.add_argument("--protocol", choices=["compare", "margin"], default="compare",
                   help="compare: methods against --reference on every cascade; margin: margin sampling on "
                        "--models (default %(default)s)")
    p.add_argument("--methods", default=DEFAULT_METHODS, metavar="M1,M2,...", help=choices.help_text(
        "comma-separated tuning methods, from: {m}, or select (`cascade select` on each cascade: its "
        "frontier over the cascade's sub-cascades) (default %(default)s)", m=choices.METHODS))
    p.add_argument("--reference", default="bayes-opt", metavar="METHOD",
                   help="the method every other one is compared against (percent change of AUC; default "
                        "%(default)s); must be among --methods")
    p.add_argument("--n-values", default=DEFAULT_N_VALUES, metavar="N1,N2,...",
                   help="training sizes, comma-separated; 'all' = the whole training split (default %(default)s)")
    p.add_argument("--subsamples", type=int, default=20,
                   help="seeded random training subsamples per n, shared by all methods (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the subsamples and of the methods that draw random numbers (default %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (joblib; default %(default)s)")
    p.add_argument("--max-len", type=int, default=None,
                   help="only cascades up to this length (default: every length of the chain)")
    p.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                   help="a method parameter, e.g. bayes-opt.n_trials=50; repeatable; checked against the method's "
                        "parameters before any work")
    p.add_argument("--signal", default=None, metavar="COLUMN", help=choices.help_text(
        "confidence-signal column: 'confidence' or a registered signal's column ({c}); default: confidence "
        "(compare), conf_top2_margin (margin)", c=choices.SIGNAL_COLUMNS))
    p.add_argument("--transform", default="auto", choices=["auto", "one-sided", "two-sided", "identity"],
                   help="calibration transform of the signal (see `cascade tune --help`); auto is chosen once per "
                        "chain and printed")
    p.add_argument("--cost", default="model-mean", choices=["model-mean", "per-query"],
                   help="model-mean: each model's mean cost on the split; per-query: each query's own cost "
                        "(default %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="compare: do not write OUT/plots/*.png")
    p.add_argument("--models", metavar="CHEAP,EXPENSIVE",
                   help="margin protocol: the two-model cascade (default: the chain's first two models)")
    p.add_argument("--warmup", type=int, default=20,
                   help="margin protocol: queries always escalated before the online margin threshold is set "
                        "(default %(default)s)")
    p.add_argument("--budgets", type=int, default=100,
                   help="margin protocol: budgets between the cheap model's cost and always escalating "
                        "(default %(default)s)")
    p.add_argument("--orders", type=int, default=3,
                   help="margin protocol: seeded orders of the test stream averaged per budget (default "
                        "%(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--track", action="store_true",
                   help="compare protocol: log the study to MLflow after OUT is written (a parent run with the tables "
                        "and plots, a nested run per chain x method with its %% change vs --reference per n); "
                        "implied by --tracking-uri")
    g.add_argument("--experiment", help="MLflow experiment (default: BENCHMARK-study)")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<repo>/mlflow.db); turns --track on")
    p.set_defaults(func=run_study_cmd)


def run_study_cmd(args) -> int:
    from cascade.evaluate import study as protocol
    from cascade.evaluate.outputs import check_out, parse_method_params

    out = check_out(args.out, unit=False)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    overrides = parse_method_params(args.param)
    for m in methods:
        protocol.check_method(m)  # a tuner or select
    for m, p in overrides.items():
        if m not in methods:
            raise ValueError(f"--param {m}.*: {m} is not among --methods ({', '.join(methods)})")
        protocol.validate_method_params(m, p)
    track = bool(getattr(args, "track", False) or getattr(args, "tracking_uri", None))
    if track and args.protocol == "compare":
        import tracking

        try:  # a bad URI or an unreachable store is refused before hours of fits
            tracking.check_reachable(tracking.tracking_uri(args.tracking_uri))
        except tracking.TrackingUnavailable as e:
            print(e.line("cascade study") + "; nothing was run", file=sys.stderr)
            return 3
    info: dict = {}
    chains, orders = _chains(args.results, args.benchmark, info)
    out.mkdir(parents=True, exist_ok=True)
    if args.protocol == "margin":
        (name, df), = list(chains.items())[:1]
        models = [m.strip() for m in (args.models or "").split(",") if m.strip()] or orders.get(name, [])[:2]
        if len(models) != 2:
            raise ValueError("--protocol margin needs --models cheap,expensive")
        frame, summary = protocol.margin_study(df, models, signal=args.signal or "conf_top2_margin",
                                               benchmark=args.benchmark, n_budgets=args.budgets,
                                               n_orders=args.orders, warmup=args.warmup, seed=args.seed,
                                               transform=args.transform)
        frame.to_csv(out / "margin_budgets.csv", index=False)
        summary.to_csv(out / "margin_summary.csv", index=False)
        text = summary.to_string(index=False)
        (out / "margin_table.txt").write_text(text + "\n")
        print(text)
        if track:
            print("cascade study: warning: --track logs the compare protocol only; the margin study is not logged",
                  file=sys.stderr)
        return 0
    t0 = time.time()
    res = protocol.run_study(
        chains, chain_models=orders, methods=methods,
        reference=args.reference, n_values=[v.strip() for v in args.n_values.split(",") if v.strip()],
        n_subsamples=args.subsamples, seed=args.seed, n_jobs=args.jobs, overrides=overrides,
        signal=args.signal or "confidence", cost_mode=args.cost, max_len=args.max_len, transform=args.transform,
        progress=lambda s: print(s, file=sys.stderr, flush=True))
    for name, t in res.meta["transforms"].items():
        print(f"cascade study: chain {name}: transform {t['transform']}: {t['transform_reason']}", file=sys.stderr)
    res.runs.to_csv(out / "runs.csv", index=False)
    res.per_cascade.to_csv(out / "per_cascade.csv", index=False)
    res.summary.to_csv(out / "summary.csv", index=False)
    res.curves.to_json(out / "curves.json", orient="records")
    table = protocol.format_table(res.summary)
    failed = res.runs[res.runs["error"] != ""]
    meta = dict(res.meta, wall_seconds=time.time() - t0, n_failed_fits=int(len(failed)), chains=info)
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    (out / "table.txt").write_text(table + "\n")
    if not args.no_plots and not res.curves.empty:
        protocol.plot_curves(res.curves, out / "plots", n="all" if "all" in res.meta["n_values"] else res.meta["n_values"][-1])
    print(table)
    if len(failed):
        print(f"{len(failed)} fit(s) failed; see runs.csv column 'error'", file=sys.stderr)
    if res.meta["n_degenerate_fits"]:
        print(f"cascade study: warning: {res.meta['n_degenerate_fits']} fit(s) are degenerate (e.g. a subsample where "
              "a model is always right); see runs.csv column 'degenerate'", file=sys.stderr)
    if track:
        return track_study(args, out)
    return 0


def track_study(args, out: Path) -> int:
    """Log the written study (its folder on disk stays whatever happens here)."""
    import tracking
    from cascade.evaluate import metrics as M

    try:
        run_id = tracking.log_study(out, experiment=args.experiment, uri=args.tracking_uri,
                                    output_fingerprint=M.output_fingerprint(out))
    except tracking.TrackingUnavailable as e:
        log_cmd = f"cascade log {out}" + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else "")
        print(e.line("cascade study", kept=out, log_command=log_cmd), file=sys.stderr)
        return 3
    print(f"logged the study (parent run {run_id}, a run per chain x method) to MLflow at "
          f"{tracking.tracking_uri(args.tracking_uri)}")
    return 0
