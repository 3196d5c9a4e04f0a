"""Sweeps: a YAML spec of records x cascades x methods x training sizes x seeds, expanded into cells.

Each cell has a key: a hash of its normalised configuration and of the fingerprint of the records it
reads. ``jobs/sweep.py`` runs the cells (Ray tasks) and skips those whose key already has a FINISHED
MLflow run; this module is plain Python (no Ray, no MLflow).

Example (``examples/sweep-medmcqa.yaml``)::

    experiment: sweep-medmcqa
    records:
      - name: medmcqa-llama
        path: medmcqa-llama.parquet          # a records file or store (relative to the spec's folder)
        chain: [llama3.2-1b, llama3.2-3b, llama3.1-8b]
        max_len: 3                           # every ordered sub-sequence of length 2..3 of the chain
    methods: [markov-copula, grid, {name: bayes-opt, params: {n_trials: 50}}, random]
    sample_sizes: [30, all]
    seeds: [0, 1]

A records entry may set ``signal`` (default ``confidence``) and ``transform`` (``auto``, ``one-sided``,
``two-sided``, ``identity``; ``auto`` is decided on the entry's chain, as ``cascade tune`` does). Method
``params`` are checked against the method's declared parameters when the spec is loaded (so
``--dry-run`` refuses a misspelt one).

A records entry may instead name a scoring config (``score: score-mmlu-tiny.yaml``): the sweep scores
first (skipping finished shards) and tunes on the config's output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cascade.evaluate import study as protocol
from cascade.evaluate import tuning as tune
from cascade.evaluate.compare import cascades_of
from cascade.scoring.config import format_validation_error, read_yaml, resolve_path
from cascade.data.records import fingerprint


class SpecError(ValueError):
    """A bad sweep spec; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodSpec(_Strict):
    name: str
    params: dict = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        try:
            tune.get_method(v)
        except (KeyError, ValueError) as e:
            raise ValueError(str(e).strip("'\"")) from None
        return v

    @model_validator(mode="after")
    def _params(self):
        self.params = tune.get_method(self.name).validate_params(self.params)
        return self


class RecordsSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str | None = Field(None, description="records file or store")
    score: str | None = Field(None, description="a `cascade score` config; its output folder is the records")
    benchmark: str | None = None
    chain: list[str] = Field(min_length=2, description="models in cascade order, cheapest first")
    cascades: list[list[str]] | None = Field(None, description="explicit cascades; default: all of the chain")
    min_len: int = Field(2, ge=2)
    max_len: int | None = Field(None, ge=2)
    signal: str = "confidence"
    transform: Literal["auto", "one-sided", "two-sided", "identity"] = "auto"
    train_split: str = "train"
    test_split: str = "test"

    @model_validator(mode="after")
    def _check(self):
        if (self.path is None) == (self.score is None):
            raise ValueError("give exactly one of `path` (records) or `score` (a scoring config)")
        for c in self.cascades or []:
            if len(c) < 2:
                raise ValueError(f"cascade {c} has fewer than 2 models")
            unknown = [m for m in c if m not in self.chain]
            if unknown:
                raise ValueError(f"cascade {c}: {', '.join(unknown)} not in the chain {self.chain}")
        return self


class SweepSpec(_Strict):
    experiment: str = Field(min_length=1, description="MLflow experiment of the sweep")
    records: list[RecordsSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1, description="method names or {name, params} entries")
    sample_sizes: list[Union[int, Literal["all"]]] = Field(default_factory=lambda: ["all"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    cost: Literal["model-mean", "per-query"] = "model-mean"
    calibration: Literal["auto", "none"] = "auto"
    out: str = Field("../runs/sweeps", description="where each cell's curve.parquet/summary.json go")

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v):
        return [{"name": m} if isinstance(m, str) else m for m in v] if isinstance(v, list) else v

    @field_validator("sample_sizes")
    @classmethod
    def _sizes(cls, v):
        for n in v:
            if n != "all" and n < 2:
                raise ValueError(f"sample size {n}: use an integer >= 2 or 'all'")
        return v


def load_spec(src: str | os.PathLike | dict) -> SweepSpec:
    """Parse and validate a sweep spec (YAML path or dict); relative paths are relative to the spec file."""
    base = Path.cwd()
    if isinstance(src, dict):
        raw = src
    else:
        raw = read_yaml(src, SpecError, "sweep spec")
        base = Path(src).resolve().parent
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"invalid sweep spec: {format_validation_error(e)}") from None

    def res(p):
        return resolve_path(p, base)

    spec = spec.model_copy(deep=True)
    spec.out = res(spec.out)
    for i, r in enumerate(spec.records):
        r.path, r.score = res(r.path), res(r.score)
        if r.path is not None and not Path(r.path).exists():
            raise SpecError(f"records.{i}.path: {r.path} does not exist; give a records file or store "
                            "(`cascade import` makes one)")
        if r.score is not None and not Path(r.score).exists():
            raise SpecError(f"records.{i}.score: {r.score} does not exist; give a `cascade score` config")
    names = [r.name for r in spec.records]
    if len(set(names)) != len(names):
        raise SpecError("records: names must be unique")
    return spec


