"""Tuner base: the estimator interface, the registry, declared parameters.

Every tuner is a scikit-learn style estimator: parameters in the constructor, ``fit(train)`` on a
:class:`~cascade.records.CascadeData` whose ``confidence`` holds *calibrated* confidences (P(correct))
and whose ``cost`` holds per-query costs in USD per million queries (column means under
``--cost model-mean``). After ``fit``:

- ``thresholds_``: list of (k-1,) arrays, one per point of the error-cost curve;
- ``train_error_``, ``train_cost_``: the tuner's own estimate on the training split for each vector
  (the model's prediction for markov-copula, empirical values for search methods);
- ``diagnostics_``: a JSON-able dict.

Methods register themselves in :data:`METHODS` with :func:`register`. A tuner's parameters are its
constructor's keyword arguments (scikit-learn style): :meth:`Tuner.param_names` lists them and
:meth:`Tuner.validate_params` checks a parameter dict (names, value types against the defaults, and
the bounds each tuner declares in ``parameter_constraints``, as scikit-learn's
``_parameter_constraints``: :class:`Interval`, :class:`Options`, :class:`Values`, :class:`Text`)
before any work, so every entry point (``cascade tune``, ``cascade study``, a sweep spec) refuses a
misspelt or out-of-bounds parameter the same way, in one line naming the parameter and its bounds.
Every declared parameter has a constraint (tests/test_tuner_bounds.py checks each registered method).

:meth:`Tuner.memory_need` estimates the bytes a fit needs for n training queries and k models, and
:func:`check_memory` refuses a fit whose estimate exceeds the machine's memory (grid search over many
models is the case that matters: its grid has n_quantiles^(k-1) cells).
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from cascade.data.records import CascadeData

METHODS: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


@dataclass(frozen=True)
class Interval:
    """A number (``kind`` int or float) between ``lo`` and ``hi`` (None: unbounded on that side; an
    unbounded float side still refuses +-inf unless ``infinite``), each end closed unless named in
    ``open`` ("lo", "hi" or "both"). NaN never lies in an interval. ``none``: None is accepted too."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    open: str = ""
    none: bool = False
    infinite: bool = False

    def ok(self, v) -> bool:
        if v is None:
            return self.none
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return False
        v = float(v)
        if math.isnan(v) or (math.isinf(v) and not self.infinite):
            return False
        if self.kind is int and not v.is_integer():
            return False
        lo_open, hi_open = self.open in ("lo", "both"), self.open in ("hi", "both")
        if self.lo is not None and (v < self.lo or (lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (hi_open and v == self.hi)))

    def text(self) -> str:
        what = "a whole number" if self.kind is int else "a finite number"
        lo_open, hi_open = self.open in ("lo", "both"), self.open in ("hi", "both")
        if self.lo is not None and self.hi is not None:
            rng = f"in {'(' if lo_open else '['}{self.lo:g}, {self.hi:g}{')' if hi_open else ']'}"
        elif self.lo is not None:
            rng = f"{'>' if lo_open else '>='} {self.lo:g}"
        elif self.hi is not None:
            rng = f"{'<' if hi_open else '<='} {self.hi:g}"
        else:
            rng = ""
        return " ".join(x for x in (what, rng, "(inf allowed)" if self.infinite else "", "or none" if self.none else "")
                        if x)


@dataclass(frozen=True)
class Options:
    """One of ``values`` (strings); ``many``: a comma-separated list of them (at least one)."""

    values: tuple
    many: bool = False

    def ok(self, v) -> bool:
        if not isinstance(v, str):
            return False
        items = [x.strip() for x in v.split(",")] if self.many else [v]
        return bool(items) and all(x in self.values for x in items)

    def text(self) -> str:
        return ("a comma-separated list of " if self.many else "one of ") + ", ".join(self.values)


@dataclass(frozen=True)
class Values:
    """A list of ``lo``..``hi`` items each satisfying ``item`` (None too if ``none``)."""

    item: Interval
    lo: int = 1
    hi: int = 1000
    none: bool = False

    def ok(self, v) -> bool:
        if v is None:
            return self.none
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
            return False
        return self.lo <= len(v) <= self.hi and all(self.item.ok(x) for x in v)

    def text(self) -> str:
        return (f"a list of {self.lo} to {self.hi} values, each {self.item.text()}"
                + (", or none" if self.none else ""))


@dataclass(frozen=True)
class Text:
    """Any string of at most ``max_len`` characters (None too if ``none``): names, storage URLs."""

    max_len: int = 1000
    none: bool = False

    def ok(self, v) -> bool:
        return (v is None and self.none) or (isinstance(v, str) and len(v) <= self.max_len)

    def text(self) -> str:
        return f"a string of at most {self.max_len} characters" + (" or none" if self.none else "")


#: The seed of a tuner: numpy and Optuna take seeds below 2**32.
SEED = Interval(int, 0, 2 ** 32 - 1)
#: A lambda path's start values (error + lambda * cost, cost in USD per million queries).
LAMBDAS = Values(Interval(float, 0, 1e12), 1, 100)


