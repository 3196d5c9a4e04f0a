"""Per-query x model records: the Arrow schema, validation, import and storage.

This module is the contract between scoring (``cascade score``) and tuning (``cascade tune``).
One row per (benchmark, split, query_id, model). A results store is a folder holding a Parquet
dataset laid out as ``<store>/<benchmark>/<model>/part-*.parquet``; ``benchmark`` and ``model``
are ordinary columns in every file as well, so any Parquet reader sees the whole table. Readers
go by those columns; folder names (made by :func:`folder_name`, the one place a name becomes a
path) only decide where a file is written.

Every shard is written with a sidecar manifest ``<shard>.manifest.json`` (sha256, size and row
count; :func:`verify_part`) and every write to a store holds the store's lock ``<store>/store.lock``
(:func:`store_lock`).

Confidence-signal columns are ``confidence`` and every column named ``conf_*`` (float64, log-prob
style signals; +-inf are legal, NaN is not).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import unicodedata
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

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


# ----------------------------------------------------------------------------------- names -> folders

#: Characters a name keeps as they are in its folder name; every other character is percent-encoded.
_NAME_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._=-")
#: Longest folder name :func:`folder_name` returns (filesystems allow 255 bytes; room is left for suffixes).
MAX_FOLDER_NAME = 200


def folder_name(name: str, what: str) -> str:
    """The folder (or file-name part) for a benchmark, model, split or cascade name ``name``.

    The one function through which a name becomes part of a path. Reversible
    (:func:`name_from_folder` undoes it) and injective, so two names never share a folder:
    ``A-Z a-z 0-9 . _ = -`` are kept, every other character becomes ``%XX`` per UTF-8 byte
    (``org/m`` -> ``org%2Fm``, ``org_m`` stays ``org_m``, ``%`` -> ``%25``), and a leading ``.``
    becomes ``%2E`` so no name makes a hidden folder. The result never contains ``/``, ``\\``,
    a control character or a leading ``.``. Refused with :class:`RecordsError` (naming ``what``,
    the value and the fix): a non-string, the empty name, ``.`` and ``..``, names with control
    characters (NUL, newline, tab, DEL, ...) and names whose folder name would exceed
    :data:`MAX_FOLDER_NAME` characters.
    """
    if not isinstance(name, str):
        raise RecordsError(f"{what} name {name!r} must be a string")
    if name in ("", ".", ".."):
        why = "is empty" if not name else "would name the current or parent folder"
        raise RecordsError(f"{what} name {name!r} {why}; give the {what} a real name")
    ctrl = sorted({c for c in name if unicodedata.category(c) in ("Cc", "Cs")})
    if ctrl:
        raise RecordsError(f"{what} name {name!r} contains control character(s) "
                           f"{', '.join(repr(c) for c in ctrl)}; remove them from the {what} name")
    out = []
    for i, ch in enumerate(name):
        if ch in _NAME_SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    enc = "".join(out)
    if len(enc) > MAX_FOLDER_NAME:
        raise RecordsError(f"{what} name {name[:40]!r}... is too long for a folder name ({len(enc)} characters "
                           f"once encoded, at most {MAX_FOLDER_NAME}); shorten the {what} name")
    return enc


def name_from_folder(folder: str) -> str:
    """The name a :func:`folder_name` folder stands for (``org%2Fm`` -> ``org/m``)."""
    return urllib.parse.unquote(folder, errors="strict")


def legacy_folder_name(name: str) -> str:
    """The folder name versions before :func:`folder_name` gave ``name`` (runs of characters outside
    ``A-Z a-z 0-9 . _ = -`` replaced by ``_``; not injective, could escape). Only for finding what
    they wrote, e.g. finished shards of an older scoring run; never for writing."""
    import re

    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def _case_clashes(names: Iterable[str]) -> list[list[str]]:
    """Groups of distinct names that differ only by letter case (they share a folder on macOS/Windows)."""
    by: dict[str, set[str]] = {}
    for n in names:
        by.setdefault(n.casefold(), set()).add(n)
    return [sorted(v) for v in by.values() if len(v) > 1]


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
            try:
                pin, pout = float(p["input"]), float(p["output"])
            except (TypeError, ValueError):
                raise RecordsError(f"price table: model {model!r} needs numeric 'input' and 'output' prices "
                                   f"(USD per 1M tokens), got {p!r}") from None
            if not (np.isfinite(pin) and np.isfinite(pout)):
                raise RecordsError(f"price table: model {model!r} has a non-finite price; use a number >= 0")
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


#: Floats hold every integer exactly only up to 2**53; larger float ids may already have lost digits.
_FLOAT_EXACT_INT = 2 ** 53


def _int_column(raw: pd.Series, col: str, source: str) -> pd.Series:
    """An int64 column, or RecordsError: no booleans, NaN, inf, fractions, values outside int64, or
    floats beyond 2**53 (a float id like 1e20 is not an id: the digits are gone before we see them)."""
    flags = raw.map(lambda v: isinstance(v, (bool, np.bool_))) if raw.dtype == object else None
    if pd.api.types.is_bool_dtype(raw) or (flags is not None and flags.any()):
        mask = flags if flags is not None else pd.Series(True, index=raw.index)
        raise RecordsError(f"{source}: column {col!r} holds true/false values in {_rows(mask)}; it must hold integers")
    s = pd.to_numeric(raw, errors="coerce")
    if pd.api.types.is_unsigned_integer_dtype(s):
        bad = s.isna() | (s > np.uint64(np.iinfo(np.int64).max))
    elif pd.api.types.is_integer_dtype(s):
        bad = s.isna()
    else:
        with np.errstate(invalid="ignore"):
            f = s.astype("float64")
            bad = f.isna() | ~np.isfinite(f) | (f != np.floor(f)) | (f.abs() > _FLOAT_EXACT_INT)
    if bad.any():
        raise RecordsError(
            f"{source}: column {col!r} must hold integers (int64; stored as floats, whole numbers of at most "
            f"2**53); bad values in {_rows(bad)}"
        )
    return s.astype(np.int64)


def validate(df: pd.DataFrame, *, prices: PriceTable | None = None, source: str = "input") -> pd.DataFrame:
    """Check a records frame and return it in canonical types. Raises RecordsError on bad input.

    Checks: required columns, at least one signal column, types, NaN/negative values, duplicate
    (benchmark, split, query_id, model) keys, and that every model of a (benchmark, split) has the
    same query ids. A missing ``cost`` column is filled from ``prices`` when given.
    """
    df = df.copy()
    if "cost" in df.columns and prices is not None:
        raise RecordsError(f"{source}: has a 'cost' column and a price table was given; drop the column to "
                           "compute costs from the prices, or drop --prices to keep the file's costs")
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
        spaced = df[col] != df[col].str.strip()
        if spaced.any():
            raise RecordsError(f"{source}: column {col!r} has values with leading/trailing spaces "
                               f"({df.loc[spaced, col].iloc[0]!r}) in {_rows(spaced)}; remove the spaces")
        for value in df[col].unique():
            try:
                folder_name(value, col)
            except RecordsError as e:
                raise RecordsError(f"{source}: {e} (in {_rows(df[col] == value)})") from None
    for clash in _case_clashes(df["benchmark"].unique()):
        raise RecordsError(f"{source}: benchmark names {', '.join(map(repr, clash))} differ only by letter case; "
                           "use one spelling")
    for bench, g in df.groupby("benchmark", sort=True):
        for col in ("split", "model"):
            for clash in _case_clashes(g[col].unique()):
                raise RecordsError(f"{source}: {col} names {', '.join(map(repr, clash))} of benchmark {bench!r} "
                                   "differ only by letter case; use one spelling")

    for col in ("query_id", "input_tokens", "output_tokens"):
        df[col] = _int_column(df[col], col, source)
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
    """Read a Parquet or CSV file (import formats). Key columns a writer put in the index (Parquet
    written from an indexed frame) come back as columns."""
    path = Path(path)
    if not path.exists():
        raise RecordsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq") or path.is_dir():
            df = pq.read_table(path).to_pandas()
        elif suffix in (".csv", ".txt"):
            df = pd.read_csv(path, encoding="utf-8-sig")  # -sig: a byte-order mark is not part of the first name
        else:
            raise RecordsError(f"{path}: unknown format {suffix!r}; use .parquet or .csv")
    except (OSError, pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        kind = "Parquet" if suffix in (".parquet", ".pq") or path.is_dir() else "CSV"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RecordsError(f"{path}: cannot be read as {kind} ({first}); check the file") from None
    if any(n is not None for n in df.index.names):
        df = df.reset_index()
    return df


def to_arrow(df: pd.DataFrame) -> pa.Table:
    signals = signal_columns(df.columns)
    extra = [c for c in df.columns if c in OPTIONAL_FIELDS]
    schema = arrow_schema(signals, extra)
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


# ------------------------------------------------------------------------------ lock and manifests

LOCK_NAME = "store.lock"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "cascade-eval shard manifest 1"
#: Seconds a writer waits for another writer of the same store before giving up.
LOCK_TIMEOUT_S = 600.0


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold ``<store>/store.lock`` (a ``filelock.FileLock``, released when the holder exits or dies).

    Every write to a store (:func:`write_records`, :func:`write_part`) holds it, so two processes
    never interleave their checks and renames. The folder is created if missing. Raises
    :class:`RecordsError` if another writer holds it for more than ``timeout`` seconds.
    """
    from filelock import FileLock, Timeout

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(store / LOCK_NAME))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise RecordsError(f"{store}: another process has been writing to this store for over {timeout:.0f} s "
                           f"(lock {store / LOCK_NAME}); wait for it to finish and retry") from None
    try:
        yield store
    finally:
        lock.release()


