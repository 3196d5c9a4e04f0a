"""MLflow logging of scoring runs and tuning runs (params, metrics, artifacts, plots, data lineage).

Only MLflow calls live here: what is logged is computed by :mod:`cascade.evaluate.metrics` (metrics,
fingerprints, records for the lineage) and :mod:`cascade.evaluate.plots` (figures). Every public function
turns any store failure into :class:`tracking.store.TrackingUnavailable` (one line) and writes under the
store's write lock; secrets are redacted (:mod:`tracking.redact`) before anything is logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import pandas as pd

from cascade.evaluate import comparison
from cascade.evaluate import metrics as M

from .redact import redact_secrets
from .store import (
    configure,
    current_uri,
    experiment_id,
    guard,
    last_try,
    tracking_uri,
    write_lock,
)

OUTPUT_FINGERPRINT_TAG = "cascade.output_fingerprint"


GIT_COMMIT_ENV = "CASCADE_GIT_COMMIT"  # the submitting side's commit, passed in a Ray job's runtime env


def git_commit() -> str:
    """``$CASCADE_GIT_COMMIT`` (a Ray job runs in a copy without .git: pass the submitting side's commit in
    the runtime env), else the repository's HEAD, else "unknown"."""
    return os.environ.get(GIT_COMMIT_ENV) or M.git_commit()


def provenance_tags() -> dict:
    """Where a run was made: the Ray job's submission id when the driver runs under `ray job submit`, and
    where the git commit came from."""
    from .store import RAY_JOB_ENV

    tags = {"cascade.git_commit_source": "env " + GIT_COMMIT_ENV if os.environ.get(GIT_COMMIT_ENV) else "repository"}
    raw = os.environ.get(RAY_JOB_ENV)
    if raw:
        try:
            meta = (json.loads(raw) or {}).get("metadata") or {}
        except ValueError:
            meta = {}
        if meta.get("job_submission_id"):
            tags["ray.job_submission_id"] = str(meta["job_submission_id"])
    return tags


def data_fingerprint(data) -> str:
    """sha256 of the records (see :func:`cascade.data.records.fingerprint`)."""
    return M.data_fingerprint(data)


def records_provenance(summary: dict, records_path=None, records_df: pd.DataFrame | None = None) -> tuple[str, str]:
    """``(benchmark, data fingerprint)`` of the records a tuning run was fitted on: the one place every tuning
    run (`cascade tune`, `cascade log`, sweep cells, the demo) gets them. The benchmark is the summary's, else
    the records' own when they hold one (the DataFrame's, else the file's or store's footers); the fingerprint
    is of the records file or store (else of the DataFrame). "unknown" only when no records are given."""
    benchmark = summary.get("benchmark")
    if not benchmark and records_df is not None and "benchmark" in records_df and records_df["benchmark"].nunique() == 1:
        benchmark = str(records_df["benchmark"].iloc[0])
    if not benchmark and records_path:
        from cascade.data import records as R

        with contextlib.suppress(Exception):  # unreadable footers: the benchmark stays unknown, logging goes on
            found = R.describe(records_path).benchmarks
            if len(found) == 1:
                benchmark = found[0]
    fp = data_fingerprint(records_path) if records_path else (
        data_fingerprint(records_df) if records_df is not None else "unknown")
    return str(benchmark or "unknown"), fp


# ------------------------------------------------------------------------------------------------
# Runs (started and ended here, so that a failing store never hides the error that came first)
# ------------------------------------------------------------------------------------------------

def _end(status: str) -> None:
    import mlflow

    with write_lock():
        mlflow.end_run(status)


#: Runs this process started and could not end (the store failed): run id -> tracking URI. A command that
#: exits on a tracking failure saves them beside its kept results (:func:`tracking.open_runs.save`), and the
#: next `cascade log` of those results (or the sweep's rerun) marks them KILLED.
UNENDED: dict[str, str] = {}


