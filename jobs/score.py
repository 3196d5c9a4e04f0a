"""``cascade score``: run scoring stages as Ray actor pools and write records as Parquet shards.

Each stage (one model) is a pool of ``resources.replicas`` Ray actors holding a loaded engine, with
the CPUs/GPUs of its config. All stages' shards are queued at once, so stages of a chain run
concurrently when the cluster has room. A shard is a fixed range of query ids of one (benchmark,
split); its file name is deterministic (``<out>/<benchmark>/<stage>/<split>-<start>-<end>.parquet``)
and it is written atomically by the driver, so a rerun skips finished shards and a killed run
leaves no partial file. A crashed actor is restarted by Ray (``max_restarts``) and its shard retried;
since only the driver writes, and only whole shards, no row is lost or written twice.

Free-text benchmarks with a ``judge`` configured send each answered shard through the judge's actor
pool (one more stage, same engines) before the shard is written.

Python API: :func:`run` (config path, dict or :class:`~cascade.scoring.config.ScoreConfig`) -> stats dict.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from cascade.data import benchmarks as B
from cascade.data import records
from cascade.scoring.config import ConfigError, ScoreConfig, StageConfig, load_config, needs_gpus
from cascade.scoring.stage import SIGNAL_COLUMNS, StageInfo, column_order

SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<start>\d{6,})-(?P<end>\d{6,})\.parquet$")


@dataclass
class Shard:
    benchmark: str
    split: str
    start: int
    end: int
    items: list
    path: Path

    @property
    def n(self) -> int:
        return self.end - self.start


@dataclass
class StageStats:
    n_records: int = 0
    n_shards: int = 0
    skipped_shards: int = 0
    scored_records: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ptrue_input_tokens: int = 0
    ptrue_output_tokens: int = 0
    accelerator_seconds: float = 0.0
    retries: int = 0
    first_submit: float | None = None
    last_done: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        busy = (self.last_done - self.first_submit) if (self.first_submit and self.last_done) else 0.0
        return {
            "n_records": self.n_records,
            "n_shards": self.n_shards,
            "skipped_shards": self.skipped_shards,
            "scored_records": self.scored_records,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "ptrue_input_tokens": self.ptrue_input_tokens,
            "ptrue_output_tokens": self.ptrue_output_tokens,
            "accelerator_seconds": self.accelerator_seconds,
            "seconds": busy,
            "queries_per_s": self.scored_records / busy if busy > 0 else 0.0,
            "output_tokens_per_s": self.output_tokens / busy if busy > 0 else 0.0,
            "retries": self.retries,
            **self.extra,
        }


# ------------------------------------------------------------------------------------------ actors


class StageWorker:
    """Holds one loaded engine; a Ray actor in :func:`run`, a plain object in tests and benchmarks."""

    def __init__(self, stage: dict):
        from cascade.scoring.engines import make_engine
        from cascade.scoring.models import materialize

        st = StageConfig.model_validate(stage)
        threads = st.resources.threads or max(1, math.ceil(st.resources.num_cpus))
        path = materialize(st.model)
        kw = dict(dtype=st.dtype, batch_size=st.batch_size, threads=threads, max_model_len=st.max_model_len,
                  tensor_parallel_size=st.resources.tensor_parallel_size, **st.engine_options)
        if st.engine == "transformers" and st.device:
            kw["device"] = st.device
        self.engine = make_engine(st.engine, path, **kw)
        self.info = StageInfo(st.name, st.engine, path, st.dtype, st.price.input, st.price.output, st.max_new_tokens)

    def pid(self) -> int:
        return os.getpid()

    def score(self, benchmark: str, split: str, items: list, signals: list[str], grading: dict, run_id: str):
        from cascade.scoring.stage import score_items

        return score_items(self.engine, self.info, benchmark, split, items, signals=signals,
                           grading=B.GradingConfig(**grading), run_id=run_id)

    def judge(self, benchmark: str, items: list, answers: list[str]):
        from cascade.scoring.stage import judge_items

        return judge_items(self.engine, benchmark, items, answers)


# ------------------------------------------------------------------------------------------ planning


def _expected_columns(bench: str, signals: list[str]) -> set[str]:
    cols = set(records.REQUIRED_FIELDS)
    for s in signals:
        if s == "choice_logprob" and B.get(bench).task != "multiple_choice":
            continue
        cols.add(SIGNAL_COLUMNS[s])
    return cols


def _shard_ok(path: Path, shard: Shard, expected: set[str]) -> bool:
    """A finished shard: readable, the right rows, the planned columns. Raises on a mismatch of settings."""
    try:
        meta = pq.read_metadata(path)
        names = set(meta.schema.names)
    except Exception:
        return False  # unreadable: score it again (the atomic writer makes this rare)
    missing = expected - names
    if missing:
        raise ConfigError(
            f"{path} was scored with other settings (lacks {', '.join(sorted(missing))}); "
            "use a new out folder or delete the shard"
        )
    return meta.num_rows == shard.n


def plan(cfg: ScoreConfig) -> tuple[dict[str, list[Shard]], dict[tuple[str, str], list]]:
    """Load every split (column checks happen here) and cut it into shards per stage."""
    out = Path(cfg.out)
    per_split: dict[tuple[str, str], list] = {}
    for b in cfg.benchmarks:
        for split in cfg.bench_splits(b):
            df = B.load_split(b.name, split, data_dir=cfg.bench_data_dir(b), limit=cfg.bench_limit(b))
            if len(df) == 0:
                raise ConfigError(f"benchmarks: {b.name}/{split} has no rows")
            per_split[(b.name, split)] = B.items(b.name, df)
    shards: dict[str, list[Shard]] = {}
    for st in cfg.stages:
        lst = []
        for (bench, split), its in per_split.items():
            folder = out / records._safe(bench) / records._safe(st.name)
            n = len(its)
            planned = []
            for s in range(0, n, cfg.shard_size):
                e = min(n, s + cfg.shard_size)
                planned.append(Shard(bench, split, s, e, its[s:e], folder / f"{records._safe(split)}-{s:06d}-{e:06d}.parquet"))
            names = {p.path.name for p in planned}
            if folder.exists():
                for f in folder.glob("*.parquet"):
                    m = SHARD_RE.match(f.name)
                    if not m or m["split"] != records._safe(split) or f.name in names:
                        continue
                    fs, fe = int(m["start"]), int(m["end"])
                    if fs < n:
                        raise ConfigError(
                            f"out: {f} holds query ids {fs}..{fe - 1} of {bench}/{split} but this run cuts them "
                            f"differently (shard_size {cfg.shard_size}, {n} queries); use a new out folder, the "
                            "same shard_size and limit, or delete that file"
                        )
            lst.extend(planned)
        shards[st.name] = lst
    return shards, per_split


# ------------------------------------------------------------------------------------------ run


def _ray_init(cfg: ScoreConfig):
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        ray.init(address=cfg.ray.address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return ray


def _check_resources(cfg: ScoreConfig, ray) -> None:
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    need_gpu = needs_gpus(cfg)
    if need_gpu > gpus:
        raise ConfigError(
            f"stages ask for {need_gpu:g} GPU(s) per actor but the Ray cluster has {gpus:g}; "
            "set resources.num_gpus: 0 (and engine: transformers) or run on a cluster with GPUs"
        )
    for where, st in [(f"stages.{i}", s) for i, s in enumerate(cfg.stages)] + ([("judge", cfg.judge)] if cfg.judge else []):
        if st.resources.num_cpus > cpus:
            raise ConfigError(
                f"{where}.resources.num_cpus: {st.resources.num_cpus:g} CPUs per actor but the cluster has {cpus:g}; "
                "lower it (fractions are allowed)"
            )


def run(config, *, progress: bool | None = None) -> dict:
    """Score every (benchmark, split, query, stage) of ``config``; returns stats (see module doc)."""
    t0 = time.perf_counter()
    cfg = load_config(config)
    shards, per_split = plan(cfg)
    judge_benchmarks = {b for (b, _s) in per_split if B.get(b).task == "free_text"} if cfg.judge else set()
    expected = {b: _expected_columns(b, list(cfg.signals)) for (b, _s) in per_split}

    stats = {st.name: StageStats() for st in cfg.stages}
    todo: dict[str, deque] = {}
    for st in cfg.stages:
        q = deque()
        for sh in shards[st.name]:
            stats[st.name].n_shards += 1
            stats[st.name].n_records += sh.n
            if sh.path.exists() and _shard_ok(sh.path, sh, expected[sh.benchmark]):
                stats[st.name].skipped_shards += 1
                continue
            q.append(sh)
        todo[st.name] = q
    run_id = uuid.uuid4().hex[:12]
    need_judge = cfg.judge is not None and any(sh.benchmark in judge_benchmarks for q in todo.values() for sh in q)

    if any(todo.values()):
        ray = _ray_init(cfg)
        _check_resources(cfg, ray)
        _execute(cfg, ray, todo, stats, need_judge, judge_benchmarks, run_id,
                 progress=cfg.ray.progress if progress is None else progress)

    seconds = time.perf_counter() - t0
    scored = sum(s.scored_records for s in stats.values())
    out_tokens = sum(s.output_tokens for s in stats.values())
    return {
        "out_dir": cfg.out,
        "run_id": run_id,
        "n_records": sum(s.n_records for s in stats.values()),
        "scored_records": scored,
        "skipped_shards": sum(s.skipped_shards for s in stats.values()),
        "n_shards": sum(s.n_shards for s in stats.values()),
        "seconds": seconds,
        "queries_per_s": scored / seconds if seconds > 0 else 0.0,
        "output_tokens_per_s": out_tokens / seconds if seconds > 0 else 0.0,
        "stages": {k: v.as_dict() for k, v in stats.items()},
    }


def _execute(cfg, ray, todo, stats, need_judge, judge_benchmarks, run_id, *, progress: bool) -> None:
    from ray.exceptions import RayActorError, RayTaskError

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    max_attempts = cfg.ray.max_restarts + 1
    Worker = ray.remote(StageWorker)
    inflight: dict = {}  # ObjectRef -> (kind, stage name, shard, actor, payload)
    attempts: dict = {}
    t_start = time.perf_counter()

    def pool(st: StageConfig, n_work: int):
        opts = dict(num_cpus=st.resources.num_cpus, num_gpus=st.resources.num_gpus,
                    max_restarts=cfg.ray.max_restarts, max_task_retries=cfg.ray.max_restarts)
        lst = [Worker.options(**opts).remote(st.model_dump()) for _ in range(max(1, min(st.resources.replicas, n_work)))]
        for a in lst:  # readiness: the engine has loaded (load errors surface here)
            inflight[a.pid.remote()] = ("ready", st.name, None, a, None)
        return lst

    actors = {st.name: pool(st, len(todo[st.name])) for st in cfg.stages if todo[st.name]}
    n_judge = sum(1 for q in todo.values() for sh in q if sh.benchmark in judge_benchmarks)
    judge_actors = pool(cfg.judge, n_judge) if need_judge else []
    idle = {k: deque(v) for k, v in actors.items()}
    judge_idle = deque(judge_actors)
    judge_queue: deque = deque()  # (stage name, shard, answered frame)
    busy = {k: 0 for k in actors}
    released: set[str] = set()
    grading = cfg.grading.model_dump()
    signals = list(cfg.signals)
    bars = {}
    if progress and tqdm is not None:
        for i, st in enumerate(cfg.stages):
            s = stats[st.name]
            bars[st.name] = tqdm(total=s.n_records, initial=s.n_records - sum(sh.n for sh in todo[st.name]),
                                 desc=st.name, position=i, unit="q", file=sys.stderr, leave=True)

    def submit_score(name, sh):
        actor = idle[name].popleft()
        ref = actor.score.remote(sh.benchmark, sh.split, sh.items, signals, grading, run_id)
        busy[name] += 1
        inflight[ref] = ("score", name, sh, actor, None)

    def submit_judge(name, sh, df):
        actor = judge_idle.popleft()
        ref = actor.judge.remote(sh.benchmark, sh.items, df["answer"].tolist())
        inflight[ref] = ("judge", name, sh, actor, df)

    def finish(name, sh, df):
        df = column_order(df)
        table = records.to_arrow(records.validate(df, source=str(sh.path)))
        records.write_part(table, sh.path)
        s = stats[name]
        s.scored_records += len(df)
        s.input_tokens += int(df["input_tokens"].sum())
        s.output_tokens += int(df["output_tokens"].sum())
        if "ptrue_input_tokens" in df:
            s.ptrue_input_tokens += int(df["ptrue_input_tokens"].sum())
            s.ptrue_output_tokens += int(df["ptrue_output_tokens"].sum())
        s.accelerator_seconds += float(df["accelerator_seconds"].sum())
        s.last_done = time.perf_counter()
        if name in bars:
            bars[name].update(len(df))

    def release_finished():
        # A stage with nothing left frees its CPUs/GPUs for the stages (or judge) still waiting for room.
        for name, lst in actors.items():
            if name not in released and not todo[name] and busy[name] == 0:
                for a in lst:
                    ray.kill(a)
                released.add(name)
                for ref in [r for r, v in inflight.items() if v[0] == "ready" and v[1] == name]:
                    del inflight[ref]

    try:
        while any(todo.values()) or judge_queue or any(k != "ready" for k, *_ in inflight.values()):
            for name, q in todo.items():
                while q and idle.get(name):
                    submit_score(name, q.popleft())
            while judge_queue and judge_idle:
                submit_judge(*judge_queue.popleft())
            release_finished()
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            kind, name, sh, actor, payload = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as err:
                if kind == "ready":
                    raise RuntimeError(f"stage {name}: the engine failed to load: {err}") from None
                key = (kind, name, sh.path)
                attempts[key] = attempts.get(key, 1) + 1
                if name in stats:
                    stats[name].retries += 1
                if attempts[key] > max_attempts:
                    raise RuntimeError(
                        f"stage {name}: shard {sh.path.name} failed {max_attempts} times; giving up: {err}"
                    ) from None
                # Ray restarts the actor (max_restarts); the shard goes back to the pool
                if kind == "score":
                    busy[name] -= 1
                    idle[name].append(actor)
                    todo[name].appendleft(sh)
                else:
                    judge_idle.append(actor)
                    judge_queue.appendleft((name, sh, payload))
                continue
            except RayTaskError as e:  # an error in our code inside the actor: stop, as a local run would
                raise RuntimeError(f"stage {name}: scoring {sh.path.name} failed: {e}") from None
            now = time.perf_counter()
            if kind == "ready":
                if name in stats:
                    s = stats[name]
                    s.extra.setdefault("load_seconds", now - t_start)
                    if s.first_submit is None:
                        s.first_submit = now
                continue
            if kind == "score":
                busy[name] -= 1
                idle[name].append(actor)
                if sh.benchmark in judge_benchmarks and judge_actors:
                    judge_queue.append((name, sh, result))
                else:
                    finish(name, sh, result)
            else:
                judge_idle.append(actor)
                df = payload.copy()
                df["correct"] = result
                finish(name, sh, df)
    finally:
        for b in bars.values():
            b.close()
        for lst in list(actors.values()) + [judge_actors]:
            for a in lst:
                try:
                    ray.kill(a)
                except Exception:
                    pass


def save_stats(stats: dict, cfg: ScoreConfig) -> dict:
    """Write a run's stats (with its config) to ``<out>/score_stats.json`` next to the records (not a
    .parquet file, so readers of the store ignore it; ``cascade log OUT`` logs it later). Returns the
    stats worth logging: when this run scored nothing (every shard was already done), those of the run
    that scored the records, so a rerun does not replace real throughput with an empty one."""
    import json

    stats = {**stats, "config": json.loads(cfg.model_dump_json())}
    path = Path(stats["out_dir"]) / "score_stats.json"
    if stats["scored_records"] == 0 and path.exists():
        prev = json.loads(path.read_text())
        if prev.get("scored_records"):
            return {**prev, "rerun_skipped_shards": stats["skipped_shards"]}
    path.write_text(json.dumps(stats, indent=2, default=str))
    return stats


if __name__ == "__main__":  # python -m jobs.score CONFIG.yaml [options]
    from jobs.commands.score import main

    sys.exit(main())
