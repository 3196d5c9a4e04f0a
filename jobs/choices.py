"""Choices for the ``cascade`` CLI read from the project's registries, lazily.

The registries (tuning methods: :data:`cascade.tuners.METHODS`; benchmarks:
:data:`cascade.data.benchmarks.BENCHMARKS`; confidence signals: :data:`cascade.scoring.signals.SIGNALS`)
live in modules that import numpy, scipy or pandas; importing ``cascade.tuners`` alone takes seconds.
So the parsers hold :class:`Registry` objects: a help text uses ``%(choices)s`` (or :func:`help_text`),
and the registry module is imported only when a help text is actually printed or a value is checked,
never when the parser is built. ``cascade --help`` stays fast; ``cascade tune --help`` lists the
methods the code really registers.
"""

from __future__ import annotations

import importlib


class Registry:
    """A lazily imported registry: iterating it imports ``module`` and yields the names in ``attr``
    (a dict's keys) or what ``fmt`` makes of each entry."""

    def __init__(self, what: str, module: str, attr: str, fmt=None):
        self.what, self.module, self.attr, self.fmt = what, module, attr, fmt

    def entries(self) -> dict:
        return dict(getattr(importlib.import_module(self.module), self.attr))

    def names(self) -> list[str]:
        if self.fmt is None:
            return list(self.entries())
        return [self.fmt(v) for v in self.entries().values()]

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, value) -> bool:
        return value in self.names()

    def __str__(self) -> str:
        return ", ".join(self.names())

    def __repr__(self) -> str:  # argparse may repr choices in messages
        return str(self)


class LazyHelp(str):
    """A help string whose ``%`` formatting (done by argparse only when help is printed) calls ``make``."""

    def __new__(cls, make, placeholder: str):
        obj = super().__new__(cls, placeholder)  # non-empty: argparse prints only a truthy help
        obj.make = make
        return obj

    def __mod__(self, params):
        return str(self.make()) % params


METHODS = Registry("tuning methods", "cascade.tuners", "METHODS")
BENCHMARKS = Registry("benchmarks", "cascade.data.benchmarks", "BENCHMARKS")
SIGNALS = Registry("confidence signals", "cascade.scoring.signals", "SIGNALS")
SIGNAL_COLUMNS = Registry("signal columns", "cascade.scoring.signals", "SIGNALS", fmt=lambda s: s.column)


def help_text(template: str, **registries: Registry) -> LazyHelp:
    """``template`` with ``{name}`` fields filled from the registries when the help is printed; the
    result still goes through argparse's ``%`` formatting (``%(default)s`` works, ``%%`` is a percent)."""
    return LazyHelp(lambda: template.format(**{k: str(r) for k, r in registries.items()}), template)


def _first_sentence(doc: str) -> str:
    para = " ".join(doc.strip().split("\n\n")[0].split())
    end = para.find(". ")
    return (para[:end + 1] if end >= 0 else para).replace("``", "")


def listing(kind: str) -> list[tuple[str, str]]:
    """(name, description) rows for ``cascade list KIND``: methods, benchmarks or signals."""
    if kind == "methods":
        rows = []
        for name, cls in METHODS.entries().items():
            doc = cls.__doc__ or (importlib.import_module(cls.__module__).__doc__ or "")
            params = ", ".join(cls.param_names())
            rows.append((name, _first_sentence(doc) + (f" [parameters: {params}]" if params else "")))
        return rows
    if kind == "benchmarks":
        return [(name, f"{b.task}: {b.description}") for name, b in BENCHMARKS.entries().items()]
    if kind == "signals":
        return [(name, f"column {s.column}, transform {s.transform}, needs {s.needs}: {s.description}")
                for name, s in SIGNALS.entries().items()]
    raise ValueError(f"cascade list {kind!r}: choose methods, benchmarks or signals")


__all__ = ["BENCHMARKS", "LazyHelp", "METHODS", "Registry", "SIGNALS", "SIGNAL_COLUMNS", "help_text", "listing"]