@contextlib.contextmanager
def _open(start, what: str):
    """Start a run with ``start()``; end it FINISHED, or FAILED (KILLED on Ctrl-C) if the body raised. A store
    failure while ending a run that already failed does not replace the first error; that end is one quick
    try (:func:`tracking.store.last_try`), and a run it could not end is remembered in :data:`UNENDED`."""
    with guard(f"starting {what}"), write_lock():
        run = start()
    run_id, uri = run.info.run_id, current_uri()
    UNENDED[run_id] = uri
    status = "FINISHED"
    try:
        yield run
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        raise
    finally:
        if status == "FINISHED":
            with guard(f"ending {what}"):
                _end(status)
            UNENDED.pop(run_id, None)
        else:
            with contextlib.suppress(Exception), last_try(uri):
                _end(status)
                UNENDED.pop(run_id, None)


@contextlib.contextmanager
def parent_run(experiment: str, run_name: str, *, params: dict | None = None, tags: dict | None = None,
               uri: str | None = None, run_id: str | None = None, description: str | None = None):
    """A parent run (a sweep, the demo, a `cascade tune`/`cascade log` command); nested runs started inside it
    hang under it. ``run_id``: resume that run instead of starting one. ``description``: the experiment's,
    when it has none yet."""
    import mlflow

    configure(uri, experiment, description)
    all_tags = {"cascade.kind": "parent", "mlflow.source.git.commit": git_commit(), **provenance_tags(),
                **(tags or {})}

    def start():
        if run_id:
            return mlflow.start_run(run_id=run_id)
        return mlflow.start_run(run_name=run_name, tags=_tags(all_tags))

    with _open(start, f"the parent run {run_name!r}") as run:
        if params and not run_id:
            with guard(f"logging the parameters of {run_name!r}"), write_lock():
                mlflow.log_params(_flat_params(params))
        yield run


def _nested(run_name: str, parent_run_id: str | None, tags: dict):
    import mlflow

    def start():
        active = mlflow.active_run()
        if active is not None and parent_run_id in (None, active.info.run_id):
            return mlflow.start_run(run_name=run_name, nested=True, tags=tags)
        return mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id, tags=tags)

    return _open(start, f"the run {run_name!r}")


def _tags(tags: dict) -> dict:
    return {k: str(v) for k, v in redact_secrets({k: v for k, v in tags.items() if v is not None}).items()}


def _flat_params(params: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (redact_secrets(params) or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(v, key + "."))
        else:
            s = json.dumps(v, default=str) if not isinstance(v, str) else v
            out[key] = s if len(s) <= 500 else s[:497] + "..."
    return out


def _log_metrics(metrics: dict) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if M.finite(v)})


def _json(obj) -> str:
    return json.dumps(redact_secrets(json.loads(json.dumps(obj, default=str))), indent=2)


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


# ------------------------------------------------------------------------------------------------
# Tuning runs
# ------------------------------------------------------------------------------------------------

def log_tune(result, summary: dict | None = None, *, cascade: list[str] | None = None, method: str | None = None,
             params: dict | None = None, records_path: str | os.PathLike | None = None,
             records_df: pd.DataFrame | None = None, cell_key: str | None = None, parent_run_id: str | None = None,
             tags: dict | None = None, run_name: str | None = None, extra_params: dict | None = None,
             extra_metrics: dict | None = None, output_fingerprint: str | None = None,
             budgets: list[float] | None = None) -> str:
    """One tuning run (a cascade x method x sample size x seed): params, metrics, curve, plot, lineage.

    ``result`` is a :class:`cascade.evaluate.tuning.TuneResult`, or a curve DataFrame with its ``summary`` dict
    as the second argument (what ``cascade tune --out`` writes). ``cascade`` and ``method`` default to the
    summary's. ``output_fingerprint``: the fingerprint of the output folder the run was written to (tag
    ``cascade.output_fingerprint``; ``cascade log`` skips folders already logged). ``budgets``: the absolute
    budgets (USD per million queries, :mod:`cascade.evaluate.budgets`) the test curve is read at; default: the
    benchmark's set from ``records_df``. Call :func:`configure` (or :func:`parent_run`) first. Returns the run id.
    """
    if summary is None:
        if not hasattr(result, "curve"):
            raise TypeError("log_tune(result): pass a TuneResult, or a curve DataFrame and its summary dict")
        curve, summary = result.curve, result.summary
    else:
        curve = result
    cascade = list(cascade or summary["models"])
    method = method or summary["method"]
    with guard(f"logging the tuning run {method} | {' -> '.join(cascade)}"), write_lock():
        return _log_tune(curve, summary, cascade=cascade, method=method, params=params, records_path=records_path,
                         records_df=records_df, cell_key=cell_key, parent_run_id=parent_run_id, tags=tags,
                         run_name=run_name, extra_params=extra_params, extra_metrics=extra_metrics,
                         output_fingerprint=output_fingerprint, budgets=budgets)


