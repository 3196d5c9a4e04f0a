"""``cascade tune`` and ``cascade compare``."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.evaluate import curves as evaluate
from cascade.data import records
from cascade.evaluate import tuning as tune


def _parse_value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if v.lower() in ("none", "null"):
        return None
    return v


def parse_params(items: list[str]) -> dict:
    params = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--param {item!r}: use NAME=VALUE, e.g. --param n_quantiles=20")
        k, v = item.split("=", 1)
        params[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return params


def register(sub) -> None:
    p = sub.add_parser(
        "tune", help="pick deferral thresholds on a training split and score the curve on a test split",
        description="Fit a threshold tuner on the training split and score every threshold vector on the test "
                    "split with real labels and costs. Writes DIR/curve.parquet and DIR/summary.json.")
    p.add_argument("--results", required=True, help="results store (folder) or a records Parquet file")
    p.add_argument("--benchmark", help="benchmark name (required when the store holds several)")
    p.add_argument("--models", required=True, help="the cascade in order, comma-separated: m1,m2,...")
    p.add_argument("--all-cascades", action="store_true",
                   help="treat --models as a chain and tune every ordered sub-sequence of length >= 2 "
                        "(written to DIR/<cascade>/)")
    p.add_argument("--method", default="markov-copula", help="tuning method (markov-copula, grid, ...)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--cost", default="model-mean", choices=tune.COST_MODES,
                   help="per-query: each query's own cost; model-mean: each model's mean cost on the split "
                        "(train mean to tune, test mean to score)")
    p.add_argument("--calibration", default="auto", choices=["auto", "none"],
                   help="auto: logistic calibration fitted on the training split; none: the signal is P(correct)")
    p.add_argument("--signal", default=None,
                   help="confidence-signal column (default: 'confidence', else 'conf_mean_logprob')")
    p.add_argument("--lambda-stop", default="cascade", choices=["cascade", "cheapest"],
                   help="markov-copula: stop the lambda path near the cascade's first model's cost (cascade) or "
                        "near the cheapest model of the benchmark (cheapest, the release's behaviour)")
    p.add_argument("--gof", action="store_true", help="markov-copula: add a goodness-of-fit report")
    p.add_argument("--gof-bootstrap", type=int, default=100, help="bootstrap replicates for goodness-of-fit p-values")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter, e.g. --param score=calibrated (grid) or --param integration=exact")
    p.add_argument("--seed", type=int, default=0, help="seed for methods and bootstraps that draw random numbers")
    p.add_argument("--out", required=True, help="output folder")
    add_tracking_args(p)
    p.set_defaults(func=run_tune)

    c = sub.add_parser(
        "compare", help="compare tuned curves on the same cascades (AUC over the shared cost range)",
        description="Compare the test curves of two or more methods. Each DIR is a `cascade tune` output or a "
                    "folder holding several (searched recursively for summary.json).")
    c.add_argument("dirs", nargs="+", metavar="DIR")
    c.add_argument("--baseline", help="method the others are compared against (default: the last DIR's method)")
    c.add_argument("--csv", help="write the per-cascade table to this CSV file")
    c.set_defaults(func=run_compare)


def add_tracking_args(p) -> None:
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--track", action="store_true",
                   help="log to MLflow after the outputs are written (python -m jobs.tune always does)")
    g.add_argument("--experiment", help="MLflow experiment (default: the benchmark's name)")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<repo>/mlflow.db)")


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
    except tracking.TrackingUnavailable as e:
        print(f"cascade tune: tracking failed: {e}\n  the results are safe under {args.out}; log them later with "
              f"`cascade log {args.out} --results {records_path}`", file=__import__("sys").stderr)
        return 3
    print(f"logged {len(out_dirs)} run(s) to MLflow experiment {experiment!r} at "
          f"{tracking.tracking_uri(args.tracking_uri)}")
    return 0


def _default_signal(df: pd.DataFrame) -> str:
    if "confidence" in df.columns:
        return "confidence"
    sigs = records.signal_columns(df.columns)
    if "conf_mean_logprob" in sigs:
        return "conf_mean_logprob"
    if sigs:
        return sigs[0]
    raise ValueError("the records hold no confidence-signal column")


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_outputs(out: Path, curve: pd.DataFrame, summary: dict) -> None:
    _write_atomic(out / "curve.parquet", lambda p: curve.to_parquet(p, index=False))
    _write_atomic(out / "summary.json",
                  lambda p: Path(p).write_text(json.dumps(summary, indent=2, default=_json_default)))


def cascades_of(chain: list[str]) -> list[list[str]]:
    """Every ordered sub-sequence of length >= 2 of a chain, in the release's order (by last model)."""
    out = []
    for last in range(1, len(chain)):
        for r in range(1, last + 1):
            for pre in itertools.combinations(range(last), r):
                out.append([chain[i] for i in pre] + [chain[last]])
    return out


