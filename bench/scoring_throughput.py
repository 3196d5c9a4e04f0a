"""Scoring throughput and memory: the Ray Data pipeline (jobs.score.run) against the bare engine.

    .venv/bin/python bench/scoring_throughput.py [--model smollm2-135m] [--n 150] [--scale 10] [--threads 2] [--device cpu|cuda]
    .venv/bin/python bench/scoring_throughput.py --short --n 20000 --scale 10 --max-new-tokens 1 --signals answer

``--short`` scores generated short prompts instead of MMLU ("What is 17 + 25?", a JSONL file of
``n x scale`` rows and a task file naming it, written to a temporary folder: a task from a file, read
shard by shard as any large dataset is).

1. bare: one in-process engine scores the first ``n`` MMLU test questions shard by shard
   (``cascade.scoring.stage.score_items``, all six signals, so the P(True) pass runs too);
2. pipeline: ``jobs.score.run`` with one stage (one actor, the same threads) on the same questions;
3. memory: the pipeline on ``n`` (1x) and on ``n x scale`` (10x) questions with the answer-pass signals
   only, to show that peak memory does not grow with the dataset.

Questions come from ``mmlu-test.parquet`` in the benchmark folder (``--data-dir``, else the project's
rule: ``$CASCADE_BENCHMARKS_DIR``, else ``../shared/benchmarks`` beside the checkout); the script stops
if that file has fewer than ``n x scale`` rows rather than measure something smaller.

Throughput is taken over scoring time (engine loaded): queries/s and output tokens/s. The wall time
of the whole call (Ray start and model load included) is printed next to its CPU time (user + system
of this process and all its children: Ray's raylet, workers and actors), and the thread counts the engine ran with (torch intra-op threads and the BLAS pools
threadpoolctl sees). Peak memory is the high-water mark of the summed RSS of the process tree, sampled
every 0.2 s, and of the driver alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
ANSWER_SIGNALS = ["mean_logprob", "first_logprob", "top2_margin", "top2_logit_margin", "choice_logprob"]


class Meter:
    """Peak RSS (process tree and this process) and CPU seconds of the tree while the block runs."""

    def __init__(self, interval: float = 0.2):
        self.interval, self._stop = interval, threading.Event()
        self.peak = self.peak_self = 0
        self.cpu: dict[int, float] = {}
        self.cpu0: dict[int, float] = {}

    def _sample(self) -> None:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                total += rss
                self.cpu[p.pid] = t.user + t.system
                if p.pid == me.pid:
                    self.peak_self = max(self.peak_self, rss)
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _loop(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self.cpu0 = dict(self.cpu)
        self.t0 = time.perf_counter()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()
        self.wall = time.perf_counter() - self.t0
        self.cpu_seconds = sum(v - self.cpu0.get(pid, 0.0) for pid, v in self.cpu.items())


def blas_threads() -> str:
    from threadpoolctl import threadpool_info

    return ", ".join(sorted({f"{i['prefix']}:{i['num_threads']}" for i in threadpool_info()})) or "none"


SHORT_TASK = """task: short
grader: number
data_files: {test: short-test.jsonl}
doc_to_text: "What is {{ a }} + {{ b }}? Reply with the number only."
doc_to_target: "{{ a + b }}"
max_new_tokens: 1
"""


def write_short(folder: Path, rows: int) -> str:
    """``rows`` short prompts as JSONL and the task file naming them; returns the task file's path."""
    import random

    rng = random.Random(0)
    with open(folder / "short-test.jsonl", "w") as f:
        for _ in range(rows):
            f.write(f'{{"a": {rng.randint(1, 99)}, "b": {rng.randint(1, 99)}}}\n')
    (folder / "short.yaml").write_text(SHORT_TASK)
    return str(folder / "short.yaml")


def data_dir(arg: str | None, need: int) -> str:
    import pandas as pd

    from cascade.data import benchmarks as B

    folder = B.benchmarks_dir(arg)
    path = B.benchmark_file("mmlu", "test", folder)
    rows = len(pd.read_parquet(path))
    if rows < need:
        raise SystemExit(f"{path} has {rows} questions; this run needs {need} (--n x --scale): lower them, or point "
                         f"--data-dir / ${B.BENCHMARKS_DIR_ENV} at a larger mmlu-test file")
    return str(folder)