def run_budgets(summary: dict, records_df: pd.DataFrame | None, benchmark: str) -> list[float]:
    """The absolute budgets of a run on ``benchmark`` (:func:`cascade.evaluate.budgets.benchmark_budgets` of the
    records; the summary's ``budgets_usd`` when it carries them; none without records)."""
    from cascade.evaluate import budgets as B

    if summary.get("budgets_usd"):
        return [float(b) for b in summary["budgets_usd"]]
    if records_df is None or records_df.empty:
        return []
    return B.benchmark_budgets(records_df, benchmark if benchmark != "unknown" else None,
                               summary.get("test_split") or "test")


def log_budget_curve(run_id: str, curve: pd.DataFrame, budgets: list[float], prefix: str = "") -> None:
    """On a run: ``<prefix>test_error_at_usd<B>`` per affordable budget, the same values as the metric history
    ``<prefix>test_error_curve`` (step = the budget's index in ``budgets``), ``budget_usd`` (step -> budget) and
    the tag ``cascade.budgets_usd``; one batch."""
    import time

    import mlflow
    from mlflow.entities import Metric

    from cascade.evaluate import budgets as B

    if not budgets:
        return
    ts = int(time.time() * 1000)
    values = B.curve_at_budgets(curve, budgets)
    metrics = [Metric(B.metric_name(b, prefix + "test_error"), v, ts, 0) for b, v in zip(budgets, values)
               if M.finite(v)]
    metrics += [Metric(prefix + "test_error_curve", v, ts, i) for i, v in enumerate(values) if M.finite(v)]
    metrics += [Metric("budget_usd", float(b), ts, i) for i, b in enumerate(budgets)]
    client = mlflow.MlflowClient()
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "cascade.budgets_usd", ",".join(f"{b:g}" for b in budgets))


