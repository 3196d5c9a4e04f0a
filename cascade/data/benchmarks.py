"""Benchmarks are task files: YAML in the spirit of lm-evaluation-harness, validated with pydantic.

A task file says where the data lives (local ``data_files`` per split: Parquet, JSONL, JSON or CSV, or a
hub ``dataset_path``/``dataset_name`` with our split -> the hub's split), how a row becomes a query
(Jinja2 templates over the row's columns: ``doc_to_text`` the prompt, ``doc_to_target`` the gold answer,
``doc_to_choice`` the option letters, ``references``/``wrong_references`` the acceptable and known wrong
answers), which of the four graders applies (``grader``: multiple_choice, number, alias, free_text), the
judge's options (``judge.context``, ``judge.prompt``, ``judge.yes``/``judge.no``) and ``max_new_tokens``.
The built-in benchmarks are such files, shipped in the package (``cascade/data/tasks/*.yaml``); a
scoring config names a task by name (a built-in) or by the path of its file, so adding a benchmark is
one file. :class:`Task` is the schema (``docs/own-data.md`` shows a whole one).

Where a split's rows come from, in order: the task's ``data_files`` entry for it (relative to the task
file); else the file ``<data_dir>/<task>-<split>.parquet`` (``.jsonl``, ``.json``, ``.csv`` also work)
under the folder :func:`benchmarks_dir` gives (a config's ``data_dir``, else ``$CASCADE_BENCHMARKS_DIR``,
else ``../shared/benchmarks`` beside the checkout); ``data_dir: hub`` reads the hub
(``datasets.load_dataset``). ``query_id`` is the row's position in that split, so ids are stable across
models and reruns.

Bad task files and data that does not fit them (a template naming a column the data lacks, a missing
file, a grader the rendered rows do not fit) raise :class:`BenchmarkError`: one line naming the file,
the field and the columns that exist.

Graders: exact option letter (multiple choice), normalised final number (GSM8K), alias match
(TriviaQA) and, for free text (TruthfulQA, XSum), a judge model (see :func:`judge_prompt` and
``cascade.scoring.stage``) with a reference-based fallback (token F1 against the correct answers when
the task has wrong ones, else ROUGE-L against a threshold; ROUGE-L from Google's ``rouge-score``, as
lm-evaluation-harness computes it).
"""

from __future__ import annotations

import ast
import os
import re
import string
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from cascade.errors import format_validation_error
from cascade.yamlfile import read_yaml

TASKS = ("multiple_choice", "number", "alias", "free_text")
LETTERS = "ABCDEFGHIJ"
BENCHMARKS_DIR_ENV = "CASCADE_BENCHMARKS_DIR"
HUB = "hub"  # a data_dir value that means: read the split from the Hugging Face hub
TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # the built-in task files (package data)
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
TASK_SUFFIXES = (".yaml", ".yml")


class BenchmarkError(ValueError):
    """Unknown benchmark, bad task file, missing file or column; the message names it and the fix."""


@dataclass
class Item:
    """One query, ready for prompting and grading."""

    query_id: int
    prompt: str  # the user message (zero-shot)
    target: str  # gold answer as text (letter, number, best answer, reference summary)
    choices: list[str] | None = None  # option letters, for multiple choice
    references: list[str] = field(default_factory=list)  # acceptable answers (aliases, correct answers)
    wrong_references: list[str] = field(default_factory=list)  # known wrong answers (TruthfulQA)
    context: str = ""  # what the judge sees as the question (question or article)


# ----------------------------------------------------------------------------------------- templates

ITEM_FIELDS = ("query_id", "prompt", "target", "choices", "references", "wrong_references", "context")
TEMPLATE_GLOBALS = {"letters": LETTERS}

DEFAULT_JUDGE_PROMPT = """You are grading an answer.

Question: {{ context | trim }}
Correct answers: {{ references[:6] | join('; ') }}
{%- set wrong = wrong_references[:6] | join('; ') %}{% if wrong %}
Known wrong answers: {{ wrong }}{% endif %}
Candidate answer: {{ answer | trim }}

Is the candidate answer correct? Reply Yes or No.
Verdict:"""


