"""``cascade sweep SPEC.yaml``: the sweep runner of jobs/sweep.py as a sub-command."""

from __future__ import annotations


def register(sub) -> None:
    from jobs import sweep

    p = sub.add_parser("sweep", help="run a sweep spec (records x cascades x methods x sizes x seeds), tracked in "
                                     "MLflow; finished cells are skipped",
                       description=sweep.__doc__.split("\n\n")[0])
    sweep.add_args(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from jobs import sweep

    return sweep.run_cli(args, "cascade sweep")
