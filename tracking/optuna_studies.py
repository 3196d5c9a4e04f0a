"""Optuna studies of bayes-opt tuning runs, persisted where ``optuna-dashboard`` can open them.

The tuner keeps its studies in memory and exports their trials into ``summary.json``
(``diagnostics.optuna``, :func:`cascade.tuners.bayes_opt.export_study`); when a run is logged they are rebuilt
in one Optuna storage next to the MLflow store, named after the MLflow run id:

- study name: the run id (``mode=multi``), or ``<run id>/lambda=<v>`` per lambda (``mode=scalar``);
- storage (:func:`storage_for`): ``$CASCADE_OPTUNA_STORAGE`` (any Optuna storage URL) if set; else, for a
  SQLite tracking store ``sqlite:///DIR/X.db``, ``sqlite:///DIR/optuna.db``; else (a tracking server or a
  database store) none shared: the run gets its studies as the artifact ``optuna/study.db`` (a SQLite file).

SQLite storages are written under a file lock ``<file>.lock`` (one writer at a time, so two commands logging at
once neither race Optuna's table creation nor trip "database is locked"), in WAL mode (readers such as a running
dashboard do not block the writer). A run tuned with an explicit ``--param storage=URL`` already has its study
there: it is linked, not copied.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

STORAGE_ENV = "CASCADE_OPTUNA_STORAGE"
ARTIFACT = "optuna/study.db"
LOCK_TIMEOUT_S = 300.0


def storage_for(tracking_uri: str) -> str | None:
    """The Optuna storage URL beside a tracking store (see the module doc), or None when there is none."""
    env = os.environ.get(STORAGE_ENV)
    if env:
        return env
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    return None


def study_names(run_id: str, export: dict) -> list[str]:
    return [run_id if not s.get("name") else f"{run_id}/{s['name']}" for s in export.get("studies") or []]


def _sqlite_file(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


@contextlib.contextmanager
def _storage(url: str):
    """An RDBStorage for ``url``; SQLite: under ``<file>.lock``, WAL journal, 60 s busy timeout."""
    import optuna

    db = _sqlite_file(url)
    if db is None:
        storage = optuna.storages.RDBStorage(url)
        try:
            yield storage
        finally:
            storage.engine.dispose()
        return
    import sqlalchemy
    from filelock import FileLock, Timeout

    db.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{db}.lock")
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout as e:
        raise RuntimeError(f"Optuna storage {db} stayed locked for {LOCK_TIMEOUT_S:.0f}s ({db}.lock)") from e
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

        def on_connect(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # a dashboard reading the file does not block us
            cur.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe, and ~4x faster trial inserts
            cur.close()

        sqlalchemy.event.listen(storage.engine, "connect", on_connect)
        storage.engine.dispose()  # connections opened while creating the tables get the pragmas too
        try:
            yield storage
        finally:
            storage.engine.dispose()
    finally:
        lock.release()


def persist(export: dict, run_id: str, url: str, user_attrs: dict | None = None) -> list[str]:
    """Rebuild the exported studies in storage ``url`` under :func:`study_names`; returns the names. A study
    of that name already there (the same run logged again) is replaced."""
    import warnings

    import optuna

    from cascade.tuners.bayes_opt import rebuild_trials

    names = study_names(run_id, export)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per logged run
    try:
        with _storage(url) as storage, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for name, spec in zip(names, export["studies"]):
                with contextlib.suppress(KeyError):
                    optuna.delete_study(study_name=name, storage=storage)
                study = optuna.create_study(storage=storage, study_name=name, directions=spec["directions"])
                if spec.get("metric_names"):
                    study.set_metric_names(spec["metric_names"])
                attrs = {**(user_attrs or {}), "mode": export.get("mode"), "sampler": export.get("sampler"),
                         "seed": export.get("seed"), "mlflow_run_id": run_id}
                if "lambda" in spec:
                    attrs["lambda"] = spec["lambda"]
                for k, v in attrs.items():
                    if v is not None:
                        study.set_user_attr(k, v)
                study.add_trials(rebuild_trials(spec))
    finally:
        optuna.logging.set_verbosity(level)
    return names


def log_studies(export: dict, run_id: str, tracking_uri: str, user_attrs: dict | None = None) -> dict:
    """Persist a run's exported studies (inside the active MLflow run); returns the tags that link them:
    ``optuna.storage`` (a URL, or ``artifact:optuna/study.db``) and ``optuna.study_name`` (names joined by
    ``, ``)."""
    import mlflow

    url = storage_for(tracking_uri)
    if url is not None:
        names = persist(export, run_id, url, user_attrs)
        return {"optuna.storage": url, "optuna.study_name": ", ".join(names)}
    with tempfile.TemporaryDirectory() as tmp:
        names = persist(export, run_id, f"sqlite:///{Path(tmp) / 'study.db'}", user_attrs)
        mlflow.log_artifact(str(Path(tmp) / "study.db"), artifact_path=str(Path(ARTIFACT).parent))
    return {"optuna.storage": f"artifact:{ARTIFACT}", "optuna.study_name": ", ".join(names)}


__all__ = ["ARTIFACT", "STORAGE_ENV", "log_studies", "persist", "storage_for", "study_names"]