@lru_cache(maxsize=1)
def _env():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.globals.update(TEMPLATE_GLOBALS)
    env.filters["from_json"] = _from_json  # CSV cells are text: '["a", "b"]' | from_json is a list
    return env


def _from_json(value):
    import json

    return json.loads(value)


@lru_cache(maxsize=4096)
def _compiled(src: str):
    return _env().from_string(src)


def template_columns(src: str) -> set[str]:
    """The names a template reads from its row (its undeclared variables, globals such as ``letters`` left out)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(_env().parse(src))) - set(TEMPLATE_GLOBALS)


def _plain(v):
    """A row value as plain Python (lists, dicts, str, int, float), as templates and ``repr`` expect."""
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _render(src: str, row: dict) -> str:
    return _compiled(src).render(row)


def _render_list(src: str | list[str], row: dict, what: str) -> list[str]:
    """A list field: a YAML list of templates, or one template that renders a Python list literal (as
    lm-evaluation-harness reads ``doc_to_choice``)."""
    if isinstance(src, list):
        return [_render(s, row) for s in src]
    text = _render(src, row).strip()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise BenchmarkError(f"{what}: renders {text[:80]!r}, not a list literal such as ['A', 'B']") from None
    if not isinstance(value, (list, tuple)):
        raise BenchmarkError(f"{what}: renders {text[:80]!r}, not a list")
    return [str(x) for x in value]


# ----------------------------------------------------------------------------------------- task files


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JudgeOptions(_Strict):
    """How a judge model grades this task's answers (free-text tasks; the judge stage of a scoring config)."""

    context: str | None = Field(None, description="template over the row: what the judge sees as the question "
                                                  "(default: the prompt)")
    prompt: str = Field(DEFAULT_JUDGE_PROMPT, description="the judge's user message, a template over the item "
                                                          f"({', '.join(ITEM_FIELDS)}) and the candidate `answer`")
    yes: str = Field("Yes", min_length=1, description="the verdict word for correct (read from first-token log-probs)")
    no: str = Field("No", min_length=1, description="the verdict word for wrong")