def config(a, n: int, out: str, signals: list[str]) -> dict:
    return {
        "benchmarks": [{"name": a.task, "splits": ["test"], "limit": n}],
        "data_dir": a.data_dir, "out": out, "shard_size": a.shard_size, "signals": signals,
        "stages": [{
            "name": a.model, "model": a.model, "engine": "transformers", "dtype": a.dtype, "batch_size": a.batch_size,
            "resources": {"num_cpus": a.threads, "threads": a.threads, "num_gpus": 1 if a.device == "cuda" else 0},
            "price": {"input": 0.01, "output": 0.02}, **({"device": a.device} if a.device == "cuda" else {}),
            **({"max_new_tokens": a.max_new_tokens} if a.max_new_tokens else {}),
        }],
        "ray": {"progress": False},
    }


def bare(a, n: int, signals: list[str]) -> dict:
    import torch

    from cascade.data import benchmarks as B
    from cascade.scoring.engines import make_engine
    from cascade.scoring.models import materialize
    from cascade.scoring.stage import StageInfo, score_items

    path = materialize(a.model)
    with Meter() as m:
        t0 = time.perf_counter()
        eng = make_engine("transformers", path, dtype=a.dtype, batch_size=a.batch_size, threads=a.threads,
                          **({"device": a.device} if a.device == "cuda" else {}))
        load = time.perf_counter() - t0
        its = B.items(a.task, B.load_split(a.task, "test", data_dir=a.data_dir, limit=n))
        info = StageInfo(a.model, "transformers", path, a.dtype, 0.01, 0.02, a.max_new_tokens)
        t1 = time.perf_counter()
        out_tokens = 0
        for s in range(0, len(its), a.shard_size):
            df = score_items(eng, info, B.get(a.task).name, "test", its[s:s + a.shard_size], signals=signals)
            out_tokens += int(df["output_tokens"].sum())
        secs = time.perf_counter() - t1
    return {"n": len(its), "load_seconds": load, "seconds": secs, "wall_seconds": m.wall, "cpu_seconds": m.cpu_seconds,
            "queries_per_s": len(its) / secs, "output_tokens_per_s": out_tokens / secs,
            "peak_rss_mb": m.peak / 2**20, "driver_peak_rss_mb": m.peak_self / 2**20,
            "torch_threads": torch.get_num_threads(), "blas": blas_threads()}


def pipeline(a, n: int, signals: list[str]) -> dict:
    from jobs.score import run

    with tempfile.TemporaryDirectory() as tmp, Meter() as m:
        stats = run(config(a, n, tmp, signals))
    st = stats["stages"][a.model]
    return {"n": st["n_records"], "load_seconds": st.get("load_seconds"), "seconds": st["seconds"],
            "queries_per_s": st["queries_per_s"], "output_tokens_per_s": st["output_tokens_per_s"],
            "wall_seconds": m.wall, "cpu_seconds": m.cpu_seconds, "torch_threads": st.get("threads"),
            "peak_rss_mb": m.peak / 2**20, "driver_peak_rss_mb": m.peak_self / 2**20}


