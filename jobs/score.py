"""``cascade score`` on Ray Data: benchmark queries -> stage actor pools -> records shards.

The plan (:func:`plan`) cuts every (benchmark, split) into shards: a fixed range of query ids per
stage, written to ``<out>/<benchmark>/<stage>/<split>-<start>-<end>.parquet`` (names through
:func:`cascade.data.records.folder_name`). It reads no row: a split is a
:class:`cascade.data.benchmarks.Source` (row count, byte offsets of the shards of line files), so the
driver's memory does not grow with the dataset. The shards still to score become one Ray Data dataset
per stage (``ray.data.from_items``, one block per shard); :func:`read_shards` (a ``map_batches`` step of
Ray Data tasks) reads each shard's rows from the file and renders its prompts; each stage is a
callable class (:class:`StageWorker`, one loaded engine) run by ``map_batches`` on an actor pool of
``resources.replicas`` actors with the stage's ``num_cpus``/``num_gpus``; the stages' datasets are
unioned, so stages run concurrently when the cluster has room; the judge is one more ``map_batches``
(:class:`JudgeWorker`). vLLM stages with GPUs run through ``ray.data.llm`` instead (``runner``, see
:func:`_ray_llm_stage`): the same prompts, the same result conversion and the same records.

Ray Data brings the scheduling, backpressure, retries (a crashed actor is restarted and its batch
retried, ``ray.max_restarts``) and memory bounds; this module keeps exactly-once records: the driver
streams the output batches, gathers each shard's rows by query id (a retried batch cannot add a row
twice) and writes a shard as soon as it is complete, atomically with its manifest under the store's
lock (:func:`cascade.data.records.write_part`). A killed run leaves no partial shard; a rerun skips the
shards that verify (manifest hash and row count, the planned columns) and rescores the others: a
damaged shard is named on stderr and moved to ``<out>/.corrupt/<run_id>/`` first (each file's name
ending in ``.corrupt``, so neither Arrow nor a ``**/*.parquet`` glob reads it).

Python API: :func:`run` (config path, dict or :class:`~cascade.scoring.config.ScoreConfig`) -> stats
dict; :func:`check` (``--check``: validate, plan, stop); :func:`save_stats` (``_score_stats.json``, secrets
redacted). ``python -m jobs.score CONFIG.yaml`` is ``cascade score CONFIG.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cascade.data import benchmarks as B
from cascade.data import records
from cascade.scoring import signals as S
from cascade.scoring.config import ConfigError, ScoreConfig, StageConfig, load_config, needs_gpus, redact_secrets

SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<start>\d{6,})-(?P<end>\d{6,})\.parquet$")
CORRUPT_DIR = ".corrupt"  # hidden (Arrow skips it) and its files end in CORRUPT_SUFFIX (globs skip them)
CORRUPT_SUFFIX = ".corrupt"
STATS_FILE = "_score_stats.json"  # a leading _: Parquet readers of the store skip it
LEGACY_STATS_FILE = "score_stats.json"  # the name older versions gave it
CLAIMS_DIR = ".claims"  # <out>/.claims/<shard>.lock: which run scores a shard (hidden: readers skip it)
META = ("_actor", "_pid", "_ready_at", "_load_s", "_restarted", "_threads")


@dataclass
class Shard:
    """A fixed range of query ids of one split, for one stage: the unit of work, of writing and of resume.
    It holds no rows: they are read from the split's file where the shard is scored."""

    benchmark: str
    split: str
    start: int
    end: int
    path: Path
    #: rows of this shard scored by an earlier run whose other rows failed (kept in ``<out>/.pending``)
    done: pd.DataFrame | None = None

    @property
    def n(self) -> int:
        return self.end - self.start

    @property
    def done_ids(self) -> set[int]:
        """Query ids an earlier run scored (its other rows failed); none for a shard scored whole."""
        if self.done is None or not len(self.done):
            return set()
        return set(int(q) for q in self.done["query_id"])

    @property
    def n_todo(self) -> int:
        """How many queries are still to score: all of them, or those an earlier run could not score."""
        return self.n - len(self.done_ids)

    @property
    def key(self) -> str:
        return str(self.path)


@dataclass
class StageStats:
    n_records: int = 0
    n_shards: int = 0
    skipped_shards: int = 0
    rescored_shards: int = 0
    claimed_elsewhere: int = 0  # shards another run was scoring when this one planned (it writes them)
    scored_records: int = 0
    failed_rows: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ptrue_input_tokens: int = 0
    ptrue_output_tokens: int = 0
    accelerator_seconds: float = 0.0
    runner: str = "engine"
    first_ready: float | None = None  # wall clock (time.time) when the first engine of the stage was loaded
    last_done: float | None = None
    load_seconds: float | None = None
    threads: int | None = None
    actors: set = dataclasses.field(default_factory=set)
    restarted: set = dataclasses.field(default_factory=set)

    def as_dict(self) -> dict:
        busy = (self.last_done - self.first_ready) if (self.first_ready and self.last_done) else 0.0
        busy = max(busy, 0.0)
        out = {
            "n_records": self.n_records,
            "n_shards": self.n_shards,
            "skipped_shards": self.skipped_shards,
            "rescored_shards": self.rescored_shards,
            "claimed_elsewhere": self.claimed_elsewhere,
            "scored_records": self.scored_records,
            "failed_rows": self.failed_rows,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "ptrue_input_tokens": self.ptrue_input_tokens,
            "ptrue_output_tokens": self.ptrue_output_tokens,
            "accelerator_seconds": self.accelerator_seconds,
            "seconds": busy,
            "queries_per_s": self.scored_records / busy if busy > 0 else 0.0,
            "output_tokens_per_s": self.output_tokens / busy if busy > 0 else 0.0,
            "retries": len(self.restarted),
            "runner": self.runner,
        }
        if self.load_seconds is not None:
            out["load_seconds"] = self.load_seconds
        if self.threads is not None:
            out["threads"] = self.threads
        return out


# ------------------------------------------------------------------------------------ Ray Data workers


def _item_json(it: B.Item) -> str:
    return json.dumps(dataclasses.asdict(it))


def _item(s: str) -> B.Item:
    return B.Item(**json.loads(s))


def _actor_meta(load_s: float) -> dict:
    """Who scored a batch: a fresh id per engine load, and whether Ray restarted this actor after a crash."""
    try:
        import ray

        restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # not in a Ray actor (tests, benchmarks)
        restarted = False
    try:
        import torch

        threads = int(torch.get_num_threads())
    except Exception:  # pragma: no cover - an engine without torch in this process
        threads = -1
    return {"_actor": uuid.uuid4().hex[:12], "_pid": os.getpid(), "_ready_at": time.time(), "_load_s": load_s,
            "_restarted": restarted, "_threads": threads}