class Task(_Strict):
    """A benchmark: one task file (YAML). Built-in ones live in ``cascade/data/tasks/``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(alias="task", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="the name (the records' benchmark column)")
    description: str = ""
    grader: Literal[TASKS] = Field(description=f"one of {', '.join(TASKS)}")  # type: ignore[valid-type]
    dataset_path: str | None = Field(None, description="hub dataset (datasets.load_dataset's first argument)")
    dataset_name: str | None = Field(None, description="hub config (its second argument)")
    splits: dict[str, str] = Field(default_factory=dict, description="our split -> the hub's (slicing allowed)")
    data_files: dict[str, str] = Field(default_factory=dict,
                                       description="our split -> a local .parquet/.jsonl/.json/.csv file")
    doc_to_text: str = Field(description="the prompt, a Jinja2 template over the row's columns")
    doc_to_target: str = Field(description="the gold answer (an option letter for multiple_choice)")
    doc_to_choice: str | list[str] | None = Field(None, description="multiple_choice: the option letters")
    references: str | list[str] | None = Field(None, description="acceptable answers (default: the target)")
    wrong_references: str | list[str] | None = Field(None, description="known wrong answers (free_text)")
    max_new_tokens: int = Field(32, ge=1, description="answer length (a stage's max_new_tokens overrides it)")
    judge: JudgeOptions = Field(default_factory=JudgeOptions)

    _file: Path | None = PrivateAttr(None)

    @field_validator("doc_to_text", "doc_to_target", "doc_to_choice", "references", "wrong_references")
    @classmethod
    def _parses(cls, v):
        from jinja2 import TemplateSyntaxError

        for s in ([] if v is None else [v] if isinstance(v, str) else v):
            try:
                _env().parse(s)
            except TemplateSyntaxError as e:
                raise ValueError(f"not a valid Jinja2 template ({e.message}, line {e.lineno})") from None
        return v

    @field_validator("data_files")
    @classmethod
    def _suffixes(cls, v):
        for split, f in v.items():
            if not str(f).endswith(DATA_SUFFIXES):
                raise ValueError(f"{split}: {f!r} is none of {', '.join(DATA_SUFFIXES)}")
        return v

    @model_validator(mode="after")
    def _fits_grader(self):
        if self.grader == "multiple_choice" and self.doc_to_choice is None:
            raise ValueError("doc_to_choice: grader multiple_choice needs it (the option letters, e.g. [A, B, C, D])")
        if self.grader != "multiple_choice" and self.doc_to_choice is not None:
            raise ValueError(f"doc_to_choice is for grader multiple_choice, not {self.grader}; remove it")
        for name in ("context",):
            s = getattr(self.judge, name)
            if s is not None:
                self._parses(s)
        self._parses(self.judge.prompt)
        bad = template_columns(self.judge.prompt) - set(ITEM_FIELDS) - {"answer"}
        if bad:
            raise ValueError(f"judge.prompt: unknown name(s) {', '.join(sorted(bad))}; it sees "
                             f"{', '.join(ITEM_FIELDS)}, answer")
        return self

    # views --------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        """The grader (what signals and grading dispatch on)."""
        return self.grader

    @property
    def file(self) -> Path | None:
        """The task file this task was read from."""
        return self._file

    @property
    def hub_splits(self) -> dict[str, str]:
        return self.splits

    def templates(self) -> dict[str, str]:
        """Every row template by field (list fields joined), for the column check."""
        out = {}
        for f in ("doc_to_text", "doc_to_target", "doc_to_choice", "references", "wrong_references"):
            v = getattr(self, f)
            if v is not None:
                out[f] = v if isinstance(v, str) else "\n".join(v)
        if self.judge.context is not None:
            out["judge.context"] = self.judge.context
        return out

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns a split must have: those the templates read."""
        return tuple(sorted(set().union(*(template_columns(t) for t in self.templates().values()))))

    def where(self) -> str:
        return str(self._file) if self._file is not None else f"task {self.name}"

    # rows -> items --------------------------------------------------------------------------------
    def item(self, query_id: int, row: dict) -> Item:
        """The query of one row (``query_id`` is its position in the split)."""
        row = {k: _plain(v) for k, v in row.items()}
        try:
            prompt = _render(self.doc_to_text, row)
            target = _render(self.doc_to_target, row)
            choices = None if self.doc_to_choice is None else _render_list(
                self.doc_to_choice, row, f"{self.where()}: doc_to_choice")
            refs = [target] if self.references is None else _render_list(
                self.references, row, f"{self.where()}: references")
            wrong = [] if self.wrong_references is None else _render_list(
                self.wrong_references, row, f"{self.where()}: wrong_references")
            context = prompt if self.judge.context is None else _render(self.judge.context, row)
        except BenchmarkError:
            raise
        except Exception as e:  # jinja2's UndefinedError, a filter on the wrong type
            raise BenchmarkError(f"{self.where()}: row {query_id}: {type(e).__name__}: {e}; the row has columns "
                                 f"{', '.join(row)}") from None
        return Item(int(query_id), prompt, target, choices, refs, wrong, context)

    def items(self, df: pd.DataFrame, start: int = 0) -> list[Item]:
        return [self.item(start + i, row) for i, row in enumerate(df.to_dict("records"))]

    def check_item(self, it: Item) -> str | None:
        """Why a rendered item does not fit the grader, or None."""
        if self.grader == "multiple_choice":
            if not it.choices:
                return "doc_to_choice: renders no options"
            if it.target not in it.choices:
                return (f"doc_to_target: renders {it.target!r}, not one of the options {it.choices} "
                        "(grader multiple_choice grades the option letter)")
        if self.grader == "number" and _to_number(it.target) is None:
            return f"doc_to_target: renders {it.target!r}, not a number (grader number)"
        if not it.prompt.strip():
            return "doc_to_text: renders an empty prompt"
        return None

    def judge_prompt(self, item: Item, answer: str) -> str:
        from dataclasses import asdict

        return _render(self.judge.prompt, {**asdict(item), "answer": answer})

    def spec(self) -> dict:
        """What a Ray worker needs to rebuild this task (:func:`use`)."""
        return {"file": None if self._file is None else str(self._file), "task": self.model_dump(by_alias=True)}