def manifest_path(part: str | os.PathLike) -> Path:
    """The sidecar manifest of a shard: ``part-x.parquet`` -> ``part-x.parquet.manifest.json``."""
    part = Path(part)
    return part.with_name(part.name + MANIFEST_SUFFIX)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(part: str | os.PathLike) -> dict | None:
    """A shard's manifest ``{"format", "file", "sha256", "bytes", "rows"}``, or None if it has none."""
    mp = manifest_path(part)
    if not mp.exists():
        return None
    try:
        man = json.loads(mp.read_text())
        if not isinstance(man, dict) or man.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a shard manifest")
        return man
    except (OSError, ValueError) as e:
        raise RecordsError(f"{mp}: unreadable shard manifest ({e}); delete it and its shard and rewrite "
                           "the shard") from None


def verify_part(path: str | os.PathLike, *, require_manifest: bool = False) -> str | None:
    """Check one shard against its manifest. None if it is intact, else the reason (naming the file).

    With a manifest: the file's size, sha256 and Parquet row count must equal the manifest's. Without
    one (stores written before manifests, files written by other tools): the Parquet footer must be
    readable, unless ``require_manifest`` (then a missing manifest is itself the reason).
    """
    path = Path(path)
    if not path.is_file():
        return f"{path}: missing"
    try:
        man = read_manifest(path)
    except RecordsError as e:
        return str(e)
    if man is None:
        if require_manifest:
            return f"{path}: has no manifest {manifest_path(path).name}"
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowException) as e:
            return f"{path}: not a readable Parquet file ({e})"
        return None
    size = path.stat().st_size
    if size != man.get("bytes"):
        return f"{path}: {size} bytes, its manifest says {man.get('bytes')} (damaged or replaced)"
    if _sha256(path) != man.get("sha256"):
        return f"{path}: content sha256 differs from its manifest (damaged bytes)"
    try:
        rows = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException) as e:
        return f"{path}: not a readable Parquet file ({e})"
    if rows != man.get("rows"):
        return f"{path}: {rows} rows, its manifest says {man.get('rows')}"
    return None


