"""Scoring throughput: the Ray pipeline (jobs.score.run) against the bare engine, same model and prompts.

    .venv/bin/python bench/scoring_throughput.py [--model smollm2-135m] [--n 48] [--threads 2]

1. bare: one in-process engine scores the queries shard by shard (cascade.scoring.stage.score_items);
2. pipeline: ``jobs.score.run`` with one stage (one actor, the same threads) on the same queries;
3. pipeline again on 3x the queries, to show that peak memory does not grow with the dataset.

Throughput is taken over scoring time (engine loaded): queries/s and output tokens/s (answer pass;
the P(True) pass runs in both). Peak memory is the high-water mark of the summed RSS of this process
and all its children (Ray's raylet, workers and actors), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


class PeakRSS:
    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._sample()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def data_dir() -> str:
    shared = ROOT.parent / "shared" / "benchmarks"
    return str(shared if (shared / "mmlu-test.parquet").exists() else ROOT / "examples" / "benchmarks")


def config(model: str, n: int, out: str, threads: int, batch: int, dtype: str, shard: int) -> dict:
    return {
        "benchmarks": [{"name": "mmlu", "splits": ["test"], "limit": n}],
        "data_dir": data_dir(),
        "out": out,
        "shard_size": shard,
        "stages": [{
            "name": model, "model": model, "engine": "transformers", "dtype": dtype, "batch_size": batch,
            "resources": {"num_cpus": threads, "threads": threads}, "price": {"input": 0.01, "output": 0.02},
        }],
        "ray": {"progress": False},
    }


def bare(model: str, n: int, threads: int, batch: int, dtype: str, shard: int) -> dict:
    from cascade.data import benchmarks as B
    from cascade.scoring.config import SIGNALS
    from cascade.scoring.engines import make_engine
    from cascade.scoring.models import materialize
    from cascade.scoring.stage import StageInfo, score_items

    path = materialize(model)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        eng = make_engine("transformers", path, dtype=dtype, batch_size=batch, threads=threads)
        load = time.perf_counter() - t0
        its = B.items("mmlu", B.load_split("mmlu", "test", data_dir=data_dir(), limit=n))
        info = StageInfo(model, "transformers", path, dtype, 0.01, 0.02)
        t1 = time.perf_counter()
        out_tokens = 0
        for s in range(0, len(its), shard):
            df = score_items(eng, info, "mmlu", "test", its[s:s + shard], signals=list(SIGNALS))
            out_tokens += int(df["output_tokens"].sum())
        secs = time.perf_counter() - t1
    return {"n": len(its), "load_seconds": load, "seconds": secs, "queries_per_s": len(its) / secs,
            "output_tokens_per_s": out_tokens / secs, "peak_rss_mb": mem.peak / 2**20}


def pipeline(model: str, n: int, threads: int, batch: int, dtype: str, shard: int) -> dict:
    from jobs.score import run

    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as mem:
        t0 = time.perf_counter()
        stats = run(config(model, n, tmp, threads, batch, dtype, shard))
        wall = time.perf_counter() - t0
    st = stats["stages"][model]
    return {"n": st["n_records"], "load_seconds": st.get("load_seconds"), "seconds": st["seconds"],
            "queries_per_s": st["queries_per_s"], "output_tokens_per_s": st["output_tokens_per_s"],
            "wall_seconds": wall, "peak_rss_mb": mem.peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=48, help="queries (MMLU test) for the bare-vs-pipeline comparison")
    ap.add_argument("--scale", type=int, default=3, help="the memory run scores n x scale queries")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) for the engine")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", help="also write the results to this JSON file")
    a = ap.parse_args()
    args = (a.model, a.n, a.threads, a.batch_size, a.dtype, a.shard_size)
    b = bare(*args)
    p = pipeline(*args)
    big = pipeline(a.model, a.n * a.scale, a.threads, a.batch_size, a.dtype, a.shard_size)
    import ray

    ray.shutdown()
    res = {
        "model": a.model, "dtype": a.dtype, "threads": a.threads, "batch_size": a.batch_size, "shard_size": a.shard_size,
        "bare": b, "pipeline": p, "pipeline_big": big,
        "pipeline_vs_bare_queries": p["queries_per_s"] / b["queries_per_s"],
        "pipeline_vs_bare_tokens": p["output_tokens_per_s"] / b["output_tokens_per_s"],
        "peak_rss_growth": big["peak_rss_mb"] / p["peak_rss_mb"],
    }
    print(f"model {a.model} ({a.dtype}, {a.threads} threads, batch {a.batch_size}, shard {a.shard_size})")
    print(f"{'':10s} {'queries':>8s} {'q/s':>8s} {'out tok/s':>10s} {'load s':>7s} {'peak RSS MB':>12s}")
    for name, r in (("bare", b), ("pipeline", p), (f"pipe x{a.scale}", big)):
        print(f"{name:10s} {r['n']:8d} {r['queries_per_s']:8.2f} {r['output_tokens_per_s']:10.1f} "
              f"{r['load_seconds'] or 0:7.1f} {r['peak_rss_mb']:12.0f}")
    print(f"pipeline / bare: {res['pipeline_vs_bare_queries']:.1%} queries/s, {res['pipeline_vs_bare_tokens']:.1%} tokens/s "
          f"(target >= 90%); pipeline wall incl. Ray start and model load: {p['wall_seconds']:.1f}s")
    print(f"peak RSS x{a.scale} queries / x1: {res['peak_rss_growth']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
