"""``engine: openai``: a model behind any OpenAI-compatible server (vLLM, SGLang, a hosted provider).

The stage's ``model`` is the served model's name; the engine's own stage fields are
:class:`OpenAIFields`. Requests go through the ``openai`` client (its retries: connection errors,
timeouts, 408/409/429/5xx, exponential backoff from 0.5 s with jitter, ``Retry-After`` honoured, up to
``max_retries`` times), ``concurrency`` at a time per actor, at most ``qps`` per second per stage
(shared out among the stage's replicas). A request that still fails gives a failed result
(``GenResult.error``): the row is recorded as failed, never as a record.

What comes back and how each part is used (``GenResult.provenance`` says which way a row went):

- the answer (greedy: ``temperature 0``, ``seed 0``) with ``logprobs``/``top_logprobs`` (``top_logprobs``,
  default 20): the answer tokens' log-probs (mean and first-token signals) and the top two at the first
  position (margins), ``api-logprobs``;
- ``usage``: ``input_tokens``/``output_tokens`` and so the cost;
- watched words (option letters, True/False, Yes/No) at the first generated position: from the first
  position's ``top_logprobs``, matched by spelling ('A', ' A', 'a', ' a'); a spelling outside the top k
  counts as -inf, so a normalised letter log-prob is an upper bound when letters fall outside
  (``api-top-K (absent: -inf)``, the rule of the vLLM engine). For option letters, where the server
  returns prompt log-probs (vLLM's ``prompt_logprobs``) and ``choice_logprobs`` is ``auto`` or
  ``prompt_logprobs``, each spelling is scored exactly instead: one request per spelling with the
  spelling as the start of the assistant's reply (``continue_final_message``), reading the log-prob of
  that last prompt token (``api-prompt-logprobs``); a spelling the server's tokenizer does not append as
  one token is left out (as the local engines leave out spellings of several tokens). Those requests'
  tokens are in the row's cost.

``max_cost_usd`` (a stage field, per run): before each request the engine reserves an upper bound of
its cost (the message's UTF-8 bytes plus 64 template tokens at the input price, ``max_tokens`` at the
output price; byte-level BPE tokens cover at least one byte) and sends it only if spent + reserved stays
within the stage's budget (split evenly among replicas); otherwise the row fails with ``max_cost_usd``.

The API key is read from the environment variable named by ``api_key_env`` where the engine runs; the
key itself is in no config, record, stats file or log. :func:`preflight` is the one call per stage the
driver makes before any scoring.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.special import logsumexp

from .base import Engine, GenRequest, GenResult, failed_result
from .registry import EngineSpec, register

TEMPLATE_TOKENS = 64  # allowance for the chat template's tokens in a request's cost bound
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class OpenAIFields(BaseModel):
    """The stage fields of ``engine: openai`` (beside ``model``, ``price``, ``max_cost_usd``, ``batch_size``)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="the server's OpenAI API root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    api: Literal["chat", "completions"] = Field("chat", description="chat completions, or completions (plain prompt)")
    qps: float | None = Field(None, gt=0, description="requests per second for the stage (all replicas)")
    concurrency: int = Field(4, ge=1, description="requests in flight per actor")
    max_retries: int = Field(3, ge=0, description="retries of a request (429, 5xx, timeouts, connection errors)")
    timeout_s: float = Field(60.0, gt=0, description="seconds per request")
    top_logprobs: int = Field(20, ge=2, description="alternatives per position (OpenAI allows 20)")
    choice_logprobs: Literal["auto", "prompt_logprobs", "top_logprobs"] = Field(
        "auto", description="option letters: exact through prompt log-probs (auto: when the server has them)")
    tokenizer: str | None = Field(None, description="the served model's tokenizer (a local model, HF folder or "
                                                    "hub id) for exact token estimates in --check")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:8000/v1, got {v!r}")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError("give the name of an environment variable holding the key (e.g. OPENAI_API_KEY), "
                             "not the key itself")
        return v


def api_key(fields: OpenAIFields) -> str:
    """The key from the environment ("EMPTY" for a server without one, as vLLM's docs use)."""
    if fields.api_key_env is None:
        return "EMPTY"
    return os.environ.get(fields.api_key_env, "")


