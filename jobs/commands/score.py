"""``cascade score CONFIG.yaml``: argument parsing only; the work is :func:`jobs.score.command`."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score benchmark queries with one or more models (Ray Data actor pools) into a results store",
        description="Score benchmark queries with the stages of CONFIG.yaml and write records as Parquet shards. "
        "A rerun skips finished shards and rescores damaged ones. See docs/scoring.md.",
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
    from jobs.score import command

    return command(args.config, out=args.out, limit=args.limit, check_only=args.check,
                   progress=False if args.no_progress else None, as_json=args.json, track=args.track,
                   experiment=args.experiment, tracking_uri=args.tracking_uri)


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.commands.score CONFIG.yaml``: the score command alone, with the CLI's error handling."""
    import sys

    from jobs import cli

    return cli.main(["score", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    import sys

    sys.exit(main())
