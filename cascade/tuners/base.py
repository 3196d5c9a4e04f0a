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
:meth:`Tuner.validate_params` checks a parameter dict (names, and value types against the defaults)
before any work, so every entry point (``cascade tune``, ``cascade study``, a sweep spec) refuses a
misspelt parameter the same way.
"""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from cascade.data.records import CascadeData

METHODS: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


class Tuner:
    """Base class of threshold tuners."""

    name = "base"

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
    def validate_params(cls, params: dict | None) -> dict:
        """Check ``params`` against the declared parameters; returns them (integral floats for integer
        parameters become ints). Raises ValueError naming the method, the parameter and the valid ones."""
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
        return params


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
