"""Seconds to fit the Markov-copula model and trace its full error-cost curve, for k = 2..5, next to grid
search at 40 quantiles, on the dev results (MedMCQA, llama chain, model-mean cost).

Usage: python bench/tuner_speed.py [--results examples/medmcqa-llama.parquet] [--repeats 3]
        [--integration table|exact] [--blas-threads 1]

Timings are medians over ``--repeats`` runs of ``fit`` on the calibrated training split, wall-clock and CPU
(user + sys of this process; CPU above wall means several threads ran, wall far above CPU a busy
machine); the Markov-copula model fit itself (``MarkovCopulaModel.fit``) is timed separately;
calibration and test scoring are not included. BLAS/OpenMP thread pools are pinned
to ``--blas-threads`` (default 1, with threadpoolctl) and the count is printed: on a busy 2-core machine
two OpenBLAS threads made the same run 2.6x slower. The target (issue 2): k = 5 under 2 s including the
fit on a 2-core machine. For reference the paper's release took 20-75 s per cascade without the fit and
its grid search ~670 s at k = 5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from cascade.data import records  # noqa: E402
from cascade.evaluate import tuning as tune  # noqa: E402
from cascade.tuners.markov_copula import MarkovCopulaModel  # noqa: E402

# the tuners import scipy.optimize, scipy.stats and statsmodels where they use them; load them (and the BLAS
# libraries they bring) here, so that threadpool_limits in main() pins every BLAS the timed runs use
import scipy.optimize  # noqa: E402,F401
import scipy.stats  # noqa: E402,F401
import statsmodels.genmod.generalized_linear_model  # noqa: E402,F401


def timed(fn, repeats):
    """(last result, median wall s, median CPU s) over ``repeats`` calls."""
    out, secs, cpus = None, [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        secs.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, statistics.median(secs), statistics.median(cpus)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="examples/medmcqa-llama.parquet")
    ap.add_argument("--paper", default="examples/medmcqa-paper-auc.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--integration", default="table", choices=["table", "exact"])
    ap.add_argument("--no-grid", action="store_true", help="skip grid search (k = 5 takes a few seconds)")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="BLAS/OpenMP threads (threadpoolctl); 0 leaves the libraries' defaults")
    args = ap.parse_args(argv)
    if args.blas_threads > 0:
        with threadpool_limits(args.blas_threads):
            return run(args)
    return run(args)


def run(args) -> int:
    chain = json.loads(Path(args.paper).read_text())["definitions"]["models_llama_chain"]
    df = records.load(args.results)
    pools = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info()) or "none found"
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; thread pools (threadpoolctl): "
          f"{pools}; results {args.results}; integration={args.integration}; median of {args.repeats}")
    print(f"{'k':>2} {'cascade':<58} {'fit s':>7} {'cpu s':>7} {'fit+curve s':>12} {'cpu s':>7} {'points':>7} "
          f"{'grid40 s':>9} {'cpu s':>7} {'grid pts':>9}")
    for k in range(2, len(chain) + 1):
        models = chain[:k]
        train, _, _ = tune.prepare(df, models=models, cost_mode="model-mean")
        mc = tune.get_method("markov-copula")(integration=args.integration)
        _, s_fit, c_fit = timed(lambda: MarkovCopulaModel(integration=args.integration).fit(train.confidence),
                                args.repeats)
        tuner, s_total, c_total = timed(lambda: mc.fit(train), args.repeats)
        if args.no_grid:
            s_grid, c_grid, n_grid = float("nan"), float("nan"), 0
        else:
            gr, s_grid, c_grid = timed(lambda: tune.get_method("grid")(n_quantiles=40).fit(train), 1)
            n_grid = len(gr.thresholds_)
        print(f"{k:>2} {' -> '.join(models):<58} {s_fit:>7.3f} {c_fit:>7.3f} {s_total:>12.3f} {c_total:>7.3f} "
              f"{len(tuner.thresholds_):>7} {s_grid:>9.3f} {c_grid:>7.3f} {n_grid:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
