"""Tracking: every run goes to MLflow. This package observes; the library (``cascade/``) never imports it.

Default store: SQLite at ``<repo>/mlflow.db`` (absolute), artifacts under ``<repo>/mlartifacts``;
``MLFLOW_TRACKING_URI`` or an explicit ``--tracking-uri`` wins. One experiment per benchmark or sweep, a
parent run per sweep/demo, a nested run per (cascade, method, sample size, seed) cell, and a run per
scoring job. Only the driver process logs (SQLite dislikes concurrent writers).

Results are always written to disk before anything is logged: when the tracking server is unreachable,
:class:`TrackingUnavailable` says where the results are, and ``cascade log DIR`` logs them later.
"""

from .mlflow_log import (
    DEFAULT_ARTIFACTS,
    DEFAULT_DB,
    REPO_ROOT,
    TrackingUnavailable,
    check_reachable,
    configure,
    data_fingerprint,
    find_finished,
    git_commit,
    log_scoring,
    log_tune,
    log_tune_dir,
    parent_run,
    tracking_uri,
)

__all__ = [
    "DEFAULT_ARTIFACTS", "DEFAULT_DB", "REPO_ROOT", "TrackingUnavailable", "check_reachable", "configure",
    "data_fingerprint", "find_finished", "git_commit", "log_scoring", "log_tune", "log_tune_dir", "parent_run",
    "tracking_uri",
]
