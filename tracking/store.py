"""The MLflow store: where it is, whether it answers, and one way every store failure reaches the caller
(:class:`TrackingUnavailable`, a one-line reason; commands exit 3 and print how to log the kept results later).

SQLite stores are written by one process at a time (a file lock ``<store>.lock`` beside the database): two
commands logging at once (two sweeps, a sweep and a `cascade log`) neither race MLflow's table creation nor
trip SQLite's "database is locked"."""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DB = REPO_ROOT / "mlflow.db"
DEFAULT_ARTIFACTS = REPO_ROOT / "mlartifacts"
STORE_LOCK_TIMEOUT_S = 300.0

#: MLflow's HTTP client defaults (7 retries, backoff factor 2 capped at 120 s, 120 s timeout) keep a command
#: silent for 4 to 13 minutes per call once a tracking server dies. For an http(s) store these bounds are
#: set instead, unless the user set the variable: a call to a dead server then fails within
#: 3 x 10 s (connect/read timeouts) + 0 + 2 s backoff (+ <2 s jitter), ~35 s at worst, ~3 s when the port refuses.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
#: Ending a run after a failure is best effort: one try, 3 s (the store already failed once).
HTTP_LAST_TRY = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}

# MLflow logs a store failure (several lines, with the SQL) before raising it; the raised error reaches the
# user as one line through TrackingUnavailable, so the log records are not needed.
for _name, _level in (("alembic", logging.WARNING), ("mlflow.store.db.utils", logging.CRITICAL),
                      ("mlflow.tracking.fluent", logging.WARNING), ("urllib3.connectionpool", logging.ERROR)):
    logging.getLogger(_name).setLevel(_level)


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used (unreachable, read-only, not a store, a bad URI); results on disk are
    safe and can be logged later. The message is one line."""

    def line(self, prog: str, kept: str | os.PathLike | None = None, log_command: str | None = None) -> str:
        """The one line a command prints before exiting 3."""
        msg = f"{prog}: tracking failed: {self}"
        if kept is not None:
            msg += f"; the results are kept in {kept}"
        if log_command:
            msg += f"; log them later with `{log_command}`"
        return msg


def _reason(e: BaseException) -> str:
    """The innermost cause's type and first line (SQLAlchemy's own first line names no cause)."""
    root, seen = e, {id(e)}
    while True:
        nxt = root.__cause__ or root.__context__
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        root = nxt
    text = next((ln.strip() for ln in str(root).splitlines() if ln.strip()), "")
    if text.startswith("(") and ")" in text and type(root).__name__ in text[:80]:  # "(sqlite3.X) reason"
        text = text.split(")", 1)[1].strip()
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def current_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


@contextlib.contextmanager
def guard(what: str, uri: str | None = None):
    """Any failure inside becomes :class:`TrackingUnavailable` naming ``what``, the store and the cause."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the store raised, the results are on disk and not logged
        where = uri
        if where is None:
            with contextlib.suppress(Exception):
                where = current_uri()
        raise TrackingUnavailable(f"{what} at {where or 'the tracking store'} failed: {_reason(e)}") from e


# ------------------------------------------------------------------------------------------------
# Where the store is
# ------------------------------------------------------------------------------------------------

RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in a `ray job submit` driver


def in_ray_job() -> bool:
    return bool(os.environ.get(RAY_JOB_ENV))


def _refuse_in_ray_job(given: str, path: str, source: str) -> None:
    """Inside a `ray job submit` driver the working directory (and this repository's copy, where the default
    store lives) is a temporary folder Ray deletes: a relative or default SQLite store would vanish with it."""
    if not in_ray_job():
        return
    if not source:
        raise TrackingUnavailable("inside a Ray job no tracking URI was given, and the default store would be written "
                                  "into the job's temporary copy of the repository (deleted afterwards): pass "
                                  "--tracking-uri sqlite:////ABS/PATH/mlflow.db (a disk the submitting side sees) "
                                  "or http(s)://HOST:PORT, or set MLFLOW_TRACKING_URI in the runtime env")
    if not Path(path).expanduser().is_absolute():
        raise TrackingUnavailable(f"{source} {given!r} is relative: inside a Ray job it would resolve into the job's "
                                  "temporary working directory (deleted afterwards); give an absolute path "
                                  "(sqlite:////ABS/PATH/mlflow.db) or http(s)://HOST:PORT")


