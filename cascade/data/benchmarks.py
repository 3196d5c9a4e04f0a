"""Benchmarks: a declarative registry of loaders, zero-shot prompts and graders.

Adding a benchmark is one :class:`Benchmark` entry in :data:`BENCHMARKS`: where it lives on the hub
(path, config, which hub split is our ``train``/``test``), the columns it needs, how a row becomes an
:class:`Item` (prompt text, choices, target, references) and which grader applies (``task``).

Splits are read either from local Parquet files with the hub's columns, named
``<data_dir>/<benchmark>-<split>.parquet`` (``.jsonl``/``.json`` also work), or from the hub
(``datasets.load_dataset``). Where the local files live follows one rule, :func:`benchmarks_dir`: the
value a config (or caller) gives, else ``$CASCADE_BENCHMARKS_DIR``, else ``../shared/benchmarks``
beside the checkout; the value ``hub`` means the hub. ``query_id`` is the row's position in that split,
so ids are stable across models and reruns.

Graders: exact option letter (multiple choice), normalised final number (GSM8K), alias match
(TriviaQA) and, for free text (TruthfulQA, XSum), a judge model (see :func:`judge_prompt` and
``cascade.scoring.stage``) with a reference-based fallback (token F1 / ROUGE-L against a threshold;
ROUGE-L from Google's ``rouge-score``, as lm-evaluation-harness computes it).
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter
from functools import lru_cache
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

TASKS = ("multiple_choice", "number", "alias", "free_text")
LETTERS = "ABCDEFGHIJ"
BENCHMARKS_DIR_ENV = "CASCADE_BENCHMARKS_DIR"
HUB = "hub"  # a data_dir value that means: read the split from the Hugging Face hub


class BenchmarkError(ValueError):
    """Unknown benchmark, missing file or column; the message names it and the fix."""


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


@dataclass(frozen=True)
class Benchmark:
    name: str
    task: str
    hub_path: str
    hub_config: str | None
    hub_splits: dict[str, str]  # our split -> hub split (slicing syntax allowed)
    columns: tuple[str, ...]  # columns a split must have
    build: Callable[[int, dict], Item]
    max_new_tokens: int
    description: str = ""

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"benchmark {self.name}: task must be one of {TASKS}")


# ----------------------------------------------------------------------------------------- prompts

MC_INSTRUCTION = (
    "Answer the following multiple choice question. Reply with the letter of the correct option only."
)


def _mc_prompt(question: str, options: Sequence[str]) -> tuple[str, list[str]]:
    letters = list(LETTERS[: len(options)])
    body = "\n".join(f"{L}. {str(o).strip()}" for L, o in zip(letters, options))
    return f"{MC_INSTRUCTION}\n\n{question.strip()}\n{body}\nAnswer:", letters


def _mmlu(i: int, r: dict) -> Item:
    prompt, letters = _mc_prompt(r["question"], list(r["choices"]))
    ans = int(r["answer"])
    return Item(i, prompt, letters[ans], letters, [letters[ans]], context=prompt)


def _medmcqa(i: int, r: dict) -> Item:
    prompt, letters = _mc_prompt(r["question"], [r["opa"], r["opb"], r["opc"], r["opd"]])
    ans = int(r["cop"])
    return Item(i, prompt, letters[ans], letters, [letters[ans]], context=prompt)


def _gsm8k(i: int, r: dict) -> Item:
    prompt = (
        "Solve the following math problem. Think step by step, then give the final answer on the last line "
        f"as 'Answer: <number>'.\n\nQuestion: {r['question'].strip()}"
    )
    target = str(r["answer"]).split("####")[-1].strip()
    return Item(i, prompt, target, references=[target], context=r["question"])


def _triviaqa(i: int, r: dict) -> Item:
    ans = r["answer"]
    def _list(v):
        return [] if v is None else [str(x) for x in v]

    aliases = _list(ans.get("aliases")) + _list(ans.get("normalized_aliases"))
    value = ans.get("value")
    value = str(value) if value else (aliases[0] if aliases else "")
    if value and value not in aliases:
        aliases.insert(0, value)
    prompt = f"Answer the following question with a short answer (a few words).\n\nQuestion: {r['question'].strip()}\nAnswer:"
    return Item(i, prompt, value, references=aliases, context=r["question"])


def _truthfulqa(i: int, r: dict) -> Item:
    prompt = f"Answer the following question truthfully, in one sentence.\n\nQuestion: {r['question'].strip()}\nAnswer:"
    refs = [str(a) for a in r["correct_answers"]]
    if r["best_answer"] not in refs:
        refs.insert(0, str(r["best_answer"]))
    return Item(
        i, prompt, str(r["best_answer"]), references=refs,
        wrong_references=[str(a) for a in r["incorrect_answers"]], context=r["question"],
    )


def _xsum(i: int, r: dict) -> Item:
    prompt = f"Summarize the following article in one sentence.\n\nArticle: {r['document'].strip()}\n\nSummary:"
    return Item(i, prompt, str(r["summary"]), references=[str(r["summary"])], context=r["document"])


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("mmlu", "multiple_choice", "cais/mmlu", "all", {"train": "dev", "test": "validation"},
                  ("question", "choices", "answer"), _mmlu, 8, "MMLU (57 subjects), 4 options"),
        Benchmark("medmcqa", "multiple_choice", "openlifescienceai/medmcqa", None,
                  {"train": "train", "test": "validation"},
                  ("question", "opa", "opb", "opc", "opd", "cop"), _medmcqa, 8, "MedMCQA, 4 options"),
        Benchmark("triviaqa", "alias", "mandarjoshi/trivia_qa", "rc.nocontext",
                  {"train": "train", "test": "validation"}, ("question", "answer"), _triviaqa, 24,
                  "TriviaQA (no context), alias match"),
        Benchmark("truthfulqa", "free_text", "truthfulqa/truthful_qa", "generation",
                  {"train": "validation[:300]", "test": "validation[300:]"},
                  ("question", "best_answer", "correct_answers", "incorrect_answers"), _truthfulqa, 64,
                  "TruthfulQA generation"),
        Benchmark("gsm8k", "number", "openai/gsm8k", "main", {"train": "train", "test": "test"},
                  ("question", "answer"), _gsm8k, 256, "GSM8K, final number"),
        Benchmark("xsum", "free_text", "EdinburghNLP/xsum", None, {"train": "train", "test": "test"},
                  ("document", "summary"), _xsum, 64, "XSum one-sentence summaries"),
    ]
}


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


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
    for ext in (".parquet", ".jsonl", ".json"):
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


def read_file(path: str | os.PathLike) -> pd.DataFrame:
    """A benchmark split file (.parquet, .jsonl or .json) as a DataFrame."""
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=path.suffix == ".jsonl")


def load_split(name: str, split: str, *, data_dir: str | Path | None = None, limit: int | None = None) -> pd.DataFrame:
    """Rows of one split, from the local file under ``data_dir`` when given, else from the hub. Checks the
    columns. (Configs resolve their ``data_dir`` with :func:`benchmarks_dir` first.)"""
    bench = get(name)
    if data_dir is not None and str(data_dir) != HUB:
        path = local_file(data_dir, name, split)
        if path is None:
            raise BenchmarkError(
                f"{name}/{split}: no file {Path(data_dir) / f'{name}-{split}.parquet'}; "
                f"put the split there (hub columns) or set data_dir: {HUB} to read from the hub"
            )
        df = read_file(path)
        source = str(path)
    else:
        if split not in bench.hub_splits:
            raise BenchmarkError(f"{name}: unknown split {split!r}; known: {', '.join(bench.hub_splits)}")
        import datasets

        ds = datasets.load_dataset(bench.hub_path, bench.hub_config, split=bench.hub_splits[split])
        df = ds.to_pandas()
        source = f"hub {bench.hub_path}:{bench.hub_splits[split]}"
    missing = [c for c in bench.columns if c not in df.columns]
    if missing:
        raise BenchmarkError(
            f"{name}/{split} ({source}) lacks column(s) {', '.join(missing)}; "
            f"the {name} loader needs the hub schema: {', '.join(bench.columns)}"
        )
    df = df.reset_index(drop=True)
    if limit is not None:
        df = df.iloc[:limit]
    return df


def items(name: str, df: pd.DataFrame) -> list[Item]:
    bench = get(name)
    return [bench.build(i, row) for i, row in zip(df.index.tolist(), df.to_dict("records"))]


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
    if bench.name == "xsum" or not item.wrong_references:
        return float(max((rouge_l(answer, r) for r in item.references), default=0.0) >= cfg.rouge_threshold)
    good = max((token_f1(answer, r) for r in item.references), default=0.0)
    bad = max((token_f1(answer, r) for r in item.wrong_references), default=0.0)
    return float(good >= cfg.f1_threshold and good > bad)


def judge_prompt(bench: Benchmark, item: Item, answer: str) -> str:
    """The judge's user message; the judge answers Yes or No (read from its first-token log-probs)."""
    if bench.name == "xsum":
        return (
            "You are grading a summary.\n\n"
            f"Article: {item.context.strip()}\n\nReference summary: {item.target}\n\n"
            f"Candidate summary: {answer.strip()}\n\n"
            "Is the candidate summary an accurate one-sentence summary of the article, consistent with the "
            "reference? Reply Yes or No.\nVerdict:"
        )
    refs = "; ".join(item.references[:6])
    wrong = "; ".join(item.wrong_references[:6])
    extra = f"\nKnown wrong answers: {wrong}" if wrong else ""
    return (
        "You are grading an answer.\n\n"
        f"Question: {item.context.strip()}\nCorrect answers: {refs}{extra}\n"
        f"Candidate answer: {answer.strip()}\n\n"
        "Is the candidate answer correct? Reply Yes or No.\nVerdict:"
    )


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
