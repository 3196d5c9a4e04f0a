"""The ``cascade score`` configuration: typed, validated (pydantic), read from YAML. No Ray here.

A benchmark entry names a task: a built-in one (``mmlu``) or the path of a task file (``.yaml``, see
:mod:`cascade.data.benchmarks`). Relative paths in a config file (``out``, ``data_dir``, task files)
are taken relative to the file's folder;
without ``data_dir`` the benchmark files come from :func:`cascade.data.benchmarks.benchmarks_dir`
(``$CASCADE_BENCHMARKS_DIR``, else ``../shared/benchmarks`` beside the checkout); ``data_dir: hub``
reads them from the Hugging Face hub. Signal names are those of the registry
(:mod:`cascade.scoring.signals`). Engines come from the engine registry
(:mod:`cascade.scoring.engines.registry`): a stage's ``engine`` is a registered name, the keys an engine
adds to a stage (an API stage's ``base_url``, ...) and its ``engine_options`` are those it declares, a
local model is checked only for engines that need one.
Errors are :class:`ConfigError` (a ``ValueError``): one line per problem, naming the field and the fix.

:func:`redact_secrets` masks values under secret-looking keys before a config is written anywhere
(``score_stats.json``, tracking).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cascade.data import benchmarks as B
from cascade.errors import format_validation_error
from cascade.yamlfile import read_yaml as _read_yaml
from . import signals as S
from .engines import registry as engine_registry
from .engines.base import DTYPES
from .models import ModelError, check_model


def _known_signal(name: str) -> str:
    if name not in S.SIGNALS:
        raise ValueError(f"unknown signal {name!r}; known: {', '.join(S.SIGNALS)}")
    return name


class ConfigError(ValueError):
    """A bad scoring config; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor (fractions allowed)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (fractions allowed)")
    tensor_parallel_size: int = Field(1, ge=1)
    replicas: int = Field(1, ge=1, description="actors in the stage's pool")
    threads: int | None = Field(None, ge=1, description="torch threads per actor (default: ceil(num_cpus))")


class Price(_Strict):
    input: float = Field(0.0, ge=0, description="USD per 1M input tokens")
    output: float = Field(0.0, ge=0, description="USD per 1M output tokens")


class StageConfig(_Strict):
    """A stage. Keys beyond these are the engine's own fields (its registry entry's ``fields`` model),
    checked by :func:`check` against that engine: any other key is refused."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the records' model column")
    model: str
    engine: str = "transformers"
    dtype: Literal[DTYPES] = "bfloat16"  # type: ignore[valid-type]
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int | None = Field(None, ge=1, description="default: the benchmark's")
    max_model_len: int | None = Field(None, ge=16)
    device: Literal["cpu", "cuda"] | None = None
    engine_options: dict = Field(default_factory=dict)
    # how a vllm stage runs: auto = through ray.data.llm's vLLM processor when it has GPUs, else the engine
    # in a Ray Data actor; "engine" or "ray.data.llm" force one (ray.data.llm needs engine: vllm)
    runner: Literal["auto", "engine", "ray.data.llm"] = "auto"
    resources: Resources = Field(default_factory=Resources)
    price: Price = Field(default_factory=Price)
    max_cost_usd: float | None = Field(None, gt=0, description="this stage stops before its spend goes over")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        engine_registry.get(v)  # ValueError naming the known engines
        return v

    def engine_spec(self) -> engine_registry.EngineSpec:
        return engine_registry.get(self.engine)

    def engine_fields(self):
        """The engine's own fields of this stage, validated (a pydantic model), or None if it has none."""
        spec = self.engine_spec()
        if spec.fields is None:
            return None
        return spec.fields.model_validate(dict(self.model_extra or {}))


class BenchmarkConfig(_Strict):
    name: str = Field(description="a built-in task (mmlu, medmcqa, ...) or the path of a task file (.yaml)")
    splits: list[str] | None = None
    limit: int | None = Field(None, ge=1)
    data_dir: str | None = None