Benchmark = Task  # the name the rest of the package uses for a task


def parse_task(raw: dict, file: Path | None = None) -> Task:
    try:
        t = Task.model_validate(raw)
    except ValidationError as e:
        raise BenchmarkError(f"{file if file is not None else 'task'}: {format_validation_error(e, None)}") from None
    t._file = None if file is None else Path(file).resolve()
    return t


def load_task(path: str | os.PathLike) -> Task:
    """A task file (YAML), validated: a :class:`BenchmarkError` names the file and the field otherwise."""
    path = Path(os.path.expanduser(str(path)))
    raw = read_yaml(path, BenchmarkError, "task")
    return parse_task(raw, path)


# ----------------------------------------------------------------------------------------- registry

BENCHMARKS: dict[str, Task] = {}  # built-in tasks (and plugins' register calls), by name
_FROM_FILES: dict[str, Task] = {}  # tasks named by path, by name (the latest load of that name)


def register(task: Task) -> Task:
    """Add a task to the built-in registry; a duplicate name is refused."""
    if task.name in BENCHMARKS:
        raise BenchmarkError(f"task {task.name!r} is registered already ({BENCHMARKS[task.name].where()}); rename it")
    BENCHMARKS[task.name] = task
    return task


for _f in sorted(TASKS_DIR.glob("*.yaml")):
    register(load_task(_f))


def is_task_path(value: str | os.PathLike) -> bool:
    """True when a benchmark entry names a task file rather than a built-in task."""
    return str(value).endswith(TASK_SUFFIXES)


def get(name: str | os.PathLike) -> Task:
    """A task by name (built-in, or read from a file earlier in this process) or by the path of its file."""
    if is_task_path(name):
        t = _load_cached(Path(os.path.expanduser(str(name))).resolve())
        if t.name in BENCHMARKS:
            raise BenchmarkError(f"{t.file}: task {t.name!r} is a built-in task's name; rename it")
        _FROM_FILES[t.name] = t
        return t
    name = str(name)
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    if name in _FROM_FILES:
        return _FROM_FILES[name]
    raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}; or give the path of a "
                         "task file (.yaml)")


_CACHE: dict[Path, tuple[tuple[int, int], Task]] = {}


def _load_cached(path: Path) -> Task:
    """:func:`load_task`, once per version of the file (its mtime and size)."""
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        return load_task(path)  # its error names the file
    hit = _CACHE.get(path)
    if hit is None or hit[0] != stamp:
        _CACHE[path] = hit = (stamp, load_task(path))
    return hit[1]


def use(specs) -> None:
    """Make tasks read from files in another process (:meth:`Task.spec`) known here (Ray workers)."""
    for spec in specs or ():
        t = parse_task(spec["task"], None if spec.get("file") is None else Path(spec["file"]))
        if t.name not in BENCHMARKS:
            _FROM_FILES[t.name] = t


def specs(names) -> list[dict]:
    """The specs of the tasks among ``names`` that are not built in (for :func:`use` in a worker)."""
    return [get(n).spec() for n in dict.fromkeys(names) if n not in BENCHMARKS]


# ----------------------------------------------------------------------------------------- loading


def default_benchmarks_dir() -> Path:
    """``../shared/benchmarks`` beside the checkout (the folder that holds this repository)."""
    return Path(__file__).resolve().parents[3] / "shared" / "benchmarks"


def benchmarks_dir(value: str | os.PathLike | None = None) -> Path | None:
    """Where benchmark files are read from: ``value`` (a config's ``data_dir``, a caller's argument) if
    given, else ``$CASCADE_BENCHMARKS_DIR``, else :func:`default_benchmarks_dir`. ``hub`` gives None: read
    from the Hugging Face hub. Relative values are taken as given (configs resolve theirs first)."""
    if value is None:
        value = os.environ.get(BENCHMARKS_DIR_ENV) or None
        if value is None:
            return default_benchmarks_dir()
    if str(value) == HUB:
        return None
    return Path(os.path.expanduser(str(value)))