def _with_failed(df: pd.DataFrame) -> pd.DataFrame:
    """The failed-row column as strings ("" for a row that is a record), one type in every block."""
    from cascade.scoring.stage import FAILED

    if FAILED in df:
        df[FAILED] = df[FAILED].fillna("").astype(str)
    return df


def _stage_config(stage: dict, engine_module: str | None) -> StageConfig:
    """A stage config in a worker process: the module that registers its engine is imported first (an
    engine registered by a plugin module is then known there too)."""
    if engine_module:
        from cascade.scoring.engines import registry

        registry.ensure_registered(stage.get("engine", "transformers"), engine_module)
    return StageConfig.model_validate(stage)


class StageWorker:
    """One stage's ``map_batches`` callable: a loaded engine; a batch of item rows -> records rows.

    A plain object outside Ray (tests, ``bench/scoring_throughput.py``). A batch may hold rows of
    several shards (and benchmarks, splits); each (benchmark, split) group is scored with
    :func:`cascade.scoring.stage.score_items`. The output has the fixed ``columns`` (a signal that does
    not apply to a benchmark is NaN there; the driver drops it), the ``shard`` id, the actor's meta
    columns and, with ``keep_items``, the item (for the judge).
    """

    def __init__(self, stage: dict, signals: list[str], grading: dict, run_id: str, columns: list[str],
                 keep_items: bool = False, tasks: list[dict] | None = None, engine_module: str | None = None):
        from cascade.scoring.stage import load_stage

        B.use(tasks)  # the tasks read from files in the driver
        t0 = time.perf_counter()
        self.engine, self.info = load_stage(_stage_config(stage, engine_module))
        self.signals, self.grading, self.run_id = list(signals), B.GradingConfig(**grading), run_id
        self.columns, self.keep_items = list(columns), keep_items
        self.meta = _actor_meta(time.perf_counter() - t0)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from cascade.scoring.stage import score_items

        parts = []
        for (bench, split), g in batch.groupby(["benchmark", "split"], sort=False):
            df = score_items(self.engine, self.info, bench, split, [_item(s) for s in g["item"]],
                             signals=self.signals, grading=self.grading, run_id=self.run_id)
            df = _with_failed(df.reindex(columns=self.columns))
            df["shard"], df["stage"] = g["shard"].to_numpy(), g["stage"].to_numpy()
            if self.keep_items:
                df["item"] = g["item"].to_numpy()
            parts.append(df)
        out = pd.concat(parts, ignore_index=True)
        for k, v in self.meta.items():
            out[k] = v
        return out


class JudgeWorker:
    """The judge's ``map_batches`` callable: rows of ``benchmarks`` get ``correct`` from the judge model
    (P(Yes) > P(No)); other rows pass through unchanged."""

    def __init__(self, stage: dict, benchmarks: list[str], tasks: list[dict] | None = None,
                 engine_module: str | None = None):
        from cascade.scoring.stage import load_stage

        B.use(tasks)
        self.engine, _ = load_stage(_stage_config(stage, engine_module))
        self.benchmarks = set(benchmarks)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from cascade.scoring.stage import FAILED, judge_requests, prompter_of, verdicts

        batch = batch.copy()
        todo = batch["benchmark"].isin(self.benchmarks) & (batch[FAILED].fillna("") == "")
        for bench, g in batch[todo].groupby("benchmark", sort=False):
            reqs = judge_requests(prompter_of(self.engine), B.get(bench), [_item(s) for s in g["item"]],
                                  g["answer"].tolist())
            res = self.engine.answer(reqs)
            batch.loc[g.index, "correct"] = verdicts(res)
            batch.loc[g.index, FAILED] = [f"judge: {r.error}" if r.error else "" for r in res]
        return batch


# ------------------------------------------------------------------------------------------ planning


def expected_columns(bench: str, signals: list[str]) -> set[str]:
    """The columns a finished shard of ``bench`` must have: the required ones and its signals' (registry)."""
    return set(records.REQUIRED_FIELDS) | set(S.columns_for(signals, B.get(bench).task))


def output_columns(cfg: ScoreConfig, benchmarks) -> list[str]:
    """Every column a stage writes for any of ``benchmarks`` (records' order)."""
    sigs = list(dict.fromkeys(c for b in benchmarks for c in S.columns_for(cfg.signals, B.get(b).task)))
    ptrue = any("ptrue" in S.needed(cfg.signals, B.get(b).task) for b in benchmarks)
    opt = [c for c in records.OPTIONAL_FIELDS if ptrue or not c.startswith("ptrue_")]
    return list(records.REQUIRED_FIELDS) + sigs + opt


def plan(cfg: ScoreConfig) -> tuple[dict[str, list[Shard]], dict[tuple[str, str], B.Source]]:
    """Cut every split into shards per stage, from its row count alone: each split is a
    :class:`cascade.data.benchmarks.Source` (the file, its rows, the byte offset of each shard's first row
    for line formats), so the driver holds a few bytes per shard and no row. A benchmark is named by its
    task's name (a task file's ``task:``), whether the config names it or gives its path."""
    out = Path(cfg.out)
    per_split: dict[tuple[str, str], B.Source] = {}
    for b in cfg.benchmarks:
        task = cfg.bench_task(b)
        for split in cfg.bench_splits(b):
            src = B.split_source(task, split, cfg.bench_data_dir(b), limit=cfg.bench_limit(b), step=cfg.shard_size)
            if src.n == 0:
                raise ConfigError(f"benchmarks: {task.name}/{split} has no rows")
            per_split[(task.name, split)] = src
    shards: dict[str, list[Shard]] = {}
    for st in cfg.stages:
        lst = []
        for (bench, split), src in per_split.items():
            folder = out / records.folder_name(bench, "benchmark") / records.folder_name(st.name, "model")
            fsplit = records.folder_name(split, "split")
            n = src.n
            planned = []
            for s in range(0, n, cfg.shard_size):
                e = min(n, s + cfg.shard_size)
                planned.append(Shard(bench, split, s, e, folder / f"{fsplit}-{s:06d}-{e:06d}.parquet"))
            names = {p.path.name for p in planned}
            if folder.exists():
                for f in folder.glob("*.parquet"):
                    m = SHARD_RE.match(f.name)
                    if not m or m["split"] != fsplit or f.name in names:
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


