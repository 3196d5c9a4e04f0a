"""The ``cascade`` command line: one entry point, one sub-command per module in :data:`COMMANDS`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the default. Errors a user can fix (bad input, bad config) are raised as
``UserError``/``ValueError``/``RecordsError`` subclasses and printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cascade.data.records import RecordsError

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


class UserError(Exception):
    """An error in the user's input: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade", description="Build, measure and tune LLM cascades.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    except (UserError, RecordsError, ValueError, FileNotFoundError) as e:
        print(f"cascade {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
