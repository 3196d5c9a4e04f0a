"""Confidence signals: one registry entry per signal says everything the project knows about it.

A signal has a short ``name`` (what a scoring config lists under ``signals:``), the records ``column``
it is written to, the ``transform`` the tuner's logistic calibration applies to it
(:mod:`cascade.tuners.calibration`: ``one-sided`` for answer log-probabilities in (-inf, 0],
``two-sided`` for P(True) log-probabilities, ``identity`` for margins and other bounded scores), what
the scoring stage ``needs`` to compute it, the benchmark ``tasks`` it applies to (None: all) and
``compute``, the function from one query's :class:`Observation` to the value.

``needs`` is what the engine must be asked for besides the greedy answer:

- ``generation``: nothing more (per-token log-probs of the answer, top-2 at the first position);
- ``choices``: the log-probs of the option letters at the first generated position (multiple choice);
- ``ptrue``: a second, self-evaluation pass (the question, the proposed answer, "true or false?") that
  returns the log-probs of True/False.

Each record says how its signals were computed: :func:`methods` (the ``signal_methods`` column) reads
what the engine reported for the part a signal is computed from (``GenResult.provenance``).

Adding a signal is one :func:`register` call (here, or in a plugin): scoring configs accept its name,
:mod:`cascade.scoring.stage` computes it, ``jobs/score.py`` expects its column in finished shards and
the calibration picks its transform. No Ray, no engine, no benchmark import at module level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
from scipy.special import logsumexp

TRANSFORMS = ("one-sided", "two-sided", "identity")
NEEDS = ("generation", "choices", "ptrue")


@dataclass(frozen=True)
class Observation:
    """What scoring saw for one query: the item, its benchmark task, the answer pass and the P(True) pass."""

    item: Any  # cascade.data.benchmarks.Item
    task: str  # the benchmark's task (multiple_choice, number, alias, free_text)
    answer: Any  # cascade.scoring.engines.GenResult of the answering pass
    ptrue: Any = None  # GenResult of the P(True) pass (watch groups True, False), when a signal needs it

    @property
    def answer_logprobs(self) -> list[float]:
        """Log-probs of the answer tokens: the stop token left out (unless it is the only token)."""
        lps = list(self.answer.token_logprobs)
        if self.answer.stopped and len(lps) > 1:
            return lps[:-1]
        return lps


@dataclass(frozen=True)
class Signal:
    name: str
    column: str
    transform: str
    needs: str  # one of NEEDS
    description: str
    compute: Callable[[Observation], float] | None = None
    tasks: tuple[str, ...] | None = None  # benchmark tasks it applies to; None: every task

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


SIGNALS: dict[str, Signal] = {}
#: the registered signal tuning falls back to when records have no generic ``confidence`` column
DEFAULT = "mean_logprob"


def register(sig: Signal) -> Signal:
    if sig.transform not in TRANSFORMS:
        raise ValueError(f"signal {sig.name}: transform must be one of {', '.join(TRANSFORMS)}")
    if sig.needs not in NEEDS:
        raise ValueError(f"signal {sig.name}: needs must be one of {', '.join(NEEDS)}")
    if not sig.column.startswith("conf_"):
        raise ValueError(f"signal {sig.name}: its column must start with conf_ (records' signal prefix)")
    if sig.name in SIGNALS and SIGNALS[sig.name] != sig:
        raise ValueError(f"signal {sig.name!r} is already registered; choose another name")
    SIGNALS[sig.name] = sig
    return sig


def _norm_logprob(chosen: float, all_: list[float]) -> float:
    """log p(chosen) renormalised over ``all_`` (log-probs of the alternatives); -inf if chosen is -inf."""
    tot = float(logsumexp(all_)) if len(all_) else -math.inf
    if tot == -math.inf or chosen == -math.inf:
        return -math.inf
    return float(chosen - tot)


def _mean_logprob(o: Observation) -> float:
    lps = o.answer_logprobs
    return float(np.mean(lps)) if lps else -math.inf


def _first_logprob(o: Observation) -> float:
    return float(o.answer.token_logprobs[0]) if o.answer.token_logprobs else -math.inf


def _top2_margin(o: Observation) -> float:
    lp1, lp2 = o.answer.top2_logprobs
    return float(math.exp(lp1) - math.exp(lp2))


def _top2_logit_margin(o: Observation) -> float:
    lp1, lp2 = o.answer.top2_logprobs
    return float(lp1 - lp2) if lp2 > -math.inf else math.inf


def _choice_logprob(o: Observation) -> float:
    from cascade.data.benchmarks import extract_letter

    choices = list(o.item.choices or [])
    watch = list(o.answer.watch_logprobs)
    letter = extract_letter(o.answer.text, choices)
    k = choices.index(letter) if letter else max(range(len(watch)), key=watch.__getitem__)
    return _norm_logprob(watch[k], watch)


def _ptrue(o: Observation) -> float:
    t, f = o.ptrue.watch_logprobs
    return _norm_logprob(t, [t, f])


register(Signal("mean_logprob", "conf_mean_logprob", "one-sided", "generation",
                "mean log-probability of the answer tokens (stop token left out)", _mean_logprob))
register(Signal("first_logprob", "conf_first_logprob", "one-sided", "generation",
                "log-probability of the first answer token", _first_logprob))
register(Signal("top2_margin", "conf_top2_margin", "identity", "generation",
                "first generated token: probability margin p1 - p2 between the top two tokens", _top2_margin))
register(Signal("top2_logit_margin", "conf_top2_logit_margin", "identity", "generation",
                "first generated token: logit margin l1 - l2 between the top two tokens (= logp1 - logp2)",
                _top2_logit_margin))
register(Signal("choice_logprob", "conf_choice_logprob", "one-sided", "choices",
                "log-probability of the chosen option letter normalised over the option letters (each letter's "
                "'X'/' X' spellings summed); the argmax letter when the answer names none", _choice_logprob,
                tasks=("multiple_choice",)))
register(Signal("ptrue", "conf_ptrue", "two-sided", "ptrue",
                "P(True) self-evaluation: log P(True) of a second pass, normalised over True/False", _ptrue))


def default_column(columns: Iterable[str]) -> str | None:
    """The signal column to tune on by default among ``columns``: ``confidence`` (imported records), else
    the :data:`DEFAULT` signal's column, else the first registered signal's column present; None if none."""
    cols = list(columns)
    if "confidence" in cols:
        return "confidence"
    for name in [DEFAULT, *SIGNALS]:
        if name in SIGNALS and SIGNALS[name].column in cols:
            return SIGNALS[name].column
    return None


def by_column(column: str) -> Signal | None:
    """The registered signal written to ``column``, or None (e.g. the generic ``confidence`` column)."""
    for sig in SIGNALS.values():
        if sig.column == column:
            return sig
    return None


def names() -> tuple[str, ...]:
    return tuple(SIGNALS)


def get(name: str) -> Signal:
    if name not in SIGNALS:
        raise KeyError(f"unknown signal {name!r}; known: {', '.join(SIGNALS)}")
    return SIGNALS[name]


def column(name: str) -> str:
    return get(name).column


def columns_for(signal_names: Iterable[str], task: str) -> list[str]:
    """The records columns that scoring ``signal_names`` writes for a benchmark of ``task``."""
    return [SIGNALS[n].column for n in signal_names if SIGNALS[n].applies_to(task)]


def needed(signal_names: Iterable[str], task: str) -> set[str]:
    """What the engine must be asked for (see :data:`NEEDS`) to compute ``signal_names`` on ``task``."""
    return {SIGNALS[n].needs for n in signal_names if SIGNALS[n].applies_to(task)}


def method(sig: Signal, obs: Observation) -> str:
    """How the engine obtained what ``sig`` is computed from, as it reported it (``GenResult.provenance``):
    the answer's token log-probs and top-2 (``generation``), the option letters' log-probs at the first
    generated position (``choices``) or the P(True) pass's True/False log-probs (``ptrue``)."""
    if sig.needs == "ptrue":
        return (getattr(obs.ptrue, "provenance", None) or {}).get("watch", "unknown")
    part = "watch" if sig.needs == "choices" else "logprobs"
    return (getattr(obs.answer, "provenance", None) or {}).get(part, "unknown")


def methods(signal_names: Iterable[str], obs: Observation) -> dict[str, str]:
    """``{column: method}`` for the signals of ``signal_names`` that apply to ``obs.task`` (the records'
    ``signal_methods`` column)."""
    return {SIGNALS[n].column: method(SIGNALS[n], obs) for n in signal_names if SIGNALS[n].applies_to(obs.task)}


def compute(signal_names: Iterable[str], obs: Observation) -> dict[str, float]:
    """``{column: value}`` of every signal of ``signal_names`` that applies to ``obs.task``."""
    out = {}
    for n in signal_names:
        sig = SIGNALS[n]
        if not sig.applies_to(obs.task):
            continue
        if sig.compute is None:
            raise ValueError(f"signal {n} has no compute function; register it with compute=...")
        out[sig.column] = float(sig.compute(obs))
    return out
