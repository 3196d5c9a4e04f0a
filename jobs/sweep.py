"""``python -m jobs.sweep SPEC.yaml`` / ``cascade sweep SPEC.yaml``: run a sweep's cells as Ray tasks.

- Scoring first for records entries that name a scoring config (finished shards are skipped).
- Every cell (see :mod:`cascade.evaluate.sweep_spec`) whose key already has a FINISHED MLflow run in the sweep's
  experiment is skipped; ``--dry-run`` lists what would run and what is done, and touches nothing.
- Cells run as Ray tasks (``--cpus-per-cell``, fractional by default so a 2-core laptop runs two at once);
  the driver writes each result to ``<out>/<cell key>/`` and then logs it to MLflow as a nested run
  under the sweep's parent run (one parent per spec, resumed by reruns). Only the driver talks to MLflow.
- Killing the sweep at any point loses at most the cells in flight: a rerun finishes only the missing ones
  (runs the killed driver left RUNNING are marked KILLED).
- Several drivers of one spec at once (two `cascade sweep` of it, or a rerun while one still runs) share the
  work: each cell is claimed (a lock file under ``<out>/<experiment>/.claims/``) by the driver that runs it, so
  each cell runs and is logged once; a driver waits for the cells another holds, then skips the finished ones.
  The claims of a driver that dies are released by the operating system.

Under ``ray job submit --working-dir . -- python -m jobs.sweep SPEC.yaml --tracking-uri URI`` the driver
runs in a temporary copy of the repository, so give an absolute tracking URI (an absolute
``sqlite:////...`` path on a shared disk or an ``http://`` MLflow server) and records paths that exist on
the cluster (relative paths in the spec resolve against the uploaded copy).
Token auth (Ray 2.60): the job inherits the cluster's ``RAY_AUTH_MODE``/token; the submitting shell needs
``RAY_AUTH_MODE=token`` and the token (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``). See docs/operations.md.
Options: ``--dry-run``, ``--tracking-uri``, ``--experiment``, ``--out``, ``--jobs N`` (cells in flight),
``--cpus-per-cell`` (default 0.5), ``--no-progress``.
Exit status: 0 done, 2 bad spec, 3 some cells failed, or the tracking store failed (one line; the outputs of
the cells that ran are on disk, and the line prints the `cascade log` command that logs them).
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

# cells are claimed as scoring shards are (jobs/claims.py)
from jobs.claims import Claims as CellClaims

# no heavy import at module level: `cascade sweep` registers its arguments from here (`cascade --help`)


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


def _write_cell(out: Path, curve, summary: dict) -> None:
    from cascade.evaluate.outputs import write_outputs

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


CLAIM_POLL_S = 1.0  # how often a driver looks again at cells another driver holds


def run(args) -> int:
    from tqdm import tqdm

    import tracking
    from cascade.evaluate import metrics as M
    from cascade.evaluate import sweep_spec as S

    spec = S.load_spec(args.spec)
    if getattr(args, "out", None):
        spec = spec.model_copy(update={"out": str(Path(args.out).resolve())})
    experiment = args.experiment or spec.experiment
    uri = tracking.tracking_uri(args.tracking_uri)
    tracking.check_reachable(uri, write=not args.dry_run)  # before any work; a dry run creates no folder

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

    done, _ = tracking.finished_cells(experiment, uri)  # reads only: a dry run creates no store
    todo = [c for c in cells if c.key not in done]
    print(f"sweep {experiment!r}: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run "
          f"(tracking: {uri})", flush=True)
    if args.dry_run:
        for c in cells:
            print(f"  {'done ' + done[c.key][:8] if c.key in done else 'to run  '}  {c.key}  {c.label}")
        return 0
    out_root = Path(spec.out) / experiment
    tracking.close_open_runs(out_root)  # runs an earlier driver could not end when the store failed: KILLED
    if not todo:
        return 0

    claims = CellClaims(out_root / ".claims")
    counts = {"ran": 0, "logged": 0, "failed": 0, "other": 0}
    failures: list[str] = []
    written: list[Path] = []
    t0 = time.perf_counter()
    log_cmd = f"cascade log {out_root} --experiment {experiment}" + (
        f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else "")

    def report() -> None:
        other = f", {counts['other']} finished by another sweep" if counts["other"] else ""
        print(f"ran {counts['ran']} cells, logged {counts['logged']}, failed {counts['failed']} in "
              f"{time.perf_counter() - t0:.1f}s; outputs under {out_root}{other}", flush=True)
        for f in failures:
            print(f"  {f}", file=sys.stderr)

    try:
        with tracking.sweep_parent(
                experiment, _sweep_key(spec), f"sweep {Path(args.spec).stem}", uri=uri,
                params={"spec": str(Path(args.spec).resolve()), "n_cells": len(cells),
                        "methods": ",".join(m.name for m in spec.methods),
                        "sample_sizes": ",".join(map(str, spec.sample_sizes)),
                        "seeds": ",".join(map(str, spec.seeds))},
                spec=json.loads(spec.model_dump_json())) as parent_run:
            for r, stats in scored:
                tracking.log_scoring(stats, config=stats.get("config"), config_path=r.score,
                                     run_name=f"score {r.name}", parent_run_id=parent_run.info.run_id,
                                     tags={"cascade.data.records": r.name})
            error = _run_cells(args, todo, experiment, uri, parent_run.info.run_id, out_root, claims, counts,
                               failures, written, tqdm, M, tracking)
            if error is not None:
                raise error
            _log_comparison(cells, out_root, experiment, uri, tracking)
    except tracking.TrackingUnavailable as e:
        claims.release_all()
        tracking.save_open_runs(out_root)  # marked KILLED by the rerun or `cascade log` once the store answers
        report()
        kept = f"{len(written)} cell output(s) under {out_root}" if written else None
        print(e.line("cascade sweep", kept=kept, log_command=log_cmd if written else None)
              + ("; rerunning the sweep runs only the cells not logged" if written else "; no cell was run"),
              file=sys.stderr)
        return 3
    finally:
        claims.release_all()
    report()
    return 0 if not failures else 3


def _log_comparison(cells, out_root: Path, experiment: str, uri: str, tracking) -> None:
    """Methods tuned on the same cascade (same records, n and seed): their shared cost range, computed once
    per cascade, and the metrics on it (``auc_shared``, error at shared budgets) on every cell's run; the
    comparison table and one overlaid error-cost plot per cascade on the sweep's parent (the active run)."""
    from cascade.evaluate import comparison
    from cascade.evaluate import metrics as M
    from cascade.evaluate.outputs import cascade_folder

    runs = []
    for c in cells:
        folder = out_root / c.key
        if not (folder / "summary.json").exists():
            continue  # a cell another sweep's out folder holds, or a failed one
        curve, summary = M.read_tune_output(folder)
        runs.append({"cascade": list(c.cascade), "method": c.method, "curve": curve, "summary": summary,
                     "benchmark": f"{c.records}:{c.benchmark or summary.get('benchmark')}", "n": c.n,
                     "seed": c.seed, "cell_key": c.key})
    if len({r["method"] for r in runs}) < 2:
        return
    table, shared = comparison.comparison_table(runs)
    done, _ = tracking.finished_cells(experiment, uri)
    for r in runs:
        key = (r["benchmark"], tuple(r["cascade"]), str(r["n"]), r["seed"])
        s = shared[key]
        if len(s.metrics) < 2 or r["cell_key"] not in done:
            continue
        note = s.notes.get(r["method"])
        tracking.log_summary(metrics=s.metrics[r["method"]], run_id=done[r["cell_key"]],
                             tags={"cascade.shared_note": note} if note else None)
    figures = {}
    for key, s in shared.items():
        if len(s.metrics) < 2:
            continue
        curves = {r["method"]: r["curve"] for r in runs
                  if (r["benchmark"], tuple(r["cascade"]), str(r["n"]), r["seed"]) == key}
        name = f"comparison/{cascade_folder(key[1])}_n{key[2]}_seed{key[3]}.png"
        figures[name] = comparison.overlay_figure(curves, f"{key[0]}: {' -> '.join(key[1])}, n={key[2]}, "
                                                          f"seed={key[3]}", s)
    tracking.log_summary(tables={"comparison_table.json": table}, figures=figures,
                         tags={"cascade.comparison": "true", "cascade.n_degenerate": str(int(table["degenerate"].sum()))})
    by_bench: dict = {}
    for c, r in zip([c for c in cells if (out_root / c.key / "summary.json").exists()], runs):
        by_bench.setdefault((c.records, r["summary"].get("benchmark")), []).append((c, r))
    for (records_name, bench), items in by_bench.items():  # one report per records x benchmark: never mixed
        c0, r0 = items[0]
        df = M.load_records(c0.records_path, benchmark=bench)
        one = {}
        for c, r in items:  # per method x cascade: the full training size (else the first), the first seed
            one.setdefault((r["method"], tuple(r["cascade"])), r)
        name = "report.html" if len(by_bench) == 1 else f"report_{records_name}_{bench}.html"
        data, desc = tracking.comparison_report(f"{records_name} ({bench}): sweep curves", list(one.values()),
                                                tracking.run_budgets(r0["summary"], df, bench))
        tracking.log_report(data, description=desc if len(by_bench) == 1 else None, name=name)
    print(f"compared {table['method'].nunique()} methods on {len(figures)} cascade(s) x size x seed on their shared "
          "cost range: auc_shared on every cell's run, the table and plots on the parent", flush=True)


