"""Per-query x model records: the Arrow schema, validation, import and storage.

This module is the contract between scoring (``cascade score``) and tuning (``cascade tune``).
One row per (benchmark, split, query_id, model). A results store is a folder holding a Parquet
dataset laid out as ``<store>/<benchmark>/<model>/part-*.parquet``; ``benchmark`` and ``model``
are ordinary columns in every file as well, so any Parquet reader sees the whole table.

Confidence-signal columns are ``confidence`` and every column named ``conf_*`` (float64, log-prob
style signals; +-inf are legal, NaN is not).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"

#: Columns every record has, with their Arrow types.
REQUIRED_FIELDS: dict[str, pa.DataType] = {
    "benchmark": pa.string(),
    "split": pa.string(),
    "query_id": pa.int64(),
    "model": pa.string(),
    "correct": pa.float64(),
    "input_tokens": pa.int64(),
    "output_tokens": pa.int64(),
    "cost": pa.float64(),
}

#: Optional columns written by the scorer (answer text, second cost, self-evaluation pass, provenance).
OPTIONAL_FIELDS: dict[str, pa.DataType] = {
    "answer": pa.string(),
    "target": pa.string(),
    "accelerator_seconds": pa.float64(),
    "ptrue_input_tokens": pa.int64(),
    "ptrue_output_tokens": pa.int64(),
    "ptrue_cost": pa.float64(),
    "engine": pa.string(),
    "model_path": pa.string(),
    "dtype": pa.string(),
    "prompt_sha1": pa.string(),
    "run_id": pa.string(),
    "scored_at": pa.string(),
}

SIGNAL_PREFIX = "conf_"
DEFAULT_SIGNAL = "confidence"
KEY = ["benchmark", "split", "query_id", "model"]


class RecordsError(ValueError):
    """Invalid records. The message names the column or rows and the fix."""


def is_signal_column(name: str) -> bool:
    return name == DEFAULT_SIGNAL or name.startswith(SIGNAL_PREFIX)


def signal_columns(columns: Iterable[str]) -> list[str]:
    return [c for c in columns if is_signal_column(c)]


def arrow_schema(signals: Iterable[str], extra: Iterable[str] = ()) -> pa.Schema:
    """The Arrow schema of a records table with the given signal and optional columns."""
    fields = [pa.field(n, t, nullable=False) for n, t in REQUIRED_FIELDS.items()]
    fields += [pa.field(s, pa.float64(), nullable=False) for s in signals]
    fields += [pa.field(n, OPTIONAL_FIELDS[n]) for n in extra if n in OPTIONAL_FIELDS]
    return pa.schema(fields, metadata={b"cascade_eval_schema": SCHEMA_VERSION.encode()})


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    idx = np.flatnonzero(np.asarray(mask))
    shown = ", ".join(str(i + 2) for i in idx[:limit])  # +2: header line and 1-based rows, as in a CSV
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"rows {shown}{more}"


@dataclass
class PriceTable:
    """USD per 1M input / output tokens, per model."""

    prices: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, raw: Mapping) -> "PriceTable":
        prices = {}
        for model, p in raw.items():
            if not isinstance(p, Mapping) or "input" not in p or "output" not in p:
                raise RecordsError(
                    f"price table: model {model!r} needs 'input' and 'output' (USD per 1M tokens), got {p!r}"
                )
            pin, pout = float(p["input"]), float(p["output"])
            if pin < 0 or pout < 0:
                raise RecordsError(f"price table: model {model!r} has a negative price; prices must be >= 0")
            prices[str(model)] = (pin, pout)
        return cls(prices)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "PriceTable":
        import yaml

        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, Mapping):
            raise RecordsError(f"price table {path}: expected a mapping model -> {{input, output}}")
        return cls.from_mapping(raw)

    def cost(self, model: str, input_tokens, output_tokens):
        if model not in self.prices:
            raise RecordsError(
                f"price table has no entry for model {model!r}; add '{model}: {{input: ..., output: ...}}'"
            )
        pin, pout = self.prices[model]
        return (np.asarray(input_tokens) * pin + np.asarray(output_tokens) * pout) / 1e6


def validate(df: pd.DataFrame, *, prices: PriceTable | None = None, source: str = "input") -> pd.DataFrame:
    """Check a records frame and return it in canonical types. Raises RecordsError on bad input.

    Checks: required columns, at least one signal column, types, NaN/negative values, duplicate
    (benchmark, split, query_id, model) keys, and that every model of a (benchmark, split) has the
    same query ids. A missing ``cost`` column is filled from ``prices`` when given.
    """
    df = df.copy()
    if "cost" not in df.columns and prices is not None:
        missing_tok = [c for c in ("input_tokens", "output_tokens") if c not in df.columns]
        if not missing_tok:
            df["cost"] = 0.0
            for model, idx in df.groupby("model").groups.items():
                df.loc[idx, "cost"] = prices.cost(
                    str(model), df.loc[idx, "input_tokens"].astype(float), df.loc[idx, "output_tokens"].astype(float)
                )
    missing = [c for c in REQUIRED_FIELDS if c not in df.columns]
    if missing:
        hint = " (or pass --prices to compute cost from tokens)" if missing == ["cost"] else ""
        raise RecordsError(f"{source}: missing column(s) {', '.join(missing)}{hint}")
    signals = signal_columns(df.columns)
    if not signals:
        raise RecordsError(
            f"{source}: no confidence-signal column; name it 'confidence' or 'conf_<signal>'"
        )
    if len(df) == 0:
        raise RecordsError(f"{source}: no rows")

    for col in ("benchmark", "split", "model"):
        if df[col].isna().any():
            raise RecordsError(f"{source}: column {col!r} is empty in {_rows(df[col].isna())}")
        df[col] = df[col].astype(str)

    for col in ("query_id", "input_tokens", "output_tokens"):
        s = pd.to_numeric(df[col], errors="coerce")
        bad = s.isna() | (s != np.floor(s))
        if bad.any():
            raise RecordsError(f"{source}: column {col!r} must hold integers; bad values in {_rows(bad)}")
        df[col] = s.astype(np.int64)
        if col != "query_id" and (df[col] < 0).any():
            raise RecordsError(f"{source}: column {col!r} is negative in {_rows(df[col] < 0)}")

    c = df["correct"]
    if c.dtype == bool:
        df["correct"] = c.astype(np.float64)
    else:
        if not pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c):
            c = c.map(lambda v: {"true": 1.0, "false": 0.0}.get(str(v).strip().lower(), v))
        s = pd.to_numeric(c, errors="coerce")
        nan = s.isna()
        if nan.any():
            raise RecordsError(
                f"{source}: column 'correct' has NaN or non-numeric values in {_rows(nan)}; "
                "use true/false or a number in [0, 1]"
            )
        out = (s < 0) | (s > 1)
        if out.any():
            raise RecordsError(f"{source}: column 'correct' must lie in [0, 1]; bad values in {_rows(out)}")
        df["correct"] = s.astype(np.float64)

    cost = pd.to_numeric(df["cost"], errors="coerce")
    if cost.isna().any() or np.isinf(cost).any():
        raise RecordsError(f"{source}: column 'cost' must be a finite number; bad values in {_rows(~np.isfinite(cost))}")
    if (cost < 0).any():
        raise RecordsError(f"{source}: column 'cost' is negative in {_rows(cost < 0)}; costs must be >= 0")
    df["cost"] = cost.astype(np.float64)

    for sig in signals:
        s = pd.to_numeric(df[sig], errors="coerce")
        if s.isna().any():
            raise RecordsError(
                f"{source}: signal column {sig!r} has NaN or non-numeric values in {_rows(s.isna())}; "
                "+-inf are allowed, NaN is not"
            )
        df[sig] = s.astype(np.float64)

    dup = df.duplicated(KEY, keep=False)
    if dup.any():
        raise RecordsError(
            f"{source}: duplicate (split, query_id, model) in {_rows(dup)}; each query x model must appear once"
        )

    for (bench, split), g in df.groupby(["benchmark", "split"], sort=True):
        ids = g.groupby("model")["query_id"].apply(frozenset)
        union = frozenset().union(*ids.values)
        for model, have in ids.items():
            lack = union - have
            if lack:
                ex = ", ".join(str(q) for q in sorted(lack)[:5])
                raise RecordsError(
                    f"{source}: model {model!r} lacks {len(lack)} queries of {bench}/{split} that other models have "
                    f"(query_id {ex}{'...' if len(lack) > 5 else ''}); score them or drop them for every model"
                )

    for col, typ in OPTIONAL_FIELDS.items():
        if col in df.columns and typ == pa.string():
            df[col] = df[col].astype("string")
    return df


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Parquet or CSV file (import formats)."""
    path = Path(path)
    if not path.exists():
        raise RecordsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq") or path.is_dir():
        return pq.read_table(path).to_pandas()
    if suffix in (".csv", ".txt"):
        return pd.read_csv(path)
    raise RecordsError(f"{path}: unknown format {suffix!r}; use .parquet or .csv")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def to_arrow(df: pd.DataFrame) -> pa.Table:
    signals = signal_columns(df.columns)
    extra = [c for c in df.columns if c in OPTIONAL_FIELDS]
    schema = arrow_schema(signals, extra)
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def write_part(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write one Parquet file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def existing_groups(store: str | os.PathLike) -> set[tuple[str, str]]:
    """(benchmark, model) pairs already in a store, read from the files themselves."""
    store = Path(store)
    if not store.exists() or not parquet_files(store):
        return set()
    df = load(store, columns=["benchmark", "model"])
    return set(map(tuple, df.drop_duplicates().itertuples(index=False, name=None)))


def write_records(df: pd.DataFrame, store: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Add validated records to a store, one file per (benchmark, model), all-or-nothing.

    Refuses to replace data already in the store unless ``overwrite`` (scored data is never lost
    silently). Files are first written to a staging folder inside the store, then renamed.
    """
    store = Path(store)
    groups = [(str(b), str(m)) for b, m in df[["benchmark", "model"]].drop_duplicates().itertuples(index=False)]
    clash = existing_groups(store) & set(groups)
    if clash and not overwrite:
        names = ", ".join(f"{b}/{m}" for b, m in sorted(clash))
        raise RecordsError(f"{store}: already holds records for {names}; pass --overwrite to replace them")
    store.mkdir(parents=True, exist_ok=True)
    staging = store / f".staging-{uuid.uuid4().hex}"
    staged: list[tuple[Path, Path]] = []
    try:
        for bench, model in groups:
            part = df[(df["benchmark"] == bench) & (df["model"] == model)].sort_values(["split", "query_id"])
            name = f"part-{uuid.uuid4().hex[:12]}.parquet"
            tmp = write_part(to_arrow(part), staging / _safe(bench) / _safe(model) / name)
            staged.append((tmp, store / _safe(bench) / _safe(model) / name))
        written = []
        for bench, model in groups:
            folder = store / _safe(bench) / _safe(model)
            if folder.exists() and overwrite:
                # only files holding this (benchmark, model): sanitised folder names can collide
                # ("org/m" and "org_m"), and another model's records must never be deleted
                for old in folder.glob("*.parquet"):
                    got = pq.read_table(old, columns=["benchmark", "model"]).to_pandas().drop_duplicates()
                    if len(got) == 1 and (got.iloc[0]["benchmark"], got.iloc[0]["model"]) == (bench, model):
                        old.unlink()
        for tmp, final in staged:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            written.append(final)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def import_file(
    src: str | os.PathLike, store: str | os.PathLike, *, prices: PriceTable | None = None, overwrite: bool = False
) -> pd.DataFrame:
    """``cascade import``: read, validate and store. Writes nothing when the input is bad."""
    df = validate(read_table(src), prices=prices, source=str(src))
    write_records(df, store, overwrite=overwrite)
    return df


def load(store: str | os.PathLike, *, benchmark: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a results store (or a single Parquet file) into pandas, optionally one benchmark."""
    store = Path(store)
    if not store.exists():
        raise RecordsError(f"{store}: no such results store")
    files = parquet_files(store)
    if not files:
        raise RecordsError(f"{store}: holds no records (no .parquet files)")
    # Shards written by different runs may carry different signal columns: read with the union schema
    # (columns a shard lacks come back as nulls) instead of the first file's schema.
    try:
        schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise RecordsError(f"{store}: shards disagree on column types ({e})") from e
    dataset = pads.dataset([str(f) for f in files], format="parquet", schema=schema)
    filt = (pads.field("benchmark") == benchmark) if benchmark is not None else None
    table = dataset.to_table(columns=columns, filter=filt)
    return table.to_pandas()


def parquet_files(store: str | os.PathLike) -> list[Path]:
    """The Parquet files of a store (or the file itself), hidden staging folders excluded, sorted."""
    store = Path(store)
    if store.is_file():
        return [store]
    return sorted(p for p in store.rglob("*.parquet")
                  if not any(part.startswith(".") for part in p.relative_to(store).parts))


def fingerprint(data) -> str:
    """A short sha256 of records: the bytes of a file's or a store's Parquet files (with their relative
    names), or of a DataFrame's row hashes. Same data, same fingerprint; any change, a new one."""
    import hashlib

    h = hashlib.sha256()
    if isinstance(data, pd.DataFrame):
        h.update(pd.util.hash_pandas_object(data, index=False).to_numpy().tobytes())
        h.update(",".join(map(str, data.columns)).encode())
        return h.hexdigest()[:16]
    path = Path(data)
    if not path.exists():
        raise RecordsError(f"{path}: no such results store")
    for f in parquet_files(path):
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class CascadeData:
    """Aligned arrays for one cascade on one split: rows are queries, columns the cascade's models."""

    models: list[str]
    query_id: np.ndarray  # (n,)
    confidence: np.ndarray  # (n, k) signal (raw or calibrated, see the producer)
    correct: np.ndarray  # (n, k) in [0, 1]
    cost: np.ndarray  # (n, k) USD per query

    @property
    def n(self) -> int:
        return len(self.query_id)

    @property
    def k(self) -> int:
        return len(self.models)

    def subset(self, idx: np.ndarray) -> "CascadeData":
        return CascadeData(self.models, self.query_id[idx], self.confidence[idx], self.correct[idx], self.cost[idx])

    def with_confidence(self, confidence: np.ndarray) -> "CascadeData":
        return CascadeData(self.models, self.query_id, np.asarray(confidence, float), self.correct, self.cost)


def cascade_data(
    df: pd.DataFrame, models: list[str], split: str, *, signal: str = DEFAULT_SIGNAL, benchmark: str | None = None
) -> CascadeData:
    """Pivot records of one split into aligned (n, k) arrays for the models in cascade order."""
    if benchmark is not None:
        df = df[df["benchmark"] == benchmark]
    if signal not in df.columns:
        have = ", ".join(signal_columns(df.columns)) or "none"
        raise RecordsError(f"signal {signal!r} is not in the records (signals: {have})")
    sub = df[df["split"] == split]
    if sub.empty:
        splits = ", ".join(sorted(df["split"].unique()))
        raise RecordsError(f"split {split!r} has no records (splits: {splits})")
    have_models = set(sub["model"].unique())
    lacking = [m for m in models if m not in have_models]
    if lacking:
        raise RecordsError(
            f"model(s) {', '.join(lacking)} have no records in split {split!r} "
            f"(models: {', '.join(sorted(have_models))})"
        )
    sub = sub[sub["model"].isin(models)]
    if sub.duplicated(["query_id", "model"]).any():
        raise RecordsError(
            f"split {split!r}: a (query_id, model) appears twice; pass --benchmark to pick one benchmark"
        )
    piv = sub.pivot(index="query_id", columns="model", values=[signal, "correct", "cost"])
    piv = piv.dropna()
    if len(piv) == 0:
        raise RecordsError(f"split {split!r}: the models {', '.join(models)} share no queries")
    return CascadeData(
        models=list(models),
        query_id=piv.index.to_numpy(),
        confidence=piv[signal][models].to_numpy(float),
        correct=piv["correct"][models].to_numpy(float),
        cost=piv["cost"][models].to_numpy(float),
    )
