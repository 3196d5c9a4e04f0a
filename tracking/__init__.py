"""Tracking: every MLflow call of the project, and nothing but MLflow calls. The library (``cascade/``) never
imports it; what is logged is computed by ``cascade.evaluate.metrics`` and drawn by ``cascade.evaluate.plots``.

Default store: SQLite at ``<repo>/mlflow.db`` (absolute), artifacts under ``<repo>/mlartifacts``;
``MLFLOW_TRACKING_URI`` or an explicit ``--tracking-uri`` wins. One experiment per benchmark or sweep, a
parent run per sweep/demo/command, a nested run per (cascade, method, sample size, seed) cell, and a run per
scoring job. SQLite stores are written by one process at a time (a file lock beside the database).

Results are always written to disk before anything is logged. Every failure of the store (unreachable,
read-only, not a store, a bad URI) reaches the caller as :class:`TrackingUnavailable` with a one-line reason;
commands exit 3, say where the results are and print the ``cascade log DIR`` command that logs them later.
Secret-looking config values are redacted before they are logged (:func:`redact_secrets`).
"""

from .mlflow_log import (
    OUTPUT_FINGERPRINT_TAG,
    comparison_report,
    log_report,
    run_budgets,
    data_fingerprint,
    find_finished,
    find_logged_output,
    git_commit,
    log_scoring,
    log_summary,
    log_tune,
    log_tune_dir,
    parent_run,
)
from .open_runs import close as close_open_runs
from .open_runs import save as save_open_runs
from .redact import REDACTED, is_secret_key, redact_secrets
from .store import (
    DEFAULT_ARTIFACTS,
    DEFAULT_DB,
    REPO_ROOT,
    TrackingUnavailable,
    check_reachable,
    configure,
    experiment_id,
    guard,
    store_exists,
    tracking_uri,
    write_lock,
)
from .study import is_study_dir, log_study
from .sweeps import finished_cells, mark_killed, sweep_parent

__all__ = [
    "DEFAULT_ARTIFACTS", "DEFAULT_DB", "OUTPUT_FINGERPRINT_TAG", "REDACTED", "REPO_ROOT", "TrackingUnavailable",
    "check_reachable", "close_open_runs", "comparison_report", "configure", "log_report", "run_budgets", "data_fingerprint", "experiment_id", "find_finished", "find_logged_output",
    "finished_cells", "git_commit", "guard", "is_secret_key", "is_study_dir", "log_scoring", "log_study", "log_summary", "log_tune", "log_tune_dir",
    "mark_killed", "parent_run", "redact_secrets", "save_open_runs", "store_exists", "sweep_parent", "tracking_uri", "write_lock",
]