def _run_cells(args, todo, experiment, uri, parent_id, out_root, claims, counts, failures, written, tqdm, M,
               tracking):
    """Claim, submit, write and log the cells; returns the TrackingUnavailable that stopped logging (the cells in
    flight are still written to disk) or None."""
    ray = _ray_init()
    task = ray.remote(num_cpus=args.cpus_per_cell, max_retries=2)(_tune_cell)
    pending: dict = {}
    queue, waiting = list(todo), []
    bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=args.no_progress, file=sys.stdout)
    records_cache: dict = {}
    error = None

    from cascade.evaluate import comparison

    def finish(ref, c, log: bool) -> None:
        try:
            curve, summary = ray.get(ref)
        except Exception as e:  # a failing cell is reported, not hidden; it stays "to run"
            counts["failed"] += 1
            failures.append(f"{c.label}: {type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
            return
        cell_out = out_root / c.key
        _write_cell(cell_out, curve, summary)  # on disk before MLflow sees it
        written.append(cell_out)
        counts["ran"] += 1
        if not log:
            return
        if c.records_path not in records_cache:
            records_cache[c.records_path] = M.load_records(c.records_path, benchmark=c.benchmark)
        tracking.log_tune(curve, summary, cascade=list(c.cascade), method=c.method, params=dict(c.params),
                          records_path=c.records_path, records_df=records_cache[c.records_path],
                          cell_key=c.key, parent_run_id=parent_id, output_fingerprint=M.output_fingerprint(cell_out),
                          run_name=comparison.run_name(c.method, c.cascade, c.n, c.seed),
                          tags={"cascade.data.records": c.records, "cascade.n": c.n, "cascade.seed": str(c.seed)},
                          extra_params={"n": c.n, "seed": c.seed, "cell_key": c.key})
        counts["logged"] += 1

    try:
        while queue or pending or waiting:
            while queue and len(pending) < max(1, args.max_in_flight):
                c = queue.pop(0)
                if not claims.try_claim(c.key):  # another driver of this spec runs it now
                    waiting.append(c)
                    continue
                if tracking.find_finished(experiment, c.key, uri):  # another driver finished it meanwhile
                    claims.release(c.key)
                    counts["other"] += 1
                    bar.update(1)
                    continue
                tracking.mark_killed(experiment, c.key, uri)  # runs a killed driver left RUNNING for this cell
                pending[task.remote(c.records_path, _cell_dict(c))] = c
            if not pending:
                if waiting:
                    time.sleep(CLAIM_POLL_S)
                    queue, waiting = queue + waiting, []
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=CLAIM_POLL_S if waiting else None)
            if not ready:
                queue, waiting = queue + waiting, []
                continue
            ref = ready[0]
            c = pending.pop(ref)
            try:
                finish(ref, c, log=True)
            finally:
                claims.release(c.key)
            bar.update(1)
    except tracking.TrackingUnavailable as e:
        error = e
        for ref, c in list(pending.items()):  # results in flight are kept on disk, not logged
            finish(ref, c, log=False)
            claims.release(c.key)
    finally:
        bar.close()
    return error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_cli(args, "sweep")
    except KeyboardInterrupt:
        from jobs.cli import interrupted

        return interrupted("sweep")


def run_cli(args, prog: str) -> int:
    """``run`` with the exit statuses of the docs: 2 bad input (one line), 3 tracking failed (one line)."""
    try:
        return run(args)
    except Exception as e:
        from cascade.data.records import RecordsError
        from cascade.evaluate.sweep_spec import SpecError
        from cascade.scoring.config import ConfigError
        import tracking

        if isinstance(e, (SpecError, RecordsError, ConfigError, FileNotFoundError)):
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, tracking.TrackingUnavailable):
            print(e.line(prog) + "; no cell was run", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
