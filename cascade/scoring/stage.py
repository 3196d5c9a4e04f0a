"""Scoring one batch of queries with one loaded engine: prompts, signals, P(True), grading, cost.

Plain library code (no Ray): ``jobs/score.py`` runs these functions inside Ray Data actors, and
``bench/scoring_throughput.py`` runs them bare. Records follow :mod:`cascade.data.records`.

A batch is scored in passes: the answering pass (:func:`answer_requests`), the P(True) pass when a
signal needs it (:func:`ptrue_requests`), then :func:`record_rows` turns the engine's results into
records: grading, cost, and every configured signal through the registry
(:mod:`cascade.scoring.signals`, which says what each ``conf_*`` column means and how it is
computed). :func:`score_items` runs the passes on one loaded engine; the ``ray.data.llm`` path of
``jobs/score.py`` runs the same functions around vLLM processors, so both write the same records.
The P(True) pass's tokens and cost are the ``ptrue_*`` columns (``cost`` is the answering pass alone).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cascade.data import benchmarks as B
from . import signals as S
from .engines.base import Engine, GenRequest, GenResult


#: the column a records row of a failed request carries instead of values (its error); such rows are not
#: records: ``jobs/score.py`` sets them aside and a rerun scores them again
FAILED = "_error"


@dataclass(frozen=True)
class StageInfo:
    """What a records row says about the stage that produced it."""

    model: str  # the records' model column (the stage name)
    engine: str
    model_path: str
    dtype: str
    price_input: float = 0.0  # USD per 1M tokens
    price_output: float = 0.0
    max_new_tokens: int | None = None

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for these tokens at the stage's prices (per 1M)."""
        return (input_tokens * self.price_input + output_tokens * self.price_output) / 1e6


def stage_info(st, model_path: str) -> StageInfo:
    """The records' view of a stage config (:class:`cascade.scoring.config.StageConfig`)."""
    dtype = st.dtype if st.engine_spec().needs == "local_model" else "served"  # the server's choice
    return StageInfo(st.name, st.engine, model_path, dtype, st.price.input, st.price.output, st.max_new_tokens)


def load_stage(st) -> tuple[Engine, StageInfo]:
    """Load a stage's engine through the engine registry (a local model is converted/resolved first, an
    endpoint engine connects) with the stage's settings."""
    engine = st.engine_spec().engine_class().from_stage(st)
    return engine, stage_info(st, engine.model_path)


def spellings(word: str) -> list[str]:
    """The spellings of an answer word that count as the word: 'W', ' W', 'w', ' w'."""
    return list(dict.fromkeys([word, " " + word, word.lower(), " " + word.lower()]))