def _client(fields: OpenAIFields, *, max_retries: int | None = None, timeout: float | None = None):
    from openai import OpenAI

    return OpenAI(base_url=fields.base_url, api_key=api_key(fields) or "EMPTY",
                  max_retries=fields.max_retries if max_retries is None else max_retries,
                  timeout=fields.timeout_s if timeout is None else timeout)


def _error_text(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e)
    status = getattr(e, "status_code", None)
    msg = " ".join(str(msg).split())[:300]
    return f"{type(e).__name__}{f' (HTTP {status})' if status else ''}: {msg}"


class _Budget:
    """Spend of one actor against its share of ``max_cost_usd``: reserve an upper bound before a request,
    settle it with the real cost after."""

    def __init__(self, limit: float | None):
        self.limit, self.spent, self.reserved = limit, 0.0, 0.0
        self.lock = threading.Lock()

    def reserve(self, bound: float) -> bool:
        with self.lock:
            if self.limit is not None and self.spent + self.reserved + bound > self.limit:
                return False
            self.reserved += bound
            return True

    def settle(self, bound: float, actual: float) -> None:
        with self.lock:
            self.reserved -= bound
            self.spent += actual


class _Pacer:
    """At most ``qps`` request starts per second (None: no limit)."""

    def __init__(self, qps: float | None):
        self.gap = 1.0 / qps if qps else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.gap:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.gap
        if start > now:
            time.sleep(start - now)


class _OutOfBudget(Exception):
    pass


