"""``cascade log DIR``: log finished outputs to MLflow after the fact (e.g. the server was down)."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("log", help="log finished `cascade tune` or `cascade score` outputs to MLflow",
                       description="Log a `cascade tune --out DIR` folder (searched recursively for summary.json) "
                                   "or a scoring output folder (holding score_stats.json) to MLflow.")
    p.add_argument("dir", help="a `cascade tune` output folder or a scoring output folder")
    p.add_argument("--results", help="the records the curves were tuned on (for data lineage)")
    p.add_argument("--experiment", help="MLflow experiment (default: the benchmark, or 'scoring')")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    p.set_defaults(func=run_log)


def run_log(args) -> int:
    import tracking

    d = Path(args.dir)
    if not d.exists():
        raise FileNotFoundError(f"{d}: no such folder")
    stats_file = d / "score_stats.json"
    summaries = [d / "summary.json"] if (d / "summary.json").exists() else sorted(d.rglob("summary.json"))
    try:
        if stats_file.exists():
            stats = json.loads(stats_file.read_text())
            tracking.configure(args.tracking_uri, args.experiment or "scoring")
            run_id = tracking.log_scoring(stats, config=stats.get("config"), tags={"cascade.logged_from": str(d)})
            print(f"logged scoring run {run_id}")
            return 0
        if not summaries:
            raise ValueError(f"{d}: neither summary.json (cascade tune) nor score_stats.json (cascade score) found")
        bench = json.loads(summaries[0].read_text()).get("benchmark") or "cascade-eval"
        experiment = args.experiment or bench
        with tracking.parent_run(experiment, f"log {d.name}", uri=args.tracking_uri,
                                 params={"command": "log", "dir": str(d.resolve())}) as parent:
            loaded: dict = {}  # records read once per benchmark, not once per curve
            for s in summaries:
                df = None
                if args.results:
                    from cascade.data import records

                    b = json.loads(s.read_text()).get("benchmark")
                    if b not in loaded:
                        loaded[b] = records.load(args.results, benchmark=b)
                    df = loaded[b]
                tracking.log_tune_dir(s.parent, records_path=args.results, records_df=df,
                                      parent_run_id=parent.info.run_id)
    except tracking.TrackingUnavailable as e:
        print(f"cascade log: {e}; nothing was logged, {d} is unchanged")
        return 3
    print(f"logged {len(summaries)} run(s) to experiment {experiment!r} at {tracking.tracking_uri(args.tracking_uri)}")
    return 0