def local_file(data_dir: str | Path, name: str, split: str) -> Path | None:
    for ext in DATA_SUFFIXES:
        p = Path(data_dir) / f"{name}-{split}{ext}"
        if p.exists():
            return p
    return None


def benchmark_file(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The local file of ``name``/``split`` under :func:`benchmarks_dir` (``data_dir``), or a
    :class:`BenchmarkError` naming where it was looked for and how to point elsewhere."""
    root = benchmarks_dir(data_dir)
    if root is None:
        raise BenchmarkError(f"{name}/{split}: data_dir is {HUB!r}; this needs a local file")
    path = local_file(root, name, split)
    if path is None:
        raise BenchmarkError(
            f"{name}/{split}: no file {root / f'{name}-{split}.parquet'}; put the split there (hub columns), "
            f"or point data_dir (or ${BENCHMARKS_DIR_ENV}) at the folder that holds it"
        )
    return path


def split_file(task: Task, split: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The local file of ``task``/``split``: its ``data_files`` entry (relative to the task file), else
    ``<data_dir>/<task>-<split>.<suffix>``; None when it is read from the hub (``data_dir`` None or ``hub``).
    A :class:`BenchmarkError` names the missing file and the fix."""
    if split in task.data_files:
        f = Path(os.path.expanduser(task.data_files[split]))
        if not f.is_absolute() and task.file is not None:
            f = task.file.parent / f
        if not f.is_file():
            raise BenchmarkError(f"{task.where()}: data_files.{split}: no file {f}; fix the path (relative to the "
                                 "task file)")
        return f
    if data_dir is None or str(data_dir) == HUB:
        if not task.dataset_path or split not in task.splits:
            known = sorted(set(task.data_files) | (set(task.splits) if task.dataset_path else set()))
            raise BenchmarkError(f"{task.where()}: no split {split!r} (data_files or a hub dataset_path with splits)"
                                 f"; known: {', '.join(known) or 'none'}")
        return None
    path = local_file(data_dir, task.name, split)
    if path is None:
        have = f"; the task's data_files name {', '.join(task.data_files)}" if task.data_files else ""
        raise BenchmarkError(
            f"no file {Path(data_dir) / f'{task.name}-{split}.parquet'} for {task.name}/{split}{have}; add it, "
            f"point data_dir (or ${BENCHMARKS_DIR_ENV}) at the folder that holds it, name it in the task's "
            f"data_files, or set data_dir: {HUB} to read from the hub"
        )
    return path


def read_file(path: str | os.PathLike, limit: int | None = None) -> pd.DataFrame:
    """A benchmark split file (.parquet, .jsonl, .json or .csv) as a DataFrame (the first ``limit`` rows),
    with the values :func:`read_rows` gives (JSON types; CSV cells as text)."""
    path = Path(path)
    if path.suffix == ".parquet" and limit is None:
        return pd.read_parquet(path)
    src = open_source(path, limit=limit, step=max(1, limit or 1))
    return pd.DataFrame(read_rows(src, 0, src.n) if src.n else [])


# ------------------------------------------------------------------------------ streaming a split


@dataclass(frozen=True)
class Source:
    """Where the rows of one split are, and enough to read any shard of it without reading the rest:
    the row count and, for line formats (JSONL, CSV), the byte offset of every ``step``-th row (so the
    plan's memory is a few bytes per shard, whatever the file's size). Plain data: it travels to Ray tasks."""

    kind: str  # parquet | jsonl | csv | json | hub
    path: str  # the file, or the hub dataset path
    n: int  # rows (limit applied)
    step: int = 1
    offsets: tuple[int, ...] = ()
    header: str = ""  # csv: the header line
    hub_name: str | None = None
    hub_split: str | None = None
    first: int = 0  # the file's row that is this source's row 0 (see part)

    def __len__(self) -> int:
        return self.n

    def part(self, start: int, end: int) -> Source:
        """Rows ``start..end-1`` as a source of their own (row 0 = ``start``): what one shard's reader needs."""
        end = min(end, self.n)
        if self.kind in ("jsonl", "csv"):
            if start % self.step:
                raise ValueError(f"rows of {self.path} are cut at multiples of {self.step}, not {start}")
            return replace(self, n=end - start, step=max(1, end - start), offsets=(self.offsets[start // self.step],))
        return replace(self, n=end - start, first=self.first + start)

    def describe(self) -> str:
        return f"hub {self.path}:{self.hub_split}" if self.kind == "hub" else self.path


def _line_offsets(path: Path, step: int, limit: int | None, csv: bool) -> tuple[int, tuple[int, ...], str]:
    """One pass over a line file: rows (blank lines skipped), the offset of every ``step``-th row and, for
    CSV, the header. A CSV field holding a line break (a quoted newline) is refused: rows must be lines."""
    offsets: list[int] = []
    header = ""
    n = 0
    with open(path, "rb") as f:
        pos = 0
        if csv:
            first = f.readline()
            header = first.decode("utf-8-sig").rstrip("\r\n")
            pos = len(first)
        for line in f:
            if limit is not None and n >= limit:
                break
            if line.strip():
                if csv and line.count(b'"') % 2:
                    raise BenchmarkError(f"{path}: row {n} holds a quoted line break; rows must be single lines "
                                         "(write the data as JSONL or Parquet)")
                if n % step == 0:
                    offsets.append(pos)
                n += 1
            pos += len(line)
    return n, tuple(offsets), header


def open_source(path: str | os.PathLike, *, limit: int | None = None, step: int = 25) -> Source:
    """The :class:`Source` of a local split file (no full read for Parquet, JSONL and CSV)."""
    path = Path(path)
    suffix = path.suffix.lstrip(".")
    if suffix == "parquet":
        import pyarrow.parquet as pq

        n = pq.read_metadata(path).num_rows
        return Source("parquet", str(path), n if limit is None else min(n, limit), step)
    if suffix in ("jsonl", "csv"):
        n, offsets, header = _line_offsets(path, step, limit, suffix == "csv")
        return Source(suffix, str(path), n, step, offsets, header)
    if suffix == "json":  # a JSON array has no line structure: it is read whole (use JSONL for big files)
        n = len(_json_rows(path))
        return Source("json", str(path), n if limit is None else min(n, limit), step)
    raise BenchmarkError(f"{path}: not a {', '.join(DATA_SUFFIXES)} file")


def _json_rows(path) -> list:
    st = Path(path).stat()
    return _json_rows_of(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=2)
def _json_rows_of(path: str, _mtime_ns: int, _size: int) -> list:
    """A JSON array file's rows, read once per version of the file (a shard reader reads its slice)."""
    import json

    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: a .json split holds an array of objects (or write it as JSONL)")
    return rows


def split_source(task: Task, split: str, data_dir: str | os.PathLike | None, *, limit: int | None = None,
                 step: int = 25) -> Source:
    """The :class:`Source` of ``task``/``split`` (see :func:`split_file` for which file), its columns checked."""
    path = split_file(task, split, data_dir)
    if path is not None:
        _check_columns(task, file_columns(path), str(path), split)
        return open_source(path, limit=limit, step=step)
    import datasets

    ds = datasets.load_dataset(task.dataset_path, task.dataset_name, split=task.splits[split])  # memory-mapped
    _check_columns(task, ds.column_names, f"hub {task.dataset_path}:{task.splits[split]}", split)
    n = ds.num_rows if limit is None else min(ds.num_rows, limit)
    return Source("hub", task.dataset_path, n, step, hub_name=task.dataset_name, hub_split=task.splits[split])


def read_rows(src: Source, start: int, end: int) -> list[dict]:
    """Rows ``start..end-1`` of a split as dicts of plain values (Parquet: Arrow's Python values; JSONL
    and JSON: JSON's; CSV: text), reading only what holds them. ``start`` is a multiple of ``src.step``
    for line formats (the plan cuts shards so)."""
    end = min(end, src.n)
    if end <= start:
        return []
    if src.kind not in ("jsonl", "csv"):
        start, end = start + src.first, end + src.first
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        f = pq.ParquetFile(src.path)
        groups, first, at = [], None, 0
        for g in range(f.metadata.num_row_groups):
            rows = f.metadata.row_group(g).num_rows
            if at + rows > start and at < end:
                groups.append(g)
                first = at if first is None else first
            at += rows
        table = f.read_row_groups(groups)
        return table.slice(start - first, end - start).to_pylist()
    if src.kind in ("jsonl", "csv"):
        import csv
        import io
        import json

        if start % src.step:
            raise ValueError(f"rows of {src.path} are read from multiples of {src.step}, not {start}")
        lines = []
        with open(src.path, "rb") as f:
            f.seek(src.offsets[start // src.step])
            for line in f:
                if line.strip():
                    lines.append(line.decode("utf-8"))
                    if len(lines) == end - start:
                        break
        if src.kind == "jsonl":
            out = []
            for k, line in enumerate(lines):
                try:
                    out.append(json.loads(line))
                except ValueError as e:
                    raise BenchmarkError(f"{src.path}: row {start + k} is not JSON ({e})") from None
            return out
        return list(csv.DictReader(io.StringIO("\n".join([src.header, *(ln.rstrip("\r\n") for ln in lines)]))))
    if src.kind == "json":
        return list(_json_rows(src.path)[start:end])
    import datasets

    ds = datasets.load_dataset(src.path, src.hub_name, split=src.hub_split)
    return ds.select(range(start, end)).to_list()


def file_columns(path: str | os.PathLike) -> list[str]:
    """The columns of a split file, read from its schema or first row (no full read)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(read_file(path, limit=1).columns)


def _check_columns(task: Task, df_columns, source: str, split: str) -> None:
    cols = set(df_columns)
    for where, tpl in task.templates().items():
        missing = sorted(template_columns(tpl) - cols)
        if missing:
            raise BenchmarkError(
                f"{task.name}/{split} ({source}) lacks column(s) {', '.join(missing)} used by {task.where()}: "
                f"{where}; the data has columns: {', '.join(map(str, df_columns))}"
            )


def check_split(task: Task, split: str, data_dir: str | os.PathLike | None, rows: int = 5) -> None:
    """Everything that can be checked before scoring: the file is there, the templates name columns it has,
    its first ``rows`` rows render and fit the grader. Raises :class:`BenchmarkError` (one line)."""
    path = split_file(task, split, data_dir)
    if path is None:
        return  # the hub: checked when it is read
    _check_columns(task, file_columns(path), str(path), split)
    src = open_source(path, limit=rows, step=rows)
    if src.n == 0:
        raise BenchmarkError(f"{task.name}/{split} ({path}) has no rows")
    for i, row in enumerate(read_rows(src, 0, src.n)):
        why = task.check_item(task.item(i, row))
        if why:
            raise BenchmarkError(f"{task.where()}: {why} (row {i} of {path}; columns: {', '.join(map(str, row))})")


def load_split(name: str, split: str, *, data_dir: str | Path | None = None, limit: int | None = None) -> pd.DataFrame:
    """Rows of one split (see the module doc for where they come from). Checks the columns. (Configs
    resolve their ``data_dir`` with :func:`benchmarks_dir` first.)"""
    task = get(name)
    path = split_file(task, split, data_dir)
    if path is not None:
        df = read_file(path, limit=limit)
        source = str(path)
    else:
        import datasets

        ds = datasets.load_dataset(task.dataset_path, task.dataset_name, split=task.splits[split])
        df = ds.to_pandas()
        source = f"hub {task.dataset_path}:{task.splits[split]}"
    _check_columns(task, df.columns, source, split)
    df = df.reset_index(drop=True)
    if limit is not None:
        df = df.iloc[:limit]
    return df


def items(name: str, df: pd.DataFrame) -> list[Item]:
    return get(name).items(df)


# ----------------------------------------------------------------------------------------- grading

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_text(s: str) -> str:
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def extract_letter(answer: str, letters: Sequence[str]) -> str | None:
    """The option letter a free-form answer picks, or None."""
    text = answer.strip()
    allowed = "".join(letters)
    m = re.match(rf"^[\s(\[*]*([{allowed}])(?:[\s).:\]*,]|$)", text)
    if m:
        return m.group(1)
    m = re.search(rf"\b(?:answer|option)\s*(?:is|:)?\s*\(?([{allowed}])\b", text, re.I)
    if m:
        return m.group(1).upper()
    return None


_NUM = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _to_number(s: str) -> float | None:
    s = s.replace("$", "").replace(",", "").strip().rstrip(".")
    try:
        return float(s)
    except ValueError:
        return None


def extract_number(answer: str) -> float | None:
    """The final number of a GSM8K-style answer ('Answer: X', '#### X', else the last number)."""
    for pat in (r"answer\s*(?:is|:)\s*\$?\s*(-?[\d,]*\.?\d+)", r"####\s*\$?\s*(-?[\d,]*\.?\d+)"):
        ms = re.findall(pat, answer, re.I)
        if ms:
            return _to_number(ms[-1])
    ms = _NUM.findall(answer)
    return _to_number(ms[-1]) if ms else None


def alias_match(answer: str, aliases: Sequence[str]) -> bool:
    first = answer.strip().split("\n")[0]
    pred = normalize_text(first)
    if not pred:
        return False
    for a in aliases:
        na = normalize_text(a)
        if na and (pred == na or re.search(rf"(?:^| ){re.escape(na)}(?: |$)", pred)):
            return True
    return False


def token_f1(pred: str, ref: str) -> float:
    p, r = normalize_text(pred).split(), normalize_text(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 (longest common subsequence) of ``rouge-score``'s tokens (lower case, alphanumeric words)."""
    return float(_rouge_scorer().score(str(ref), str(pred))["rougeL"].fmeasure)


@dataclass(frozen=True)
class GradingConfig:
    """Thresholds of the reference-based fallback for free text (no judge)."""

    f1_threshold: float = 0.5  # TruthfulQA: best token F1 against the correct answers
    rouge_threshold: float = 0.25  # XSum: ROUGE-L F1 against the reference summary


def parse_answer(bench: Benchmark, item: Item, answer: str) -> str:
    """The graded part of an answer, as text (letter, number, first line)."""
    if bench.task == "multiple_choice":
        return extract_letter(answer, item.choices or []) or ""
    if bench.task == "number":
        n = extract_number(answer)
        return "" if n is None else repr(n)
    return answer.strip()


def grade(bench: Benchmark, item: Item, answer: str, cfg: GradingConfig = GradingConfig()) -> float:
    """Reference-based correctness in {0, 1} (the judge, when configured, replaces it for free text)."""
    if bench.task == "multiple_choice":
        return float(extract_letter(answer, item.choices or []) == item.target)
    if bench.task == "number":
        got, want = extract_number(answer), _to_number(item.target)
        return float(got is not None and want is not None and abs(got - want) < 1e-6 * max(1.0, abs(want)))
    if bench.task == "alias":
        return float(alias_match(answer, item.references))
    if not item.wrong_references:  # summaries (XSum): ROUGE-L; answers with known wrong ones: token F1
        return float(max((rouge_l(answer, r) for r in item.references), default=0.0) >= cfg.rouge_threshold)
    good = max((token_f1(answer, r) for r in item.references), default=0.0)
    bad = max((token_f1(answer, r) for r in item.wrong_references), default=0.0)
    return float(good >= cfg.f1_threshold and good > bad)


def judge_prompt(bench: Benchmark, item: Item, answer: str) -> str:
    """The judge's user message (the task's ``judge.prompt``); the judge answers ``judge.yes`` or
    ``judge.no`` (read from its first-token log-probs)."""
    return bench.judge_prompt(item, answer)


def ptrue_prompt(item: Item, answer: str) -> str:
    """The self-evaluation (P(True)) user message, after Kadavath et al. (2022)."""
    return (
        f"{item.prompt}\n\nProposed answer: {answer.strip()}\n\n"
        "Is the proposed answer true or false? Reply True or False.\nThe proposed answer is:"
    )


def logsumexp(values: Sequence[float]) -> float:
    """log(sum(exp(values))) (``scipy.special.logsumexp``); -inf for no values or all -inf."""
    from scipy.special import logsumexp as _lse

    v = np.asarray(list(values), float)
    return float(_lse(v)) if v.size else float("-inf")
