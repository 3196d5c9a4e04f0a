"""Baseline tuners (issue 4). Importing this package registers them in :data:`cascade.tune.METHODS`:

- ``bayes-opt``: Optuna over the k-1 thresholds (TPE or GP sampler), multi-objective or scalarised;
- ``random``: route to the next model with a fixed probability (the straight line between models);
- ``margin``: offline margin sampling (quantile of the training signal at a target escalation rate);
  the online form is :func:`cascade.baselines.margin.online_margin_curve`;
- ``scorer`` / ``router``: learned text signals (:mod:`cascade.baselines.text`) with quantile thresholds.
"""

from .bayes_opt import BayesOptTuner  # noqa: F401
from .margin import MarginTuner, online_margin_curve  # noqa: F401
from .random_routing import RandomRoutingTuner, expected_score  # noqa: F401
from .text import RouterTuner, ScorerTuner, add_learned_signal, benchmark_questions  # noqa: F401

__all__ = ["BayesOptTuner", "MarginTuner", "RandomRoutingTuner", "RouterTuner", "ScorerTuner", "add_learned_signal",
           "benchmark_questions", "expected_score", "online_margin_curve"]