class OpenAIEngine(Engine):
    name = "openai"
    OPTIONS: dict[str, type] = {}
    PROMPTS = "messages"  # the server applies the model's chat template

    def __init__(self, model: str, *, fields: OpenAIFields, batch_size: int = 8, price_input: float = 0.0,
                 price_output: float = 0.0, max_cost_usd: float | None = None, replicas: int = 1, **_):
        super().__init__(model, dtype="auto", batch_size=batch_size)
        self.model = model
        self.f = fields
        self.client = _client(fields)
        self.price_input, self.price_output = price_input, price_output
        self.budget = _Budget(None if max_cost_usd is None else max_cost_usd / max(1, replicas))
        self.pacer = _Pacer(fields.qps / max(1, replicas) if fields.qps else None)
        self.exact_choices = fields.choice_logprobs == "prompt_logprobs" or (
            fields.choice_logprobs == "auto" and self._has_prompt_logprobs())

    @classmethod
    def from_stage(cls, st) -> OpenAIEngine:
        return cls(st.model, fields=st.engine_fields(), batch_size=st.batch_size, price_input=st.price.input,
                   price_output=st.price.output, max_cost_usd=st.max_cost_usd, replicas=st.resources.replicas)

    # ---------------------------------------------------------------------------------- requests

    def _messages(self, message: str, reply: str | None = None) -> list[dict]:
        msgs = [{"role": "user", "content": message}]
        if reply is not None:
            msgs.append({"role": "assistant", "content": reply})
        return msgs

    def _bound(self, message: str, max_tokens: int) -> float:
        return ((len(message.encode()) + TEMPLATE_TOKENS) * self.price_input + max_tokens * self.price_output) / 1e6

    def _call(self, message: str, max_tokens: int, *, reply: str | None = None, extra: dict | None = None):
        bound = self._bound(message + (reply or ""), max_tokens)
        if not self.budget.reserve(bound):
            raise _OutOfBudget(f"max_cost_usd reached: this request (up to ${bound:.6f}) would take the stage "
                               f"over its budget; raise max_cost_usd and rerun to score the rest")
        actual = 0.0
        try:
            self.pacer.wait()
            common = dict(model=self.model, max_tokens=max_tokens, temperature=0.0, seed=0, extra_body=extra or None)
            if self.f.api == "chat":
                resp = self.client.chat.completions.create(
                    messages=self._messages(message, reply), logprobs=True, top_logprobs=self.f.top_logprobs,
                    **common)
            else:
                resp = self.client.completions.create(prompt=message + (reply or ""), logprobs=self.f.top_logprobs,
                                                      **common)
            u = resp.usage
            if u is not None:
                actual = (u.prompt_tokens * self.price_input + u.completion_tokens * self.price_output) / 1e6
            return resp
        finally:
            self.budget.settle(bound, actual)

    def _positions(self, choice) -> tuple[list[float], list[dict[str, float]]]:
        """Per generated position: the token's log-prob and {spelling: log-prob} of the top alternatives."""
        lp = choice.logprobs
        if lp is None:
            raise ValueError("the response has no logprobs")
        if self.f.api == "chat":
            content = lp.content or []
            lps = [float(c.logprob) for c in content]
            tops = [_first_per_spelling((t.token, t.logprob) for t in (c.top_logprobs or [])) for c in content]
        else:
            lps = [float(x) for x in (lp.token_logprobs or [])]
            tops = [_first_per_spelling((d or {}).items()) for d in (lp.top_logprobs or [])]
        return lps, tops

    def _exact_watch(self, req: GenRequest) -> tuple[list[float], int, int]:
        """Each watched spelling's exact log-prob at the first generated position (prompt log-probs)."""
        vals, tin, tout = [], 0, 0
        for group in req.watch_text:
            got = []
            for s in group:
                extra = {"prompt_logprobs": 0}
                if self.f.api == "chat":
                    extra.update(continue_final_message=True, add_generation_prompt=False)
                resp = self._call(req.message, 1, reply=s, extra=extra)
                if resp.usage is not None:
                    tin, tout = tin + resp.usage.prompt_tokens, tout + resp.usage.completion_tokens
                plp = _extra(resp, "prompt_logprobs")
                last = plp[-1] if plp else None
                if not last:
                    raise ValueError("the server returned no prompt_logprobs")
                (entry,) = list(last.values())[:1]
                tok = entry.get("decoded_token") if isinstance(entry, dict) else None
                if tok is not None and tok != s:
                    continue  # the server's tokenizer did not append this spelling as one token
                got.append(float(entry["logprob"] if isinstance(entry, dict) else entry))
            vals.append(float(logsumexp(got)) if got else -math.inf)
        return vals, tin, tout

    def _one(self, req: GenRequest) -> GenResult:
        t0 = time.perf_counter()
        try:
            resp = self._call(req.message, req.max_new_tokens)
            choice = resp.choices[0]
            lps, tops = self._positions(choice)
            if not lps:
                raise ValueError("the response has no log-probs for the answer tokens")
            first = tops[0] if tops else {}
            top = sorted(first.values(), reverse=True) + [-math.inf, -math.inf]
            k = self.f.top_logprobs
            exact = self.exact_choices and req.exact_watch and req.watch_text
            if exact:
                watch, xin, xout = self._exact_watch(req)
            else:
                watch, xin, xout = [], 0, 0
                for group in req.watch_text:
                    got = [first[s] for s in group if s in first]
                    watch.append(float(logsumexp(got)) if got else -math.inf)
            u = resp.usage
            n_in = int(u.prompt_tokens) if u is not None else 0
            n_out = int(u.completion_tokens) if u is not None else len(lps)
            text = choice.message.content if self.f.api == "chat" else choice.text
            # the stop token is among the log-probs when the server counts it (vLLM does): as in the local
            # engines, the mean log-prob then leaves it out
            stopped = choice.finish_reason == "stop" and len(lps) == n_out and n_out > 0
            return GenResult(
                token_ids=[], text=text or "", token_logprobs=lps, top2_logprobs=(top[0], top[1]),
                watch_logprobs=watch, input_tokens=n_in, output_tokens=n_out, stopped=stopped,
                seconds=time.perf_counter() - t0,
                provenance={"logprobs": "api-logprobs",
                            "watch": "api-prompt-logprobs" if exact else f"api-top-{k} (absent: -inf)"},
                extra_input_tokens=xin, extra_output_tokens=xout,
            )
        except _OutOfBudget as e:
            return failed_result(req, str(e))
        except Exception as e:  # openai.APIError (after its retries) or a response without what scoring needs
            if not _is_api_failure(e):
                raise
            return failed_result(req, _error_text(e))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        with ThreadPoolExecutor(max_workers=self.f.concurrency) as pool:
            return list(pool.map(self._one, requests))

    def _has_prompt_logprobs(self) -> bool:
        try:
            extra = {"prompt_logprobs": 0}
            if self.f.api == "chat":
                resp = _client(self.f, max_retries=1).chat.completions.create(
                    model=self.model, messages=self._messages("Hi"), max_tokens=1, temperature=0.0,
                    extra_body=extra)
            else:
                resp = _client(self.f, max_retries=1).completions.create(
                    model=self.model, prompt="Hi", max_tokens=1, temperature=0.0, extra_body=extra)
        except Exception as e:
            if _is_api_failure(e):
                return False
            raise
        return bool(_extra(resp, "prompt_logprobs"))

    def close(self) -> None:
        self.client.close()


