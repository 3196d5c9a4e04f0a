"""The ``cascade`` command line: one entry point, one sub-command per module in :data:`COMMANDS`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the default. Errors a user can fix (bad input, bad config) are raised as
:class:`cascade.errors.UserError` or ``ValueError`` subclasses (``RecordsError`` is one) and printed as
one line, exit status 2. Ctrl-C (SIGINT) ends any command with one line saying what is kept, exit status
130 (:func:`interrupted`): outputs are only ever installed whole (a tune or select folder, a records shard,
a sweep cell), and MLflow runs in progress are ended KILLED by ``tracking``.

This module imports nothing heavy (no pandas, pyarrow, scipy, cascade.data ...): command modules keep
such imports inside their functions, so ``cascade --help`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cascade.errors import UserError

COMMANDS = [
    "jobs.commands.records",  # cascade import
    "jobs.commands.tune",  # cascade tune, cascade compare
    "jobs.commands.select",  # cascade select
]
# Optional command modules (added by the scoring, baselines and tracking work); skipped if absent.
OPTIONAL_COMMANDS = [
    "jobs.commands.score",  # cascade score
    "jobs.commands.study",  # cascade study (baselines protocol)
    "jobs.commands.sweep",  # cascade sweep
    "jobs.commands.log",  # cascade log
]


#: What an interrupted command leaves, by command (the default: nothing partial).
_KEPT_ON_INTERRUPT = {
    "score": "the shards finished so far are kept; rerun the same command to score the rest",
    "sweep": "finished cells are kept; rerun the same command to run the rest",
    "study": "nothing partial is left; rerun the command",
}


def interrupted(command: str) -> int:
    """The one line of a command stopped by Ctrl-C (SIGINT) on stderr; returns its exit status, 130."""
    kept = _KEPT_ON_INTERRUPT.get(command, "no partial output is left (outputs are installed whole or not at all)")
    print(f"cascade {command}: interrupted (Ctrl-C); {kept}", file=sys.stderr)
    return 130


def version() -> str:
    """The installed distribution's version (importlib.metadata), or "unknown" when not installed."""
    from importlib import metadata

    try:
        return metadata.version("cascade-eval")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """``--version``: looks the version up only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"cascade {version()}")
        parser.exit()


def _register_list(sub) -> None:
    p = sub.add_parser(
        "list", help="list the registered tuning methods, benchmarks or confidence signals",
        description="Print the names the code registers (cascade.tuners.METHODS, cascade.data.benchmarks, "
                    "cascade.scoring.signals) with a one-line description each.")
    p.add_argument("kind", choices=["methods", "benchmarks", "signals"],
                   help="methods: tuning methods (cascade tune --method); benchmarks: benchmarks scoring knows "
                        "(scoring configs' benchmarks:); signals: confidence signals (scoring configs' signals:, "
                        "records columns conf_<name>)")
    p.add_argument("--names", action="store_true", help="print the names only, one a line")
    p.set_defaults(func=_run_list)


def _run_list(args) -> int:
    from jobs.choices import listing

    rows = listing(args.kind)
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(name if args.names else f"{name:<{width}}  {desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade", description="Build, measure and tune LLM cascades.")
    parser.add_argument("--version", action=_Version, help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_list(sub)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    for name in OPTIONAL_COMMANDS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return interrupted(args.command)
    except (UserError, ValueError, FileNotFoundError) as e:  # RecordsError, ConfigError: ValueError subclasses
        print(f"cascade {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        # A tracking failure a command did not turn into its own line (tracking.TrackingUnavailable, matched
        # by name so that this module never imports MLflow): one line, exit 3.
        if type(e).__name__ != "TrackingUnavailable" or not type(e).__module__.startswith("tracking"):
            raise
        print(e.line(f"cascade {args.command}"), file=sys.stderr)
        return 3


__all__ = ["COMMANDS", "OPTIONAL_COMMANDS", "UserError", "build_parser", "interrupted", "main", "version"]

if __name__ == "__main__":
    sys.exit(main())
