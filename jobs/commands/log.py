"""``cascade log DIR``: log finished outputs to MLflow after the fact (e.g. the server was down).

Idempotent: every logged output folder is tagged with its output fingerprint (a hash of its files); a folder
whose fingerprint already has a FINISHED run in the experiment is not logged again (exit 0, no new run).
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("log", help="log finished `cascade tune`, `cascade score` or `cascade study` outputs to "
                                   "MLflow (once: outputs already logged are skipped)",
                       description="Log a `cascade tune --out DIR` folder (searched recursively for summary.json), "
                                   "a scoring output folder (holding _score_stats.json) or a `cascade study --out` "
                                   "folder (meta.json, runs.csv) to MLflow. Folders whose files were logged before "
                                   "(same output fingerprint, same experiment) are skipped. Exit status: 0 logged "
                                   "or already logged, 2 bad input, 3 the tracking store failed (nothing new "
                                   "logged).")
    p.add_argument("dir", help="a `cascade tune`, scoring or `cascade study` output folder")
    p.add_argument("--results", help="the records the curves were tuned on (for data lineage)")
    p.add_argument("--experiment", help="MLflow experiment (default: the benchmark, 'scoring', or BENCHMARK-study)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<repo>/mlflow.db)")
    p.set_defaults(func=run_log)


def _read_outputs(d: Path, summaries: list[Path]) -> list[tuple[Path, dict]]:
    """Every tune output folder's summary, checked before anything is logged (nothing half-logged)."""
    import json

    out = []
    for s in summaries:
        try:
            summary = json.loads(s.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{s}: not a readable summary.json ({e}); fix or remove that folder") from None
        if not isinstance(summary, dict) or not summary.get("models") or not summary.get("method"):
            raise ValueError(f"{s}: a `cascade tune` summary.json needs `models` and `method`; fix or remove "
                             "that folder")
        if not (s.parent / "curve.parquet").is_file():
            raise ValueError(f"{s.parent}: summary.json without curve.parquet (an unfinished `cascade tune` "
                             "output?); rerun the tune or remove that folder")
        out.append((s.parent, summary))
    return out


def _log_once(d, uri, experiment: str, fp: str, kind: str, what: str, log, done_what: str | None = None) -> int:
    """Log one output folder unless a run of ``kind`` in ``experiment`` already holds its fingerprint ``fp``:
    exit 0 (logged, or already there), 3 on a tracking failure (one line; the folder is unchanged)."""
    import tracking

    try:
        tracking.check_reachable(uri)
        done = tracking.find_logged_output(experiment, fp, kind=kind, uri=uri)
        if done:
            print(f"already logged: {what} {done} in experiment {experiment!r} holds these outputs "
                  f"(output fingerprint {fp}); nothing logged")
            return 0
        run_id = log()
    except tracking.TrackingUnavailable as e:
        print(e.line("cascade log") + f"; nothing was logged, {d} is unchanged", file=sys.stderr)
        return 3
    print(f"logged {done_what or what} {run_id} to experiment {experiment!r} at {uri}")
    return 0


def run_log(args) -> int:
    import json

    import tracking
    from cascade.evaluate import metrics as M

    d = Path(args.dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such folder" if not d.exists() else f"{d}: not a folder")
    try:
        uri = tracking.tracking_uri(args.tracking_uri)
    except tracking.TrackingUnavailable as e:
        print(e.line("cascade log", log_command=None) + f"; {d} is unchanged", file=sys.stderr)
        return 3
    try:  # runs the command that wrote DIR could not end when its store failed: KILLED, once it answers
        closed = tracking.close_open_runs(d)
    except tracking.TrackingUnavailable as e:
        print(e.line("cascade log") + f"; nothing was logged, {d} is unchanged", file=sys.stderr)
        return 3
    if closed:
        print(f"marked KILLED {closed} run(s) left RUNNING when the tracking store failed under the command "
              f"that wrote {d}")
    from jobs.score import stats_path

    stats_file = stats_path(d)
    if stats_file.exists():
        try:
            stats = json.loads(stats_file.read_text())
        except ValueError as e:
            raise ValueError(f"{stats_file}: not valid JSON ({e})") from None
        experiment = args.experiment or "scoring"
        fp = M.output_fingerprint(d)

        def log_it():
            tracking.configure(uri, experiment)
            return tracking.log_scoring(stats, records_dir=d, config=stats.get("config"),
                                        tags={"cascade.logged_from": str(d.resolve())})
        return _log_once(d, uri, experiment, fp, "score", "scoring run", log_it)

    if tracking.is_study_dir(d):  # a `cascade study` output (meta.json, runs.csv, summary.csv)
        from tracking.study import default_experiment, read_study

        meta = read_study(d)[0]  # unreadable files: exit 2 before anything is logged
        experiment = args.experiment or default_experiment(meta)
        fp = M.output_fingerprint(d)
        return _log_once(d, uri, experiment, fp, "parent", "study run",
                         lambda: tracking.log_study(d, experiment=experiment, uri=uri, output_fingerprint=fp),
                         done_what="study run (a run per chain x method)")

    summaries = [d / "summary.json"] if (d / "summary.json").exists() else sorted(
        s for s in d.rglob("summary.json")  # hidden folders: a writer's temp folder, a replaced output
        if not any(part.startswith(".") for part in s.relative_to(d).parts))
    if not summaries:
        raise ValueError(f"{d}: neither summary.json (cascade tune) nor _score_stats.json (cascade score) found")
    outputs = _read_outputs(d, summaries)
    experiment = args.experiment or outputs[0][1].get("benchmark") or "cascade-eval"
    fps = {folder: M.output_fingerprint(folder) for folder, _ in outputs}
    loaded: dict = {}  # records read once per benchmark, not once per curve; read before anything is logged
    if args.results:
        for _, summary in outputs:
            b = summary.get("benchmark")
            if b not in loaded:
                loaded[b] = M.load_records(args.results, benchmark=b)
    try:
        tracking.check_reachable(uri)
        done, todo = {}, []
        for folder, summary in outputs:
            run_id = tracking.find_logged_output(experiment, fps[folder], kind="tune", uri=uri)
            if run_id:
                done[folder] = run_id
            else:
                todo.append((folder, summary))
        if not todo:
            print(f"already logged: all {len(outputs)} output folder(s) under {d} have FINISHED runs in experiment "
                  f"{experiment!r} (same output fingerprint), e.g. run {next(iter(done.values()))}; nothing logged")
            return 0
        with tracking.parent_run(experiment, f"log {d.name}", uri=uri,
                                 params={"command": "log", "dir": str(d.resolve())}) as parent:
            for folder, summary in todo:
                tracking.log_tune_dir(folder, records_path=args.results, records_df=loaded.get(summary.get("benchmark")),
                                      parent_run_id=parent.info.run_id)
    except tracking.TrackingUnavailable as e:
        tracking.save_open_runs(d)
        print(e.line("cascade log") + f"; {d} is unchanged, rerun this command once the store works "
              "(folders already logged are skipped)", file=sys.stderr)
        return 3
    skipped = f", {len(done)} already logged before" if done else ""
    print(f"logged {len(todo)} run(s) to experiment {experiment!r} at {uri}{skipped}")
    return 0