def cascades_for(r: RecordsSpec) -> list[list[str]]:
    if r.cascades:
        return [list(c) for c in r.cascades]
    chain = r.chain
    out = []
    for c in cascades_of(chain, r.min_len):
        if r.max_len is None or len(c) <= r.max_len:
            out.append(c)
    return out


@dataclass(frozen=True)
class Cell:
    records: str  # the records entry's name
    records_path: str
    benchmark: str | None
    cascade: tuple
    method: str
    params: tuple  # sorted (name, value) pairs
    n: str  # training size or "all"
    seed: int
    signal: str
    train_split: str
    test_split: str
    cost: str
    calibration: str
    data_fingerprint: str
    key: str = field(default="", compare=False)
    transform: str = "auto"
    chain: tuple = ()  # the records entry's chain: `auto` decides the transform on all of it

    def config(self) -> dict:
        d = asdict(self)
        d.pop("key")
        d.pop("records_path")  # where the data lives does not change the cell; what it holds does
        d.pop("chain")
        if d["transform"] == "auto":  # the default keeps the keys of cells written before the option existed
            d.pop("transform")
        d["cascade"] = list(self.cascade)
        d["params"] = dict(self.params)
        return d

    @property
    def label(self) -> str:
        return f"{self.records} | {' -> '.join(self.cascade)} | {self.method} | n={self.n} | seed={self.seed}"


def cell_key(config: dict) -> str:
    """Hash of a cell's normalised configuration (which includes the data fingerprint)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def records_path(r: RecordsSpec) -> str:
    """The records a spec entry reads: its path, or its scoring config's output folder."""
    if r.path is not None:
        return r.path
    from cascade.scoring.config import load_config

    return load_config(r.score).out


def expand(spec: SweepSpec, fingerprints: dict[str, str] | None = None) -> list[Cell]:
    """Every cell of the sweep, in a stable order. ``fingerprints``: records name -> fingerprint (computed
    from the files when not given)."""
    cells = []
    for r in spec.records:
        path = records_path(r)
        fp = (fingerprints or {}).get(r.name) or fingerprint(path)
        for casc in cascades_for(r):
            for m in spec.methods:
                for n in spec.sample_sizes:
                    for seed in spec.seeds:
                        c = Cell(r.name, path, r.benchmark, tuple(casc), m.name, tuple(sorted(m.params.items())),
                                 str(n), int(seed), r.signal, r.train_split, r.test_split, spec.cost,
                                 spec.calibration, fp, transform=r.transform, chain=tuple(r.chain))
                        cells.append(Cell(**{**asdict(c), "cascade": c.cascade, "params": c.params,
                                             "chain": c.chain, "key": cell_key(c.config())}))
    return cells


def run_cell(records: pd.DataFrame, cell: Cell) -> tune.TuneResult:
    """Tune one cell: a seeded training subsample of size n (``protocol.subsample_ids``), then the method."""
    df = records
    if cell.benchmark is not None:
        df = df[df["benchmark"] == cell.benchmark]
    if cell.n != "all":
        train_ids = np.sort(df.loc[df["split"] == cell.train_split, "query_id"].unique())
        ids = protocol.subsample_ids(train_ids, int(cell.n), 1, cell.seed, " -> ".join(cell.cascade))[0]
        df = df[(df["split"] != cell.train_split) | df["query_id"].isin(ids)]
    params = protocol.method_params(cell.method, cell.seed, {cell.method: dict(cell.params)})
    chain = [m for m in (cell.chain or cell.cascade) if m in set(df["model"])] or list(cell.cascade)
    transform = tune.choose_transform(df, models=chain, signal=cell.signal,
                                      splits=(cell.train_split, cell.test_split), transform=cell.transform,
                                      calibration=cell.calibration)
    res = tune.run_tuning(df, models=list(cell.cascade), method=cell.method, benchmark=cell.benchmark,
                          train_split=cell.train_split, test_split=cell.test_split, cost_mode=cell.cost,
                          calibration=cell.calibration, signal=cell.signal, transform=transform, params=params)
    res.summary.update({"cell_key": cell.key, "n": cell.n, "seed": cell.seed, "records": cell.records})
    return res


__all__ = ["SweepSpec", "RecordsSpec", "MethodSpec", "SpecError", "Cell", "load_spec", "expand", "cell_key",
           "cascades_for", "records_path", "run_cell"]