class Prompter:
    """Renders a user message with the model's chat template when it has one, else as plain text, and
    makes an engine request of it (token ids; watched words as the token ids of their spellings)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def text(self, message: str) -> str:
        if self.chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
            )
        return message

    def ids(self, message: str) -> list[int]:
        text = self.text(message)
        # a chat template writes its own special tokens; plain text gets the tokenizer's (e.g. <bos>)
        return list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def request(self, message: str, max_new_tokens: int, words=(), exact: bool = False) -> GenRequest:
        return GenRequest(self.ids(message), max_new_tokens, self.variants(words) if words else [])

    def variants(self, words) -> list[list[int]]:
        """For each word, the single-token ids of its spellings (:func:`spellings`)."""
        groups = []
        for w in words:
            ids = []
            for v in spellings(w):
                t = self.tokenizer(v, add_special_tokens=False)["input_ids"]
                if len(t) == 1 and t[0] not in ids:
                    ids.append(int(t[0]))
            groups.append(ids)
        return groups


class MessagePrompter:
    """For engines that render prompts themselves (an API server applies the model's chat template): the
    request carries the message, and the watched words as their spellings."""

    chat = True

    def text(self, message: str) -> str:
        return message

    def request(self, message: str, max_new_tokens: int, words=(), exact: bool = False) -> GenRequest:
        return GenRequest([], max_new_tokens, message=message, watch_text=[spellings(w) for w in words],
                          exact_watch=exact)


def prompter_of(engine: Engine) -> Prompter | MessagePrompter:
    """What renders a stage's messages into ``engine``'s requests (by its ``PROMPTS``)."""
    return MessagePrompter() if engine.PROMPTS == "messages" else Prompter(engine.tokenizer)


def answer_requests(prompter: Prompter, bench: B.Benchmark, items: list[B.Item], signals: list[str],
                    max_new_tokens: int) -> tuple[list[str], list[GenRequest]]:
    """The rendered prompts and the answering pass's requests (option letters watched when a signal needs them)."""
    watch_choices = "choices" in S.needed(signals, bench.task)
    texts = [prompter.text(it.prompt) for it in items]
    reqs = [prompter.request(it.prompt, max_new_tokens, it.choices if watch_choices else (), exact=watch_choices)
            for it in items]
    return texts, reqs


def ptrue_requests(prompter: Prompter, items: list[B.Item], answers: list[str]) -> list[GenRequest]:
    """The P(True) pass: one token, True/False watched, after the proposed answer."""
    return [prompter.request(B.ptrue_prompt(it, a), 1, ["True", "False"]) for it, a in zip(items, answers)]


def needs_ptrue(bench: B.Benchmark, signals: list[str]) -> bool:
    return "ptrue" in S.needed(signals, bench.task)


def record_rows(stage: StageInfo, bench: B.Benchmark, split: str, items: list[B.Item], texts: list[str],
                answers: list[GenResult], ptrue: list[GenResult] | None, *, signals: list[str],
                grading: B.GradingConfig = B.GradingConfig(), run_id: str = "") -> pd.DataFrame:
    """One records row per item from the engine's results; the same function whichever engine (or
    ``ray.data.llm``) produced them, so records are identical in form."""
    rows = []
    for k, (it, text, r) in enumerate(zip(items, texts, answers)):
        p = ptrue[k] if ptrue is not None else None
        key = {"benchmark": bench.name, "split": split, "query_id": int(it.query_id), "model": stage.model}
        err = r.error or (p.error if p is not None else None)
        if err:  # never a record with made-up values: the row is marked and the caller sets it aside
            rows.append({**key, FAILED: err})
            continue
        row = {
            **key,
            "correct": B.grade(bench, it, r.text, grading),
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "cost": stage.cost(r.input_tokens + r.extra_input_tokens, r.output_tokens + r.extra_output_tokens),
        }
        obs = S.Observation(it, bench.task, r, p)
        row.update(S.compute(signals, obs))
        row.update(
            answer=r.text,
            target=it.target,
            accelerator_seconds=float(r.seconds) + (float(p.seconds) if p is not None else 0.0),
            engine=stage.engine,
            model_path=stage.model_path,
            dtype=stage.dtype,
            prompt_sha1=hashlib.sha1(text.encode()).hexdigest(),
            run_id=run_id,
            signal_methods=json.dumps(S.methods(signals, obs), sort_keys=True),
        )
        if p is not None:
            row["ptrue_input_tokens"] = p.input_tokens
            row["ptrue_output_tokens"] = p.output_tokens
            row["ptrue_cost"] = stage.cost(p.input_tokens, p.output_tokens)
        rows.append(row)
    df = pd.DataFrame(rows)
    df["scored_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return df


def score_items(
    engine: Engine,
    stage: StageInfo,
    benchmark: str,
    split: str,
    items: list[B.Item],
    *,
    signals: list[str],
    grading: B.GradingConfig = B.GradingConfig(),
    run_id: str = "",
) -> pd.DataFrame:
    """Answer ``items`` with ``engine`` and return one records row per item (correct: reference grader)."""
    bench = B.get(benchmark)
    prompter = prompter_of(engine)
    texts, reqs = answer_requests(prompter, bench, items, signals, stage.max_new_tokens or bench.max_new_tokens)
    res = engine.answer(reqs)
    pt = engine.answer(ptrue_requests(prompter, items, [r.text for r in res])) if needs_ptrue(bench, signals) else None
    return record_rows(stage, bench, split, items, texts, res, pt, signals=signals, grading=grading, run_id=run_id)


def judge_requests(prompter: Prompter, bench: B.Benchmark, items: list[B.Item], answers: list[str]) -> list[GenRequest]:
    return [prompter.request(B.judge_prompt(bench, it, a), 1, [bench.judge.yes, bench.judge.no])
            for it, a in zip(items, answers)]


def verdicts(results: list[GenResult]) -> np.ndarray:
    """A judge's verdicts in {0, 1}: P(Yes) > P(No) at its first generated position (NaN: the request
    failed)."""
    return np.array([np.nan if r.error else float(r.watch_logprobs[0] > r.watch_logprobs[1]) for r in results],
                    dtype=np.float64)


def judge_items(engine: Engine, benchmark: str, items: list[B.Item], answers: list[str]) -> np.ndarray:
    """A judge model's verdicts in {0, 1}: P(Yes) > P(No) at its first generated position."""
    bench = B.get(benchmark)
    return verdicts(engine.answer(judge_requests(prompter_of(engine), bench, items, answers)))


def column_order(df: pd.DataFrame) -> pd.DataFrame:
    from cascade.data.records import OPTIONAL_FIELDS, REQUIRED_FIELDS, signal_columns

    cols = list(REQUIRED_FIELDS) + signal_columns(df.columns) + [c for c in OPTIONAL_FIELDS if c in df.columns]
    return df[cols]
