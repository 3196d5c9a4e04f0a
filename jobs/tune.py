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

from jobs import cli


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.main(["tune", "--track", *argv])


if __name__ == "__main__":
    sys.exit(main())
