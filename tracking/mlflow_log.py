"""MLflow logging of scoring runs and tuning runs (params, metrics, artifacts, plots, data lineage)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DB = REPO_ROOT / "mlflow.db"
DEFAULT_ARTIFACTS = REPO_ROOT / "mlartifacts"
BUDGET_FRACTIONS = (0.25, 0.5, 0.75)

for _name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached; results on disk are safe and can be logged later."""


# ------------------------------------------------------------------------------------------------
# Store and experiment
# ------------------------------------------------------------------------------------------------

def tracking_uri(uri: str | None = None) -> str:
    """Explicit ``uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<repo>/mlflow.db``; SQLite paths made absolute
    (a Ray job runs in a temporary working directory, where a relative path would point elsewhere)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return f"sqlite:///{Path(path).expanduser().resolve()}"
    if "://" not in uri:
        if uri.endswith(".db"):
            return f"sqlite:///{Path(uri).expanduser().resolve()}"
        raise ValueError(f"tracking URI {uri!r}: use sqlite:///ABS/PATH.db or http(s)://HOST:PORT "
                         "(MLflow's file store is deprecated)")
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` if an HTTP tracking server does not answer ``/health``."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingUnavailable(f"MLflow server {uri} answered {r.status} on /health")
        except (urllib.error.URLError, OSError) as e:
            raise TrackingUnavailable(f"MLflow server {uri} is unreachable ({e})") from e
    elif uri.startswith("sqlite:///"):
        parent = Path(uri[len("sqlite:///"):]).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingUnavailable(f"cannot create the SQLite tracking store folder {parent}: {e}") from e
        if not os.access(parent, os.W_OK):
            raise TrackingUnavailable(f"SQLite tracking store folder {parent} is not writable")


def _artifact_location(uri: str, experiment: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        root = DEFAULT_ARTIFACTS if db == DEFAULT_DB else db.parent / "mlartifacts"
        return (root / experiment).as_uri()
    return None  # a tracking server decides (its --artifacts-destination / --default-artifact-root)


def configure(uri: str | None = None, experiment: str = "cascade-eval") -> str:
    """Point MLflow at the store and make ``experiment`` current; returns its id."""
    import mlflow

    uri = tracking_uri(uri)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            experiment, artifact_location=_artifact_location(uri, experiment))
    except Exception as e:  # noqa: BLE001 - any store error means: not logged
        if isinstance(e, TrackingUnavailable):
            raise
        raise TrackingUnavailable(f"MLflow store {uri} failed: {e}") from e
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


# ------------------------------------------------------------------------------------------------
# Lineage
# ------------------------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_fingerprint(data) -> str:
    """sha256 of the records (see :func:`cascade.data.records.fingerprint`)."""
    from cascade.data.records import fingerprint

    return fingerprint(data)


# ------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def parent_run(experiment: str, run_name: str, *, params: dict | None = None, tags: dict | None = None,
               uri: str | None = None):
    """A parent run (a sweep, the demo); nested runs started inside it hang under it."""
    import mlflow

    configure(uri, experiment)
    with mlflow.start_run(run_name=run_name, tags={"cascade.kind": "parent", "mlflow.source.git.commit": git_commit(),
                                                   **(tags or {})}) as run:
        if params:
            mlflow.log_params(_flat_params(params))
        yield run


@contextlib.contextmanager
def _run(run_name: str, parent_run_id: str | None, tags: dict):
    import mlflow

    active = mlflow.active_run()
    if active is not None and parent_run_id in (None, active.info.run_id):
        ctx = mlflow.start_run(run_name=run_name, nested=True, tags=tags)
    else:
        ctx = mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id, tags=tags)
    with ctx as run:
        yield run


def _flat_params(params: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (params or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(v, key + "."))
        else:
            s = json.dumps(v, default=str) if not isinstance(v, str) else v
            out[key] = s if len(s) <= 500 else s[:497] + "..."
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and np.isfinite(x)


def curve_metrics(curve: pd.DataFrame) -> dict:
    """Test error at set budgets (25/50/75% of the curve's own test cost range) and the best error."""
    c = curve.sort_values("test_cost")
    x, y = c["test_cost"].to_numpy(float), c["test_error"].to_numpy(float)
    out = {"min_test_error": float(y.min()), "test_cost_min": float(x.min()), "test_cost_max": float(x.max())}
    for f in BUDGET_FRACTIONS:
        budget = x.min() + f * (x.max() - x.min())
        ok = x <= budget + 1e-12
        out[f"test_error_at_{int(f * 100)}pct_budget"] = float(y[ok].min()) if ok.any() else float("nan")
    return out


def error_cost_figure(curve: pd.DataFrame, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    c = curve.sort_values("test_cost")
    ax.plot(c["test_cost"], c["test_error"], "o-", ms=3, label="test (measured)")
    if "train_cost" in c and c["train_cost"].notna().any():
        t = curve.sort_values("train_cost")
        ax.plot(t["train_cost"], t["train_error"], "s--", ms=2, alpha=0.6, label="train (tuner's estimate)")
    ax.set_xlabel("cost (USD per million queries)")
    ax.set_ylabel("error")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _gof_metrics(gof: dict | None) -> dict:
    if not gof:
        return {}
    out = {}
    for part in ("marginals", "copulas", "markov"):
        ps = [r["p_value"] for r in gof.get(part, []) if _finite(r.get("p_value"))]
        if ps:
            out[f"gof_{part}_min_p"] = float(min(ps))
            out[f"gof_{part}_rejected"] = float(gof.get("rejected", {}).get(part, sum(p < 0.05 for p in ps)))
    return out


def _log_records_input(records_df: pd.DataFrame | None, source: str | None, name: str, models: Iterable[str],
                       splits: Iterable[str]) -> None:
    import mlflow

    if records_df is None:
        return
    df = records_df[records_df["model"].isin(list(models))]
    for split in splits:
        part = df[df["split"] == split]
        if part.empty:
            continue
        with warnings.catch_warnings():  # schema-inference hints about integer columns
            warnings.simplefilter("ignore")
            ds = mlflow.data.from_pandas(part.reset_index(drop=True), source=source or "in-memory",
                                         name=f"{name}:{split}", targets="correct")
            mlflow.log_input(ds, context=split)


def _store_errors() -> tuple:
    """Exceptions that mean the store failed (not a bug in the caller)."""
    errs: list = [OSError, ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        from mlflow.exceptions import MlflowException

        errs.append(MlflowException)
    with contextlib.suppress(ImportError):
        import requests

        errs.append(requests.exceptions.RequestException)
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc

        errs.append(sqlalchemy.exc.SQLAlchemyError)
    return tuple(errs)


@contextlib.contextmanager
def _unavailable_on_store_error(what: str):
    """Turn a store failure in the middle of logging into :class:`TrackingUnavailable`."""
    import mlflow

    try:
        yield
    except TrackingUnavailable:
        raise
    except _store_errors() as e:
        raise TrackingUnavailable(f"logging {what} to {mlflow.get_tracking_uri()} failed: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def log_tune(result, summary: dict | None = None, *, cascade: list[str] | None = None, method: str | None = None,
             params: dict | None = None, records_path: str | os.PathLike | None = None,
             records_df: pd.DataFrame | None = None, cell_key: str | None = None, parent_run_id: str | None = None,
             tags: dict | None = None, run_name: str | None = None, extra_params: dict | None = None,
             extra_metrics: dict | None = None) -> str:
    """One tuning run (a cascade x method x sample size x seed): params, metrics, curve, plot, lineage.

    ``result`` is a :class:`cascade.evaluate.tuning.TuneResult`, or a curve DataFrame with its ``summary`` dict as the
    second argument (what ``cascade tune --out`` writes). ``cascade`` and ``method`` default to the summary's.
    Call :func:`configure` (or :func:`parent_run`) first. Returns the run id.
    """
    if summary is None:
        if not hasattr(result, "curve"):
            raise TypeError("log_tune(result): pass a TuneResult, or a curve DataFrame and its summary dict")
        curve, summary = result.curve, result.summary
    else:
        curve = result
    cascade = list(cascade or summary["models"])
    method = method or summary["method"]
    with _unavailable_on_store_error(f"the tuning run {method} | {' -> '.join(cascade)}"):
        return _log_tune(curve, summary, cascade=cascade, method=method, params=params, records_path=records_path,
                         records_df=records_df, cell_key=cell_key, parent_run_id=parent_run_id, tags=tags,
                         run_name=run_name, extra_params=extra_params, extra_metrics=extra_metrics)


def _log_tune(curve: pd.DataFrame, summary: dict, *, cascade: list[str], method: str, params: dict | None,
              records_path, records_df, cell_key, parent_run_id, tags, run_name, extra_params, extra_metrics) -> str:
    import mlflow

    benchmark = summary.get("benchmark") or "unknown"
    name = run_name or f"{method} | {' -> '.join(cascade)}"
    fp = data_fingerprint(records_path) if records_path else (
        data_fingerprint(records_df) if records_df is not None else "unknown")
    run_tags = {"cascade.kind": "tune", "cascade.method": method, "cascade.cascade": " -> ".join(cascade),
                "cascade.benchmark": benchmark, "cascade.data_fingerprint": fp,
                "mlflow.source.git.commit": git_commit(), **(tags or {})}
    if cell_key:
        run_tags["cascade.cell_key"] = cell_key
    diag = summary.get("diagnostics") or {}
    if diag.get("storage"):  # an Optuna study: link it
        run_tags["optuna.storage"] = str(diag["storage"])
        run_tags["optuna.study_name"] = str(diag.get("study_name") or summary.get("params", {}).get("study_name"))
    with _run(name, parent_run_id, run_tags) as run:
        mlflow.log_params(_flat_params({
            "cascade": " -> ".join(cascade), "k": len(cascade), "method": method, "benchmark": benchmark,
            "train_split": summary.get("train_split"), "test_split": summary.get("test_split"),
            "cost_mode": summary.get("cost_mode"), "calibration": summary.get("calibration"),
            "signal": summary.get("signal"), "n_train": summary.get("n_train"), "n_test": summary.get("n_test"),
            "git_commit": run_tags["mlflow.source.git.commit"], "data_fingerprint": fp,
            "records": str(records_path) if records_path else "in-memory",
            **{f"method.{k}": v for k, v in (params or summary.get("params") or {}).items()},
            **(extra_params or {}),
        }))
        metrics = {"test_auc": summary.get("test_auc"), "seconds": summary.get("seconds"),
                   "n_points": len(curve), "fit_seconds": diag.get("fit_seconds"),
                   "tune_seconds": diag.get("tune_seconds"), **curve_metrics(curve),
                   **_gof_metrics(summary.get("goodness_of_fit") or summary.get("gof")),
                   **(extra_metrics or {})}
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if _finite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            curve.to_parquet(tmp / "curve.parquet", index=False)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
            (tmp / "thresholds.json").write_text(json.dumps(
                [list(map(float, t)) for t in curve["thresholds"]], indent=1) if "thresholds" in curve else "[]")
            # the fitted model: the tuner's own (markov-copula's marginals and copulas) and the calibrators
            (tmp / "model.json").write_text(json.dumps({
                "method": method, "params": summary.get("params"), "model": diag.get("model"),
                "calibrators": summary.get("calibrators"), "calibration": summary.get("calibration"),
                "signal": summary.get("signal")}, indent=2, default=str))
            gof = summary.get("goodness_of_fit") or summary.get("gof")
            if gof:
                (tmp / "goodness_of_fit.json").write_text(json.dumps(gof, indent=2, default=str))
            mlflow.log_artifacts(str(tmp))
        table = curve.copy()
        if "thresholds" in table:
            table["thresholds"] = table["thresholds"].map(lambda t: json.dumps([round(float(v), 6) for v in t]))
        if "models" in table:
            table["models"] = table["models"].map(lambda m: m if isinstance(m, str) else " -> ".join(m))
        mlflow.log_table(table, artifact_file="curve_table.json")
        fig = error_cost_figure(curve, f"{benchmark}: {' -> '.join(cascade)} ({method})")
        mlflow.log_figure(fig, "error_cost.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
        _log_records_input(records_df, str(Path(records_path).resolve()) if records_path else None, f"{benchmark}-records",
                           cascade, [summary.get("train_split") or "train", summary.get("test_split") or "test"])
        return run.info.run_id


def log_tune_dir(out_dir: str | os.PathLike, *, records_path=None, records_df: pd.DataFrame | None = None,
                 parent_run_id: str | None = None, cell_key: str | None = None, tags: dict | None = None) -> str:
    """Log a finished ``cascade tune --out DIR`` (curve.parquet + summary.json). ``records_df``: the records
    already in memory (else they are read from ``records_path`` for the lineage)."""
    out_dir = Path(out_dir)
    curve = pd.read_parquet(out_dir / "curve.parquet")
    summary = json.loads((out_dir / "summary.json").read_text())
    if records_df is None and records_path:
        from cascade.data import records as R

        records_df = R.load(records_path, benchmark=summary.get("benchmark"))
    return log_tune(curve, summary, cascade=list(summary["models"]), method=summary["method"],
                    params=summary.get("params"), records_path=records_path, records_df=records_df,
                    parent_run_id=parent_run_id, cell_key=cell_key, tags={"cascade.logged_from": str(out_dir),
                                                                          **(tags or {})})


def log_scoring(stats: dict, records_dir: str | os.PathLike | None = None, config: dict | None = None, *,
                config_path: str | os.PathLike | None = None, parent_run_id: str | None = None,
                run_name: str = "score", tags: dict | None = None) -> str:
    """A scoring run: config as params, throughput and tokens as metrics, accuracy per stage, records lineage.

    ``stats`` is the summary ``jobs.score.run`` returns (its ``out_dir`` is the records folder unless
    ``records_dir`` is given); ``config`` the scoring config as a dict (default: ``stats["config"]``).
    Call :func:`configure` (or :func:`parent_run`) first. Returns the run id.
    """
    with _unavailable_on_store_error("the scoring run"):
        return _log_scoring(stats, records_dir, config if config is not None else stats.get("config"),
                            config_path=config_path, parent_run_id=parent_run_id, run_name=run_name, tags=tags)


def _log_scoring(stats: dict, records_dir, config, *, config_path, parent_run_id, run_name, tags) -> str:
    import mlflow

    out_dir = Path(records_dir or stats["out_dir"])
    from cascade.data import records as R

    try:
        df = R.load(out_dir)
    except R.RecordsError:
        df = None
    fp = data_fingerprint(out_dir) if df is not None else "empty"
    run_tags = {"cascade.kind": "score", "cascade.data_fingerprint": fp, "cascade.score_run_id": stats.get("run_id"),
                "mlflow.source.git.commit": git_commit(), **(tags or {})}
    with _run(run_name, parent_run_id, run_tags) as run:
        cfg = config or {}
        mlflow.log_params(_flat_params({
            "out_dir": str(out_dir), "git_commit": run_tags["mlflow.source.git.commit"], "data_fingerprint": fp,
            "benchmarks": [b.get("name") if isinstance(b, dict) else str(b) for b in cfg.get("benchmarks", [])],
            "signals": cfg.get("signals"),
            "stages": {s["name"]: {k: s.get(k) for k in ("model", "engine", "dtype", "batch_size")}
                       for s in cfg.get("stages", []) if isinstance(s, dict) and "name" in s},
        }))
        metrics = {k: stats.get(k) for k in ("seconds", "queries_per_s", "output_tokens_per_s", "n_records",
                                              "scored_records", "skipped_shards", "n_shards")}
        for name, st in (stats.get("stages") or {}).items():
            for k in ("queries_per_s", "output_tokens_per_s", "input_tokens", "output_tokens", "ptrue_input_tokens",
                      "ptrue_output_tokens", "accelerator_seconds", "load_seconds", "retries"):
                metrics[f"{name}.{k}"] = st.get(k)
        for k in ("input_tokens", "output_tokens", "ptrue_input_tokens", "ptrue_output_tokens"):
            vals = [st.get(k) for st in (stats.get("stages") or {}).values() if _finite(st.get(k))]
            if vals:
                metrics[f"total_{k}"] = sum(vals)
        if df is not None:
            for (bench, split, model), acc in df.groupby(["benchmark", "split", "model"])["correct"].mean().items():
                metrics[f"{model}.{bench}.{split}.accuracy"] = acc
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if _finite(v)})
        mlflow.log_dict(json.loads(json.dumps(stats, default=str)), "score_stats.json")
        if config_path:
            mlflow.log_artifact(str(config_path))
        if df is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = mlflow.data.from_pandas(df, source=str(out_dir.resolve()), name="scored-records",
                                             targets="correct")
                mlflow.log_input(ds, context="scored")
        return run.info.run_id


def find_finished(experiment: str, cell_key: str, uri: str | None = None) -> str | None:
    """The id of a FINISHED run of ``experiment`` tagged with ``cell_key``, or None."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`cascade.cell_key` = '{cell_key}' and attributes.status = 'FINISHED'",
                              max_results=1)
    return runs[0].info.run_id if runs else None