def plan_memory(a, n: int) -> dict:
    """The driver's side of the input, no model: the peak of Python allocations (tracemalloc) while the
    plan of ``n`` queries is made (what a run holds before any scoring), against building every item in
    memory the way the driver did before the input streamed (``B.items`` over the whole split)."""
    import tracemalloc

    from cascade.data import benchmarks as B
    from cascade.scoring.config import load_config
    from jobs.score import plan

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config(a, n, tmp, ANSWER_SIGNALS))
        tracemalloc.start()
        t0 = time.perf_counter()
        shards, _ = plan(cfg)
        secs = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    tracemalloc.start()
    its = B.items(a.task, B.load_split(a.task, "test", data_dir=a.data_dir, limit=n))
    whole = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"n": n, "shards": sum(len(v) for v in shards.values()), "plan_seconds": secs, "plan_peak_mb": peak / 2**20,
            "all_items_peak_mb": whole / 2**20, "items": len(its)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=150, help="MMLU test questions at 1x (bare vs pipeline, and memory)")
    ap.add_argument("--scale", type=int, default=10, help="the second memory run scores n x scale questions")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (and Ray CPUs) for the engine")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the transformers engine on one GPU (the stage gets device cuda and num_gpus 1)")
    ap.add_argument("--data-dir", help="folder holding mmlu-test.parquet (default: the benchmark-folder rule)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate bare and pipeline this many times; report each and the median ratio (on a "
                         "shared machine other loads come and go)")
    ap.add_argument("--no-memory", action="store_true", help="only the bare-vs-pipeline comparison")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--short", action="store_true", help="generated short prompts (n x scale of them) instead of MMLU")
    ap.add_argument("--max-new-tokens", type=int, help="the stage's max_new_tokens (default: the task's)")
    ap.add_argument("--plan-only", action="store_true",
                    help="no model: the driver's memory for the plan of n and n x scale queries (and for all items)")
    ap.add_argument("--signals", choices=["all", "answer"], default="all",
                    help="signals of the bare-vs-pipeline runs: all (P(True) pass included) or the answer pass's")
    a = ap.parse_args()
    if a.short:
        a.tmp = tempfile.TemporaryDirectory()
        a.task, a.data_dir = write_short(Path(a.tmp.name), a.n * a.scale), None
    else:
        a.task, a.data_dir = "mmlu", data_dir(a.data_dir, a.n * a.scale)
    from cascade.scoring import signals as S

    if a.plan_only:
        for n in (a.n, a.n * a.scale):
            r = plan_memory(a, n)
            print(f"{n} queries: plan {r['shards']} shards in {r['plan_seconds']:.2f} s, driver peak "
                  f"{r['plan_peak_mb']:.1f} MB; every item in memory (the driver before streaming): "
                  f"{r['all_items_peak_mb']:.1f} MB")
        return
    all_signals = list(S.names()) if a.signals == "all" else ANSWER_SIGNALS
    if a.short:  # no options to watch in a number task
        all_signals = [x for x in all_signals if x != "choice_logprob"]
    pairs = []
    for _ in range(max(1, a.repeat)):
        pairs.append((bare(a, a.n, all_signals), pipeline(a, a.n, all_signals)))
    ratios = sorted(p["queries_per_s"] / b["queries_per_s"] for b, p in pairs)
    b, p = pairs[-1]
    m1 = m10 = None
    if not a.no_memory:
        mem_signals = [x for x in ANSWER_SIGNALS if not (a.short and x == "choice_logprob")]
        m1 = pipeline(a, a.n, mem_signals)
        m10 = pipeline(a, a.n * a.scale, mem_signals)
    import ray

    ray.shutdown()
    res = {
        "task": "short prompts (generated)" if a.short else "mmlu", "max_new_tokens": a.max_new_tokens,
        "model": a.model, "dtype": a.dtype, "device": a.device, "threads": a.threads, "batch_size": a.batch_size, "shard_size": a.shard_size,
        "data_dir": a.data_dir, "memory_1x": m1, f"memory_{a.scale}x": m10,
        "pairs": [{"bare": x, "pipeline": y} for x, y in pairs], "ratios": ratios,
        "median_ratio": float(statistics.median(ratios)),
    }
    if m1:
        res["peak_rss_growth"] = m10["peak_rss_mb"] / m1["peak_rss_mb"]
        res["driver_peak_rss_growth"] = m10["driver_peak_rss_mb"] / m1["driver_peak_rss_mb"]
    print(f"model {a.model} ({a.dtype}, {a.device}, {a.threads} threads, batch {a.batch_size}, shard {a.shard_size}); "
          f"bare engine: torch threads {b['torch_threads']}, BLAS {b['blas']}; pipeline actor: torch threads "
          f"{p['torch_threads']}")
    print(f"{'':12s} {'queries':>8s} {'q/s':>7s} {'out tok/s':>9s} {'score s':>8s} {'wall s':>7s} {'CPU s':>7s} "
          f"{'peak RSS MB':>11s} {'driver MB':>9s}")
    rows = [(f"{n} {i + 1}", r) for i, (x, y) in enumerate(pairs) for n, r in (("bare", x), ("pipeline", y))]
    for name, r in rows + [("memory 1x", m1), (f"memory {a.scale}x", m10)]:
        if r is None:
            continue
        print(f"{name:12s} {r['n']:8d} {r['queries_per_s']:7.2f} {r['output_tokens_per_s']:9.1f} {r['seconds']:8.1f} "
              f"{r['wall_seconds']:7.1f} {r['cpu_seconds']:7.1f} {r['peak_rss_mb']:11.0f} {r['driver_peak_rss_mb']:9.0f}")
    print(f"pipeline / bare queries/s: {', '.join(f'{r:.1%}' for r in ratios)}; median {res['median_ratio']:.1%} "
          f"(target >= 90%)")
    if m1:
        print(f"peak RSS at {a.scale}x / 1x questions: {res['peak_rss_growth']:.2f} (process tree), "
              f"{res['driver_peak_rss_growth']:.2f} (driver)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
