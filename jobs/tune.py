"""``python -m jobs.tune ...``: ``cascade tune`` with MLflow tracking, the entry point for ``ray job submit``.

Same arguments as ``cascade tune`` (see ``cascade tune --help``) plus ``--experiment`` and
``--tracking-uri``. Under ``ray job submit --working-dir .`` the job runs in a temporary copy of the
repository: give ``--results`` and ``--out`` as absolute paths (or paths inside the uploaded working
directory) and an absolute tracking URI (``sqlite:////abs/path/mlflow.db`` or ``http://host:5000``);
relative SQLite paths are resolved against the job's working directory, which Ray deletes afterwards.
Exit status: 0 done, 2 bad input (nothing written), 3 results written but not logged (``cascade log``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs import cli


def _absolute_paths(argv: list[str]) -> list[str]:
    """Make --results/--out absolute (against this process's cwd) so the log and messages name real paths."""
    out = list(argv)
    for i, a in enumerate(out):
        for flag in ("--results", "--out"):
            if a == flag and i + 1 < len(out):
                p = Path(out[i + 1]).expanduser()
                if not p.is_absolute():
                    print(f"jobs.tune: {flag} {out[i + 1]} -> {p.resolve()} (relative to {Path.cwd()}; under "
                          "`ray job submit --working-dir` that is a temporary folder: pass absolute paths)",
                          file=sys.stderr)
                out[i + 1] = str(p.resolve())
            elif a.startswith(flag + "="):
                out[i] = f"{flag}={Path(a.split('=', 1)[1]).expanduser().resolve()}"
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _absolute_paths(list(sys.argv[1:] if argv is None else argv))
    return cli.main(["tune", "--track", *argv])


if __name__ == "__main__":
    sys.exit(main())
