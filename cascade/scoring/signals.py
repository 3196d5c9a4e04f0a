"""Confidence signals: one registry entry per signal says everything the project knows about it.

A signal has a short ``name`` (what a scoring config lists under ``signals:``), the records ``column``
it is written to, the ``transform`` the tuner's logistic calibration applies to it
(:mod:`cascade.tuners.calibration`: ``one-sided`` for answer log-probabilities in (-inf, 0],
``two-sided`` for P(True) log-probabilities, ``identity`` for margins and other bounded scores), and
what the scoring stage ``needs`` to compute it. Adding a signal is one :func:`register` call here plus
its computation in :mod:`cascade.scoring.stage`.
"""

from __future__ import annotations

from dataclasses import dataclass

TRANSFORMS = ("one-sided", "two-sided", "identity")


@dataclass(frozen=True)
class Signal:
    name: str
    column: str
    transform: str
    needs: str  # "generation" (log-probs of the generated answer), "choices" (multiple choice), "ptrue"
    description: str


SIGNALS: dict[str, Signal] = {}


def register(sig: Signal) -> Signal:
    if sig.transform not in TRANSFORMS:
        raise ValueError(f"signal {sig.name}: transform must be one of {', '.join(TRANSFORMS)}")
    SIGNALS[sig.name] = sig
    return sig


register(Signal("mean_logprob", "conf_mean_logprob", "one-sided", "generation",
                "mean log-probability of the answer tokens"))
register(Signal("first_logprob", "conf_first_logprob", "one-sided", "generation",
                "log-probability of the first answer token"))
register(Signal("top2_margin", "conf_top2_margin", "identity", "generation",
                "first generated token: probability margin between the top two tokens"))
register(Signal("top2_logit_margin", "conf_top2_logit_margin", "identity", "generation",
                "first generated token: logit margin between the top two tokens"))
register(Signal("choice_logprob", "conf_choice_logprob", "one-sided", "choices",
                "normalised log-likelihood of the chosen option among the options (multiple choice)"))
register(Signal("ptrue", "conf_ptrue", "two-sided", "ptrue",
                "P(True) self-evaluation: log-probability of 'True' in a second pass"))


def by_column(column: str) -> Signal | None:
    """The registered signal written to ``column``, or None (e.g. the generic ``confidence`` column)."""
    for sig in SIGNALS.values():
        if sig.column == column:
            return sig
    return None


def names() -> tuple[str, ...]:
    return tuple(SIGNALS)


def column(name: str) -> str:
    return SIGNALS[name].column