def _fsync_write(path: Path, write) -> None:
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _write_shard(table: pa.Table, path: Path) -> Path:
    """Shard + manifest, each through a temp file and a rename; the caller holds the store lock.

    The manifest is renamed into place first: a crash between the two renames leaves either no shard
    (a new shard) or the previous shard under the new manifest, which :func:`verify_part` reports as
    damaged. A shard next to a manifest that matches it is therefore always complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = path.parent / f".tmp-{token}.parquet"
    tmp_man = path.parent / f".tmp-{token}{MANIFEST_SUFFIX}"
    try:
        _fsync_write(tmp, lambda fh: pq.write_table(table, fh))
        man = {"format": MANIFEST_FORMAT, "file": path.name, "sha256": _sha256(tmp), "bytes": tmp.stat().st_size,
               "rows": table.num_rows}
        _fsync_write(tmp_man, lambda fh: fh.write(json.dumps(man, indent=1).encode()))
        os.replace(tmp_man, manifest_path(path))
        os.replace(tmp, path)
    finally:
        for t in (tmp, tmp_man):
            if t.exists():
                t.unlink()
    return path


def write_part(table: pa.Table, path: str | os.PathLike, *, store: str | os.PathLike | None = None) -> Path:
    """Write one shard atomically with its manifest, holding the store's lock.

    ``store`` is the results store the shard belongs to (its lock is ``<store>/store.lock``); by default
    the folder two levels above the shard's folder, as in ``<store>/<benchmark>/<model>/<shard>``.
    """
    path = Path(path).absolute()
    store = Path(store) if store is not None else path.parents[2]
    with store_lock(store):
        return _write_shard(table, path)


# ---------------------------------------------------------------------------------------- the store


def _check_store_path(store: Path) -> None:
    for p in (store, *store.absolute().parents):
        if p.exists() and not p.is_dir():
            where = "is a file" if p == store else f"lies below the file {p}"
            raise RecordsError(f"--out {store} {where}; name a folder (created if missing)")
    for p in store.absolute().parents:
        if (p / LOCK_NAME).is_file():
            raise RecordsError(f"--out {store} lies inside the results store {p}, whose readers would read these "
                               "records as well; import into that store itself or into a folder outside it")


def _read_columns(f: Path, columns: list[str]) -> pd.DataFrame:
    reason = verify_part(f)
    if reason:
        raise RecordsError(_damaged(reason))
    try:
        return pq.read_table(f, columns=columns).to_pandas()
    except (OSError, pa.ArrowException, KeyError) as e:
        raise RecordsError(f"{f}: cannot read columns {', '.join(columns)} ({e}); the file is damaged or is not a "
                           "records shard: move it out of the store") from None


def _damaged(reason: str) -> str:
    return (f"{reason}; the shard is damaged: delete it and its {MANIFEST_SUFFIX} (then rerun `cascade score`, "
            "which rescores missing shards, or re-import the records)")


def _store_index(store: Path) -> dict[Path, pd.DataFrame]:
    """For each Parquet file of a store: its (benchmark, split, model, query_id) rows."""
    if not store.is_dir():
        return {}
    return {f: _read_columns(f, ["benchmark", "split", "model", "query_id"]) for f in parquet_files(store)}


def existing_groups(store: str | os.PathLike) -> set[tuple[str, str]]:
    """(benchmark, model) pairs already in a store, read from the files themselves."""
    idx = _store_index(Path(store))
    if not idx:
        return set()
    df = pd.concat([d[["benchmark", "model"]] for d in idx.values()]).drop_duplicates()
    return set(map(tuple, df.itertuples(index=False, name=None)))


def _check_against_store(df: pd.DataFrame, held: pd.DataFrame, replaced: set[tuple[str, str]], store: Path) -> None:
    """Refuse names that differ from stored ones only by case, and models whose queries differ from the
    queries the store's other models of the same (benchmark, split) have."""
    if held.empty:
        return
    kept = held[[(b, m) not in replaced for b, m in zip(held["benchmark"], held["model"])]]
    for clash in _case_clashes(set(df["benchmark"]) | set(held["benchmark"])):
        if set(clash) & set(df["benchmark"]):
            raise RecordsError(f"benchmark names {', '.join(map(repr, clash))} differ only by letter case ({store} "
                               "holds one of them); use the spelling the store has")
    for bench, g in df.groupby("benchmark", sort=True):
        h = held[held["benchmark"] == bench]
        for col in ("split", "model"):
            for clash in _case_clashes(set(g[col]) | set(h[col])):
                if set(clash) & set(g[col]):
                    raise RecordsError(f"{col} names {', '.join(map(repr, clash))} of benchmark {bench!r} differ "
                                       f"only by letter case ({store} holds one of them); use the spelling the "
                                       "store has")
    for (bench, split), g in df.groupby(["benchmark", "split"], sort=True):
        k = kept[(kept["benchmark"] == bench) & (kept["split"] == split)]
        if k.empty:
            continue
        ref = set(k["query_id"].tolist())
        stored_models = ", ".join(sorted(k["model"].unique()))
        for model, q in g.groupby("model", sort=True)["query_id"]:
            have = set(q.tolist())
            if have == ref:
                continue
            extra = len(have - ref)
            more = f" and {extra} queries they lack" if extra else ""
            raise RecordsError(
                f"model {model!r} has {len(have & ref)} of the {len(ref)} {split} queries of {bench} that {store} "
                f"holds for {stored_models}{more}; every model of a split must cover the same queries: score the "
                "missing ones, or replace the stored models with --overwrite"
            )