def _is_api_failure(e: BaseException) -> bool:
    import openai

    return isinstance(e, (openai.APIError, ValueError))


def _first_per_spelling(pairs) -> dict[str, float]:
    """{spelling: log-prob}, the highest when two tokens decode to the same text."""
    out: dict[str, float] = {}
    for tok, lp in pairs:
        if tok not in out or lp > out[tok]:
            out[tok] = float(lp)
    return out


def _extra(resp, name: str):
    """A field the OpenAI schema lacks but a server adds (vLLM: ``prompt_logprobs``)."""
    v = getattr(resp, name, None)
    if v is None:
        v = (getattr(resp, "model_extra", None) or {}).get(name)
    if v is None and getattr(resp, "choices", None):
        c = resp.choices[0]
        v = getattr(c, name, None) or (getattr(c, "model_extra", None) or {}).get(name)
    return v


# ------------------------------------------------------------------------------------------ preflight


def preflight(st, where: str) -> str:
    """One check of a stage's server before any scoring: the key is there and accepted, the model is
    served, a completion comes back with log-probs. Returns a short description; raises ``ValueError``
    with one line naming the field and the fix."""
    import openai

    f = st.engine_fields()
    if f.api_key_env is not None and not os.environ.get(f.api_key_env):
        raise ValueError(f"{where}.api_key_env: the environment variable {f.api_key_env} is not set (or empty); "
                         "export it with the server's API key")
    client = _client(f, max_retries=1, timeout=min(f.timeout_s, 30.0))
    key_fix = (f"the key in ${f.api_key_env} was rejected; export the right key" if f.api_key_env else
               "the server wants an API key; set api_key_env to the name of the environment variable holding it")
    try:
        try:
            served = [m.id for m in client.models.list()]
        except openai.NotFoundError:
            served = None  # a server without /models: the completion below tells
        if served is not None and st.model not in served:
            raise ValueError(f"{where}.model: {f.base_url} does not serve {st.model!r}; it serves: "
                             f"{', '.join(served) or 'nothing'}")
        common = dict(model=st.model, max_tokens=1, temperature=0.0)
        if f.api == "chat":
            resp = client.chat.completions.create(messages=[{"role": "user", "content": "Say yes."}], logprobs=True,
                                                  top_logprobs=f.top_logprobs, **common)
            lp = resp.choices[0].logprobs
            ok = lp is not None and bool(lp.content) and bool(lp.content[0].top_logprobs)
        else:
            resp = client.completions.create(prompt="Say yes.", logprobs=f.top_logprobs, **common)
            lp = resp.choices[0].logprobs
            ok = lp is not None and bool(lp.token_logprobs) and bool(lp.top_logprobs)
    except openai.APIConnectionError as e:
        raise ValueError(f"{where}.base_url: cannot reach {f.base_url} ({_error_text(e.__cause__ or e)}); start "
                         "the server or correct base_url") from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise ValueError(f"{where}.api_key_env: {f.base_url} answered HTTP {e.status_code}: {key_fix}") from None
    except openai.NotFoundError as e:
        raise ValueError(f"{where}.model: {f.base_url} has no model {st.model!r} ({_error_text(e)}); name a "
                         "served model") from None
    except openai.BadRequestError as e:
        raise ValueError(f"{where}.top_logprobs: {f.base_url} refused a request with top_logprobs="
                         f"{f.top_logprobs} ({_error_text(e)}); lower top_logprobs (OpenAI allows 20) or raise "
                         "the server's limit (vLLM: --max-logprobs)") from None
    except openai.APIError as e:
        raise ValueError(f"{where}.base_url: {f.base_url} failed the preflight request ({_error_text(e)}); "
                         "check the server") from None
    finally:
        client.close()
    if not ok:
        raise ValueError(f"{where}.engine: {f.base_url} returns no log-probs for {st.model!r}; scoring needs "
                         "them (vLLM, SGLang and OpenAI return them): use a server that does")
    return f"{f.base_url} serves {st.model}"


register(EngineSpec(
    name="openai", factory=f"{__name__}:OpenAIEngine", needs="endpoint",
    description="a model behind an OpenAI-compatible server (chat completions or completions), with log-probs",
    fields=OpenAIFields, requires="openai", install_hint="pip install the 'api' extra (openai)",
    preflight=preflight,
))