class Grading(_Strict):
    f1_threshold: float = Field(0.5, ge=0, le=1)
    rouge_threshold: float = Field(0.25, ge=0, le=1)


class RayOptions(_Strict):
    address: str | None = None  # None: start a local Ray
    max_restarts: int = Field(3, ge=0, description="restarts of a crashed actor (its shard is retried)")
    progress: bool = True


class ScoreConfig(_Strict):
    benchmarks: list[BenchmarkConfig] = Field(min_length=1)
    splits: list[str] = Field(default_factory=lambda: ["test"])
    limit: int | None = Field(None, ge=1, description="first N queries of each split")
    data_dir: str | None = Field(None, description="local hub-schema files <benchmark>-<split>.parquet; else the hub")
    stages: list[StageConfig] = Field(min_length=1)
    judge: StageConfig | None = None
    signals: list[Annotated[str, AfterValidator(_known_signal)]] = Field(default_factory=lambda: list(S.SIGNALS))
    out: str
    shard_size: int = Field(25, ge=1)
    grading: Grading = Field(default_factory=Grading)
    ray: RayOptions = Field(default_factory=RayOptions)

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _names(cls, v):
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"name": b} if isinstance(b, str) else b for b in v]

    @model_validator(mode="after")
    def _unique(self):
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dup)}")
        if self.judge is not None and self.judge.name in names:
            raise ValueError(f"judge.name {self.judge.name!r} is also a stage name; rename one")
        return self

    # resolved views --------------------------------------------------------------------------
    def bench_splits(self, b: BenchmarkConfig) -> list[str]:
        return b.splits or self.splits

    def bench_limit(self, b: BenchmarkConfig) -> int | None:
        return b.limit if b.limit is not None else self.limit

    def bench_task(self, b: BenchmarkConfig) -> B.Task:
        """The task ``b`` names (a built-in, or the task file at its path)."""
        return B.get(b.name)

    def bench_data_dir(self, b: BenchmarkConfig) -> str | None:
        """The folder of ``b``'s files (see :func:`cascade.data.benchmarks.benchmarks_dir`); None: the hub."""
        d = B.benchmarks_dir(b.data_dir if b.data_dir is not None else self.data_dir)
        return None if d is None else str(d)


def read_yaml(path: str | os.PathLike, error: type[ValueError] = ConfigError, what: str = "config") -> dict:
    """A YAML file holding a mapping, or ``error`` (:class:`ConfigError`) naming the file and the problem."""
    return _read_yaml(path, error, what)


def load_config(src: str | os.PathLike | dict | ScoreConfig) -> ScoreConfig:
    """Parse and validate a config (a YAML path, a dict or a ScoreConfig); checks names, not resources."""
    if isinstance(src, ScoreConfig):
        cfg = src
    else:
        base = Path.cwd()
        if isinstance(src, dict):
            raw = src
        else:
            raw = read_yaml(src)
            base = Path(src).resolve().parent
        try:
            cfg = ScoreConfig.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"invalid config: {format_validation_error(e)}") from None
        cfg = _resolve_paths(cfg, base)
    check(cfg)
    return cfg


def resolve_path(p: str | None, base: Path) -> str | None:
    """A config's path made absolute: ``~`` expanded, relative paths taken from ``base`` (the config's folder)."""
    if p is None:
        return None
    if p == B.HUB:
        return p
    q = Path(os.path.expanduser(p))
    return str(q if q.is_absolute() else (base / q).resolve())


def _resolve_paths(cfg: ScoreConfig, base: Path) -> ScoreConfig:
    def res(p):
        return resolve_path(p, base)

    cfg = cfg.model_copy(deep=True)
    cfg.out = res(cfg.out)
    cfg.data_dir = res(cfg.data_dir)
    for b in cfg.benchmarks:
        b.data_dir = res(b.data_dir)
        if B.is_task_path(b.name):
            b.name = res(b.name)
    return cfg


