"""Scoring one batch of queries with one loaded engine: prompts, signals, P(True), grading, cost.

Plain library code (no Ray): ``jobs/score.py`` runs these functions inside actors, and
``bench/scoring_throughput.py`` runs them bare. Records follow :mod:`cascade.data.records`.

Signals (each its own ``conf_*`` column):

- ``conf_mean_logprob``: mean log-prob of the answer tokens (stop token left out);
- ``conf_first_logprob``: log-prob of the first generated token;
- ``conf_top2_margin``: p1 - p2 at the first generated position;
- ``conf_top2_logit_margin``: l1 - l2 of the raw logits there (= logp1 - logp2, the softmax's
  normaliser cancels);
- ``conf_choice_logprob`` (multiple choice only): log-prob of the chosen option letter, normalised over
  the option letters, at the first generated position (each letter's " X"/"X" spellings summed);
- ``conf_ptrue``: log P(True) of a second, self-evaluation pass, normalised over True/False; its
  tokens and cost are the ``ptrue_*`` columns (``cost`` is the answering pass alone).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cascade.data import benchmarks as B
from .engines.base import Engine, GenRequest

SIGNAL_COLUMNS = {
    "mean_logprob": "conf_mean_logprob",
    "first_logprob": "conf_first_logprob",
    "top2_margin": "conf_top2_margin",
    "top2_logit_margin": "conf_top2_logit_margin",
    "choice_logprob": "conf_choice_logprob",
    "ptrue": "conf_ptrue",
}


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


class Prompter:
    """Renders a user message with the model's chat template when it has one, else as plain text."""

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

    def variants(self, words) -> list[list[int]]:
        """For each word, the single-token ids of its spellings 'W', ' W', 'w', ' w'."""
        groups = []
        for w in words:
            ids = []
            for v in dict.fromkeys([w, " " + w, w.lower(), " " + w.lower()]):
                t = self.tokenizer(v, add_special_tokens=False)["input_ids"]
                if len(t) == 1 and t[0] not in ids:
                    ids.append(int(t[0]))
            groups.append(ids)
        return groups


def _lse(v) -> float:
    return B.logsumexp(v)


def _norm_logprob(chosen: float, all_: list[float]) -> float:
    tot = _lse(all_)
    if tot == -math.inf or chosen == -math.inf:
        return -math.inf
    return float(chosen - tot)


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
    prompter = Prompter(engine.tokenizer)
    mc = bench.task == "multiple_choice"
    max_new = stage.max_new_tokens or bench.max_new_tokens
    texts = [prompter.text(it.prompt) for it in items]
    reqs = []
    for it, text in zip(items, texts):
        watch = prompter.variants(it.choices) if (mc and "choice_logprob" in signals) else []
        reqs.append(GenRequest(prompter.ids(it.prompt), max_new, watch))
    res = engine.generate(reqs)

    rows = []
    for it, text, r in zip(items, texts, res):
        answer_lps = r.token_logprobs[:-1] if (r.stopped and len(r.token_logprobs) > 1) else r.token_logprobs
        if r.stopped and len(r.token_logprobs) == 1:
            answer_lps = r.token_logprobs
        row = {
            "benchmark": benchmark,
            "split": split,
            "query_id": int(it.query_id),
            "model": stage.model,
            "correct": B.grade(bench, it, r.text, grading),
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
            "cost": (r.input_tokens * stage.price_input + r.output_tokens * stage.price_output) / 1e6,
        }
        lp1, lp2 = r.top2_logprobs
        if "mean_logprob" in signals:
            row["conf_mean_logprob"] = float(np.mean(answer_lps)) if answer_lps else -math.inf
        if "first_logprob" in signals:
            row["conf_first_logprob"] = float(r.token_logprobs[0]) if r.token_logprobs else -math.inf
        if "top2_margin" in signals:
            row["conf_top2_margin"] = float(math.exp(lp1) - math.exp(lp2))
        if "top2_logit_margin" in signals:
            row["conf_top2_logit_margin"] = float(lp1 - lp2) if lp2 > -math.inf else math.inf
        if mc and "choice_logprob" in signals:
            letter = B.extract_letter(r.text, it.choices or [])
            k = it.choices.index(letter) if letter else int(np.argmax(r.watch_logprobs))
            row["conf_choice_logprob"] = _norm_logprob(r.watch_logprobs[k], r.watch_logprobs)
        row.update(
            answer=r.text,
            target=it.target,
            accelerator_seconds=float(r.seconds),
            engine=stage.engine,
            model_path=stage.model_path,
            dtype=stage.dtype,
            prompt_sha1=hashlib.sha1(text.encode()).hexdigest(),
            run_id=run_id,
        )
        rows.append(row)

    if "ptrue" in signals:
        tf = prompter.variants(["True", "False"])
        preqs = [GenRequest(prompter.ids(B.ptrue_prompt(it, row["answer"])), 1, tf) for it, row in zip(items, rows)]
        for row, p in zip(rows, engine.generate(preqs)):
            t, f = p.watch_logprobs
            row["conf_ptrue"] = _norm_logprob(t, [t, f])
            row["ptrue_input_tokens"] = p.input_tokens
            row["ptrue_output_tokens"] = p.output_tokens
            row["ptrue_cost"] = (p.input_tokens * stage.price_input + p.output_tokens * stage.price_output) / 1e6
            row["accelerator_seconds"] += float(p.seconds)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    df = pd.DataFrame(rows)
    df["scored_at"] = now
    return df


def judge_items(engine: Engine, benchmark: str, items: list[B.Item], answers: list[str]) -> np.ndarray:
    """A judge model's verdicts in {0, 1}: P(Yes) > P(No) at its first generated position."""
    bench = B.get(benchmark)
    prompter = Prompter(engine.tokenizer)
    yn = prompter.variants(["Yes", "No"])
    reqs = [GenRequest(prompter.ids(B.judge_prompt(bench, it, a)), 1, yn) for it, a in zip(items, answers)]
    out = engine.generate(reqs)
    return np.array([float(r.watch_logprobs[0] > r.watch_logprobs[1]) for r in out], dtype=np.float64)


def column_order(df: pd.DataFrame) -> pd.DataFrame:
    from cascade.data.records import OPTIONAL_FIELDS, REQUIRED_FIELDS, signal_columns

    cols = list(REQUIRED_FIELDS) + signal_columns(df.columns) + [c for c in OPTIONAL_FIELDS if c in df.columns]
    return df[cols]