def write_records(df: pd.DataFrame, store: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Add validated records to a store, one shard per (benchmark, model), holding the store's lock.

    Refuses (before writing anything) to replace data already in the store unless ``overwrite``
    (scored data is never lost silently), names that differ from stored ones only by letter case,
    and a model whose query ids in a split differ from those of the models already stored there.
    Shards are written with their manifests into a staging folder inside the store, then renamed.
    With ``overwrite``, the files holding a replaced (benchmark, model) are found by their columns
    (wherever they lie, also under folder names of older versions) and moved aside before the new
    shards are renamed in, then deleted.
    """
    store = Path(store)
    _check_store_path(store)
    groups = [(str(b), str(m)) for b, m in df[["benchmark", "model"]].drop_duplicates().itertuples(index=False)]
    folders = {g: (folder_name(g[0], "benchmark"), folder_name(g[1], "model")) for g in groups}
    with store_lock(store):
        idx = _store_index(store)
        held = (pd.concat(idx.values(), ignore_index=True) if idx
                else pd.DataFrame(columns=["benchmark", "split", "model", "query_id"]))
        stored = set(zip(held["benchmark"], held["model"]))
        clash = stored & set(groups)
        if clash and not overwrite:
            names = ", ".join(f"{b}/{m}" for b, m in sorted(clash))
            raise RecordsError(f"{store}: already holds records for {names}; pass --overwrite to replace them")
        _check_against_store(df, held, clash, store)
        old_files = []
        for f, d in idx.items():
            have = set(zip(d["benchmark"], d["model"]))
            if have & clash:
                if not have <= clash:
                    keep = ", ".join(f"{b}/{m}" for b, m in sorted(have - clash))
                    raise RecordsError(f"{f} holds records being replaced and others ({keep}); move it out of the "
                                       "store or replace all of them")
                old_files.append(f)
        token = uuid.uuid4().hex
        staging = store / f".staging-{token}"
        aside = store / f".replaced-{token}"
        staged: list[tuple[Path, Path]] = []
        try:
            for g in groups:
                bench, model = g
                part = df[(df["benchmark"] == bench) & (df["model"] == model)].sort_values(["split", "query_id"])
                name = f"part-{uuid.uuid4().hex[:12]}.parquet"
                rel = Path(*folders[g], name)
                staged.append((_write_shard(to_arrow(part), staging / rel), store / rel))
            # Replaced shards are moved aside (a hidden folder: no reader sees them) before the new ones go
            # in, so no reader ever sees both; an error puts everything back. Only a killed process can leave
            # <store>/.replaced-*/ behind (the old shards, kept rather than lost).
            moved: list[tuple[Path, Path]] = []
            written: list[Path] = []
            try:
                for i, f in enumerate(old_files):
                    dest = aside / str(i)
                    dest.mkdir(parents=True)
                    for src in (manifest_path(f), f):
                        if src.exists():
                            os.replace(src, dest / src.name)
                            moved.append((src, dest / src.name))
                for tmp, final in staged:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(manifest_path(tmp), manifest_path(final))
                    written.append(manifest_path(final))
                    os.replace(tmp, final)
                    written.append(final)
            except BaseException:
                for p in reversed(written):
                    p.unlink(missing_ok=True)
                for src, dest in reversed(moved):
                    os.replace(dest, src)
                shutil.rmtree(aside, ignore_errors=True)
                raise
            shutil.rmtree(aside, ignore_errors=True)
            for f in old_files:  # folders emptied by the replacement (e.g. older folder names)
                for d in (f.parent, f.parent.parent):
                    if d != store and d.is_dir() and not any(d.iterdir()):
                        d.rmdir()
            return [p for p in written if p.suffix == ".parquet"]
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def import_file(
    src: str | os.PathLike, store: str | os.PathLike, *, prices: PriceTable | None = None, overwrite: bool = False
) -> pd.DataFrame:
    """``cascade import``: read, validate and store. Writes nothing when the input is bad."""
    _check_store_path(Path(store))
    df = validate(read_table(src), prices=prices, source=str(src))
    try:
        write_records(df, store, overwrite=overwrite)
    except OSError as e:
        raise RecordsError(f"--out {store}: cannot write there ({e.strerror or e}: {e.filename}); pick a "
                           "writable folder with free space") from None
    return df


def load(store: str | os.PathLike, *, benchmark: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a results store (or a single Parquet file) into pandas, optionally one benchmark.

    Every shard with a manifest is verified first (:func:`verify_part`); a damaged shard raises
    :class:`RecordsError` naming the file and the fix, as does a shard Arrow cannot read.
    """
    store = Path(store)
    if not store.exists():
        raise RecordsError(f"{store}: no such results store")
    files = parquet_files(store)
    if not files:
        raise RecordsError(f"{store}: holds no records (no .parquet files)")
    schemas = []
    for f in files:
        reason = verify_part(f)
        if reason:
            raise RecordsError(_damaged(reason))
        schemas.append(_plain_strings(pq.read_schema(f)))
    # Shards written by different runs may carry different signal columns: read with the union schema
    # (columns a shard lacks come back as nulls) instead of the first file's schema.
    try:
        schema = pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise RecordsError(f"{store}: shards disagree on column types ({e})") from e
    dataset = pads.dataset([str(f) for f in files], format="parquet", schema=schema)
    filt = (pads.field("benchmark") == benchmark) if benchmark is not None else None
    try:
        table = dataset.to_table(columns=columns, filter=filt)
    except (OSError, pa.ArrowException) as e:
        for f in files:  # name the file Arrow could not read
            try:
                pq.read_table(f, columns=columns)
            except (OSError, pa.ArrowException) as fe:
                raise RecordsError(_damaged(f"{f}: unreadable ({fe})")) from None
        raise RecordsError(f"{store}: cannot read the records ({e})") from None
    return table.to_pandas()


def _plain_strings(schema: pa.Schema) -> pa.Schema:
    """large_string -> string: files written by pandas (large_string) and by this module (string) read as one."""
    return pa.schema([f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in schema],
                     metadata=schema.metadata)


def parquet_files(store: str | os.PathLike) -> list[Path]:
    """The Parquet files of a store (or the file itself), sorted; hidden files and folders (staging,
    temp files, replaced shards), manifests and the lock file are not records and are left out."""
    store = Path(store)
    if store.is_file():
        return [store]
    return sorted(p for p in store.rglob("*.parquet")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(store).parts))