def shard_problem(sh: Shard, expected: set[str]) -> str | None:
    """None if ``sh`` is finished and intact; else why not (naming the file). Raises :class:`ConfigError`
    when the shard is intact but was scored with other settings (it lacks planned columns)."""
    import pyarrow.parquet as pq

    reason = records.verify_part(sh.path)
    if reason:
        return reason
    meta = pq.read_metadata(sh.path)
    missing = expected - set(meta.schema.names)
    if missing:
        raise ConfigError(
            f"{sh.path} was scored with other settings (lacks {', '.join(sorted(missing))}); "
            "use a new out folder or delete the shard"
        )
    if meta.num_rows != sh.n:
        return f"{sh.path}: {meta.num_rows} rows, the plan has {sh.n}"
    return None


def set_aside(sh: Shard, expected: set[str], out: Path, run_id: str) -> Path | None:
    """Move a damaged shard (and its manifest) to ``<out>/.corrupt/<run_id>/.../<name>.corrupt``, holding the
    store lock; returns the shard's new path. The shard is checked again under the lock: if another process
    has just rewritten it whole, it stays and None is returned."""
    dest = out / CORRUPT_DIR / run_id / sh.path.relative_to(out)
    dest = dest.with_name(dest.name + CORRUPT_SUFFIX)
    with records.store_lock(out):
        if not sh.path.exists() or shard_problem(sh, expected) is None:
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        for src in (sh.path, *records.manifest_files(sh.path)):
            if src.exists():
                os.replace(src, dest.parent / (src.name + CORRUPT_SUFFIX))
    return dest


def claim_key(cfg: ScoreConfig, sh: Shard) -> str:
    """A shard's claim: its path in the store (``<out>/.claims/<benchmark>/<model>/<shard>.lock``)."""
    return str(sh.path.relative_to(cfg.out))


def _todo(cfg: ScoreConfig, shards: dict[str, list[Shard]], per_split, stats: dict[str, StageStats],
          run_id: str, claims=None) -> dict[str, list[Shard]]:
    """The shards still to score; finished ones are counted, damaged ones named and set aside. With
    ``claims`` (a :class:`jobs.claims.Claims` on ``<out>/.claims``, as sweeps claim cells) every shard to score
    is claimed first and one another live run holds is left to it (counted in ``claimed_elsewhere``); the
    caller releases the claims once the shards are written. A dead run's claims are dropped by the OS."""
    expected = {b: expected_columns(b, list(cfg.signals)) for (b, _s) in per_split}
    todo: dict[str, list[Shard]] = {}
    elsewhere = 0
    for st in cfg.stages:
        lst = []
        for sh in shards[st.name]:
            s = stats[st.name]
            s.n_shards += 1
            s.n_records += sh.n
            finished = sh.path.exists() and shard_problem(sh, expected[sh.benchmark]) is None
            if not finished and claims is not None:
                if not claims.try_claim(claim_key(cfg, sh)):
                    s.claimed_elsewhere += 1
                    elsewhere += 1
                    continue
                finished = sh.path.exists() and shard_problem(sh, expected[sh.benchmark]) is None
                if finished:  # written by the run that held the claim until now
                    claims.release(claim_key(cfg, sh))
            if finished:
                s.skipped_shards += 1
                _drop_partial(Path(cfg.out), sh)
                continue
            if sh.path.exists():
                reason = shard_problem(sh, expected[sh.benchmark])
                dest = set_aside(sh, expected[sh.benchmark], Path(cfg.out), run_id)
                if dest is None and sh.path.exists():  # rewritten meanwhile by a concurrent run
                    s.skipped_shards += 1
                    continue
                s.rescored_shards += 1
                print(f"cascade score: {reason}; moved to {dest.parent if dest else CORRUPT_DIR} and scoring it "
                      "again", file=sys.stderr)
            sh.done = _read_partial(Path(cfg.out), sh, expected[sh.benchmark])
            lst.append(sh)  # (a manifest without its shard is replaced when the shard is written)
        todo[st.name] = lst
    if elsewhere:
        print(f"cascade score: {elsewhere} shard(s) are being scored by another run of this output now (claims "
              f"under {Path(cfg.out) / CLAIMS_DIR}): left to it; a rerun scores any it does not finish",
              file=sys.stderr)
    return todo


# ------------------------------------------------------------------------------ failed rows, partial shards
#
# A row whose request still failed (an API stage) is not a record. The shard's other rows wait in
# <out>/.pending/<shard path>.pending (a hidden folder, a name no Parquet reader or glob takes) and the
# failures are listed in <out>/_failed_rows.jsonl; a rerun scores only the missing rows, then writes the
# whole shard once.

PENDING_DIR = ".pending"
PENDING_SUFFIX = ".pending"
FAILED_ROWS = "_failed_rows.jsonl"


def _partial_path(out: Path, sh: Shard) -> Path:
    p = out / PENDING_DIR / sh.path.relative_to(out)
    return p.with_name(p.name + PENDING_SUFFIX)


def _read_partial(out: Path, sh: Shard, expected: set[str]) -> pd.DataFrame | None:
    """The rows an earlier run kept for ``sh``; None if there are none (or they no longer fit the plan)."""
    p = _partial_path(out, sh)
    if not p.exists():
        return None
    try:
        df = pd.read_parquet(p)
    except Exception as e:  # a damaged partial file: its rows are scored again
        print(f"cascade score: {p}: unreadable ({type(e).__name__}); scoring its rows again", file=sys.stderr)
        return None
    ids = set(range(sh.start, sh.end))
    if not expected <= set(df.columns) or not set(df["query_id"].astype(int)) <= ids:
        return None  # scored with other settings or cut differently: score the shard whole
    return df


def _drop_partial(out: Path, sh: Shard) -> None:
    p = _partial_path(out, sh)
    if p.exists():
        with records.store_lock(out):
            p.unlink(missing_ok=True)


def _keep_partial(out: Path, sh: Shard, df: pd.DataFrame) -> None:
    """Keep a shard's scored rows (earlier ones included) until its failed rows are scored."""
    p = _partial_path(out, sh)
    with records.store_lock(out):
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, p)


def _write_failed(out: Path, failures: list[dict]) -> Path | None:
    """This run's failed rows as JSON lines, replacing the list of an earlier run (removed when none)."""
    path = out / FAILED_ROWS
    if not failures:
        path.unlink(missing_ok=True)
        return None
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text("".join(json.dumps(f) + "\n" for f in failures))
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------ checks


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
    for where, st in _stage_fields(cfg):
        if st.resources.num_cpus > cpus:
            raise ConfigError(
                f"{where}.resources.num_cpus: {st.resources.num_cpus:g} CPUs per actor but the cluster has {cpus:g}; "
                "lower it (fractions are allowed)"
            )


def _stage_fields(cfg: ScoreConfig) -> list[tuple[str, StageConfig]]:
    return [(f"stages.{i}", s) for i, s in enumerate(cfg.stages)] + ([("judge", cfg.judge)] if cfg.judge else [])