def check(cfg: ScoreConfig) -> None:
    """Checks that need no work: benchmark, split and model names, engines installed, data files there,
    an output folder that can be one."""
    problems = []
    out = Path(cfg.out)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            where = "is a file" if p == out else f"lies below the file {p}"
            problems.append(f"out: {out} {where}; name a folder (created if missing)")
            break
    seen: dict[str, int] = {}
    for i, b in enumerate(cfg.benchmarks):
        try:
            task = cfg.bench_task(b)
        except B.BenchmarkError as e:
            problems.append(f"benchmarks.{i}.name: {e}")
            continue
        if task.name in seen:
            problems.append(f"benchmarks.{i}.name: task {task.name!r} is also benchmarks.{seen[task.name]}; "
                            "name each task once (give it several splits instead)")
            continue
        seen[task.name] = i
        dd = cfg.bench_data_dir(b)
        for split in cfg.bench_splits(b):
            try:
                B.check_split(task, split, dd)
            except B.BenchmarkError as e:
                # a file missing under data_dir is data_dir's problem; the rest is the benchmark entry's
                field = "data_dir" if split not in task.data_files and str(e).startswith("no file") \
                    else f"benchmarks.{i}"
                problems.append(f"{field}: {e}")
    for where, st in [(f"stages.{i}", s) for i, s in enumerate(cfg.stages)] + (
        [("judge", cfg.judge)] if cfg.judge is not None else []
    ):
        spec = st.engine_spec()
        problems.extend(_engine_field_problems(where, st, spec))
        if spec.needs == "local_model":
            try:
                check_model(st.model)
            except ModelError as e:
                problems.append(f"{where}.model: {e}")
        if spec.requires and importlib.util.find_spec(spec.requires) is None:
            problems.append(f"{where}.engine: {spec.requires} is not installed here; {spec.install_hint}")
        tp = st.resources.tensor_parallel_size
        if tp > 1 and not spec.tensor_parallel:
            able = [n for n in engine_registry.names() if engine_registry.get(n).tensor_parallel]
            problems.append(f"{where}.resources.tensor_parallel_size: only the {', '.join(able)} engine shards a "
                            "model; set it to 1")
        if spec.tensor_parallel and 0 < st.resources.num_gpus < tp:
            problems.append(
                f"{where}.resources.num_gpus: tensor_parallel_size {tp} needs as many "
                "GPUs per actor; raise num_gpus or lower tensor_parallel_size"
            )
        if st.runner != "auto" and st.runner not in spec.runners:
            able = [n for n in engine_registry.names() if st.runner in engine_registry.get(n).runners]
            what = "vLLM" if able == ["vllm"] else ", ".join(able)
            problems.append(f"{where}.runner: {st.runner} runs {what} only; set engine: {' or '.join(able)} or "
                            "runner: auto")
        if st.device == "cuda" and st.resources.num_gpus == 0:
            problems.append(f"{where}.resources.num_gpus: device cuda needs num_gpus > 0")
        if st.max_cost_usd is not None and spec.needs != "endpoint":
            problems.append(f"{where}.max_cost_usd: only an API stage spends money (engine {st.engine} runs a local "
                            "model); drop max_cost_usd")
        elif st.max_cost_usd is not None and st.price.input == 0 and st.price.output == 0:
            problems.append(f"{where}.max_cost_usd: the stage has no price, so it cannot spend; set price "
                            "(USD per 1M input/output tokens) or drop max_cost_usd")
        unknown = [n for n in cfg.signals if not spec.can_give(n)] if where != "judge" else []
        if unknown:
            problems.append(f"{where}.engine: engine {st.engine} cannot give the signal(s) {', '.join(unknown)}; "
                            f"it gives {', '.join(spec.signals or ())}; drop them from signals or use another engine")
        problems.extend(_engine_option_problems(where, st))
    if problems:
        raise ConfigError("; ".join(problems))


