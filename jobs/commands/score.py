"""``cascade score CONFIG.yaml``: score benchmarks with the configured stages (see jobs/score.py)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score benchmark queries with one or more models (Ray actor pools) into a results store",
        description="Score benchmark queries with the stages of CONFIG.yaml and write records as Parquet shards. "
        "A rerun skips finished shards. See docs/scoring.md.",
    )
    p.add_argument("config", help="scoring config (YAML)")
    p.add_argument("--out", help="override the config's output folder")
    p.add_argument("--limit", type=int, help="override the config's limit (first N queries of each split)")
    p.add_argument("--check", action="store_true", help="validate the config and the data, then stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the run's stats as JSON")
    g = p.add_argument_group("tracking (MLflow)")
    g.add_argument("--track", action="store_true", help="log the run to MLflow after the records are written")
    g.add_argument("--experiment", default="scoring", help="MLflow experiment (default: scoring)")
    g.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from cascade.scoring.config import load_config

    cfg = load_config(args.config)
    if args.out or args.limit:
        upd = {}
        if args.out:
            from pathlib import Path

            upd["out"] = str(Path(args.out).resolve())
        if args.limit:
            if args.limit < 1:
                raise ValueError("--limit must be >= 1")
            upd["limit"] = args.limit
        cfg = load_config(cfg.model_copy(update=upd))
    if args.check:
        from jobs.score import plan

        shards, per_split = plan(cfg)
        n = sum(len(v) for v in per_split.values())
        print(f"config ok: {n} queries x {len(cfg.stages)} stage(s), {sum(len(v) for v in shards.values())} shards -> {cfg.out}")
        return 0
    from jobs.score import run, save_stats

    stats = run(cfg, progress=False if args.no_progress else None)
    logged = save_stats(stats, cfg)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(
            f"scored {stats['scored_records']} records ({stats['n_records']} in all, "
            f"{stats['skipped_shards']} finished shards skipped) in {stats['seconds']:.1f}s: "
            f"{stats['queries_per_s']:.2f} queries/s, {stats['output_tokens_per_s']:.1f} output tokens/s -> {stats['out_dir']}"
        )
    if getattr(args, "track", False):
        import sys

        import tracking

        try:
            tracking.configure(args.tracking_uri, args.experiment)
            run_id = tracking.log_scoring(logged, config=logged["config"], config_path=args.config)
        except tracking.TrackingUnavailable as e:
            print(f"cascade score: tracking failed: {e}\n  the records are safe in {stats['out_dir']}; log them "
                  f"later with `cascade log {stats['out_dir']}`", file=sys.stderr)
            return 3
        print(f"logged scoring run {run_id} to {tracking.tracking_uri(args.tracking_uri)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.commands.score CONFIG.yaml``: the score command alone, with the CLI's error handling."""
    import argparse
    import sys

    from cascade.data.records import RecordsError

    parser = argparse.ArgumentParser(prog="cascade")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["score", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (RecordsError, ValueError, FileNotFoundError) as e:
        print(f"cascade score: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    import sys

    sys.exit(main())
