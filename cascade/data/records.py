"""Per-query x model records: the Arrow schema, validation, import and storage.

This module is the contract between scoring (``cascade score``) and tuning (``cascade tune``).
One row per (benchmark, split, query_id, model). A results store is a folder holding a Parquet
dataset laid out as ``<store>/<benchmark>/<model>/part-*.parquet``; ``benchmark`` and ``model``
are ordinary columns in every file as well, so any Parquet reader sees the whole table. Readers
go by those columns; folder names (made by :func:`folder_name`, the one place a name becomes a
path) only decide where a file is written.

Every shard is written with a sidecar manifest ``_<shard>.manifest.json`` (sha256, size and row
count; :func:`verify_part`) and every write to a store holds the store's lock ``<store>/_store.lock``
(:func:`store_lock`). Nothing but the record shards ends in ``.parquet`` outside a hidden folder, and
every other file starts with ``_`` or ``.``: Arrow (``pyarrow.dataset``, ``pandas.read_parquet``) skips
such names, and a ``STORE/**/*.parquet`` glob (DuckDB, Polars) matches only the shards, because shards
being written, replaced or set aside carry a suffix after ``.parquet`` (:data:`TEMP_SUFFIX`,
:data:`REPLACED_SUFFIX`; ``jobs/score.py``'s ``.corrupt``). Stores of older versions (manifests
``<shard>.manifest.json``, lock ``store.lock``) are read as they are and converted by their next write.

At scale (millions of rows): import checks a Parquet file column by column in Arrow/numpy
(:func:`validate_table`, names dictionary-encoded, one sort for duplicates and coverage) and writes
each shard from the sorted rows; :func:`load_cascade` reads a store for one cascade (only its columns,
models and splits, files and row groups chosen by the footers' statistics, only the files read
hashed) into (n, k) arrays without a pandas pivot. :func:`load` / :func:`load_table` read any part
of a store with the same pushdown; :func:`describe` says what a store holds from its footers.

Confidence-signal columns are ``confidence`` and every column named ``conf_*`` (float64, log-prob
style signals; +-inf are legal, NaN is not).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
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
import pyarrow.compute as pc
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
    "signal_methods": pa.string(),  # JSON {signal column: how the engine obtained it}, per record
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
    becomes ``%2E`` and a leading ``_`` ``%5F``, so no name makes a folder that Parquet readers skip
    (Arrow ignores names starting with ``.`` or ``_``). The result never contains ``/``, ``\\``,
    a control character or a leading ``.`` or ``_``. Refused with :class:`RecordsError` (naming ``what``,
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
        if ch in _NAME_SAFE and not (i == 0 and ch in "._"):
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
    floats beyond 2**53 (a float id like 1e20 is not an id: the digits are gone before we see them).
    The general (pandas) path, for columns that are not plain numbers: see :func:`_int_values`."""
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
        raise RecordsError(_int_message(col, source, bad))
    return s.astype(np.int64)


def _int_message(col: str, source: str, bad) -> str:
    return (f"{source}: column {col!r} must hold integers (int64; stored as floats, whole numbers of at most "
            f"2**53); bad values in {_rows(bad)}")


class _Input:
    """The columns of an input, one at a time: an Arrow table, a pandas frame, or a Parquet file (or
    folder) read column by column, so that each column's Arrow buffers are freed once it is checked.

    :meth:`plain` gives a column as a numpy array when it already holds plain numbers (bool, int, float
    without missing values): the checks then run on arrays. Any other column goes through
    :meth:`series`, the pandas path, whose conversions (text to numbers, ``true``/``false``, missing
    values) define what validation accepts; both paths give the same answer and message."""

    def __init__(self, data: pa.Table | pd.DataFrame | Path):
        self.data = data
        self.path = data if isinstance(data, Path) else None
        if self.path is not None:
            dataset = pads.dataset(str(self.path), format="parquet")
            self.columns = [c for c in dataset.schema.names if not re.fullmatch(r"__index_level_\d+__", c)]
            self.n = dataset.count_rows()
            self.is_arrow = True
        else:
            self.is_arrow = isinstance(data, pa.Table)
            self.columns = list(data.column_names if self.is_arrow else data.columns)
            self.n = data.num_rows if self.is_arrow else len(data)

    def column(self, col: str) -> pa.ChunkedArray:
        """An Arrow column (benchmark, split and model of a Parquet input come dictionary-encoded)."""
        if self.path is None:
            return self.data.column(col)
        try:
            return pq.read_table(self.path, columns=[col], read_dictionary=[col] if col in _NAME_COLUMNS else None,
                                 use_threads=False).column(0)  # one column: threads buy nothing (see _read)
        except (OSError, pa.ArrowException) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RecordsError(f"{self.path}: cannot be read as Parquet ({first}); check the file") from None

    def series(self, col: str) -> pd.Series:
        if self.is_arrow:
            return self.column(col).to_pandas()
        return self.data[col].reset_index(drop=True)

    def plain(self, col: str) -> np.ndarray | None:
        """The column as a bool/int/float numpy array if it holds such values and no missing ones, else None."""
        if self.is_arrow:
            c = self.column(col)
            t = c.type
            if c.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                return c.to_numpy()
            return None
        s = self.data[col]
        return s.to_numpy() if isinstance(s.dtype, np.dtype) and s.dtype.kind in "biuf" else None

    def strings(self, col: str) -> pa.ChunkedArray | None:
        """The column as Arrow strings (or dictionary of strings) when it is one, else None."""
        if not self.is_arrow:
            return None
        c = self.column(col)
        t = c.type.value_type if pa.types.is_dictionary(c.type) else c.type
        return c if (pa.types.is_string(t) or pa.types.is_large_string(t)) else None