def fingerprint(data) -> str:
    """A short sha256 of records: the bytes of a file's or a store's Parquet files (with their relative
    names), or of a DataFrame's row hashes. Same data, same fingerprint; any change, a new one.
    Manifests and the lock file are not part of it."""
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
    """Pivot records of one split into aligned (n, k) arrays for the models in cascade order.

    Refuses (RecordsError) rather than silently using a subset: models without records in the split,
    records of several benchmarks when ``benchmark`` is not given, a model whose ``signal`` is missing
    (null) for some queries, and models that do not all have the same queries of the split.
    """
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
    benches = sorted(sub["benchmark"].unique()) if "benchmark" in sub.columns else []
    if len(benches) > 1:
        raise RecordsError(f"split {split!r}: the models' records span benchmarks {', '.join(benches)}; "
                           "pass --benchmark to pick one benchmark")
    if sub.duplicated(["query_id", "model"]).any():
        raise RecordsError(
            f"split {split!r}: a (query_id, model) appears twice; pass --benchmark to pick one benchmark"
        )
    of = f" of {benches[0]}" if benches else ""
    no_sig = sub[signal].isna()
    if no_sig.any():
        which = ", ".join(sorted(sub.loc[no_sig, "model"].unique()))
        raise RecordsError(f"signal {signal!r} is missing for model(s) {which} in {no_sig.sum()} {split} "
                           f"records{of}; pick a signal every model has (--signal)")
    ids = {m: set(q.tolist()) for m, q in sub.groupby("model")["query_id"]}
    union = set().union(*ids.values())
    for m in models:
        lack = union - ids[m]
        if lack:
            ex = ", ".join(str(q) for q in sorted(lack)[:5])
            raise RecordsError(
                f"model {m!r} has {len(ids[m])} of the {len(union)} {split} queries{of} that the other models "
                f"have (missing query_id {ex}{'...' if len(lack) > 5 else ''}); score the missing queries or "
                "drop them for every model"
            )
    piv = sub.pivot(index="query_id", columns="model", values=[signal, "correct", "cost"])
    return CascadeData(
        models=list(models),
        query_id=piv.index.to_numpy(),
        confidence=piv[signal][models].to_numpy(float),
        correct=piv["correct"][models].to_numpy(float),
        cost=piv["cost"][models].to_numpy(float),
    )