def ray_llm_import_error() -> str | None:
    """Why ``ray.data.llm``'s vLLM processor cannot be used here, or None."""
    try:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig  # noqa: F401
    except Exception as e:  # ImportError, or a version check inside ray.llm
        return f"{type(e).__name__}: {e}"
    return None


def runner_of(st: StageConfig) -> str:
    """``runner: auto``: the engine's ``gpu_runner`` (registry; vLLM: ``ray.data.llm``) for a stage with
    GPUs, else ``engine``; otherwise the runner asked for."""
    if st.runner == "auto":
        spec = st.engine_spec()
        return spec.gpu_runner if (spec.gpu_runner and st.resources.num_gpus > 0) else "engine"
    return st.runner


def preflight(cfg: ScoreConfig) -> dict[str, str]:
    """One call per stage whose engine has a preflight (an API stage's server), before anything is
    planned, written or spent: every problem in one line naming the stage's field and the fix."""
    problems, seen = [], {}
    for where, st in _stage_fields(cfg):
        check_fn = st.engine_spec().preflight
        if check_fn is None:
            continue
        try:
            seen[where] = check_fn(st, where)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))
    return seen


def _check_runners(cfg: ScoreConfig) -> None:
    for i, st in enumerate(cfg.stages):
        if runner_of(st) == "ray.data.llm":
            why = ray_llm_import_error()
            if why:
                raise ConfigError(f"stages.{i}.runner: ray.data.llm is not usable here ({why}); install the "
                                  "'gpu' extra (ray[llm] with vllm 0.29) or set runner: engine")


# ------------------------------------------------------------------------------------------ run


def check(config) -> str:
    """Validate a config and its data, preflight API stages, plan the shards and estimate, per stage,
    the tokens and the cost of what is still to score (showing a prompt of each benchmark split); writes
    nothing and spends nothing beyond the preflight's one-token request. Returns the text to print."""
    cfg = load_config(config)
    _check_runners(cfg)
    served = preflight(cfg)
    shards, per_split = plan(cfg)
    n = sum(v.n for v in per_split.values())
    lines = [f"config ok: {n} queries x {len(cfg.stages)} stage(s), {sum(len(v) for v in shards.values())} shards "
             f"-> {cfg.out}"]
    expected = {b: expected_columns(b, list(cfg.signals)) for (b, _s) in per_split}
    for i, st in enumerate(cfg.stages):
        todo = [(sh.benchmark, it) for sh in shards[st.name]
                for it in _check_todo(sh, expected[sh.benchmark], per_split[(sh.benchmark, sh.split)])]
        lines.extend(estimate_lines(cfg, st, todo, served.get(f"stages.{i}")))
    return "\n".join(lines)


def _check_todo(sh: Shard, expected: set[str], src: B.Source) -> list:
    """The items of ``sh`` a run would score (read-only: nothing is set aside), read from the split's
    file (``--check`` reads the prompts it estimates)."""
    if sh.path.exists() and shard_problem(sh, expected) is None:
        return []
    return _shard_items(sh.benchmark, sh.start, src.part(sh.start, sh.end))


def _tokenizer_for(st: StageConfig):
    """(tokenizer or None, what it is) for token estimates: a local stage's own, an API stage's
    ``tokenizer`` field; None where there is none or it cannot be loaded (then bytes / 4 is used)."""
    spec = st.engine_spec()
    fields = st.engine_fields()
    name = st.model if spec.needs == "local_model" else getattr(fields, "tokenizer", None)
    if not name:
        return None, "no tokenizer: UTF-8 bytes / 4"
    try:
        from transformers import AutoTokenizer

        from cascade.scoring.models import materialize

        return AutoTokenizer.from_pretrained(materialize(name)), f"tokenizer of {name}"
    except Exception as e:  # a hub id without network, a folder without tokenizer files
        return None, f"tokenizer of {name} not loadable ({type(e).__name__}): UTF-8 bytes / 4"