def _encode(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes (one per row, see :func:`_compact`) and the values of a string column without nulls; every
    value listed is used and values are listed in order of first appearance."""
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    col = col.unify_dictionaries()
    if col.num_chunks == 0:
        return np.zeros(0, np.int32), []
    values = col.chunk(0).dictionary.cast(pa.string()).to_pylist()
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
                            for c in col.chunks])
    return _compact(codes, values)


def _compact(codes: np.ndarray, values: list) -> tuple[np.ndarray, list]:
    """Drop unused values and renumber the codes so that values come in order of first appearance; the
    codes come in the narrowest integer type that holds them (int8 for up to 127 names)."""
    if not len(codes):
        return codes.astype(np.int8), []
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])  # first row of each run of one value
    u, first = np.unique(codes[starts], return_index=True)
    used = u[np.argsort(first, kind="stable")]
    dtype = _small_int(len(used))
    if len(used) == len(values) and (used == np.arange(len(values))).all():
        return codes.astype(dtype), values
    lut = np.full(len(values), -1, dtype)
    lut[used] = np.arange(len(used), dtype=dtype)
    return lut[codes], [values[i] for i in used]


def _name_column(inp: _Input, col: str, source: str) -> tuple[np.ndarray, list[str]]:
    """A benchmark/split/model column as (codes, values): no missing value, no leading/trailing spaces,
    every value a valid folder name (:func:`folder_name`)."""
    arrow = inp.strings(col)
    if arrow is not None:
        if arrow.null_count:
            mask = arrow.is_null().to_numpy(zero_copy_only=False)
            raise RecordsError(f"{source}: column {col!r} is empty in {_rows(mask)}")
        codes, values = _encode(arrow)
    else:
        s = inp.series(col)
        if s.isna().any():
            raise RecordsError(f"{source}: column {col!r} is empty in {_rows(s.isna())}")
        codes, uniques = pd.factorize(s.astype(str))
        codes, values = codes.astype(_small_int(len(uniques))), [str(v) for v in uniques]
    spaced = [i for i, v in enumerate(values) if v != v.strip()]
    if spaced:
        mask = np.isin(codes, spaced)
        raise RecordsError(f"{source}: column {col!r} has values with leading/trailing spaces "
                           f"({values[codes[np.argmax(mask)]]!r}) in {_rows(mask)}; remove the spaces")
    for i, value in enumerate(values):  # values come in order of first appearance
        try:
            folder_name(value, col)
        except RecordsError as e:
            raise RecordsError(f"{source}: {e} (in {_rows(codes == i)})") from None
    return codes, values


def _int_values(inp: _Input, col: str, source: str) -> np.ndarray:
    """An int64 column (see :func:`_int_column`): on arrays when the column holds plain numbers."""
    a = inp.plain(col)
    if a is None:
        return _int_column(inp.series(col), col, source).to_numpy()
    if a.dtype.kind == "b":
        raise RecordsError(f"{source}: column {col!r} holds true/false values in {_rows(np.ones(len(a), bool))}; "
                           "it must hold integers")
    if a.dtype.kind == "u" and a.dtype.itemsize == 8:
        bad = a > np.uint64(np.iinfo(np.int64).max)
    elif a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(a) | (a != np.floor(a)) | (np.abs(a) > _FLOAT_EXACT_INT)
    else:
        bad = None
    if bad is not None and bad.any():
        raise RecordsError(_int_message(col, source, bad))
    return a.astype(np.int64, copy=False)


def _correct_values(inp: _Input, source: str) -> np.ndarray:
    a = inp.plain("correct")
    if a is None:
        c = inp.series("correct")
        if c.dtype == bool:
            return c.to_numpy(np.float64)
        if not pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c):
            c = c.map(lambda v: {"true": 1.0, "false": 0.0}.get(str(v).strip().lower(), v))
        a = pd.to_numeric(c, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    elif a.dtype.kind == "b":
        return a.astype(np.float64)
    a = a.astype(np.float64, copy=False)
    nan = np.isnan(a)
    if nan.any():
        raise RecordsError(f"{source}: column 'correct' has NaN or non-numeric values in {_rows(nan)}; "
                           "use true/false or a number in [0, 1]")
    out = (a < 0) | (a > 1)
    if out.any():
        raise RecordsError(f"{source}: column 'correct' must lie in [0, 1]; bad values in {_rows(out)}")
    return a


def _float_values(inp: _Input, col: str) -> np.ndarray:
    a = inp.plain(col)
    if a is None:
        return pd.to_numeric(inp.series(col), errors="coerce").to_numpy(np.float64, na_value=np.nan)
    return a.astype(np.float64, copy=False)


#: The largest cost of one query accepted (USD). Tuning works in USD per million queries and adds the
#: costs of a cascade's models: a larger value is a unit mistake, and near 1.7e308 it overflows to inf.
MAX_COST = 1e6


def _cost_values(inp: _Input, source: str) -> np.ndarray:
    cost = _float_values(inp, "cost")
    finite = np.isfinite(cost)
    if not finite.all():
        raise RecordsError(f"{source}: column 'cost' must be a finite number; bad values in {_rows(~finite)}")
    if (cost < 0).any():
        raise RecordsError(f"{source}: column 'cost' is negative in {_rows(cost < 0)}; costs must be >= 0")
    _check_cost_bound(cost, source, "column 'cost'")
    return cost


def _check_cost_bound(cost: np.ndarray, source: str, what: str) -> None:
    big = cost > MAX_COST
    if big.any():
        raise RecordsError(f"{source}: {what} exceeds {MAX_COST:g} USD per query in {_rows(big)} (largest "
                           f"{float(cost.max()):.3g}); costs are USD per query: check the unit")


def _signal_values(inp: _Input, sig: str, source: str) -> np.ndarray:
    s = _float_values(inp, sig)
    nan = np.isnan(s)
    if nan.any():
        raise RecordsError(f"{source}: signal column {sig!r} has NaN or non-numeric values in {_rows(nan)}; "
                           "+-inf are allowed, NaN is not")
    return s


def _optional_values(inp: _Input, col: str, source: str) -> pa.ChunkedArray:
    """An optional column in its schema type (text columns: any values as text)."""
    typ = OPTIONAL_FIELDS[col]
    try:
        if inp.is_arrow:
            c = inp.column(col)
            try:
                return c.cast(typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if typ != pa.string():
                    raise
                s = c.to_pandas()
        else:
            s = inp.series(col)
        if typ == pa.string():
            s = s.astype("string")
        return pa.chunked_array([pa.array(s, typ, from_pandas=True)])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RecordsError(f"{source}: optional column {col!r} must hold {typ} values ({first}); fix its values "
                           "or drop the column (it is optional)") from None


def _small_int(n: int) -> type:
    """The narrowest signed integer type holding 0..n-1 (numpy's stable sort is a radix sort up to 16 bits)."""
    return np.int8 if n <= 127 else np.int16 if n <= 32767 else np.int32 if n <= 2 ** 31 - 1 else np.int64


@dataclass
class Validated:
    """Records that passed :func:`validate_table`, held column by column, and their order in the store.

    ``keys``: benchmark, split and model as (codes, values); ``num``: query_id, tokens (int64), correct,
    cost and signals (float64); ``extra``: optional columns (Arrow, in their schema types). ``order`` lists the rows by
    (benchmark, model, split, query_id) (names sorted as strings); ``segments`` maps each
    (benchmark, model, split) to its slice of ``order``."""

    n: int
    keys: dict[str, tuple[np.ndarray, list[str]]]
    num: dict[str, np.ndarray]
    extra: dict[str, object]
    signals: list[str]
    order: np.ndarray
    segments: dict[tuple[str, str, str], tuple[int, int]]
    source: str = "input"

    def names(self, col: str) -> list[str]:
        return list(self.keys[col][1])

    def groups(self) -> list[tuple[str, str]]:
        """(benchmark, model) pairs, sorted."""
        return sorted({(b, m) for b, m, _ in self.segments})

    def group_rows(self, bench: str, model: str) -> np.ndarray:
        """Rows of one (benchmark, model), sorted by (split, query_id)."""
        spans = sorted((s, span) for (b, m, s), span in self.segments.items() if b == bench and m == model)
        return np.concatenate([self.order[a:z] for _, (a, z) in spans])

    def ids(self, bench: str, model: str, split: str) -> np.ndarray:
        """Sorted query ids of one (benchmark, model, split)."""
        a, z = self.segments[(bench, model, split)]
        return self.num["query_id"][self.order[a:z]]

    def table(self, rows: np.ndarray | None = None) -> pa.Table:
        """The records (or ``rows`` of them, in that order) in the canonical schema (:func:`arrow_schema`)."""
        schema = arrow_schema(self.signals, list(self.extra))
        cols = []
        for f in schema:
            if f.name in self.keys:
                codes, values = self.keys[f.name]
                c = codes if rows is None else codes[rows]
                names = pa.array(values, pa.string())
                cols.append(pa.DictionaryArray.from_arrays(pa.array(c), names).cast(pa.string()))
            elif f.name in self.num:
                a = self.num[f.name]
                cols.append(pa.array(a if rows is None else a[rows], f.type))
            else:
                cols.append(self._extra(f, rows))
        return pa.Table.from_arrays(cols, schema=schema)

    def _extra(self, f: pa.Field, rows) -> pa.Array:
        c = self.extra[f.name]  # already of the field's type (validate_table)
        return (c if rows is None else c.take(pa.array(rows))).combine_chunks()

    def summary(self) -> pd.DataFrame:
        """Models and queries per (benchmark, split), as `cascade import` prints it."""
        rows = {}
        for (b, m, s), (a, z) in self.segments.items():
            r = rows.setdefault((b, s), [set(), 0])
            r[0].add(m)
            r[1] = max(r[1], z - a)  # every model of a split has the same queries (checked)
        idx = pd.MultiIndex.from_tuples(sorted(rows), names=["benchmark", "split"])
        return pd.DataFrame({"models": [len(rows[k][0]) for k in idx], "queries": [rows[k][1] for k in idx]},
                            index=idx)


def validate_table(data: pa.Table | pd.DataFrame, *, prices: PriceTable | None = None,
                   source: str = "input") -> Validated:
    """Check records (an Arrow table or a pandas frame) and return them as :class:`Validated`.

    Raises RecordsError on bad input, naming the column and rows (see :func:`validate`). Columns holding
    plain numbers are checked as numpy arrays and names are dictionary-encoded, so a table of millions
    of rows is checked in a few passes over its columns; other columns (text, mixed types) go through
    pandas one column at a time."""
    inp = data if isinstance(data, _Input) else _Input(data)
    has_cost = "cost" in inp.columns
    if has_cost and prices is not None:
        raise RecordsError(f"{source}: has a 'cost' column and a price table was given; drop the column to "
                           "compute costs from the prices, or drop --prices to keep the file's costs")
    priced = (prices is not None and not has_cost and "model" in inp.columns
              and all(c in inp.columns for c in ("input_tokens", "output_tokens")))
    if priced:
        arrow = inp.strings("model")
        raw = inp.series("model").dropna().unique().tolist() if arrow is None else [
            v for v in pc.unique(arrow).cast(pa.string()).to_pylist() if v is not None]
        for model in sorted(raw, key=str):
            prices.cost(str(model), 0.0, 0.0)  # a model without a price: refused here
    missing = [c for c in REQUIRED_FIELDS if c not in inp.columns and not (c == "cost" and priced)]
    if missing:
        hint = " (or pass --prices to compute cost from tokens)" if missing == ["cost"] else ""
        raise RecordsError(f"{source}: missing column(s) {', '.join(missing)}{hint}")
    signals = signal_columns(inp.columns)
    if not signals:
        raise RecordsError(f"{source}: no confidence-signal column; name it 'confidence' or 'conf_<signal>'")
    if inp.n == 0:
        raise RecordsError(f"{source}: no rows")

    keys = {col: _name_column(inp, col, source) for col in ("benchmark", "split", "model")}
    for clash in _case_clashes(keys["benchmark"][1]):
        raise RecordsError(f"{source}: benchmark names {', '.join(map(repr, clash))} differ only by letter case; "
                           "use one spelling")
    bcodes, bnames = keys["benchmark"]
    for col in ("split", "model"):
        codes, names = keys[col]
        pairs = np.flatnonzero(np.bincount(bcodes.astype(np.int64) * len(names) + codes,
                                           minlength=len(bnames) * len(names)))
        per_bench: dict[str, list[str]] = {}
        for p in pairs:
            per_bench.setdefault(bnames[p // len(names)], []).append(names[p % len(names)])
        for bench in sorted(per_bench):
            for clash in _case_clashes(per_bench[bench]):
                raise RecordsError(f"{source}: {col} names {', '.join(map(repr, clash))} of benchmark {bench!r} "
                                   "differ only by letter case; use one spelling")

    num = {}
    for col in ("query_id", "input_tokens", "output_tokens"):
        num[col] = _int_values(inp, col, source)
        if col != "query_id" and (num[col] < 0).any():
            raise RecordsError(f"{source}: column {col!r} is negative in {_rows(num[col] < 0)}")
    num["correct"] = _correct_values(inp, source)
    if priced:
        mcodes, mnames = keys["model"]
        pin = np.array([prices.prices[m][0] for m in mnames])
        pout = np.array([prices.prices[m][1] for m in mnames])
        with np.errstate(over="ignore"):
            num["cost"] = (num["input_tokens"].astype(np.float64) * pin[mcodes]
                           + num["output_tokens"].astype(np.float64) * pout[mcodes]) / 1e6
        _check_cost_bound(num["cost"], source, "the cost from --prices")
    else:
        num["cost"] = _cost_values(inp, source)
    for sig in signals:
        num[sig] = _signal_values(inp, sig, source)

    order, segments = _order(keys, num["query_id"], source)
    extra = {col: _optional_values(inp, col, source) for col in OPTIONAL_FIELDS if col in inp.columns}
    return Validated(inp.n, keys, num, extra, signals, order, segments, source)


def _order(keys: dict, qid: np.ndarray, source: str) -> tuple[np.ndarray, dict]:
    """Rows sorted by (benchmark, model, split, query_id) and the slice of each (benchmark, model, split);
    refuses duplicate keys and models lacking queries other models of their (benchmark, split) have."""
    (bc, bn), (mc, mn), (sc, sn) = keys["benchmark"], keys["model"], keys["split"]
    ngroups = len(bn) * len(mn) * len(sn)
    dtype = _small_int(ngroups)
    rank = {col: np.argsort(np.argsort(np.array(v, dtype=object), kind="stable")).astype(dtype)
            for col, (_, v) in keys.items()}
    key = rank["benchmark"][bc]  # the group (benchmark, model, split) of each row, in sorted name order
    key *= dtype(len(mn))
    key += rank["model"][mc]
    key *= dtype(len(sn))
    key += rank["split"][sc]
    order = np.argsort(key, kind="stable")
    counts = np.bincount(key, minlength=ngroups)
    ends = np.cumsum(counts)
    bsorted, msorted, ssorted = (sorted(v) for v in (bn, mn, sn))
    segments, dup_rows, refs, mismatch = {}, [], {}, set()
    for g in np.flatnonzero(counts):
        a, z = int(ends[g] - counts[g]), int(ends[g])
        seg = order[a:z]
        q = qid[seg]
        if len(q) > 1 and not (q[1:] > q[:-1]).all():
            p = np.argsort(q, kind="stable")
            seg = seg[p]
            order[a:z] = seg
            q = q[p]
            same = np.flatnonzero(q[1:] == q[:-1])
            if len(same):
                dup_rows.append(seg[np.union1d(same, same + 1)])
        bm, s = divmod(int(g), len(sn))
        b, m = divmod(bm, len(mn))
        name = (bsorted[b], msorted[m], ssorted[s])
        segments[name] = (a, z)
        ref = refs.setdefault((name[0], name[2]), q)
        if ref is not q and not np.array_equal(ref, q):
            mismatch.add((name[0], name[2]))
    if dup_rows:
        mask = np.zeros(len(qid), bool)
        mask[np.concatenate(dup_rows)] = True
        raise RecordsError(f"{source}: duplicate (split, query_id, model) in {_rows(mask)}; each query x model must "
                           "appear once")
    for bench, split in sorted(mismatch):
        ids = {m: qid[order[slice(*segments[(b, m, s)])]] for (b, m, s) in segments if (b, s) == (bench, split)}
        union = np.unique(np.concatenate(list(ids.values())))
        for model in sorted(ids):
            lack = np.setdiff1d(union, ids[model], assume_unique=True)
            if len(lack):
                ex = ", ".join(str(q) for q in lack[:5])
                raise RecordsError(
                    f"{source}: model {model!r} lacks {len(lack)} queries of {bench}/{split} that other models have "
                    f"(query_id {ex}{'...' if len(lack) > 5 else ''}); score them or drop them for every model")
    return order, segments


def validate(df: pd.DataFrame, *, prices: PriceTable | None = None, source: str = "input") -> pd.DataFrame:
    """Check a records frame and return it in canonical types. Raises RecordsError on bad input.

    Checks: required columns, at least one signal column, types, NaN/negative values, duplicate
    (benchmark, split, query_id, model) keys, and that every model of a (benchmark, split) has the
    same query ids. A missing ``cost`` column is filled from ``prices`` when given. Rows keep their
    order; other columns are kept as they are (see :func:`validate_table` for the Arrow form)."""
    v = validate_table(df, prices=prices, source=source)
    out = df.copy()
    for col, (codes, values) in v.keys.items():
        out[col] = pd.Series(np.asarray(values, dtype=object)[codes], index=out.index).astype(str)
    for col, a in v.num.items():
        out[col] = pd.Series(a, index=out.index)
    for col, typ in OPTIONAL_FIELDS.items():
        if col in out.columns and typ == pa.string():
            out[col] = out[col].astype("string")
    return out


def open_input(path: str | os.PathLike) -> "_Input":
    """An import file, ready for :func:`validate_table`: Parquet is read column by column (index columns a
    pandas writer stored are ordinary columns, its unnamed index is left out), CSV with pandas (its type
    inference is what a CSV import has always meant)."""
    path = Path(path)
    if not path.exists():
        raise RecordsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    is_parquet = suffix in (".parquet", ".pq") or path.is_dir()
    if not is_parquet and suffix not in (".csv", ".txt"):
        raise RecordsError(f"{path}: unknown format {suffix!r}; use .parquet or .csv")
    try:
        if is_parquet:
            return _Input(path)
        return _Input(pd.read_csv(path, encoding="utf-8-sig"))  # -sig: a byte-order mark is not part of a name
    except (OSError, pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RecordsError(f"{path}: cannot be read as {'Parquet' if is_parquet else 'CSV'} ({first}); "
                           "check the file") from None


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Parquet or CSV file (import formats) into pandas, as :func:`open_input` sees it."""
    inp = open_input(path)
    if inp.path is None:
        return inp.data
    cols = {c: inp.column(c) for c in inp.columns}
    return pa.table({c: col.cast(pa.string()) if c in _NAME_COLUMNS else col for c, col in cols.items()}).to_pandas()


def to_arrow(df: pd.DataFrame) -> pa.Table:
    signals = signal_columns(df.columns)
    extra = [c for c in df.columns if c in OPTIONAL_FIELDS]
    schema = arrow_schema(signals, extra)
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


# ------------------------------------------------------------------------------ lock and manifests

LOCK_NAME = "_store.lock"
#: The lock file of stores written by older versions (converted by the next write, see :func:`store_lock`).
LEGACY_LOCK_NAME = "store.lock"
MANIFEST_PREFIX = "_"
MANIFEST_SUFFIX = ".manifest.json"
#: Suffix of a shard or manifest while it is written (names also start with ``.tmp-``).
TEMP_SUFFIX = ".partial"
#: Suffix of the files an ``--overwrite`` moves aside into ``<store>/.replaced-*/`` while it runs.
REPLACED_SUFFIX = ".replaced"
MANIFEST_FORMAT = "cascade-eval shard manifest 1"
#: Seconds a writer waits for another writer of the same store before giving up.
LOCK_TIMEOUT_S = 600.0


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold ``<store>/_store.lock`` (a ``filelock.FileLock``, released when the holder exits or dies).

    Every write to a store (:func:`write_records`, :func:`write_part`) holds it, so two processes
    never interleave their checks and renames. The folder is created if missing. Raises
    :class:`RecordsError` if another writer holds it for more than ``timeout`` seconds.

    A store of an older version (its lock ``store.lock`` is there) is converted first, holding that
    lock as well: its manifests get their ``_`` names and ``store.lock`` is removed, after which every
    Parquet reader reads the store (an older version writing the same store at the same time is not
    supported).
    """
    from filelock import FileLock, Timeout

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        for name in (LOCK_NAME, LEGACY_LOCK_NAME):
            if name == LEGACY_LOCK_NAME and not (store / name).is_file():
                continue
            lock = FileLock(str(store / name))
            try:
                lock.acquire(timeout=timeout)
            except Timeout:
                raise RecordsError(f"{store}: another process has been writing to this store for over "
                                   f"{timeout:.0f} s (lock {store / name}); wait for it to finish and retry") from None
            held.callback(lock.release)
            if name == LEGACY_LOCK_NAME:
                _convert_legacy(store)
        yield store


def _convert_legacy(store: Path) -> None:
    """Rename an older store's manifests ``<shard>.manifest.json`` to ``_<shard>.manifest.json`` and
    remove its ``store.lock`` (last, so that a conversion cut short is done again); the caller holds
    both locks."""
    for mp in store.rglob(f"*.parquet{MANIFEST_SUFFIX}"):
        rel = mp.relative_to(store).parts
        if mp.name.startswith((".", MANIFEST_PREFIX)) or any(part.startswith(".") for part in rel[:-1]):
            continue
        new = manifest_path(mp.with_name(mp.name[:-len(MANIFEST_SUFFIX)]))
        if new.exists():
            mp.unlink()  # the shard was rewritten since: its new manifest is the one
        else:
            os.replace(mp, new)
    (store / LEGACY_LOCK_NAME).unlink(missing_ok=True)


def manifest_path(part: str | os.PathLike) -> Path:
    """The sidecar manifest of a shard: ``part-x.parquet`` -> ``_part-x.parquet.manifest.json`` (a
    leading ``_``: Parquet readers skip it)."""
    part = Path(part)
    return part.with_name(MANIFEST_PREFIX + part.name + MANIFEST_SUFFIX)


def legacy_manifest_path(part: str | os.PathLike) -> Path:
    """Where older versions put a shard's manifest: ``part-x.parquet.manifest.json``."""
    part = Path(part)
    return part.with_name(part.name + MANIFEST_SUFFIX)


def manifest_files(part: str | os.PathLike) -> list[Path]:
    """The manifest files a shard has on disk (its manifest, and one an older version left)."""
    return [p for p in (manifest_path(part), legacy_manifest_path(part)) if p.exists()]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(part: str | os.PathLike) -> dict | None:
    """A shard's manifest ``{"format", "file", "sha256", "bytes", "rows"}``, or None if it has none (the
    ``_`` manifest; else the one an older version wrote beside the shard)."""
    mp = next(iter(manifest_files(part)), None)
    if mp is None:
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


def _stage_shard(table: pa.Table, path: Path, where: Path) -> tuple[Path, Path]:
    """The shard ``path`` will be and its manifest, written (fsynced) as temp files in folder ``where``:
    ``.tmp-<token>.parquet.partial`` and ``.tmp-<token>.manifest.json.partial``, names no Parquet reader
    or ``*.parquet`` glob takes. Nothing is left behind if writing fails."""
    where.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = where / f".tmp-{token}.parquet{TEMP_SUFFIX}"
    tmp_man = where / f".tmp-{token}{MANIFEST_SUFFIX}{TEMP_SUFFIX}"
    try:
        _fsync_write(tmp, lambda fh: pq.write_table(table, fh))
        man = {"format": MANIFEST_FORMAT, "file": path.name, "sha256": _sha256(tmp), "bytes": tmp.stat().st_size,
               "rows": table.num_rows}
        _fsync_write(tmp_man, lambda fh: fh.write(json.dumps(man, indent=1).encode()))
    except BaseException:
        for t in (tmp, tmp_man):
            t.unlink(missing_ok=True)
        raise
    return tmp, tmp_man


def _install_shard(tmp: Path, tmp_man: Path, path: Path) -> None:
    """Rename a staged shard into place: its manifest first, then the shard (then an older version's
    manifest of the same shard, now stale, is removed)."""
    os.replace(tmp_man, manifest_path(path))
    os.replace(tmp, path)
    legacy_manifest_path(path).unlink(missing_ok=True)


def _write_shard(table: pa.Table, path: Path) -> Path:
    """Shard + manifest, each through a temp file and a rename; the caller holds the store lock.

    The manifest is renamed into place first: a crash between the two renames leaves either no shard
    (a new shard) or the previous shard under the new manifest, which :func:`verify_part` reports as
    damaged. A shard next to a manifest that matches it is therefore always complete."""
    tmp, tmp_man = _stage_shard(table, path, path.parent)
    try:
        _install_shard(tmp, tmp_man, path)
    finally:
        for t in (tmp, tmp_man):
            t.unlink(missing_ok=True)
    return path


def write_part(table: pa.Table, path: str | os.PathLike, *, store: str | os.PathLike | None = None) -> Path:
    """Write one shard atomically with its manifest, holding the store's lock.

    ``store`` is the results store the shard belongs to (its lock is ``<store>/_store.lock``); by default
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
        if (p / LOCK_NAME).is_file() or (p / LEGACY_LOCK_NAME).is_file():
            raise RecordsError(f"--out {store} lies inside the results store {p}, whose readers would read these "
                               "records as well; import into that store itself or into a folder outside it")


def _damaged(reason: str) -> str:
    return (f"{reason}; the shard is damaged: delete it and its manifest ({MANIFEST_PREFIX}<shard>{MANIFEST_SUFFIX}) "
            "(then rerun `cascade score`, which rescores missing shards, or re-import the records)")


def _file_keys(f: Path) -> dict[tuple[str, str, str], np.ndarray]:
    """One file of a store: {(benchmark, split, model): its sorted distinct query ids} (verified first)."""
    reason = verify_part(f)
    if reason:
        raise RecordsError(_damaged(reason))
    columns = ["benchmark", "split", "model", "query_id"]
    try:
        have = set(pq.read_schema(f).names)
        missing = [c for c in columns if c not in have]
        if missing:
            raise KeyError(", ".join(missing))
        t = pq.ParquetFile(f, read_dictionary=[c for c in _NAME_COLUMNS]).read(columns=columns)
    except (OSError, pa.ArrowException, KeyError) as e:
        raise RecordsError(f"{f}: cannot read columns {', '.join(columns)} ({e}); the file is damaged or is not a "
                           "records shard: move it out of the store") from None
    if t.num_rows == 0:
        return {}
    (bc, bv), (sc, sv), (mc, mv) = (_names(t.column(c)) for c in _NAME_COLUMNS)
    qid = _numpy(t.column("query_id"), pa.int64())
    g = (bc.astype(np.int64) * len(sv) + sc) * len(mv) + mc
    order = np.argsort(g, kind="stable")
    counts = np.bincount(g, minlength=len(bv) * len(sv) * len(mv))
    ends = np.cumsum(counts)
    out = {}
    for gi in np.flatnonzero(counts):
        bs, m = divmod(int(gi), len(mv))
        b, s = divmod(bs, len(sv))
        q = qid[order[ends[gi] - counts[gi]:ends[gi]]]
        out[(bv[b], sv[s], mv[m])] = q if len(q) < 2 or (q[1:] > q[:-1]).all() else np.unique(q)
    return out


def _store_index(store: Path) -> dict[Path, dict[tuple[str, str, str], np.ndarray]]:
    """For each Parquet file of a store: {(benchmark, split, model): sorted distinct query ids}."""
    if not store.is_dir():
        return {}
    return {f: _file_keys(f) for f in parquet_files(store)}


def existing_groups(store: str | os.PathLike) -> set[tuple[str, str]]:
    """(benchmark, model) pairs already in a store, read from the files themselves."""
    return {(b, m) for keys in _store_index(Path(store)).values() for b, _, m in keys}


def _check_against_store(v: Validated, idx: Mapping[Path, Mapping], replaced: set[tuple[str, str]],
                         store: Path) -> None:
    """Refuse names that differ from stored ones only by case, and models whose queries differ from the
    queries the store's other models of the same (benchmark, split) have."""
    held = [key for keys in idx.values() for key in keys]
    if not held:
        return
    new_b = set(v.names("benchmark"))
    for clash in _case_clashes(new_b | {b for b, _, _ in held}):
        if set(clash) & new_b:
            raise RecordsError(f"benchmark names {', '.join(map(repr, clash))} differ only by letter case ({store} "
                               "holds one of them); use the spelling the store has")
    for bench in sorted(new_b):
        for col, pos in (("split", 2), ("model", 1)):
            new = {key[pos] for key in v.segments if key[0] == bench}
            old = {(b, m, s)[pos] for b, s, m in held if b == bench}
            for clash in _case_clashes(new | old):
                if set(clash) & new:
                    raise RecordsError(f"{col} names {', '.join(map(repr, clash))} of benchmark {bench!r} differ "
                                       f"only by letter case ({store} holds one of them); use the spelling the "
                                       "store has")
    kept: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}
    for keys in idx.values():
        for (b, s, m), ids in keys.items():
            if (b, m) not in replaced:
                kept.setdefault((b, s), {}).setdefault(m, []).append(ids)
    for bench, split in sorted({(b, s) for b, _, s in v.segments}):
        k = kept.get((bench, split))
        if not k:
            continue
        arrays = [a for parts in k.values() for a in parts]
        ref = arrays[0] if all(np.array_equal(arrays[0], a) for a in arrays[1:]) else np.unique(np.concatenate(arrays))
        stored_models = ", ".join(sorted(k))
        for model in sorted(m for b, m, s in v.segments if (b, s) == (bench, split)):
            have = v.ids(bench, model, split)  # sorted, distinct (validated)
            if np.array_equal(have, ref):
                continue
            common = np.intersect1d(have, ref, assume_unique=True).size
            extra = have.size - common
            more = f" and {extra} queries they lack" if extra else ""
            raise RecordsError(
                f"model {model!r} has {common} of the {ref.size} {split} queries of {bench} that {store} "
                f"holds for {stored_models}{more}; every model of a split must cover the same queries: score the "
                "missing ones, or replace the stored models with --overwrite"
            )


def write_records(records: pd.DataFrame | Validated, store: str | os.PathLike, *,
                  overwrite: bool = False) -> list[Path]:
    """Add records to a store, one shard per (benchmark, model), holding the store's lock.

    ``records``: a :class:`Validated` (from :func:`validate_table`) or a frame (validated here). Refuses
    (before writing anything) to replace data already in the store unless ``overwrite`` (scored data is
    never lost silently), names that differ from stored ones only by letter case, and a model whose query
    ids in a split differ from those of the models already stored there. Shards are written with their
    manifests into a staging folder inside the store (``.staging-*``, files named ``*.partial``), then
    renamed. With ``overwrite``, the files holding a replaced (benchmark, model) are found by their
    columns (wherever they lie, also under folder names of older versions) and moved aside (into
    ``.replaced-*``, named ``*.replaced``) before the new shards are renamed in, then deleted. Staging
    folders a killed writer left are removed (only a lock holder writes one).
    """
    store = Path(store)
    _check_store_path(store)
    v = records if isinstance(records, Validated) else validate_table(records, source="records")
    groups = v.groups()
    folders = {g: (folder_name(g[0], "benchmark"), folder_name(g[1], "model")) for g in groups}
    with store_lock(store):
        for left in store.glob(".staging-*"):
            shutil.rmtree(left, ignore_errors=True)
        idx = _store_index(store)
        stored = {(b, m) for keys in idx.values() for b, _, m in keys}
        clash = stored & set(groups)
        if clash and not overwrite:
            names = ", ".join(f"{b}/{m}" for b, m in sorted(clash))
            raise RecordsError(f"{store}: already holds records for {names}; pass --overwrite to replace them")
        _check_against_store(v, idx, clash, store)
        old_files = []
        for f, keys in idx.items():
            have = {(b, m) for b, _, m in keys}
            if have & clash:
                if not have <= clash:
                    keep = ", ".join(f"{b}/{m}" for b, m in sorted(have - clash))
                    raise RecordsError(f"{f} holds records being replaced and others ({keep}); move it out of the "
                                       "store or replace all of them")
                old_files.append(f)
        token = uuid.uuid4().hex
        staging = store / f".staging-{token}"
        aside = store / f".replaced-{token}"
        staged: list[tuple[Path, Path, Path]] = []
        try:
            for g in groups:
                final = store / Path(*folders[g], f"part-{uuid.uuid4().hex[:12]}.parquet")
                staged.append((*_stage_shard(v.table(v.group_rows(*g)), final, staging), final))
            # Replaced shards are moved aside (a hidden folder, names ending in .replaced: no reader or glob
            # sees them) before the new ones go in, so no reader ever sees both; an error puts everything
            # back. Only a killed process can leave <store>/.replaced-*/ behind (the old shards, kept
            # rather than lost).
            moved: list[tuple[Path, Path]] = []
            written: list[Path] = []
            try:
                for i, f in enumerate(old_files):
                    dest = aside / str(i)
                    dest.mkdir(parents=True)
                    for src in (*manifest_files(f), f):
                        os.replace(src, dest / (src.name + REPLACED_SUFFIX))
                        moved.append((src, dest / (src.name + REPLACED_SUFFIX)))
                for tmp, tmp_man, final in staged:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp_man, manifest_path(final))
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


@dataclass
class Imported:
    """What :func:`import_file` stored: rows, the written shards and models/queries per (benchmark, split)."""

    rows: int
    files: list[Path]
    summary: pd.DataFrame


def import_file(
    src: str | os.PathLike, store: str | os.PathLike, *, prices: PriceTable | None = None, overwrite: bool = False
) -> Imported:
    """``cascade import``: read, validate and store. Writes nothing when the input is bad.

    Parquet input is validated in Arrow/numpy column by column (:func:`validate_table`), then written
    shard by shard, so memory stays near the size of the input table."""
    _check_store_path(Path(store))
    v = validate_table(open_input(src), prices=prices, source=str(src))
    try:
        files = write_records(v, store, overwrite=overwrite)
    except OSError as e:
        raise RecordsError(f"--out {store}: cannot write there ({e.strerror or e}: {e.filename}); pick a "
                           "writable folder with free space") from None
    return Imported(v.n, files, v.summary())


def _footer(f: Path) -> pq.FileMetaData:
    """A Parquet file's footer (no hashing); one Arrow cannot read is reported as damaged, by name."""
    try:
        return pq.read_metadata(f)
    except (OSError, pa.ArrowException) as e:
        raise RecordsError(_damaged(verify_part(f) or f"{f}: not a readable Parquet file ({e})")) from None


def _store_files(store: Path) -> list[Path]:
    if not store.exists():
        raise RecordsError(f"{store}: no such results store")
    files = parquet_files(store)
    if not files:
        raise RecordsError(f"{store}: holds no records (no .parquet files)")
    return files


def _wanted(benchmark: str | None, splits, models) -> dict[str, set[str]]:
    wanted = {}
    if benchmark is not None:
        wanted["benchmark"] = {benchmark}
    if splits is not None:
        wanted["split"] = set(splits)
    if models is not None:
        wanted["model"] = set(models)
    return wanted


def _row_groups(meta: pq.FileMetaData, wanted: Mapping[str, set[str]]) -> list[int]:
    """The row groups of a file that may hold rows with the ``wanted`` names, from the footer's min/max
    statistics of those columns (a row group without statistics may hold anything)."""
    leaf = {meta.schema.column(j).name: j for j in range(meta.num_columns)}
    keep = []
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        if rg.num_rows == 0:
            continue
        ok = True
        for col, values in wanted.items():
            j = leaf.get(col)
            st = rg.column(j).statistics if j is not None else None
            if st is None or not st.has_min_max:
                continue
            lo, hi = st.min, st.max
            if isinstance(lo, bytes) or isinstance(hi, bytes):
                try:
                    lo, hi = bytes(lo).decode(), bytes(hi).decode()
                except UnicodeDecodeError:
                    continue
            if isinstance(lo, str) and isinstance(hi, str) and not any(lo <= v <= hi for v in values):
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def _read(f: Path, meta: pq.FileMetaData, row_groups: list[int], columns: list[str]) -> pa.Table:
    """``columns`` (those the file has) of some row groups of a file, verified first against its manifest
    (:func:`verify_part`, a streamed sha256): a damaged file raises RecordsError naming it. Benchmark,
    split and model come dictionary-encoded."""
    reason = verify_part(f)
    if reason:
        raise RecordsError(_damaged(reason))
    have = set(meta.schema.names)
    try:
        pf = pq.ParquetFile(f, read_dictionary=[c for c in _NAME_COLUMNS if c in have and c in columns])
        # one thread: decoding a few plain columns gains little from Arrow's pool and, on a busy machine,
        # its threads cost several times the CPU (bench/scale.py measures both)
        return pf.read_row_groups(row_groups, columns=[c for c in columns if c in have], use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise RecordsError(_damaged(f"{f}: unreadable ({e})")) from None


def _scan(files: list[Path], metas: Mapping[Path, pq.FileMetaData], wanted: Mapping[str, set[str]],
          columns: list[str]) -> Iterator[tuple[Path, pa.Table]]:
    """The ``columns`` of the row groups that may hold ``wanted`` rows, file by file (:func:`_read`): only
    the files read are verified."""
    for f in files:
        rgs = _row_groups(metas[f], wanted) if wanted else list(range(metas[f].num_row_groups))
        if rgs:
            yield f, _read(f, metas[f], rgs, columns)


_NAME_COLUMNS = ("benchmark", "split", "model")


def _union_schema(store: Path, schemas: Iterable[pa.Schema]) -> pa.Schema:
    try:
        return pa.unify_schemas([_plain_strings(s) for s in schemas])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise RecordsError(f"{store}: shards disagree on column types ({e})") from e


def load_table(store: str | os.PathLike, *, benchmark: str | None = None, columns: list[str] | None = None,
               splits: Iterable[str] | None = None, models: Iterable[str] | None = None) -> pa.Table:
    """Read a results store (or a single Parquet file) as an Arrow table: only ``columns`` (default all),
    only rows of ``benchmark``, ``splits`` and ``models`` (default all), filters pushed down to Parquet.

    Files whose footer statistics rule out every wanted row are skipped unread; every file read is
    verified first (:func:`verify_part`): a damaged shard raises :class:`RecordsError` naming the file
    and the fix, as does a shard Arrow cannot read. Shards carrying different signal columns are read
    with the union of their columns (a column a shard lacks comes back as nulls)."""
    store = Path(store)
    files = _store_files(store)
    metas = {f: _footer(f) for f in files}
    schema = _union_schema(store, (m.schema.to_arrow_schema() for m in metas.values()))
    wanted = _wanted(benchmark, splits, models)
    chosen = [f for f in files if not wanted or _row_groups(metas[f], wanted)]
    for f in chosen:
        reason = verify_part(f)
        if reason:
            raise RecordsError(_damaged(reason))
    filt = None
    for col, values in wanted.items():
        e = pads.field(col).isin(sorted(values)) if len(values) > 1 else pads.field(col) == next(iter(values))
        filt = e if filt is None else filt & e
    if not chosen:
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    dataset = pads.dataset([str(f) for f in chosen], format="parquet", schema=schema)
    try:
        return dataset.to_table(columns=columns, filter=filt)
    except (OSError, pa.ArrowException) as e:
        for f in chosen:  # name the file Arrow could not read
            try:
                pq.read_table(f, columns=columns)
            except (OSError, pa.ArrowException) as fe:
                raise RecordsError(_damaged(f"{f}: unreadable ({fe})")) from None
        raise RecordsError(f"{store}: cannot read the records ({e})") from None


def load(store: str | os.PathLike, *, benchmark: str | None = None, columns: list[str] | None = None,
         splits: Iterable[str] | None = None, models: Iterable[str] | None = None) -> pd.DataFrame:
    """:func:`load_table` as a pandas frame. For one cascade's arrays, :func:`load_cascade` reads far less."""
    return load_table(store, benchmark=benchmark, columns=columns, splits=splits, models=models).to_pandas()


@dataclass
class StoreInfo:
    """What a store holds, from its files' footers (nothing is hashed or read beyond them, except the
    benchmark column of files whose statistics do not name a single benchmark)."""

    path: Path
    files: list[Path]
    columns: list[str]
    benchmarks: list[str]

    @property
    def signals(self) -> list[str]:
        return signal_columns(self.columns)


def describe(store: str | os.PathLike) -> StoreInfo:
    """The files, columns (union over the files) and benchmarks (sorted) of a store or Parquet file."""
    store = Path(store)
    files = _store_files(store)
    metas = {f: _footer(f) for f in files}
    schema = _union_schema(store, (m.schema.to_arrow_schema() for m in metas.values()))
    benches: set[str] = set()
    unknown = []
    for f, meta in metas.items():
        one = _single_value(meta, "benchmark")
        if one is None:
            unknown.append(f)
        elif one:
            benches.add(one)
    for _, t in _scan(unknown, metas, {}, ["benchmark"]):
        if "benchmark" in t.column_names and t.num_rows:
            benches.update(v for v in pc.unique(t.column("benchmark").cast(pa.string())).to_pylist() if v is not None)
    return StoreInfo(store, files, schema.names, sorted(benches))


def _single_value(meta: pq.FileMetaData, col: str) -> str | None:
    """The one value of a string column in every row group, from the statistics; "" for a file without
    rows; None when the statistics do not say (several values, no statistics, nulls)."""
    leaf = {meta.schema.column(j).name: j for j in range(meta.num_columns)}
    if col not in leaf:
        return None
    seen = set()
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        if rg.num_rows == 0:
            continue
        st = rg.column(leaf[col]).statistics
        if st is None or not st.has_min_max or st.min != st.max or (st.has_null_count and st.null_count):
            return None
        seen.add(st.min if isinstance(st.min, str) else bytes(st.min).decode(errors="replace"))
    if len(seen) > 1:
        return None
    return seen.pop() if seen else ""


class _Pieces:
    """Rows of ``models`` in ``splits``, gathered table by table and aligned into :class:`CascadeData`.

    :meth:`add` takes one table (a file's row groups); a name column the caller knows to be constant
    (from the file's statistics) may be left out of the table and given in ``const``. Rows of one
    (split, model) that lie together in the table are kept as views, others are gathered. A model is
    :meth:`finish`-ed as soon as every table that may hold it was added: its rows are sorted by query
    id once and copied into the (n, k) arrays, so at most one model's rows wait at a time when files
    hold one model each. Anything that prevents aligning (a split or model without rows, several
    benchmarks, a duplicate, a missing signal, models with different queries) sets ``ok`` to False;
    the caller then names the problem (:func:`_cascade_data_pandas`)."""

    def __init__(self, models: list[str], splits: list[str], signal: str, benchmark: str | None):
        self.models, self.splits, self.signal, self.benchmark = list(models), list(splits), signal, benchmark
        self.parts: dict[tuple[int, int], list[tuple[np.ndarray, ...]]] = {}
        self.benches: dict[int, set[str]] = {}
        self.out: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
        self.finished: set[int] = set()
        self.ok = True

    def _codes(self, t: pa.Table, col: str, const: Mapping[str, str], wanted: list[str] | None):
        """Per row: the position of the row's ``col`` value in ``wanted`` (-1: not wanted), or a scalar
        for a constant column; with ``wanted`` None, the (codes, values) of the column."""
        if col in const:
            v = const[col]
            return (np.int64(wanted.index(v) if v in wanted else -1)) if wanted is not None else (None, [v])
        codes, values = _names(t.column(col))
        if wanted is None:
            return codes, values
        lut = np.array([wanted.index(v) if v in wanted else -1 for v in values], np.int64)
        return lut[codes]

    def add(self, t: pa.Table, const: Mapping[str, str] = {}) -> None:
        names = set(t.column_names) | set(const)
        if not self.ok:
            return
        if not {"split", "model", "query_id"} <= names or (self.benchmark is not None and "benchmark" not in names):
            self.ok = False
            return
        n, k, ns = t.num_rows, len(self.models), len(self.splits)
        if n == 0:
            return
        sg = self._codes(t, "split", const, self.splits)
        mg = self._codes(t, "model", const, self.models)
        valid = (sg >= 0) & (mg >= 0)
        bc = bv = None
        if "benchmark" in names:
            bc, bv = self._codes(t, "benchmark", const, None)
            if self.benchmark is not None:
                inb = np.array([v == self.benchmark for v in bv], bool)
                valid = valid & (inb[0] if bc is None else inb[bc])
        if np.ndim(valid) == 0 and not valid:
            return
        none = ns * k  # the group of rows not wanted
        g = np.broadcast_to(np.where(valid, sg * k + mg, none), (n,)).astype(_small_int(none + 1))
        # the rows of each group: a slice when the group is one run of rows, else from one stable sort
        edges = np.flatnonzero(g[1:] != g[:-1]) + 1
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [n]])
        gv = g[starts]
        wanted = gv < none
        spans: dict[int, np.ndarray | slice] = {}
        if len(np.unique(gv[wanted])) == int(wanted.sum()):
            for a, z, gi in zip(starts[wanted], ends[wanted], gv[wanted]):
                spans[int(gi)] = slice(int(a), int(z))
        else:
            order = np.argsort(g, kind="stable")
            counts = np.bincount(g, minlength=none + 1)
            cum = np.cumsum(counts)
            for gi in np.flatnonzero(counts[:none]):
                spans[int(gi)] = order[cum[gi] - counts[gi]:cum[gi]]
        if not spans:
            return
        qid = _numpy(t.column("query_id"), pa.int64())
        cols = [_numpy(t.column(c), pa.float64()) if c in t.column_names else np.full(n, np.nan)
                for c in (self.signal, "correct", "cost")]
        for gi, sel in spans.items():
            s, j = divmod(gi, k)
            if j in self.finished:
                self.ok = False  # a table came after its model was finished: the caller's order was wrong
                return
            self.parts.setdefault((s, j), []).append((qid[sel], *(c[sel] for c in cols)))
            if bv is not None and self.benchmark is None:
                self.benches.setdefault(s, set()).update(bv if bc is None else (bv[i] for i in np.unique(bc[sel])))
                if len(self.benches[s]) > 1:
                    self.ok = False

    def finish(self, j: int) -> None:
        """Model ``j`` is complete: align its rows of every split into the output arrays."""
        self.finished.add(j)
        k = len(self.models)
        for si in range(len(self.splits)):
            if not self.ok:
                return
            parts = self.parts.pop((si, j), None)
            if not parts:
                self.ok = False
                return
            q, sig, cor, cost = (np.concatenate(c) if len(parts) > 1 else c[0] for c in zip(*parts))
            del parts
            if len(q) > 1 and not (q[1:] > q[:-1]).all():
                p = np.argsort(q, kind="stable")
                q, sig, cor, cost = q[p], sig[p], cor[p], cost[p]
                if (q[1:] == q[:-1]).any():
                    self.ok = False
                    return
            if np.isnan(sig).any():
                self.ok = False
                return
            if si not in self.out:
                # column-major, as the pandas pivot gave: reductions over queries add in the same order
                self.out[si] = (q.copy(), [np.empty((len(q), k), order="F") for _ in range(3)])
            q0, arrays = self.out[si]
            if not np.array_equal(q, q0):
                self.ok = False
                return
            for a, v in zip(arrays, (sig, cor, cost)):
                a[:, j] = v

    def assemble(self) -> dict[str, CascadeData] | None:
        """The aligned arrays per split (finishing the models not finished yet), or None if not ``ok``."""
        for j in range(len(self.models)):
            if j not in self.finished:
                self.finish(j)
        if not self.ok or len(self.out) != len(self.splits):
            return None
        return {split: CascadeData(list(self.models), *self.out[si][:1], *self.out[si][1])
                for si, split in enumerate(self.splits)}


def _names(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """:func:`_encode` of a name column of any type; a missing name becomes "" (which names nothing)."""
    t = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)) or col.null_count:
        col = col.cast(pa.string()).fill_null("")
    return _encode(col)


def _numpy(col: pa.ChunkedArray, typ: pa.DataType) -> np.ndarray:
    if col.type != typ:
        col = col.cast(typ)
    return col.to_numpy()  # nulls come back as NaN (floats)


def load_cascade(store: str | os.PathLike, models: list[str], splits: Iterable[str] = ("train", "test"), *,
                 signal: str = DEFAULT_SIGNAL, benchmark: str | None = None) -> dict[str, CascadeData]:
    """:func:`cascade_data` of every split in ``splits``, straight from a store: split -> CascadeData.

    Reads only the columns a cascade needs (benchmark, split, model, query_id, ``signal``, correct, cost)
    of the files and row groups whose statistics allow rows of ``benchmark``, ``splits`` and ``models``;
    only those files are verified against their manifests. The (n, k) arrays are built per model from
    query ids sorted once, without a pandas pivot. Refuses exactly what :func:`cascade_data` refuses,
    with the same messages (and a damaged shard anywhere in the store, by name, before them)."""
    store = Path(store)
    models, splits = list(models), list(dict.fromkeys(splits))
    if len(set(models)) != len(models):
        raise RecordsError(f"models {models} list a model twice")
    files = _store_files(store)
    metas = {f: _footer(f) for f in files}
    schema = _union_schema(store, (m.schema.to_arrow_schema() for m in metas.values()))
    if signal not in schema.names:
        have = ", ".join(signal_columns(schema.names)) or "none"
        raise RecordsError(f"signal {signal!r} is not in the records (signals: {have})")
    columns = ["benchmark", "split", "model", "query_id", signal, "correct", "cost"]
    wanted = _wanted(benchmark, splits, models)
    plan = []  # (file, row groups, name columns constant in the file, models it may hold)
    for f in files:
        rgs = _row_groups(metas[f], wanted)
        if not rgs:
            continue
        const = {c: v for c in _NAME_COLUMNS if (v := _single_value(metas[f], c))}
        holds = ({models.index(const["model"])} if const["model"] in models else set()) if "model" in const \
            else set(range(len(models)))
        plan.append((f, rgs, const, holds))
    plan.sort(key=lambda p: (len(p[3]) == 1, min(p[3], default=-1)))  # mixed files first, then model by model
    left = {j: sum(j in p[3] for p in plan) for j in range(len(models))}
    acc = _Pieces(models, splits, signal, benchmark)
    for f, rgs, const, holds in plan:
        acc.add(_read(f, metas[f], rgs, [c for c in columns if c not in const]), const)
        for j in sorted(holds):
            left[j] -= 1
            if left[j] == 0 and acc.ok:
                acc.finish(j)
        if not acc.ok:
            break
    out = acc.assemble()
    if out is not None:
        return out
    for f in files:  # a shard skipped as irrelevant may be the damaged reason: name it first
        reason = verify_part(f)
        if reason:
            raise RecordsError(_damaged(reason))
    df = load(store, benchmark=benchmark, columns=columns)
    for split in splits:
        _cascade_data_pandas(df, models, split, signal=signal, benchmark=benchmark)
    raise RecordsError(f"{store}: the records of {', '.join(models)} in splits {', '.join(splits)} could not be "
                       "aligned; check the store with `cascade import` validation")


def mean_costs(store: str | os.PathLike, split: str, *, benchmark: str | None = None) -> dict[str, float]:
    """Mean ``cost`` per model on ``split`` (of ``benchmark``), reading only those columns: the same
    numbers as ``load(store)`` filtered to the split, grouped by model (pandas, rows in store order)."""
    store = Path(store)
    files = _store_files(store)
    metas = {f: _footer(f) for f in files}
    names: list[str] = []
    codes, costs = [], []
    for _, t in _scan(files, metas, _wanted(benchmark, [split], None), ["benchmark", "split", "model", "cost"]):
        keep = np.ones(t.num_rows, bool)
        for col, value in (("split", split), ("benchmark", benchmark)):
            if value is not None:
                c, v = _names(t.column(col))
                keep &= np.array([x == value for x in v], bool)[c]
        mc, mv = _names(t.column("model"))
        lut = np.array([names.index(m) if m in names else (names.append(m) or len(names) - 1) for m in mv], np.int64)
        codes.append(lut[mc][keep])
        costs.append(_numpy(t.column("cost"), pa.float64())[keep])
    if not names:
        return {}
    means = pd.Series(np.concatenate(costs)).groupby(np.concatenate(codes)).mean()
    return {names[i]: float(v) for i, v in sorted(means.items(), key=lambda kv: names[kv[0]])}


def _plain_strings(schema: pa.Schema) -> pa.Schema:
    """large_string -> string: files written by pandas (large_string) and by this module (string) read as one."""
    return pa.schema([f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in schema],
                     metadata=schema.metadata)


def parquet_files(store: str | os.PathLike) -> list[Path]:
    """The Parquet files of a store (or the file itself), sorted: files ending in ``.parquet`` whose
    name does not start with ``_`` or ``.`` (as Arrow) outside hidden folders (staging, replaced and
    set-aside shards). Manifests and the lock file are not records and are left out. (Folders starting
    with ``_``, which older versions could make, are read although Arrow skips them.)"""
    store = Path(store)
    if store.is_file():
        return [store]
    return sorted(p for p in store.rglob("*.parquet")
                  if p.is_file() and not p.name.startswith(("_", "."))
                  and not any(part.startswith(".") for part in p.relative_to(store).parts))


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

    def select(self, models: list[str]) -> "CascadeData":
        """The columns of ``models`` (a sub-cascade, in the order given); same queries."""
        idx = [self.models.index(m) for m in models]
        return CascadeData(list(models), self.query_id, *(np.asfortranarray(a[:, idx]) for a in
                                                         (self.confidence, self.correct, self.cost)))


def _from_loaded(data: Mapping[str, CascadeData], models: list[str], split: str) -> CascadeData:
    if split not in data:
        raise RecordsError(f"split {split!r} was not loaded (loaded: {', '.join(data)}); pass it to load_cascade")
    d = data[split]
    lacking = [m for m in models if m not in d.models]
    if lacking:
        raise RecordsError(f"model(s) {', '.join(lacking)} were not loaded (loaded: {', '.join(d.models)}); pass "
                           "them to load_cascade")
    return d if list(models) == d.models else d.select(models)


def cascade_data(
    df: pd.DataFrame | pa.Table | Mapping[str, CascadeData], models: list[str], split: str, *,
    signal: str = DEFAULT_SIGNAL, benchmark: str | None = None
) -> CascadeData:
    """Align records of one split into (n, k) arrays for the models in cascade order (rows sorted by query id).

    ``df``: records as a pandas frame or an Arrow table (e.g. from :func:`load_table`), or what
    :func:`load_cascade` returned (split -> CascadeData; the models' columns are then picked). Refuses
    (RecordsError) rather than silently using a subset: models without records in the split, records of
    several benchmarks when ``benchmark`` is not given, a model whose ``signal`` is missing (null or
    NaN) for some queries, and models that do not all have the same queries of the split. The arrays
    are built with Arrow and numpy (query ids sorted per model); the problems are named by
    :func:`_cascade_data_pandas`. To read a store for one cascade, :func:`load_cascade` reads less."""
    if isinstance(df, Mapping):
        return _from_loaded(df, models, split)
    columns = list(df.column_names if isinstance(df, pa.Table) else df.columns)
    if signal not in columns:
        have = ", ".join(signal_columns(columns)) or "none"
        raise RecordsError(f"signal {signal!r} is not in the records (signals: {have})")
    need = [c for c in ("benchmark", "split", "model", "query_id", signal, "correct", "cost") if c in columns]
    out = None
    try:
        table = df.select(need) if isinstance(df, pa.Table) else pa.Table.from_pandas(df[need], preserve_index=False)
        acc = _Pieces(models, [split], signal, benchmark)
        acc.add(table)
        out = acc.assemble()
    except (pa.ArrowException, TypeError, ValueError):
        pass  # values Arrow cannot take as they are: the pandas path below decides
    if out is not None:
        return out[split]
    frame = df.to_pandas() if isinstance(df, pa.Table) else df
    return _cascade_data_pandas(frame, models, split, signal=signal, benchmark=benchmark)


def _cascade_data_pandas(
    df: pd.DataFrame, models: list[str], split: str, *, signal: str = DEFAULT_SIGNAL, benchmark: str | None = None
) -> CascadeData:
    """:func:`cascade_data` with pandas (a pivot): the reference its fast path agrees with, and the code
    that names what is wrong when the fast path finds the records cannot be aligned."""
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
