"""``python -m jobs.sweep SPEC.yaml`` / ``cascade sweep SPEC.yaml``: run a sweep's cells as Ray tasks.

- Scoring first for records entries that name a scoring config (finished shards are skipped).
- Every cell (see :mod:`cascade.evaluate.sweep_spec`) whose key already has a FINISHED MLflow run in the sweep's
  experiment is skipped; ``--dry-run`` lists what would run and what is done, and touches nothing.
- Cells run as Ray tasks (``--cpus-per-cell``, fractional by default so a 2-core laptop runs two at once);
  the driver writes each result to ``<out>/<cell key>/`` and then logs it to MLflow as a nested run
  under the sweep's parent run (one parent per spec, resumed by reruns). Only the driver talks to MLflow.
- Killing the sweep at any point loses at most the cells in flight: a rerun finishes only the missing ones.

Under ``ray job submit --working-dir . -- python -m jobs.sweep SPEC.yaml --tracking-uri URI`` the driver
runs in a temporary copy of the repository, so give an absolute tracking URI (an absolute
``sqlite:////...`` path on a shared disk or an ``http://`` MLflow server) and records paths that exist on
the cluster (relative paths in the spec resolve against the uploaded copy).
Token auth (Ray 2.60): the job inherits the cluster's ``RAY_AUTH_MODE``/token; the submitting shell needs
``RAY_AUTH_MODE=token`` and the token (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``). See docs/operations.md.
Options: ``--dry-run``, ``--tracking-uri``, ``--experiment``, ``--out``, ``--jobs N`` (cells in flight),
``--cpus-per-cell`` (default 0.5), ``--no-progress``.
Exit status: 0 done, 2 bad spec, 3 some cells failed or could not be logged (outputs of logged-or-not cells
are on disk).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd


def _tune_cell(records_path: str, cell_dict: dict):
    """Ray task body: load the records, tune the cell, return (curve, summary)."""
    from cascade.data import records
    from cascade.evaluate.sweep_spec import Cell, run_cell

    cell = Cell(**{**cell_dict, "cascade": tuple(cell_dict["cascade"]),
                   "params": tuple(tuple(p) for p in cell_dict["params"])})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = records.load(records_path, benchmark=cell.benchmark)
        res = run_cell(df, cell)
    return res.curve, res.summary


def _cell_dict(c) -> dict:
    from dataclasses import asdict

    d = asdict(c)
    d["cascade"] = list(c.cascade)
    d["params"] = [list(p) for p in c.params]
    return d


def _write_cell(out: Path, curve: pd.DataFrame, summary: dict) -> None:
    from jobs.commands.tune import write_outputs

    write_outputs(out, curve, summary)


def _ray_init():
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        # inside `ray job submit` RAY_ADDRESS points at the cluster; on a laptop this starts a local Ray
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return ray


def build_parser(prog: str = "python -m jobs.sweep") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Run a sweep spec: cells as Ray tasks, tracked in MLflow; "
                                                        "finished cells are skipped.")
    add_args(ap)
    return ap


def add_args(ap) -> None:
    ap.add_argument("spec", help="sweep spec (YAML); see examples/sweep-*.yaml")
    ap.add_argument("--dry-run", action="store_true", help="list the cells that would run and those already done")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (absolute; default $MLFLOW_TRACKING_URI, "
                                           "else sqlite:///<repo>/mlflow.db)")
    ap.add_argument("--experiment", help="override the spec's experiment")
    ap.add_argument("--cpus-per-cell", type=float, default=0.5, help="Ray CPUs per cell task (default 0.5)")
    ap.add_argument("--jobs", "--max-in-flight", dest="max_in_flight", type=int, default=4,
                    help="cells submitted to Ray at once (default 4)")
    ap.add_argument("--out", help="override the spec's `out` folder (per-cell curve.parquet/summary.json)")
    ap.add_argument("--no-progress", action="store_true")


def _sweep_key(spec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def _parent_run(client, exp_id: str, sweep_key: str):
    runs = client.search_runs([exp_id], filter_string=f"tags.`cascade.sweep_key` = '{sweep_key}' and "
                                                      "tags.`cascade.kind` = 'parent'", max_results=1)
    return runs[0] if runs else None


def run(args) -> int:
    from tqdm import tqdm

    import tracking
    from cascade.evaluate import sweep_spec as S

    spec = S.load_spec(args.spec)
    if getattr(args, "out", None):
        spec = spec.model_copy(update={"out": str(Path(args.out).resolve())})
    experiment = args.experiment or spec.experiment
    uri = tracking.tracking_uri(args.tracking_uri)
    tracking.check_reachable(uri)

    # scoring that feeds the sweep (a rerun skips finished shards)
    scored: list = []
    for r in spec.records:
        if r.score is not None:
            if args.dry_run:
                print(f"would score {r.score} (finished shards are skipped)")
                continue
            from jobs.score import run as score_run

            print(f"scoring {r.name}: {r.score}", flush=True)
            stats = score_run(r.score, progress=not args.no_progress)
            print(f"  {stats['scored_records']} records scored, {stats['skipped_shards']} shards skipped", flush=True)
            if stats.get("scored_records"):  # a rerun that scored nothing logs nothing
                from cascade.scoring.config import load_config
                from jobs.score import save_stats

                scored.append((r, save_stats(stats, load_config(r.score))))  # logged under the sweep's parent
    if args.dry_run and any(r.score is not None and not Path(S.records_path(r)).exists() for r in spec.records):
        fps = {r.name: "not-scored-yet" for r in spec.records
               if r.score is not None and not Path(S.records_path(r)).exists()}
    else:
        fps = {}
    cells = S.expand(spec, fps)
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise S.SpecError("the spec lists the same cell twice (duplicate methods, sizes or seeds?)")

    import mlflow

    mlflow.set_tracking_uri(uri)
    done: dict[str, str] = {}
    # a dry run touches nothing: opening a SQLite store that does not exist yet would create it
    missing_db = uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()
    client = None if (missing_db and args.dry_run) else mlflow.MlflowClient()
    exp = None if client is None else client.get_experiment_by_name(experiment)
    if exp is not None:
        for run_ in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                       max_results=50000):
            k = run_.data.tags.get("cascade.cell_key")
            if k:
                done[k] = run_.info.run_id
    todo = [c for c in cells if c.key not in done]
    print(f"sweep {experiment!r}: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run "
          f"(tracking: {uri})", flush=True)
    if args.dry_run:
        for c in cells:
            print(f"  {'done ' + done[c.key][:8] if c.key in done else 'to run  '}  {c.key}  {c.label}")
        return 0
    if not todo:
        return 0

    exp_id = tracking.configure(uri, experiment)
    client = client or mlflow.MlflowClient()
    sweep_key = _sweep_key(spec)
    # runs a killed driver left RUNNING for a cell are marked KILLED (the cell is redone)
    for run_ in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=50000):
        if run_.data.tags.get("cascade.cell_key") in {c.key for c in todo}:
            client.set_terminated(run_.info.run_id, status="KILLED")
    parent = _parent_run(client, exp_id, sweep_key)
    if parent is None:
        parent_ctx = mlflow.start_run(run_name=f"sweep {Path(args.spec).stem}", tags={
            "cascade.kind": "parent", "cascade.sweep_key": sweep_key, "mlflow.source.git.commit": tracking.git_commit()})
    else:
        parent_ctx = mlflow.start_run(run_id=parent.info.run_id)
    out_root = Path(spec.out) / experiment
    n_logged, n_failed, failures = 0, 0, []
    t0 = time.perf_counter()
    with parent_ctx as parent_run:
        if parent is None:
            mlflow.log_params({"spec": str(Path(args.spec).resolve()), "n_cells": len(cells),
                               "methods": ",".join(m.name for m in spec.methods),
                               "sample_sizes": ",".join(map(str, spec.sample_sizes)),
                               "seeds": ",".join(map(str, spec.seeds))})
            mlflow.log_dict(json.loads(spec.model_dump_json()), "sweep_spec.json")
        for r, stats in scored:
            try:
                tracking.log_scoring(stats, config=stats.get("config"), config_path=r.score, run_name=f"score {r.name}",
                                     parent_run_id=parent_run.info.run_id, tags={"cascade.data.records": r.name})
            except tracking.TrackingUnavailable as e:
                print(f"  scoring not logged ({e}); `cascade log {stats['out_dir']}` can log it later",
                      file=sys.stderr)
        ray = _ray_init()
        task = ray.remote(num_cpus=args.cpus_per_cell, max_retries=2)(_tune_cell)
        pending: dict = {}
        queue = list(todo)
        bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=args.no_progress, file=sys.stdout)
        records_cache: dict[str, pd.DataFrame] = {}
        while queue or pending:
            while queue and len(pending) < max(1, args.max_in_flight):
                c = queue.pop(0)
                pending[task.remote(c.records_path, _cell_dict(c))] = c
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            c = pending.pop(ref)
            try:
                curve, summary = ray.get(ref)
            except Exception as e:  # a failing cell is reported, not hidden; it stays "to run"
                n_failed += 1
                failures.append(f"{c.label}: {type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
                bar.update(1)
                continue
            cell_out = out_root / c.key
            _write_cell(cell_out, curve, summary)  # on disk before MLflow sees it
            if c.records_path not in records_cache:
                from cascade.data import records

                records_cache[c.records_path] = records.load(c.records_path, benchmark=c.benchmark)
            try:
                tracking.log_tune(curve, summary, cascade=list(c.cascade), method=c.method, params=dict(c.params),
                                  records_path=c.records_path, records_df=records_cache[c.records_path],
                                  cell_key=c.key, parent_run_id=parent_run.info.run_id,
                                  run_name=f"{' -> '.join(c.cascade)} | {c.method} | n={c.n} | seed={c.seed}",
                                  tags={"cascade.data.records": c.records, "cascade.n": c.n, "cascade.seed": str(c.seed)},
                                  extra_params={"n": c.n, "seed": c.seed, "cell_key": c.key})
                n_logged += 1
            except tracking.TrackingUnavailable as e:
                failures.append(f"{c.label}: not logged ({e}); outputs in {cell_out}")
            bar.update(1)
        bar.close()
    print(f"ran {n_logged + len(failures) - n_failed} cells, logged {n_logged}, failed {n_failed} in "
          f"{time.perf_counter() - t0:.1f}s; outputs under {out_root}")
    for f in failures:
        print(f"  {f}", file=sys.stderr)
    return 0 if not failures else 3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except Exception as e:
        from cascade.evaluate.sweep_spec import SpecError
        from cascade.data.records import RecordsError
        from cascade.scoring.config import ConfigError
        import tracking

        if isinstance(e, (SpecError, RecordsError, ConfigError, FileNotFoundError)):
            print(f"sweep: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, tracking.TrackingUnavailable):
            print(f"sweep: {e}; nothing was run", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