def _engine_field_problems(where: str, st: StageConfig, spec) -> list[str]:
    """The keys a stage has beyond the common ones must be its engine's own fields, of the right type."""
    extra = dict(st.model_extra or {})
    names = sorted(spec.fields.model_fields) if spec.fields is not None else []
    out = []
    for key in extra:
        if key not in names:
            known = f"engine {st.engine} adds {', '.join(names)}" if names else f"engine {st.engine} adds none"
            out.append(f"{where}.{key}: unknown field; remove it or check its spelling ({known})")
    if out or spec.fields is None:
        return out
    try:
        spec.fields.model_validate(extra)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                msg = f"required by engine {st.engine}"
            out.append(f"{where}.{loc}: {msg}")
    return out


def _engine_option_problems(where: str, st: StageConfig) -> list[str]:
    """Unknown keys, or values of the wrong type, in a stage's engine_options (each engine declares its own)."""
    valid = dict(st.engine_spec().options)
    out = []
    for key, value in st.engine_options.items():
        if key not in valid:
            known = ", ".join(sorted(valid)) if valid else f"none (the {st.engine} engine takes no engine_options)"
            out.append(f"{where}.engine_options.{key}: unknown option for engine {st.engine}; valid: {known}")
            continue
        want = valid[key]
        if isinstance(value, bool):
            ok = want is bool
        else:
            ok = isinstance(value, (int, float) if want is float else want)
        if value is not None and not ok:
            out.append(f"{where}.engine_options.{key}: expected {want.__name__}, got {value!r}")
    return out


def needs_gpus(cfg: ScoreConfig) -> float:
    stages = cfg.stages + ([cfg.judge] if cfg.judge else [])
    return max((s.resources.num_gpus for s in stages), default=0.0)


# ------------------------------------------------------------------------------------------ secrets

REDACTED = "***"
_SECRET_WORDS = ("token", "secret", "secrets", "password", "passwords", "passwd", "pwd", "credential",
                 "credentials", "auth")
_SECRET_SUFFIXES = ("apikey", "token", "secret", "password", "passwd")
# "key" is a secret's name unless a word beside it says which kind of key it is (cell_key, sort_key)
_NOT_SECRET_KEY = {"cell", "sweep", "sort", "cache", "group", "join", "partition", "primary", "foreign", "lookup",
                   "hash", "row", "column", "index", "metric", "param", "record", "query", "dedup", "order", "dict"}
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>[^/\s@]+)(?P<tail>@)")


def _words(key: str) -> list[str]:
    key = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w for w in re.split(r"[\s_\-.:/]+", key.lower()) if w]


def is_secret_key(key) -> bool:
    """True for keys that look like secrets (``*key*``, ``*token*``, ``*secret*``, ``*password*``, any case):
    ``api_key``, ``HF_TOKEN``, ``clientSecret``, ``db-password``, ``hftoken``. Words are split at ``_ - . :
    /``, spaces and camelCase; ``key`` counts unless a word beside it names a non-secret kind of key
    (``cell_key``, ``sort_key``); plural counts such as ``max_tokens`` are not secrets."""
    if not isinstance(key, str):
        return False
    words = _words(key)
    for w in words:
        if w in ("key", "keys"):
            if not _NOT_SECRET_KEY.intersection(words):
                return True
        elif w in _SECRET_WORDS:
            return True
        elif any(w.endswith(s) for s in _SECRET_SUFFIXES):
            return True
    return False


def _mask(v):
    if isinstance(v, str):
        return REDACTED if v else v
    if isinstance(v, dict):
        return {k: _mask(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_mask(x) for x in v)
    return v  # numbers, booleans and None carry no secret


def redact_secrets(obj):
    """A copy of ``obj`` (dicts, lists, tuples, strings, scalars) in which the string values under
    secret-looking keys (:func:`is_secret_key`) and passwords inside URLs (``scheme://user:PASSWORD@host``)
    are replaced by ``***``. Pure: the input is not changed."""
    if isinstance(obj, dict):
        return {k: (_mask(v) if is_secret_key(k) else redact_secrets(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_secrets(x) for x in obj)
    if isinstance(obj, str):
        return _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED + m["tail"], obj)
    return obj