def _log_tune(curve: pd.DataFrame, summary: dict, *, cascade: list[str], method: str, params: dict | None,
              records_path, records_df, cell_key, parent_run_id, tags, run_name, extra_params, extra_metrics,
              output_fingerprint, budgets) -> str:
    import mlflow

    from cascade.evaluate.plots import error_cost_figure

    benchmark, fp = records_provenance(summary, records_path, records_df)
    name = run_name or comparison.run_name(method, cascade, summary.get("n", "all"),
                                           (summary.get("params") or {}).get("seed", 0))
    degenerate = M.degenerate_reasons(curve, summary)
    commit = git_commit()
    run_tags = {"cascade.kind": "tune", "cascade.method": method, "cascade.cascade": " -> ".join(cascade),
                "cascade.benchmark": benchmark, "cascade.data_fingerprint": fp,
                "mlflow.source.git.commit": commit, "cascade.degenerate": "true" if degenerate else "false",
                "cascade.cell_key": cell_key, OUTPUT_FINGERPRINT_TAG: output_fingerprint, **provenance_tags(),
                **(tags or {})}
    if degenerate:
        run_tags["cascade.degenerate_reason"] = "; ".join(degenerate)[:5000]
    if summary.get("transform") is not None:
        run_tags["cascade.transform"] = summary["transform"]
    if summary.get("transform_reason"):
        run_tags["cascade.transform_reason"] = str(summary["transform_reason"])[:5000]
    diag = summary.get("diagnostics") or {}
    if diag.get("storage"):  # an Optuna study in the storage the user gave (--param storage=URL): link it
        names = diag.get("study_name") or (summary.get("params") or {}).get("study_name")
        run_tags["optuna.storage"] = str(diag["storage"])
        run_tags["optuna.study_name"] = ", ".join(names) if isinstance(names, list) else str(names)
    optuna_export = diag.get("optuna") if not diag.get("storage") else None
    with _nested(name, parent_run_id, _tags(run_tags)) as run:
        mlflow.log_params(_flat_params({
            "cascade": " -> ".join(cascade), "k": len(cascade), "method": method, "benchmark": benchmark,
            "train_split": summary.get("train_split"), "test_split": summary.get("test_split"),
            "cost_mode": summary.get("cost_mode"), "calibration": summary.get("calibration"),
            "signal": summary.get("signal"), "n_train": summary.get("n_train"), "n_test": summary.get("n_test"),
            **({"transform": summary["transform"]} if summary.get("transform") is not None else {}),
            **({"transform_reason": summary["transform_reason"]} if summary.get("transform_reason") else {}),
            **({"abstain_cost": summary["abstain_cost"]} if summary.get("abstain_cost") is not None else {}),
            "git_commit": commit, "data_fingerprint": fp,
            "records": str(records_path) if records_path else "in-memory",
            **{f"method.{k}": v for k, v in (params or summary.get("params") or {}).items()},
            **(extra_params or {}),
        }))
        _log_metrics({**M.tune_metrics(curve, summary), **(extra_metrics or {})})
        log_budget_curve(run.info.run_id, curve, budgets if budgets is not None
                         else run_budgets(summary, records_df, benchmark))
        if optuna_export and optuna_export.get("studies"):  # in-memory studies: rebuilt beside the store
            from . import optuna_studies

            mlflow.set_tags(_tags(optuna_studies.log_studies(
                optuna_export, run.info.run_id, mlflow.get_tracking_uri(),
                user_attrs={"cascade": " -> ".join(cascade), "benchmark": benchmark, "method": method,
                            "mlflow_experiment_id": run.info.experiment_id})))
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            curve.to_parquet(tmp / "curve.parquet", index=False)
            (tmp / "summary.json").write_text(_json(summary))
            (tmp / "thresholds.json").write_text(json.dumps(
                [list(map(float, t)) for t in curve["thresholds"]], indent=1) if "thresholds" in curve else "[]")
            # the fitted model: the tuner's own (markov-copula's marginals and copulas) and the calibrators
            (tmp / "model.json").write_text(_json({
                "method": method, "params": summary.get("params"), "model": diag.get("model"),
                "calibrators": summary.get("calibrators"), "calibration": summary.get("calibration"),
                "signal": summary.get("signal"), "transform": summary.get("transform")}))
            gof = summary.get("goodness_of_fit") or summary.get("gof")
            if gof:
                (tmp / "goodness_of_fit.json").write_text(_json(gof))
            mlflow.log_artifacts(str(tmp))
        table = curve.copy()
        if "thresholds" in table:
            table["thresholds"] = table["thresholds"].map(lambda t: json.dumps([round(float(v), 6) for v in t]))
        if "models" in table:
            table["models"] = table["models"].map(lambda m: m if isinstance(m, str) else " -> ".join(m))
        mlflow.log_table(table, artifact_file="curve_table.json")
        mlflow.log_figure(error_cost_figure(curve, f"{benchmark}: {' -> '.join(cascade)} ({method})"),
                          "error_cost.png")
        _log_records_input(records_df, str(Path(records_path).resolve()) if records_path else None,
                           f"{benchmark}-records", cascade,
                           [summary.get("train_split") or "train", summary.get("test_split") or "test"])
        return run.info.run_id


def log_tune_dir(out_dir: str | os.PathLike, *, records_path=None, records_df: pd.DataFrame | None = None,
                 parent_run_id: str | None = None, cell_key: str | None = None, tags: dict | None = None) -> str:
    """Log a finished ``cascade tune --out DIR`` (curve.parquet + summary.json), tagged with the folder's output
    fingerprint (and with the summary's ``cell_key`` for a sweep cell's folder, so the sweep counts it done). ``records_df``: the records already in memory (else read from ``records_path``)."""
    out_dir = Path(out_dir)
    curve, summary = M.read_tune_output(out_dir)
    if records_df is None and records_path:
        records_df = M.load_records(records_path, benchmark=summary.get("benchmark"))
    return log_tune(curve, summary, cascade=list(summary["models"]), method=summary["method"],
                    params=summary.get("params"), records_path=records_path, records_df=records_df,
                    parent_run_id=parent_run_id, cell_key=cell_key or summary.get("cell_key"),
                    tags={"cascade.logged_from": str(out_dir), **(tags or {})},
                    output_fingerprint=M.output_fingerprint(out_dir))


# ------------------------------------------------------------------------------------------------
# Scoring runs
# ------------------------------------------------------------------------------------------------

