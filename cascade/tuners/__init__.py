"""Tuners: ``base`` defines the interface and registry and imports no tuner; this package imports every
tuner module so that importing ``cascade.tuners`` registers them all (Optuna's samplers pattern).

Adding a tuner: one module with a ``@register("name")`` class, and one import line below.
"""

from cascade.tuners.base import METHODS, Tuner, get_method, register, threshold_bounds  # noqa: F401

from cascade.tuners import markov_copula  # noqa: F401,E402
from cascade.tuners import grid  # noqa: F401,E402
from cascade.tuners import bayes_opt  # noqa: F401,E402
from cascade.tuners import random_routing  # noqa: F401,E402
from cascade.tuners import margin  # noqa: F401,E402
from cascade.tuners import learned  # noqa: F401,E402
from cascade.tuners import copula  # noqa: F401,E402
