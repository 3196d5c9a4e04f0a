"""The engine registry: one :class:`EngineSpec` per engine says everything the rest of the project asks.

An engine is one module that calls :func:`register` at import time with its spec: its ``name`` (what a
stage's ``engine:`` names), where its :class:`~cascade.scoring.engines.base.Engine` class lives
(``factory``, ``"module:Class"``, imported only when a stage loads it, so registering imports neither
torch nor vLLM), what it ``needs`` (``local_model``: a registered tiny model, an HF folder or a hub id
that :mod:`cascade.scoring.models` resolves; ``endpoint``: a served model behind a URL), its stage
``fields`` (a pydantic model of the keys it adds to a stage, e.g. ``base_url``), its ``engine_options``
(``options``, with their types), the signals it can give (None: every registered signal), a module it
``requires`` (checked before work, with an install hint), whether it shards a model
(``tensor_parallel``), the runner a stage with GPUs takes by default (``gpu_runner``) and the check
made before any scoring (``preflight``, an endpoint engine's one call to its server).

``cascade.scoring.config`` (field and option checks), ``cascade.scoring.stage`` (loading) and
``jobs/score.py`` (runners, preflight, cost limits) ask the registry; none of them names an engine.
A registry refuses a duplicate name. Engines of other packages register through the entry-point group
``cascade.engines`` (the entry point is the module to import), loaded the first time an unknown name
is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

NEEDS = ("local_model", "endpoint")
ENTRY_POINT_GROUP = "cascade.engines"


@dataclass(frozen=True)
class EngineSpec:
    name: str
    factory: str  # "package.module:Class", the Engine subclass (imported on load)
    needs: Literal["local_model", "endpoint"]
    description: str = ""
    fields: Any = None  # a pydantic model class of the stage keys this engine adds (None: none)
    options: Mapping[str, type] = field(default_factory=dict)  # engine_options keys and their types
    signals: tuple[str, ...] | None = None  # the signal names it can give; None: every registered signal
    requires: str | None = None  # a module that must be importable where the stage runs
    install_hint: str = ""  # how to get ``requires``
    tensor_parallel: bool = False  # can shard a model over several GPUs (resources.tensor_parallel_size)
    runners: tuple[str, ...] = ("engine",)  # the runners a stage of this engine may name
    gpu_runner: str | None = None  # the runner ``runner: auto`` picks when the stage has GPUs
    #: ``preflight(stage, where) -> str``: one cheap call before any scoring (an endpoint reachable, the key
    #: accepted, the model served); raises ``ValueError`` with one line naming the field and the fix
    preflight: Any = None

    @property
    def module(self) -> str:
        """The module to import (in a Ray worker too) so that this engine is registered there."""
        return self.factory.split(":", 1)[0]

    def engine_class(self):
        mod, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(mod), attr)

    def can_give(self, signal: str) -> bool:
        return self.signals is None or signal in self.signals


_ENGINES: dict[str, EngineSpec] = {}
_entry_points_loaded = False


def register(spec: EngineSpec) -> EngineSpec:
    """Add an engine; a name already registered by another factory is refused."""
    if not spec.name or not spec.name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ValueError(f"engine name {spec.name!r}: use letters, digits, '-', '_' or '.'")
    if spec.needs not in NEEDS:
        raise ValueError(f"engine {spec.name}: needs must be one of {', '.join(NEEDS)}")
    if ":" not in spec.factory:
        raise ValueError(f"engine {spec.name}: factory must be 'module:Class', got {spec.factory!r}")
    if spec.gpu_runner is not None and spec.gpu_runner not in spec.runners:
        raise ValueError(f"engine {spec.name}: gpu_runner {spec.gpu_runner!r} is not one of its runners")
    old = _ENGINES.get(spec.name)
    if old is not None:
        if old.factory == spec.factory:  # the same module imported again (a reload): not a second engine
            _ENGINES[spec.name] = spec
            return spec
        raise ValueError(f"engine {spec.name!r} is already registered (by {old.module}); choose another name")
    _ENGINES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove an engine (tests that add one clean up with this)."""
    _ENGINES.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.split(":", 1)[0])


def get(name: str) -> EngineSpec:
    """The spec of engine ``name``; a ``ValueError`` listing the known engines if there is none."""
    if name not in _ENGINES:
        _load_entry_points()
    if name not in _ENGINES:
        raise ValueError(f"unknown engine {name!r}; use one of {', '.join(_ENGINES)}")
    return _ENGINES[name]


def names() -> tuple[str, ...]:
    _load_entry_points()
    return tuple(_ENGINES)


def ensure_registered(name: str, module: str) -> EngineSpec:
    """In a fresh process (a Ray worker): import ``module`` if ``name`` is not registered yet."""
    if name not in _ENGINES:
        importlib.import_module(module)
    return get(name)