def log_scoring(stats: dict, records_dir: str | os.PathLike | None = None, config: dict | None = None, *,
                config_path: str | os.PathLike | None = None, parent_run_id: str | None = None,
                run_name: str = "score", tags: dict | None = None) -> str:
    """A scoring run: config as params, throughput and tokens as metrics, accuracy per stage, records lineage,
    tagged with the scoring folder's output fingerprint.

    ``stats`` is the summary ``jobs.score.run`` returns (its ``out_dir`` is the records folder unless
    ``records_dir`` is given); ``config`` the scoring config as a dict (default: ``stats["config"]``).
    Secret-looking config values are redacted. Call :func:`configure` (or :func:`parent_run`) first.
    """
    out_dir = Path(records_dir or stats["out_dir"])
    df = M.load_scored(out_dir)
    fp = data_fingerprint(out_dir) if df is not None else "empty"
    out_fp = M.output_fingerprint(out_dir) if out_dir.exists() else None
    with guard("logging the scoring run"), write_lock():
        return _log_scoring(stats, out_dir, df, fp, out_fp, config if config is not None else stats.get("config"),
                            config_path=config_path, parent_run_id=parent_run_id, run_name=run_name, tags=tags)


def _log_scoring(stats: dict, out_dir: Path, df, fp: str, out_fp, config, *, config_path, parent_run_id, run_name,
                 tags) -> str:
    import mlflow

    commit = git_commit()
    run_tags = {"cascade.kind": "score", "cascade.data_fingerprint": fp, "cascade.score_run_id": stats.get("run_id"),
                "mlflow.source.git.commit": commit, OUTPUT_FINGERPRINT_TAG: out_fp, **(tags or {})}
    with _nested(run_name, parent_run_id, _tags(run_tags)) as run:
        cfg = config or {}
        mlflow.log_params(_flat_params({
            "out_dir": str(out_dir), "git_commit": commit, "data_fingerprint": fp,
            "benchmarks": [b.get("name") if isinstance(b, dict) else str(b) for b in cfg.get("benchmarks", [])],
            "signals": cfg.get("signals"),
            "stages": {s["name"]: {k: s.get(k) for k in ("model", "engine", "dtype", "batch_size")}
                       for s in cfg.get("stages", []) if isinstance(s, dict) and "name" in s},
        }))
        _log_metrics(M.scoring_metrics(stats, df))
        mlflow.log_dict(json.loads(_json(stats)), "score_stats.json")
        if config_path:
            _log_config_file(Path(config_path))
        if df is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = mlflow.data.from_pandas(df, source=str(out_dir.resolve()), name="scored-records",
                                             targets="correct")
                mlflow.log_input(ds, context="scored")
        return run.info.run_id


def _log_config_file(path: Path) -> None:
    """The config file as given, or (when it holds a secret-looking value) its redacted YAML."""
    import mlflow
    import yaml

    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = None
    if raw is not None and redact_secrets(raw) != raw:
        mlflow.log_text(f"# {path.name}, secret-looking values redacted\n"
                        + yaml.safe_dump(redact_secrets(raw), sort_keys=False), path.name)
    elif redact_secrets(text) != text:  # a password inside a URL
        mlflow.log_text(redact_secrets(text), path.name)
    else:
        mlflow.log_artifact(str(path))


# ------------------------------------------------------------------------------------------------
# Finding runs
# ------------------------------------------------------------------------------------------------

def _search(experiment: str, filter_string: str, uri: str | None, max_results: int = 1):
    import mlflow

    exp_id = experiment_id(experiment, uri)
    if exp_id is None:
        return []
    uri = tracking_uri(uri)
    with guard(f"searching experiment {experiment!r}", uri):
        return mlflow.MlflowClient(uri).search_runs([exp_id], filter_string=filter_string, max_results=max_results)


def find_finished(experiment: str, cell_key: str, uri: str | None = None) -> str | None:
    """The id of a FINISHED run of ``experiment`` tagged with ``cell_key``, or None."""
    runs = _search(experiment, f"tags.`cascade.cell_key` = '{cell_key}' and attributes.status = 'FINISHED'", uri)
    return runs[0].info.run_id if runs else None


