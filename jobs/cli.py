"""The ``cascade`` command line: one entry point, one sub-command per module in :data:`COMMANDS`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the default. Errors a user can fix (bad input, bad config) are raised as
:class:`cascade.errors.UserError` or ``ValueError`` subclasses (``RecordsError`` is one) and printed as
one line, exit status 2.

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
    except (UserError, ValueError, FileNotFoundError) as e:  # RecordsError, ConfigError: ValueError subclasses
        print(f"cascade {args.command}: error: {e}", file=sys.stderr)
        return 2


__all__ = ["COMMANDS", "OPTIONAL_COMMANDS", "UserError", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