class Tuner:
    """Base class of threshold tuners."""

    name = "base"
    #: parameter -> its constraint (:class:`Interval`, :class:`Options`, :class:`Values`, :class:`Text`);
    #: merged along the class hierarchy (a subclass adds to or overrides its bases').
    parameter_constraints: dict = {}

    def fit(self, train: CascadeData) -> "Tuner":  # pragma: no cover - interface
        raise NotImplementedError

    def get_params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    @classmethod
    def _declared(cls) -> dict[str, inspect.Parameter]:
        sig = inspect.signature(cls.__init__)
        return {n: p for n, p in list(sig.parameters.items())[1:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    @classmethod
    def param_names(cls) -> list[str]:
        """The parameters the tuner declares (its constructor's keyword arguments), sorted."""
        return sorted(cls._declared())

    @classmethod
    def constraints(cls) -> dict:
        """Every parameter's constraint, the class's own over its bases'."""
        out: dict = {}
        for klass in reversed(cls.__mro__):
            out.update(vars(klass).get("parameter_constraints", {}))
        return out

    @classmethod
    def memory_need(cls, n: int, k: int, params: dict | None = None) -> tuple[float, str]:
        """Estimated peak bytes of a fit on n training queries and k models with ``params``, and the hint
        a refusal gives. The base estimate: a few copies of the (n, k) arrays."""
        return 16.0 * 8 * n * k, "use fewer training queries"

    @classmethod
    def validate_params(cls, params: dict | None) -> dict:
        """Check ``params`` against the declared parameters; returns them (integral floats for integer
        parameters become ints). Raises ValueError naming the method, the parameter and the valid ones,
        or the parameter and its bounds."""
        params = dict(params or {})
        declared = cls._declared()
        takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
        valid = ", ".join(sorted(declared)) or "none"
        for name, value in list(params.items()):
            if name not in declared:
                if takes_any:
                    continue
                raise ValueError(f"method {cls.name}: unknown parameter {name!r}; valid parameters: {valid}")
            params[name] = _check_type(cls.name, name, value, declared[name])
            rule = cls.constraints().get(name)
            if rule is not None and not rule.ok(params[name]):
                raise ValueError(f"method {cls.name}: parameter {name} must be {rule.text()}, got {value!r}")
        return params


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's physical memory, or a cgroup (container)
    limit when lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return total


def _bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if b < 1024 or unit == "EiB":
            return f"{b:.3g} {unit}" if unit != "B" else f"{b:.0f} B"
        b /= 1024
    return f"{b:.3g} EiB"  # pragma: no cover


def check_memory(cls: type, n: int, k: int, params: dict | None = None, *, available: int | None = None) -> float:
    """Refuse (ValueError, one line) a fit whose :meth:`Tuner.memory_need` exceeds ``available`` bytes (by
    default :func:`machine_memory`); returns the estimate."""
    need, hint = cls.memory_need(n, k, dict(params or {}))
    have = machine_memory() if available is None else available
    if need > have:
        raise ValueError(f"method {cls.name} on {k} models and {n} training queries needs about {_bytes(need)} of "
                         f"memory, more than this machine's {_bytes(have)}; {hint}")
    return need


def _check_type(method: str, name: str, value, param: inspect.Parameter):
    """Cheap type check of one parameter value against its default (or annotation when the default is
    None): numbers for numeric parameters (whole numbers for int ones), strings for str ones, lists for
    tuple/list ones. ``None`` is accepted where the default is ``None``."""
    default = param.default
    ann = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")
    if default is inspect.Parameter.empty:
        return value
    if default is None:
        if value is None:
            return value
        kind = "float" if "float" in ann else "int" if "int" in ann else "str" if "str" in ann else None
    elif isinstance(default, bool):
        kind = "bool"
    elif isinstance(default, numbers.Integral):
        kind = "int"
    elif isinstance(default, numbers.Real):
        kind = "float"
    elif isinstance(default, str):
        kind = "str"
    elif isinstance(default, (tuple, list)):
        kind = "list"
    else:
        kind = None
    bad = None
    if kind == "bool":
        if not isinstance(value, bool):
            bad = "true or false"
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
            bad = "a whole number"
        else:
            value = int(value)
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            bad = "a number"
    elif kind == "str":
        if not isinstance(value, str):
            bad = "a string"
    elif kind == "list":
        if not isinstance(value, (tuple, list)):
            bad = "a list of values"
    if bad:
        raise ValueError(f"method {method}: parameter {name} must be {bad}, got {value!r}")
    return value


def threshold_bounds(confidence: np.ndarray, eps: float = 1e-3) -> list[tuple[float, float]]:
    """The box [min c_j + eps, max c_j - eps] for each non-final model."""
    lo = confidence[:, :-1].min(axis=0) + eps
    hi = confidence[:, :-1].max(axis=0) - eps
    return [(float(a), float(max(a, b))) for a, b in zip(lo, hi)]


def get_method(name: str) -> type:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