def find_logged_output(experiment: str, fingerprint: str, kind: str | None = None,
                       uri: str | None = None) -> str | None:
    """The id of a FINISHED run of ``experiment`` tagged with this output fingerprint (of ``kind``), or None."""
    flt = f"tags.`{OUTPUT_FINGERPRINT_TAG}` = '{fingerprint}' and attributes.status = 'FINISHED'"
    if kind:
        flt += f" and tags.`cascade.kind` = '{kind}'"
    runs = _search(experiment, flt, uri)
    return runs[0].info.run_id if runs else None


def log_report(data: dict, *, run_id: str | None = None, description: str | None = None,
               name: str = "report.html") -> None:
    """An interactive HTML report (:mod:`cascade.evaluate.report`) as the artifact ``name`` of a run (default:
    the active one) and, with ``description``, the run's description (``mlflow.note.content``)."""
    import mlflow

    from cascade.evaluate import report

    with guard("logging the HTML report"), write_lock(), tempfile.TemporaryDirectory() as tmp:
        path = report.write_report(data, Path(tmp) / name)
        client = mlflow.MlflowClient()
        rid = run_id or mlflow.active_run().info.run_id
        client.log_artifact(rid, str(path))
        if description:
            client.set_tag(rid, "mlflow.note.content", description[:60000])


METRIC_NOTES = (
    "**Units**: budgets and costs in USD per million queries; errors are shares of test queries answered wrongly "
    "(lower is better).\n\n"
    "**Metrics** (the same names on every tuning and selection run of this benchmark):\n"
    "- `test_error_at_usd<B>`: the lowest test error among the run's curve points whose test cost is at most B "
    "(absent when even its cheapest point costs more); history `test_error_curve` (step = budget index, "
    "`budget_usd` gives the budget of each step: MLflow's chart view overlays the runs' curves);\n"
    "- on selection runs, `answer_test_error_at_usd<B>` / `answer_test_cost_at_usd<B>`: the point the selection "
    "runs at B, chosen on the training split, measured on test (history `answer_test_error_curve`);\n"
    "- `frontier_test_auc`: mean test error of the frontier over its own test cost range; "
    "`auc_shared` (tuning runs of a comparison): mean test error over the cost range every method's curve of "
    "that cascade covers.\n\n"
    "**Report**: the artifact `report.html` (interactive: pick a budget, read the answer; every curve overlaid).\n\n"
    "MLflow's *Duration* column is how long a run stayed open while it was logged (artifacts, datasets), not "
    "the fit: the fit's time is the metric `seconds`.")


def comparison_report(title: str, runs: list[dict], budgets: list[float]) -> tuple[dict, str]:
    """A comparison's report data and description (a several-method `cascade tune`, a sweep, a study): its
    curves; at each budget the lowest test error any curve reaches (read on test: a comparison, not a
    selection)."""
    from cascade.evaluate import report

    curves = [{"method": r["method"], "cascade": " -> ".join(r["cascade"]),
               "test_cost": [float(v) for v in r["curve"]["test_cost"]],
               "test_error": [float(v) for v in r["curve"]["test_error"]]} for r in runs]
    data = report.curves_report_data(title, curves, budgets)
    desc = (f"### {title}\n\nAt each budget, the lowest test error any of these curves reaches (read on the test "
            "split; `cascade select` chooses on train):\n\n" + report.markdown_table(data) + "\n\n" + METRIC_NOTES)
    return data, desc


def log_summary(*, tables: dict[str, pd.DataFrame] | None = None, metrics: dict | None = None,
                run_id: str | None = None, figures: dict | None = None, tags: dict | None = None) -> None:
    """Tables (``mlflow.log_table``, one JSON artifact each), figures (``mlflow.log_figure``: artifact path ->
    matplotlib Figure), tags and metrics on a run (default: the active one), e.g. a comparison table and the
    overlaid error-cost plots on a parent run."""
    import mlflow

    with guard("logging the summary tables"), write_lock():
        ctx = mlflow.start_run(run_id=run_id, nested=True) if run_id else contextlib.nullcontext()
        with ctx:
            for name, table in (tables or {}).items():
                mlflow.log_table(table, artifact_file=name)
            for name, fig in (figures or {}).items():
                mlflow.log_figure(fig, name)
            if tags:
                mlflow.set_tags(_tags(tags))
            _log_metrics(metrics or {})