def estimate_lines(cfg: ScoreConfig, st: StageConfig, items: list[tuple[str, B.Item]],
                   served: str | None = None) -> list[str]:
    """``--check``'s lines for one stage: the (benchmark, item) pairs still to score, their token estimate
    and cost bound, and a prompt of each benchmark as the model will see it."""
    from cascade.scoring.stage import MessagePrompter, Prompter

    tok, how = _tokenizer_for(st)
    prompter = Prompter(tok) if tok is not None else MessagePrompter()

    def count(message: str) -> int:
        if tok is not None:
            return len(prompter.ids(message))
        return max(1, len(prompter.text(message).encode()) // 4)

    fields = st.engine_fields()
    exact = st.engine_spec().needs == "endpoint" and getattr(fields, "choice_logprobs", "") != "top_logprobs"
    a_in = a_out = p_in = p_out = x_in = x_out = 0
    samples: dict[str, tuple[B.Item, str]] = {}
    for bname, it in items:
        bench = B.get(bname)
        mnt = st.max_new_tokens or bench.max_new_tokens
        n_in = count(it.prompt)
        a_in, a_out = a_in + n_in, a_out + mnt
        needs = S.needed(cfg.signals, bench.task)
        if "ptrue" in needs:
            p_in, p_out = p_in + count(B.ptrue_prompt(it, "")) + mnt, p_out + 1
        if "choices" in needs and exact:
            x_in += 4 * len(it.choices or ()) * (n_in + 1)  # one request per spelling of each option letter
            x_out += 4 * len(it.choices or ())
        if bname not in samples:
            samples[bname] = (it, prompter.text(it.prompt))
    where = f"; {served}" if served else ""
    out = [f"stage {st.name} (engine {st.engine}{where}): {len(items)} prompt(s) to score"]
    if not items:
        return out
    pin, pout = st.price.input, st.price.output
    out.append(f"  input tokens: {a_in:,} answer pass{f', {p_in:,} P(True) pass' if p_in else ''} ({how})")
    out.append(f"  output tokens: <= {a_out:,} answer pass (max_new_tokens)"
               f"{f', {p_out:,} P(True) pass' if p_out else ''}")
    cost = ((a_in + p_in) * pin + (a_out + p_out) * pout) / 1e6
    line = f"  cost: <= ${cost:.6f} (USD per 1M tokens: input {pin:g}, output {pout:g})"
    if x_in:
        line += (f"; <= ${cost + (x_in * pin + x_out * pout) / 1e6:.6f} if the server scores "
                 f"option letters exactly (prompt log-probs: about {x_in:,} input tokens more)")
    if st.max_cost_usd is not None:
        line += (f"; max_cost_usd {st.max_cost_usd:g}: " + ("within it" if cost <= st.max_cost_usd else
                 "the stage stops before it goes over; the rest are failed rows a rerun with more budget scores"))
    out.append(line)
    for bname, (it, text) in samples.items():
        out.append(f"  prompt ({bname}, query {it.query_id}):")
        out.extend("    " + ln for ln in text.splitlines())
    return out


def run(config, *, progress: bool | None = None) -> dict:
    """Score every (benchmark, split, query, stage) of ``config``; returns stats (see docs/scoring.md)."""
    t0 = time.perf_counter()
    cfg = load_config(config)
    _check_runners(cfg)
    preflight(cfg)
    shards, per_split = plan(cfg)
    run_id = uuid.uuid4().hex[:12]
    stats = {st.name: StageStats(runner=runner_of(st)) for st in cfg.stages}
    from jobs.claims import Claims

    claims = Claims(Path(cfg.out) / CLAIMS_DIR)  # two runs of one output at once score each shard once
    failures: list[dict] = []
    try:
        todo = _todo(cfg, shards, per_split, stats, run_id, claims)
        if any(todo.values()):
            ray = _ray_init(cfg)
            try:
                _check_resources(cfg, ray)
            except ConfigError:
                claims.discard()  # refused before any work: nothing written
                raise
            failures = _execute(cfg, todo, stats, run_id, per_split,
                                progress=cfg.ray.progress if progress is None else progress)
    finally:
        claims.release_all()
    failed_file = _write_failed(Path(cfg.out), failures)

    seconds = time.perf_counter() - t0
    scored = sum(s.scored_records for s in stats.values())
    out_tokens = sum(s.output_tokens for s in stats.values())
    return {
        "out_dir": cfg.out,
        "run_id": run_id,
        "n_records": sum(s.n_records for s in stats.values()),
        "scored_records": scored,
        "skipped_shards": sum(s.skipped_shards for s in stats.values()),
        "rescored_shards": sum(s.rescored_shards for s in stats.values()),
        "n_shards": sum(s.n_shards for s in stats.values()),
        "failed_rows": len(failures),
        "failed_rows_file": str(failed_file) if failed_file else None,
        "seconds": seconds,
        "queries_per_s": scored / seconds if seconds > 0 else 0.0,
        "output_tokens_per_s": out_tokens / seconds if seconds > 0 else 0.0,
        "stages": {k: v.as_dict() for k, v in stats.items()},
    }


def _shard_specs(name: str, shards: list[Shard], per_split: dict[tuple[str, str], B.Source]) -> list[dict]:
    """One row per shard to score: its id, stage, split, where its rows are (a one-shard source) and the
    query ids an earlier run already scored (``skip``: its rows that did not fail)."""
    return [{"shard": sh.key, "stage": name, "benchmark": sh.benchmark, "split": sh.split, "start": sh.start,
             "source": json.dumps(dataclasses.asdict(per_split[(sh.benchmark, sh.split)].part(sh.start, sh.end))),
             "skip": json.dumps(sorted(sh.done_ids))} for sh in shards]


def _shard_items(benchmark: str, start: int, src: B.Source, skip=()) -> list[B.Item]:
    """A shard's items from its one-shard source (query ids from ``start``), those in ``skip`` left out."""
    task, skip = B.get(benchmark), set(skip)
    return [task.item(start + k, row) for k, row in enumerate(B.read_rows(src, 0, src.n)) if start + k not in skip]


def read_shards(batch: pd.DataFrame, tasks: list[dict] | None = None) -> pd.DataFrame:
    """A Ray Data ``map_batches`` step: shard rows -> the shards' queries (rows read from the split's
    file, prompts rendered from the task's templates): one row per query with ``item`` as JSON."""
    B.use(tasks)
    parts = []
    for r in batch.to_dict("records"):
        raw = json.loads(r["source"])
        src = B.Source(**{**raw, "offsets": tuple(raw["offsets"])})
        its = _shard_items(r["benchmark"], int(r["start"]), src, json.loads(r["skip"]))
        parts.append(pd.DataFrame({"shard": r["shard"], "stage": r["stage"], "benchmark": r["benchmark"],
                                   "split": r["split"], "query_id": [it.query_id for it in its],
                                   "item": [_item_json(it) for it in its]}))
    return pd.concat(parts, ignore_index=True)


def _remote_args(cfg: ScoreConfig) -> dict:
    # Ray Data restarts crashed actors and retries their batches; the config bounds how often.
    return dict(max_restarts=cfg.ray.max_restarts, max_task_retries=cfg.ray.max_restarts)


def _map_batches(ds, fn, st: StageConfig, cfg: ScoreConfig, n_blocks: int, **kw):
    from ray.data import ActorPoolStrategy

    gpus = st.resources.num_gpus
    with warnings.catch_warnings():  # max_restarts has no named parameter in Ray 2.60
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
        return ds.map_batches(
            fn, batch_format="pandas", batch_size=cfg.shard_size if gpus > 0 else None,
            compute=ActorPoolStrategy(size=max(1, min(st.resources.replicas, n_blocks))),
            num_cpus=st.resources.num_cpus, num_gpus=gpus if gpus > 0 else None, **kw, **_remote_args(cfg),
        )


READ_CONCURRENCY = 2  # shard-reading tasks in flight per stage (each reads one shard, a few ms to seconds)


def build_dataset(cfg: ScoreConfig, todo: dict[str, list[Shard]], run_id: str,
                  per_split: dict[tuple[str, str], B.Source]):
    """The lazy Ray Data pipeline: per stage, its shards (one block each) -> their rows read and prompts
    built (:func:`read_shards`, Ray Data tasks) -> its actor pool; the union; the judge."""
    import ray

    stage_cfg = {st.name: st for st in cfg.stages}
    benchmarks = sorted({sh.benchmark for q in todo.values() for sh in q})
    judged = sorted(b for b in benchmarks if B.get(b).task == "free_text") if cfg.judge else []
    from cascade.scoring.stage import FAILED

    columns = output_columns(cfg, benchmarks) + [FAILED]
    tasks = B.specs(benchmarks)  # tasks from files: the workers get their definitions, not their paths
    parts = []
    for name, shards in todo.items():
        if not shards:
            continue
        st = stage_cfg[name]
        ds = ray.data.from_items(_shard_specs(name, shards, per_split), override_num_blocks=len(shards))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
            # no CPU: the reads must not wait for CPUs the engines hold (stages that take every CPU of the
            # cluster, as the demo's two on a 2-core machine, would wait forever); concurrency bounds how many
            # read at once (a 0-CPU task is otherwise not bounded by the CPUs)
            ds = ds.map_batches(read_shards, fn_kwargs={"tasks": tasks}, batch_format="pandas", batch_size=1,
                                num_cpus=0, concurrency=READ_CONCURRENCY, max_retries=cfg.ray.max_restarts)
        if runner_of(st) == "ray.data.llm":
            ds = _ray_llm_stage(ds, st, cfg, run_id, columns, keep_items=bool(judged), tasks=tasks)
        else:
            ds = _map_batches(ds, StageWorker, st, cfg, len(shards), fn_constructor_kwargs=dict(
                stage=st.model_dump(), signals=list(cfg.signals), grading=cfg.grading.model_dump(), run_id=run_id,
                columns=columns, keep_items=bool(judged), tasks=tasks, engine_module=st.engine_spec().module))
        parts.append(ds)
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if judged:
        n = sum(len(q) for q in todo.values())
        ds = _map_batches(ds, JudgeWorker, cfg.judge, cfg, n,
                          fn_constructor_kwargs=dict(stage=cfg.judge.model_dump(), benchmarks=judged, tasks=tasks,
                                                     engine_module=cfg.judge.engine_spec().module))
    return ds


def _execute(cfg: ScoreConfig, todo: dict[str, list[Shard]], stats: dict[str, StageStats], run_id: str,
             per_split: dict[tuple[str, str], B.Source], *, progress: bool) -> list[dict]:
    """Run the pipeline, writing each shard once complete; returns the rows that failed (their shards'
    other rows kept in ``.pending`` for a rerun)."""
    from ray.data import DataContext

    from cascade.scoring.stage import FAILED

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar per stage below instead of one per operator
    # ... so Ray Data's "Progress bars disabled" warning (its progress module's only warning) says nothing
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ctx.print_on_execution_start = progress
    t_start = time.time()
    shard_of = {sh.key: (name, sh) for name, q in todo.items() for sh in q}
    pending: dict[str, dict[int, dict]] = {}  # shard -> query_id -> row (a retried batch overwrites, never adds)
    failed: dict[str, dict[int, str]] = {}  # shard -> query_id -> error
    done: set[str] = set()
    failures: list[dict] = []
    bars = {}
    if progress and tqdm is not None:
        for i, st in enumerate(cfg.stages):
            s = stats[st.name]
            bars[st.name] = tqdm(total=s.n_records, initial=s.n_records - sum(sh.n for sh in todo[st.name]),
                                 desc=st.name, position=i, unit="q", file=sys.stderr, leave=True)
    ds = build_dataset(cfg, todo, run_id, per_split)
    try:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
                _note_actors(batch, stats, t_start)
                for key, g in batch.groupby("shard", sort=False):
                    if key in done:
                        continue  # rows of a retried batch whose shard is already written
                    name, sh = shard_of[key]
                    acc = pending.setdefault(key, {})
                    bad = failed.setdefault(key, {})
                    for row in g.to_dict("records"):
                        q = int(row["query_id"])
                        err = row.pop(FAILED, None)
                        if isinstance(err, str) and err:
                            bad[q] = err
                            acc.pop(q, None)
                        else:
                            acc[q] = row
                            bad.pop(q, None)
                    if len(acc) + len(bad) == sh.n_todo:
                        new = pd.DataFrame([acc[q] for q in sorted(acc)])
                        rows = new if sh.done is None or not len(sh.done) else pd.concat(
                            [sh.done, new], ignore_index=True) if len(new) else sh.done
                        if bad:
                            if len(rows):
                                _keep_partial(Path(cfg.out), sh, rows)
                            stats[name].failed_rows += len(bad)
                            failures.extend({"benchmark": sh.benchmark, "split": sh.split, "query_id": q,
                                             "model": name, "error": e, "run_id": run_id}
                                            for q, e in sorted(bad.items()))
                            _note_scored(new, stats[name])
                        else:
                            rows = rows.sort_values("query_id", kind="stable").reset_index(drop=True)
                            _finish(cfg, name, sh, rows, stats[name], new=new)
                            _drop_partial(Path(cfg.out), sh)
                        done.add(key)
                        del pending[key], failed[key]
                        if name in bars:
                            bars[name].update(sh.n_todo)
        except (records.RecordsError, ConfigError):
            raise
        except Exception as e:
            raise RuntimeError(f"cascade score: scoring failed ({type(e).__name__}): {_short(e)}") from None
    finally:
        for b in bars.values():
            b.close()
    left = [k for k in shard_of if k not in done]
    if left:  # Ray Data finished without error but some shard did not come back complete
        raise RuntimeError(f"cascade score: {len(left)} shard(s) came back incomplete, e.g. {left[0]}; rerun to score them")
    return failures


def _short(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else repr(e)


def _note_actors(batch: pd.DataFrame, stats: dict[str, StageStats], t_start: float) -> None:
    if "_actor" not in batch:
        return
    for (name, actor), g in batch.groupby(["stage", "_actor"], sort=False):
        s = stats[name]
        if actor in s.actors:
            continue
        s.actors.add(actor)
        r = g.iloc[0]
        ready = float(r["_ready_at"])
        s.first_ready = ready if s.first_ready is None else min(s.first_ready, ready)
        s.load_seconds = max(0.0, s.first_ready - t_start)
        if int(r["_threads"]) > 0:
            s.threads = int(r["_threads"])
        if bool(r["_restarted"]):
            s.restarted.add(actor)


def _finish(cfg: ScoreConfig, name: str, sh: Shard, df: pd.DataFrame, s: StageStats,
            new: pd.DataFrame | None = None) -> None:
    """Write a complete shard; ``new`` (default: all of ``df``) are the rows this run scored."""
    from cascade.scoring.stage import column_order

    keep = expected_columns(sh.benchmark, list(cfg.signals)) | (set(records.OPTIONAL_FIELDS) & set(df.columns))
    df = column_order(df[[c for c in df.columns if c in keep]])
    table = records.to_arrow(records.validate(df, source=str(sh.path)))
    records.write_part(table, sh.path, store=cfg.out)
    _note_scored(df if new is None else new, s)


def _note_scored(df: pd.DataFrame, s: StageStats) -> None:
    """Count the rows this run scored (tokens, engine time) in the stage's stats."""
    if not len(df):
        return
    s.scored_records += len(df)
    s.input_tokens += int(df["input_tokens"].sum())
    s.output_tokens += int(df["output_tokens"].sum())
    if "ptrue_input_tokens" in df:
        s.ptrue_input_tokens += int(df["ptrue_input_tokens"].sum())
        s.ptrue_output_tokens += int(df["ptrue_output_tokens"].sum())
    s.accelerator_seconds += float(df["accelerator_seconds"].sum())
    s.last_done = time.time()


# ------------------------------------------------------------------------------ ray.data.llm (GPU)


class _LLMRows:
    """CPU steps around ``ray.data.llm``'s vLLM processor (a ``map_batches`` callable holding the stage's
    tokenizer): ``step="answer"`` builds the answering requests; ``"ptrue"`` converts the answers and
    builds the P(True) requests; ``"records"`` converts the last pass's outputs and writes records rows
    with :func:`cascade.scoring.stage.record_rows`, the function the engine path uses."""

    def __init__(self, step: str, stage: dict, signals: list[str], grading: dict, run_id: str, columns: list[str],
                 keep_items: bool, max_logprobs: int, tasks: list[dict] | None = None):
        from transformers import AutoTokenizer

        from cascade.scoring.engines.vllm_engine import model_stop_ids
        from cascade.scoring.models import materialize
        from cascade.scoring.stage import Prompter, stage_info

        B.use(tasks)
        t0 = time.perf_counter()
        st = StageConfig.model_validate(stage)
        path = materialize(st.model)
        self.step, self.st, self.info = step, st, stage_info(st, path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.prompter = Prompter(self.tokenizer)
        self.stop_ids = model_stop_ids(path, self.tokenizer)
        self.signals, self.grading, self.run_id = list(signals), B.GradingConfig(**grading), run_id
        self.columns, self.keep_items, self.max_logprobs = list(columns), keep_items, max_logprobs
        self.meta = {**_actor_meta(time.perf_counter() - t0), "_threads": -1}  # the engine runs in vLLM's actor

    def _results(self, batch: pd.DataFrame, reqs_col: str):
        from cascade.scoring.engines.base import GenRequest
        from cascade.scoring.engines.vllm_engine import vllm_result

        out = []
        # a vLLM batch's wall time (its longest request) is shared by the requests of that batch
        share = batch.groupby("llm_batch")["llm_seconds"].transform("max") / batch.groupby("llm_batch")[
            "llm_seconds"].transform("size")
        for req, toks, lps, sec in zip(batch[reqs_col], batch["llm_tokens"], batch["llm_logprobs"], share):
            r = GenRequest(**json.loads(req))
            toks = json.loads(toks)
            lps = [{int(t): v for t, v in pos} for pos in json.loads(lps)]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            out.append(vllm_result(r, toks, lps, text, self.stop_ids, float(sec), self.max_logprobs))
        return out

    def _requests(self, batch: pd.DataFrame, reqs) -> pd.DataFrame:
        from cascade.scoring.engines.vllm_engine import sampling_params

        batch = batch.copy()
        batch["req"] = [json.dumps(dataclasses.asdict(r)) for r in reqs]
        batch["tokenized_prompt"] = [list(r.prompt_ids) for r in reqs]
        batch["sampling_params"] = [sampling_params(r, self.max_logprobs) for r in reqs]
        return batch

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from cascade.scoring import stage as ST

        batch = batch.reset_index(drop=True)
        if self.step == "answer":
            reqs, texts = [None] * len(batch), [None] * len(batch)
            for bench, g in batch.groupby("benchmark", sort=False):
                t, r = ST.answer_requests(self.prompter, B.get(bench), [_item(s) for s in g["item"]], self.signals,
                                          self.st.max_new_tokens or B.get(bench).max_new_tokens)
                for i, tt, rr in zip(g.index, t, r):
                    texts[i], reqs[i] = tt, rr
            batch = self._requests(batch, reqs)
            batch["text"] = texts
            return batch
        if self.step == "ptrue":
            res = self._results(batch, "req")
            batch = batch.copy()
            batch["answer_result"] = [json.dumps(dataclasses.asdict(r)) for r in res]
            reqs = ST.ptrue_requests(self.prompter, [_item(s) for s in batch["item"]], [r.text for r in res])
            return self._requests(batch, reqs)
        # records
        from cascade.scoring.engines.base import GenResult

        last = self._results(batch, "req")
        if "answer_result" in batch:
            answers = [GenResult(**json.loads(s)) for s in batch["answer_result"]]
            ptrue = last
        else:
            answers, ptrue = last, None
        parts = []
        for (bench, split), g in batch.groupby(["benchmark", "split"], sort=False):
            idx = list(g.index)
            pt = [ptrue[i] for i in idx] if ptrue and ST.needs_ptrue(B.get(bench), self.signals) else None
            df = ST.record_rows(self.info, B.get(bench), split, [_item(s) for s in g["item"]], list(g["text"]),
                                [answers[i] for i in idx], pt,
                                signals=self.signals, grading=self.grading, run_id=self.run_id)
            df = _with_failed(df.reindex(columns=self.columns))
            df["shard"], df["stage"] = g["shard"].to_numpy(), g["stage"].to_numpy()
            if self.keep_items:
                df["item"] = g["item"].to_numpy()
            parts.append(df)
        out = pd.concat(parts, ignore_index=True)
        for k, v in self.meta.items():
            out[k] = v
        return out


def _llm_pre(row: dict) -> dict:
    return {"tokenized_prompt": row["tokenized_prompt"], "sampling_params": row["sampling_params"]}


def _llm_post(row: dict) -> dict:
    """The processor's output row -> our columns plus the completion, its log-probs as JSON (compact and
    Arrow-friendly) and the time vLLM took (``time_taken_llm``, per request)."""
    keep = {k: row[k] for k in ("shard", "stage", "benchmark", "split", "query_id", "item", "req", "text",
                                 "answer_result") if k in row}
    lps = [[[int(t), float(d["logprob"] if isinstance(d, dict) else d)] for t, d in (pos or {}).items()]
           for pos in (row.get("logprobs") or [])]
    keep.update(llm_tokens=json.dumps([int(t) for t in row["generated_tokens"]]), llm_logprobs=json.dumps(lps),
                llm_seconds=float(row.get("time_taken_llm") or 0.0), llm_batch=str(row.get("batch_uuid", "")))
    return keep


def _ray_llm_stage(ds, st: StageConfig, cfg: ScoreConfig, run_id: str, columns: list[str], keep_items: bool,
                   tasks: list[dict] | None = None):
    """One vLLM stage through ``ray.data.llm``: answer requests -> vLLM processor -> [P(True) requests ->
    vLLM processor] -> records rows. The processor's replicas and tensor parallelism come from the stage
    config; prompts are tokenized by us (the processor's chat-template, tokenize and detokenize stages
    are off), so the engine sees the token ids the engine path sends."""
    from ray.data import ActorPoolStrategy
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from cascade.scoring.engines.vllm_engine import DEFAULT_MAX_LOGPROBS, engine_kwargs
    from cascade.scoring.models import materialize

    path = materialize(st.model)
    opts = dict(st.engine_options)
    max_logprobs = int(opts.get("max_logprobs", DEFAULT_MAX_LOGPROBS))
    on_gpu = st.resources.num_gpus > 0
    ekw = engine_kwargs(path, dtype=st.dtype, batch_size=st.batch_size, max_model_len=st.max_model_len,
                        tensor_parallel_size=st.resources.tensor_parallel_size, on_gpu=on_gpu, **opts)
    ekw.pop("model")
    pconf = dict(model_source=path, engine_kwargs=ekw, batch_size=st.batch_size, concurrency=st.resources.replicas,
                 chat_template_stage=False, tokenize_stage=False, detokenize_stage=False, log_engine_metrics=False)
    if not on_gpu:  # vLLM's CPU build: the engine actor asks for CPUs, not a GPU
        pconf["placement_group_config"] = {"bundles": [{"CPU": st.resources.num_cpus}]}
    # the pre/postprocess maps are light: without a small CPU share each task asks for a whole CPU, which
    # the engines and our steps may already hold (a 2-core machine then waits forever)
    light = {"num_cpus": 0.05}
    proc = build_processor(vLLMEngineProcessorConfig(**pconf), preprocess=_llm_pre, postprocess=_llm_post,
                           preprocess_map_kwargs=light, postprocess_map_kwargs=light)
    kw = dict(stage=st.model_dump(), signals=list(cfg.signals), grading=cfg.grading.model_dump(), run_id=run_id,
              columns=columns, keep_items=keep_items, max_logprobs=max_logprobs, tasks=tasks)
    ptrue = any(S.SIGNALS[n].needs == "ptrue" for n in cfg.signals)

    def rows(ds, step):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
            return ds.map_batches(_LLMRows, fn_constructor_kwargs=dict(step=step, **kw), batch_format="pandas",
                                  batch_size=None, compute=ActorPoolStrategy(size=1), num_cpus=0.1,
                                  **_remote_args(cfg))

    ds = proc(rows(ds, "answer"))
    if ptrue:
        ds = proc(rows(ds, "ptrue"))
    return rows(ds, "records")


# ------------------------------------------------------------------------------------------ stats


def save_stats(stats: dict, cfg: ScoreConfig) -> dict:
    """Write a run's stats (with its config, secrets redacted: :func:`redact_secrets`) to
    ``<out>/_score_stats.json`` next to the records (a leading ``_``, so Parquet readers of the store skip
    it; ``cascade log OUT`` logs it later). Returns the stats worth logging: when this run scored nothing
    (every shard was already done), those of the run that scored the records, so a rerun does not
    replace real throughput with an empty one."""
    stats = {**stats, "config": redact_secrets(json.loads(cfg.model_dump_json()))}
    path = Path(stats["out_dir"]) / STATS_FILE
    old = stats_path(stats["out_dir"])
    if stats["scored_records"] == 0 and old.exists():
        prev = json.loads(old.read_text())
        if prev.get("scored_records"):
            return {**prev, "rerun_skipped_shards": stats["skipped_shards"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(stats, indent=2, default=str))
    os.replace(tmp, path)
    (path.parent / LEGACY_STATS_FILE).unlink(missing_ok=True)
    return stats


def stats_path(out) -> Path:
    """A scoring output's stats file: ``_score_stats.json``, or ``score_stats.json`` where only an older
    version wrote one."""
    new, old = Path(out) / STATS_FILE, Path(out) / LEGACY_STATS_FILE
    return old if old.exists() and not new.exists() else new


def command(config: str, *, out: str | None = None, limit: int | None = None, check_only: bool = False,
            progress: bool | None = None, as_json: bool = False, track: bool = False, experiment: str = "scoring",
            tracking_uri: str | None = None) -> int:
    """What ``cascade score`` does once its arguments are parsed: overrides, ``--check``, the run, the
    stats file, the summary line (or JSON) and, with ``track``, the MLflow scoring run (exit 3 when that
    fails: the records are safe)."""
    cfg = load_config(config)
    if out or limit is not None:
        upd = {}
        if out:
            upd["out"] = str(Path(out).resolve())
        if limit is not None:  # the command line wins over the config's limits, per benchmark ones included
            if limit < 1:
                raise ValueError("--limit must be >= 1")
            upd["limit"] = limit
            upd["benchmarks"] = [b.model_copy(update={"limit": None}) for b in cfg.benchmarks]
        cfg = load_config(cfg.model_copy(update=upd))
    if check_only:
        print(check(cfg))
        return 0
    rc = 0
    if as_json:  # the JSON is all that reaches stdout: whatever else writes to it (Ray's C++ logs) goes to stderr
        sys.stdout.flush()
        json_fd = os.dup(1)
        os.dup2(2, 1)
        try:
            stats = run(cfg, progress=progress)
            logged = save_stats(stats, cfg)
            sys.stdout.flush()
            os.write(json_fd, (json.dumps(stats, indent=2) + "\n").encode())
        finally:
            os.close(json_fd)
    else:
        stats = run(cfg, progress=progress)
        logged = save_stats(stats, cfg)
        print(
            f"scored {stats['scored_records']} records ({stats['n_records']} in all, "
            f"{stats['skipped_shards']} finished shards skipped, {stats['rescored_shards']} damaged shards "
            f"rescored) in {stats['seconds']:.1f}s: {stats['queries_per_s']:.2f} queries/s, "
            f"{stats['output_tokens_per_s']:.1f} output tokens/s -> {stats['out_dir']}"
        )
    if stats.get("failed_rows"):
        per = ", ".join(f"{k}: {v['failed_rows']}" for k, v in stats["stages"].items() if v.get("failed_rows"))
        print(f"cascade score: {stats['failed_rows']} row(s) failed ({per}; listed in {stats['failed_rows_file']}); "
              "every other record is written. Rerun the same command to score only the failed rows.",
              file=sys.stderr)
        rc = 1
    if track:
        import tracking

        try:
            tracking.configure(tracking_uri, experiment)
            run_id = tracking.log_scoring(logged, config=logged["config"], config_path=config)
        except tracking.TrackingUnavailable as e:
            print(f"cascade score: tracking failed: {e}\n  the records are safe in {stats['out_dir']}; log them "
                  f"later with `cascade log {stats['out_dir']}`", file=sys.stderr)
            return 3
        print(f"logged scoring run {run_id} to {tracking.tracking_uri(tracking_uri)}", file=sys.stderr)
    return rc


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.score CONFIG.yaml [options]``: the ``cascade score`` command (argument parsing
    lives in jobs/commands/score.py; this module does not import it)."""
    from jobs import cli

    return cli.main(["score", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
