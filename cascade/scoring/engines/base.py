"""The engine interface: token ids in, greedy continuations with log-probabilities out.

Every engine returns the same :class:`GenResult` for the same :class:`GenRequest`, so the records it
leads to are identical in form whichever engine ran. Prompts are rendered and tokenized by the caller
(``cascade.scoring.stage``) with the model's own tokenizer, so both engines see exactly the same token ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

DTYPES = ("bfloat16", "float16", "float32", "auto")


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    #: token-id groups whose log-probs at the first generated position are returned (log-sum-exp per group)
    watch: list[list[int]] = field(default_factory=list)
    #: engines that render prompts themselves (an API server): the user message, and the watched groups
    #: as spellings (strings) instead of token ids
    message: str | None = None
    watch_text: list[list[str]] = field(default_factory=list)
    #: the watched groups are the options of a multiple-choice answer: an engine that can score them
    #: exactly (an API server with prompt log-probs) does so
    exact_watch: bool = False


@dataclass
class GenResult:
    token_ids: list[int]  # generated tokens, up to and including the stop token if one was produced
    text: str  # decoded answer, special tokens skipped
    token_logprobs: list[float]  # log-prob of each generated token (full-vocabulary softmax, raw logits)
    top2_logprobs: tuple[float, float]  # the two largest log-probs at the first generated position
    watch_logprobs: list[float]  # one per request.watch group
    input_tokens: int
    output_tokens: int
    stopped: bool  # True when a stop token ended the answer
    seconds: float  # this request's share of the engine's wall time on the accelerator
    #: how the log-probs were obtained, per part: "logprobs" (answer tokens, top-2) and "watch" (watched
    #: groups); the records' ``signal_methods`` column is built from it
    provenance: dict = field(default_factory=dict)
    #: why this request has no result (an API call that still failed after its retries); the other
    #: fields are then empty and the row is recorded as failed, never as a record
    error: str | None = None
    #: tokens of extra requests this result needed (exact option-letter log-probs through prompt log-probs);
    #: they are paid for, so the row's cost includes them
    extra_input_tokens: int = 0
    extra_output_tokens: int = 0


def failed_result(request: "GenRequest", error: str) -> "GenResult":
    """The result of a request that could not be answered."""
    return GenResult(token_ids=[], text="", token_logprobs=[], top2_logprobs=(float("-inf"), float("-inf")),
                     watch_logprobs=[], input_tokens=0, output_tokens=0, stopped=False, seconds=0.0, error=error)


class Engine(ABC):
    """A loaded model that generates greedily. Subclasses set ``name`` and ``tokenizer``.

    ``OPTIONS`` names the engine-specific keyword arguments a scoring config may pass through a stage's
    ``engine_options`` (with their types); the config refuses any other key before work starts.

    ``PROMPTS`` says what a request carries: ``"tokens"`` (the prompt rendered with ``tokenizer``'s chat
    template, as token ids) or ``"messages"`` (the message itself: the engine renders it, e.g. an API server);
    :func:`cascade.scoring.stage.prompter_of` picks the stage's prompter from it.
    """

    name = "base"
    OPTIONS: dict[str, type] = {}
    PROMPTS = "tokens"

    def __init__(self, model_path: str, *, dtype: str = "bfloat16", batch_size: int = 8, threads: int | None = None,
                 max_model_len: int | None = None, tensor_parallel_size: int = 1):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_path = model_path
        self.dtype = dtype
        self.batch_size = batch_size
        self.threads = threads
        self.max_model_len = max_model_len
        self.tensor_parallel_size = tensor_parallel_size
        self.tokenizer = None

    @classmethod
    def stage_kwargs(cls, st) -> dict:
        """The keyword arguments a stage config (:class:`cascade.scoring.config.StageConfig`) gives this
        engine's constructor (besides the model path)."""
        import math

        threads = st.resources.threads or max(1, math.ceil(st.resources.num_cpus))
        return dict(dtype=st.dtype, batch_size=st.batch_size, threads=threads, max_model_len=st.max_model_len,
                    tensor_parallel_size=st.resources.tensor_parallel_size, **st.engine_options)

    @classmethod
    def from_stage(cls, st) -> "Engine":
        """The engine of a stage config: a local model is resolved (a tiny model converted once) first."""
        from ..models import materialize

        return cls(materialize(st.model), **cls.stage_kwargs(st))


    @abstractmethod
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Greedy continuations, in the order of ``requests``."""

    def context_length(self) -> int | None:
        """The most tokens (prompt and answer) one request may hold; None where the engine cannot tell (a
        server refuses what it cannot take, and that row fails)."""
        return self.max_model_len

    def answer(self, requests: list[GenRequest]) -> list[GenResult]:
        """:meth:`generate` with per-row faults kept to their rows, in the order of ``requests``:

        - a request whose prompt and ``max_new_tokens`` do not fit :meth:`context_length` is not sent: its
          result is a failed row saying so (never truncated: a cut question is another question);
        - when the batch raises, each request is retried alone; one that still raises becomes a failed row
          with the error, the others keep their results. When no request of the batch succeeds alone the
          fault is not a row's (a bug, a lost device): the first error is raised.
        """
        ctx = self.context_length()
        out: list[GenResult | None] = [None] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            if ctx is not None and r.prompt_ids and len(r.prompt_ids) + r.max_new_tokens > ctx:
                out[i] = failed_result(r, f"prompt too long: {len(r.prompt_ids)} tokens + {r.max_new_tokens} to "
                                          f"generate > the model's context of {ctx} tokens; shorten the prompt or "
                                          "raise the stage's max_model_len (up to the model's own)")
            else:
                todo.append(i)
        if not todo:
            return out  # type: ignore[return-value]
        try:
            got = self.generate([requests[i] for i in todo])
        except Exception:
            if len(todo) == 1:
                raise
            got, first = [], None
            for i in todo:
                try:
                    got.append(self.generate([requests[i]])[0])
                except Exception as e:  # this row's own fault: the others answered alone
                    first = first or e
                    msg = (str(e).splitlines() or [""])[0][:300]
                    got.append(failed_result(requests[i], f"the engine raised {type(e).__name__} on this row: {msg}"))
            if all(g.error for g in got):
                raise first  # type: ignore[misc]
        for i, g in zip(todo, got):
            out[i] = g
        return out  # type: ignore[return-value]

    def close(self) -> None:  # pragma: no cover - engines without resources to free
        pass


def local_model_preflight(st, where: str) -> str:
    """The preflight of an engine that loads a local model: the stage's model resolves (a tiny model, a
    local folder, or a hub id cached or known to the hub) before Ray starts."""
    from ..models import preflight_model

    try:
        return f"{st.model}: {preflight_model(st.model)}"
    except ValueError as e:
        raise ValueError(f"{where}.model: {e}") from None


def stop_token_ids(tokenizer, generation_config=None) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else list(src))
    return ids