def run_tune(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    params = parse_params(args.param)
    cls = tune.get_method(args.method)
    df = records.load(args.results, benchmark=args.benchmark)
    if df.empty:
        raise ValueError(f"benchmark {args.benchmark!r} has no records in {args.results}")
    benchmarks = sorted(df["benchmark"].unique())
    if args.benchmark is None and len(benchmarks) > 1:
        raise ValueError(f"{args.results} holds several benchmarks ({', '.join(benchmarks)}); pass --benchmark")
    args.benchmark = args.benchmark or benchmarks[0]  # recorded in summary.json
    signal = args.signal or _default_signal(df)
    if "seed" in cls.__init__.__code__.co_varnames and "seed" not in params:
        params["seed"] = args.seed
    if args.method == "markov-copula" and args.lambda_stop == "cheapest":
        train = df[df["split"] == args.train_split]
        params.setdefault("stop_reference", "chain")
        params.setdefault("reference_cost", float(train.groupby("model")["cost"].mean().min() * tune.COST_SCALE))
    if len(models) < 2:
        raise ValueError(f"--models {args.models!r}: a cascade needs at least two models, e.g. --models small,large")
    cascades = cascades_of(models) if args.all_cascades else [models]
    out = Path(args.out)
    rows, written, results = [], [], []
    for casc in cascades:
        res = tune.run_tuning(
            df, models=casc, method=args.method, benchmark=args.benchmark, train_split=args.train_split,
            test_split=args.test_split, cost_mode=args.cost, calibration=args.calibration, signal=signal,
            params=params)
        if args.gof and args.method == "markov-copula":
            from cascade.evaluate import gof

            train, test, _ = tune.prepare(df, models=casc, train_split=args.train_split, test_split=args.test_split,
                                          benchmark=args.benchmark, signal=signal, calibration=args.calibration,
                                          cost_mode=args.cost)
            res.summary["goodness_of_fit"] = gof.report(res.tuner.model_, train, test,
                                                        n_boot=args.gof_bootstrap, seed=args.seed)
            print(f"goodness of fit, {' -> '.join(casc)}:\n{gof.format_report(res.summary['goodness_of_fit'])}")
        target = out / "-".join(casc) if args.all_cascades else out
        results.append((target, res))
        rows.append({"cascade": " -> ".join(casc), "k": len(casc), "points": len(res.curve),
                     "test_auc": res.summary["test_auc"], "seconds": res.summary["seconds"]})
    # every cascade is tuned before anything is written: a bad cascade leaves no partial output
    for target, res in results:
        write_outputs(target, res.curve, res.summary)
        written.append(target)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {len(cascades)} curve(s) under {out}")
    if getattr(args, "track", False):
        return track_outputs(args, written, args.benchmark, Path(args.results).resolve(), df,
                             run_name=f"tune {args.method}: {args.models}")
    return 0


def _collect(dirs: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    found = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"{d}: no such folder")
        summaries = [d / "summary.json"] if (d / "summary.json").exists() else sorted(d.rglob("summary.json"))
        if not summaries:
            raise ValueError(f"{d}: no summary.json found; pass `cascade tune --out` folders")
        for s in summaries:
            curve_path = s.parent / "curve.parquet"
            if not curve_path.exists():
                raise ValueError(f"{s.parent}: summary.json without curve.parquet")
            found.append((json.loads(s.read_text()), pd.read_parquet(curve_path)))
    return found


def compare_table(found: list[tuple[dict, pd.DataFrame]], baseline: str) -> pd.DataFrame:
    by_cascade: dict[tuple, dict[str, pd.DataFrame]] = {}
    for summ, curve in found:
        key = (summ.get("benchmark"), tuple(summ["models"]))
        by_cascade.setdefault(key, {})[summ["method"]] = curve
    rows = []
    for (bench, models), methods in by_cascade.items():
        if baseline not in methods:
            continue
        base = methods[baseline]
        for method, curve in methods.items():
            if method == baseline:
                continue
            cmp = evaluate.compare_curves(curve.test_cost, curve.test_error, base.test_cost, base.test_error)
            rows.append({"benchmark": bench, "cascade": " -> ".join(models), "k": len(models), "method": method,
                         "baseline": baseline, "cost_lo": cmp.lo, "cost_hi": cmp.hi, "auc": cmp.auc_a,
                         "auc_baseline": cmp.auc_b, "pct_change": cmp.pct_change})
    return pd.DataFrame(rows)


def run_compare(args) -> int:
    found = _collect(args.dirs)
    methods = [s["method"] for s, _ in found]
    if len(set(methods)) < 2:
        raise ValueError(f"compare needs curves of at least two methods; found only {sorted(set(methods))}")
    baseline = args.baseline or methods[-1]
    if baseline not in methods:
        raise ValueError(f"--baseline {baseline!r} is not among the methods found ({', '.join(sorted(set(methods)))})")
    table = compare_table(found, baseline)
    if table.empty:
        raise ValueError("no cascade has curves from both a method and the baseline; tune the same --models")
    fmt = lambda v: f"{v:.4f}"  # noqa: E731
    pd.set_option("display.width", 160)
    print(table.drop(columns=["baseline"]).to_string(index=False, float_format=fmt))
    for method, g in table.groupby("method"):
        print(f"\n{method} vs {baseline}: % change of AUC (negative = {method} better), one-sided paired Wilcoxon")
        print(evaluate.summarize_by_length(g).to_string(index=False, float_format=fmt))
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
        print(f"\nwrote {args.csv}")
    return 0


__all__ = ["register", "run_tune", "run_compare", "cascades_of", "compare_table", "parse_params", "argparse"]
