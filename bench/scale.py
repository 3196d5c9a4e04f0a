"""Scale benchmark: import and tune on resampled results stores of growing size (issue 13).

Usage: python bench/scale.py [--sizes 1e3,1e5,1e6] [--steps import,tune,grid,random] [--blas-threads 1]
        [--results examples/medmcqa-llama.parquet] [--workdir DIR] [--keep] [--breakdown]

For each size n it writes a records file resampled from ``--results``: n training and n test queries
drawn with replacement from each split, each drawn query keeping its rows for every model together
(rows = 2 n x models; 10 n for the example's 5 models), with fresh query ids. Then it runs each step as
its own ``cascade`` subprocess (``python -m jobs.cli``), started by a small wrapper process that reports
that subprocess's own rusage, so wall time, CPU time (user + sys) and peak RSS are those of that step
alone. (Linux carries a process's peak RSS across ``exec``: a step started straight from this script,
which holds the resampled table, reported this script's peak, ~1 GB at 1e6, as its own. The wrapper is
a bare Python of ~10 MB, so a step's peak includes at most that.)

- ``import``: ``cascade import FILE --out STORE``
- ``tune``: ``cascade tune --results STORE --models <all k models> --method markov-copula``
- ``grid``, ``random``: the same with ``--method grid`` / ``--method random``

and prints one row per size and step, then the growth exponent between consecutive sizes
(log(t2 / t1) / log(n2 / n1); 1 = linear). ``--breakdown`` adds, in a fresh subprocess, the time and
peak RSS so far of each stage of a k-model markov-copula tune at the largest size: importing the
tuning modules, reading the cascade's arrays (``records.load_cascade``), calibration, model fit,
threshold search, test curve (and, for comparison, reading the whole store into pandas).

The subprocesses run with ``--blas-threads`` BLAS/OpenMP threads (default 1: on a busy 2-core machine
two OpenBLAS threads cost more than they give); the value is printed. Targets (issue 13), at 1e6
queries x 5 models: tune k=5 markov-copula < 10 s and < 1 GB, grid and random < 5 s; import of 10M rows
(1e6 queries) < 15 s and < 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = ("import", "tune", "grid", "random")
METHOD = {"tune": "markov-copula", "grid": "grid", "random": "random"}


def resample(src: Path, n: int, out: Path, seed: int = 0) -> tuple[list[str], int]:
    """Write a records Parquet file with n train and n test queries drawn (with replacement) from ``src``'s
    splits, every model's row of a drawn query kept together. Returns (models in file order, rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    table = pq.read_table(src)
    models = list(dict.fromkeys(table.column("model").to_pylist()))
    parts = []
    next_id = 0
    for split in ("train", "test"):
        sub = table.filter(pc.equal(table["split"], split))
        qids = np.unique(sub.column("query_id").to_numpy())
        draw = rng.integers(0, len(qids), n)  # positions of drawn queries
        new_ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        for model in models:
            rows = sub.filter(pc.equal(sub["model"], model)).sort_by("query_id")
            if not np.array_equal(rows.column("query_id").to_numpy(), qids):
                raise SystemExit(f"{src}: model {model} lacks queries of split {split}; need complete records")
            part = rows.take(pa.array(draw))
            part = part.set_column(part.schema.get_field_index("query_id"), "query_id", pa.array(new_ids))
            parts.append(part)
    out_table = pa.concat_tables(parts)
    pq.write_table(out_table, out)
    return models, out_table.num_rows


#: Runs argv[2:] with stdout and stderr to the file argv[1]; prints its wall time, exit code and rusage
#: (os.wait4: that process alone) as JSON. Imports only what a bare Python has loaded anyway.
WRAPPER = """
import json, os, sys, time
log = open(sys.argv[1], "w")
t0 = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ, file_actions=[
    (os.POSIX_SPAWN_DUP2, log.fileno(), 1), (os.POSIX_SPAWN_DUP2, log.fileno(), 2)])
_, status, ru = os.wait4(pid, 0)
print(json.dumps({"wall_s": time.perf_counter() - t0, "rc": os.waitstatus_to_exitcode(status),
                  "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}))
"""