def tracking_uri(uri: str | None = None) -> str:
    """Explicit ``uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<repo>/mlflow.db``; SQLite paths made absolute
    (a Ray job runs in a temporary working directory, where a relative path would point elsewhere)."""
    given = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    source = "--tracking-uri" if uri else ("MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "")
    fix = "use sqlite:///ABS/PATH.db or http(s)://HOST:PORT"
    if given.startswith("sqlite:///"):
        path = given[len("sqlite:///"):]
        if not path or path.endswith("/"):
            raise TrackingUnavailable(f"{source or 'tracking URI'} {given!r} names no database file: {fix}")
        _refuse_in_ray_job(given, path, source)
        return f"sqlite:///{Path(path).expanduser().resolve()}"
    if "://" not in given:
        if given.endswith(".db"):
            _refuse_in_ray_job(given, given, source)
            return f"sqlite:///{Path(given).expanduser().resolve()}"
        raise TrackingUnavailable(f"{source or 'tracking URI'} {given!r} is not a tracking URI: {fix} "
                                  "(MLflow's file store is deprecated)")
    scheme = given.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        if not given.split("://", 1)[1].strip("/"):
            raise TrackingUnavailable(f"{source or 'tracking URI'} {given!r} names no host: {fix}")
        for k, v in HTTP_DEFAULTS.items():  # a dead server fails a call in ~35 s, not minutes
            os.environ.setdefault(k, v)
        return given
    if scheme.split("+")[0] in ("postgresql", "mysql", "mssql", "databricks", "file"):
        return given
    raise TrackingUnavailable(f"{source or 'tracking URI'} {given!r}: unknown scheme {scheme!r}: {fix}")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def store_exists(uri: str) -> bool:
    """False only for a SQLite store whose file does not exist yet (reading it would create it)."""
    p = sqlite_path(uri)
    return p is None or p.exists()


def check_reachable(uri: str, timeout: float = 5.0, *, write: bool = True) -> None:
    """Raise :class:`TrackingUnavailable` if an HTTP tracking server does not answer ``/health``, or a SQLite
    store cannot be written (its folder or file read-only, or the file is not a SQLite database).
    ``write=False``: only what reading needs (no folder is created; a missing store is fine)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingUnavailable(f"MLflow server {uri} answered {r.status} on /health")
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise TrackingUnavailable(f"MLflow server {uri} is unreachable ({_reason(e)})") from e
        return
    db = sqlite_path(uri)
    if db is None:
        return
    if db.is_dir():
        raise TrackingUnavailable(f"SQLite tracking store {db} is a folder: name a database file")
    if not write:
        if db.is_file():
            _check_sqlite_header(db)
        return
    parent = db.parent
    if parent.exists() and not parent.is_dir():
        raise TrackingUnavailable(f"cannot create the SQLite tracking store {db}: {parent} is a file")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingUnavailable(f"cannot create the SQLite tracking store folder {parent}: {_reason(e)}") from e
    if not os.access(parent, os.W_OK):
        raise TrackingUnavailable(f"SQLite tracking store folder {parent} is not writable")
    if db.exists():
        if not os.access(db, os.W_OK):
            raise TrackingUnavailable(f"SQLite tracking store {db} is read-only")
        _check_sqlite_header(db)


def _check_sqlite_header(db: Path) -> None:
    try:
        with open(db, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise TrackingUnavailable(f"cannot read the SQLite tracking store {db}: {_reason(e)}") from e
    if head and head != b"SQLite format 3\x00":
        raise TrackingUnavailable(f"{db} is not a SQLite database (not an MLflow store)")


@contextlib.contextmanager
def last_try(uri: str | None = None):
    """MLflow calls made after the store failed (ending the open runs FAILED or KILLED): on an http(s) store
    one try with a 3 s timeout each, so that closing up does not wait out the retries again."""
    if uri is None:
        with contextlib.suppress(Exception):
            uri = current_uri()
    if not str(uri or "").startswith(("http://", "https://")):
        yield
        return
    saved = {k: os.environ.get(k) for k in HTTP_LAST_TRY}
    os.environ.update(HTTP_LAST_TRY)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------
# One writer at a time (SQLite)
# ------------------------------------------------------------------------------------------------

_LOCKS: dict[str, object] = {}


@contextlib.contextmanager
def write_lock(uri: str | None = None, *, for_read: bool = False):
    """Hold the store's write lock (SQLite only; re-entrant in one thread; a server serialises by itself).
    ``for_read``: a reader that may have to create MLflow's tables in a new store; where the lock file cannot
    be created (a read-only folder) it reads without the lock."""
    uri = uri or current_uri()
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    key = str(db)
    lock = _LOCKS.get(key)
    if lock is None:
        lock = _LOCKS[key] = FileLock(f"{db}.lock")
    try:
        lock.acquire(timeout=STORE_LOCK_TIMEOUT_S)
    except Timeout as e:
        raise TrackingUnavailable(f"SQLite tracking store {db} stayed locked by another process for "
                                  f"{STORE_LOCK_TIMEOUT_S:.0f}s ({db}.lock)") from e
    except OSError as e:
        if for_read:
            yield
            return
        raise TrackingUnavailable(f"cannot lock the SQLite tracking store {db}: {_reason(e)}") from e
    try:
        yield
    finally:
        lock.release()


# ------------------------------------------------------------------------------------------------
# Experiment
# ------------------------------------------------------------------------------------------------

def _artifact_location(uri: str, experiment: str) -> str | None:
    db = sqlite_path(uri)
    if db is not None:
        root = DEFAULT_ARTIFACTS if db == DEFAULT_DB else db.parent / "mlartifacts"
        return (root / experiment).as_uri()
    return None  # a tracking server decides (its --artifacts-destination / --default-artifact-root)


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"
EXPERIMENT_DESCRIPTION = (
    "cascade-eval: LLM cascades tuned on a training split, error and cost measured on a test split (costs in USD "
    "per million queries, errors as shares of test queries).\n\n"
    "- The answer (which method, which models in which order, which thresholds, at which budget): open the "
    "parent run (tag `cascade.kind=parent`); its description is the answer table, its artifact `report.html` "
    "the interactive answer (pick a budget) with every curve overlaid.\n"
    "- Compare runs at a budget: `test_error_at_usd<B>` (the same budgets B on every run of the benchmark; "
    "history `test_error_curve`, step = budget index: the chart view overlays the runs' curves). "
    "`test_auc` and `test_error_at_*pct_budget` are on each curve's own cost range and do not compare across "
    "runs; `auc_shared` compares the methods of one cascade.\n"
    "- `cascade.degenerate=true` (metric `degenerate`=1) flags a curve that cannot be trusted as a curve; the "
    "tag `cascade.degenerate_reason` says why.")


def configure(uri: str | None = None, experiment: str = "cascade-eval", description: str | None = None) -> str:
    """Point MLflow at the store and make ``experiment`` current (created if missing); returns its id.
    ``description``: the experiment's description when it has none yet (default: the tuning runs' one)."""
    import mlflow

    uri = tracking_uri(uri)
    check_reachable(uri)
    with guard(f"opening experiment {experiment!r}", uri), write_lock(uri):
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise TrackingUnavailable(f"experiment {experiment!r} is deleted in {uri}: restore it "
                                      f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) "
                                      "or pick another --experiment")
        exp_id = exp.experiment_id if exp else client.create_experiment(
            experiment, artifact_location=_artifact_location(uri, experiment))
        have = dict(exp.tags) if exp else {}
        # the kind MLflow's "Machine learning" choice writes (3.17.2's UI picks the landing page from the browser's
        # workflow type instead: `mlflow ui --app-name cascade`, tracking/ui_app.py)
        if have.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if not have.get(DESCRIPTION_TAG):  # a description a person wrote is kept
            client.set_experiment_tag(exp_id, DESCRIPTION_TAG, description or EXPERIMENT_DESCRIPTION)
        mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def experiment_id(experiment: str, uri: str | None = None) -> str | None:
    """The id of an existing experiment, or None (reads only; a missing SQLite store is not created)."""
    import mlflow

    uri = tracking_uri(uri)
    if not store_exists(uri):
        return None
    with guard(f"reading experiment {experiment!r}", uri), write_lock(uri, for_read=True):  # may create tables
        exp = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    return None if exp is None or exp.lifecycle_stage == "deleted" else exp.experiment_id