def run_step(cmd: list[str], env: dict, log: Path) -> dict:
    """Run one CLI command through :data:`WRAPPER`: wall, CPU (user + sys) and peak RSS of that command's
    process alone (not of this script, whose peak Linux would otherwise carry into it across exec)."""
    r = subprocess.run([sys.executable, "-S", "-c", WRAPPER, str(log), *cmd], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"step wrapper failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    m = json.loads(r.stdout.strip().splitlines()[-1])
    if m.pop("rc") != 0:
        raise SystemExit(f"step failed: {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return m


def breakdown(store: Path, models: list[str]) -> list[tuple[str, float, float, float]]:
    """Stages of one markov-copula tune as ``cascade tune`` runs them, in this process (run it in a fresh
    one: :func:`run_breakdown`): (stage, wall s, CPU s, peak RSS MB so far). The last stage reads the whole
    store into pandas, for comparison."""
    import resource

    rows = []

    def stage(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        rows.append((name, time.perf_counter() - t0, time.process_time() - c0,
                     resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        return out

    def imports():
        from cascade.data import records
        from cascade.evaluate import tuning

        return records, tuning

    records, tune = stage("imports (records, evaluate.tuning)", imports)
    data = stage("read arrays (records.load_cascade)", lambda: records.load_cascade(store, models, ("train", "test")))
    train, test, _ = stage("calibration (tuning.prepare)", lambda: tune.prepare(data, models=models))
    tuner = stage("fit + threshold search", lambda: tune.get_method("markov-copula")().fit(train))
    d = tuner.diagnostics_
    rows.append(("  of which model fit", d["fit_seconds"], float("nan"), float("nan")))
    rows.append(("  of which threshold search", d["tune_seconds"], float("nan"), float("nan")))
    stage("test curve (tuning.curve_frame)", lambda: tune.curve_frame("markov-copula", models, tuner.thresholds_,
                                                                     tuner.train_error_, tuner.train_cost_, test))
    stage("(whole store into pandas: records.load)", lambda: records.load(store))
    return rows


def run_breakdown(store: Path, models: list[str], env: dict, work: Path) -> list[tuple[str, float, float, float]]:
    """:func:`breakdown` in a fresh subprocess, started through :data:`WRAPPER` (its peak RSS is then the
    tune's alone, not this script's)."""
    out = work / "breakdown.json"
    run_step([sys.executable, str(Path(__file__).resolve()), "--breakdown-of", str(store), "--models",
              ",".join(models), "--json", str(out)], env, work / "log-breakdown.txt")
    return [tuple(row) for row in json.loads(out.read_text())]


def blas_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "examples" / "medmcqa-llama.parquet"),
                    help="records to resample (every model must have every query of its split)")
    ap.add_argument("--sizes", default="1e3,1e5,1e6",
                    help="queries per split, comma-separated (rows = 2 x size x models; 1e6 -> 10M rows)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--blas-threads", type=int, default=1, help="BLAS/OpenMP threads of the subprocesses")
    ap.add_argument("--workdir", help="folder for the generated files and stores (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the stages of a markov-copula tune in-process at the largest size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the measurements to this JSON file")
    ap.add_argument("--breakdown-of", metavar="STORE", help=argparse.SUPPRESS)  # run_breakdown's subprocess
    ap.add_argument("--models", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.breakdown_of:
        rows = breakdown(Path(args.breakdown_of), args.models.split(","))
        Path(args.json).write_text(json.dumps(rows))
        return 0

    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"--steps: unknown step(s) {', '.join(bad)}; use {', '.join(STEPS)}")
    env = blas_env(args.blas_threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cascade-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "jobs.cli"]
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; BLAS/OpenMP threads per "
          f"step: {args.blas_threads}; resampled from {args.results}; work folder {work}", flush=True)
    print(f"{'queries':>9} {'rows':>10} {'step':<7} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'load':>5}", flush=True)
    results = []
    models = []
    try:
        for n in sizes:
            src = work / f"records-{n}.parquet"
            models, n_rows = resample(Path(args.results), n, src, seed=args.seed)
            store = work / f"store-{n}"
            shutil.rmtree(store, ignore_errors=True)
            for step in ["import"] + [s for s in steps if s != "import"]:
                if step == "import":
                    cmd = py + ["import", str(src), "--out", str(store)]
                else:
                    cmd = py + ["tune", "--results", str(store), "--models", ",".join(models),
                                "--method", METHOD[step], "--out", str(work / f"out-{n}-{step}")]
                m = run_step(cmd, env, work / f"log-{n}-{step}.txt")
                if step not in steps:  # the store is needed by the other steps; not reported
                    continue
                m["load"] = os.getloadavg()[0]  # 1-minute load average when the step ended
                results.append({"queries": n, "rows": n_rows, "step": step, **m})
                print(f"{n:>9} {n_rows:>10} {step:<7} {m['wall_s']:>8.2f} {m['cpu_s']:>8.2f} {m['rss_mb']:>12.0f} "
                      f"{m['load']:>5.1f}", flush=True)
        if len(sizes) > 1:
            print("\ngrowth exponent between sizes (1 = linear): wall / cpu / peak RSS")
            for step in steps:
                got = [r for r in results if r["step"] == step]
                for a, b in zip(got, got[1:]):
                    r = math.log(b["queries"] / a["queries"])
                    e = [math.log(b[key] / a[key]) / r for key in ("wall_s", "cpu_s", "rss_mb")]
                    print(f"  {step:<7} {a['queries']:>9} -> {b['queries']:<9} {e[0]:6.2f} {e[1]:6.2f} {e[2]:6.2f}")
        stages = []
        if args.breakdown:
            stages = run_breakdown(work / f"store-{sizes[-1]}", models, env, work)
            print(f"\nstages of one markov-copula tune, k={len(models)}, {sizes[-1]} queries, in one fresh process "
                  f"(load average now {os.getloadavg()[0]:.1f}):")
            print(f"  {'stage':<34} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12}")
            for name, wall, cpu, rss in stages:
                print(f"  {name:<34} {wall:>8.2f} {cpu:>8.2f} {rss:>12.0f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"blas_threads": args.blas_threads, "cpus": os.cpu_count(),
                                                   "steps": results, "stages": stages}, indent=2))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
