"""``bayes-opt``: Bayesian optimisation (Optuna) over the k-1 thresholds on the training split.

Two ways to trace the error-cost curve:

- ``mode="multi"`` (default): one multi-objective study minimising (train error, train cost); the
  curve is the Pareto front of all trials. One budget of ``n_trials`` covers the whole curve.
- ``mode="scalar"``: one study per lambda minimising error + lambda * cost (cost in USD per million
  queries), ``n_trials`` per study; the curve is each study's best vector, Pareto-filtered.

Samplers: ``tpe`` (Optuna's TPE, multivariate by default in Optuna 5) or ``gp`` (GPSampler, needs
torch). Everything is seeded by ``seed``. Studies persist in ``storage`` (an Optuna storage URL such
as ``sqlite:///studies.db``) under ``study_name`` (+ ``-lambda<i>`` in scalar mode), and an existing
study of that name is resumed. With ``storage=None`` (the default) the studies live in memory and
``diagnostics_["optuna"]`` exports their trials (:func:`export_study`; it lands in ``summary.json``), so
that whoever logs the run can rebuild them in a persistent storage later (``tracking`` does: one SQLite
beside the MLflow store, study name = the MLflow run id; see docs/tracking.md). The library itself writes
nothing but ``storage``.

Budget: ``n_trials`` per study (at most 100,000) and, with ``timeout_s``, a wall-clock budget in seconds
for the whole fit (Optuna's ``study.optimize(timeout=)``, checked after each trial; in scalar mode each
study gets the time left, and at least one trial). ``diagnostics_`` record the trials run and whether the
time budget stopped them (``timed_out``).

Default budget: 100 trials, no time limit. With k-1 <= 4 thresholds and at most 300 training queries, the train
Pareto front stops improving noticeably after ~100 TPE trials, while the protocol fits bayes-opt
37 cascades x 6 sample sizes x 20 subsamples times on 2 cores; see docs/baselines.md.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time

import numpy as np

from cascade.tuners.routing import pareto_mask, route
from cascade.data.records import CascadeData
from cascade.tuners.base import SEED, Interval, Options, Text, Tuner, Values, register, threshold_bounds

DEFAULT_LAMBDAS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: Most trials a study may be given (a bound on the work; ``timeout_s`` bounds the time).
MAX_TRIALS = 100_000


def export_study(study, names: list[str], bounds, *, name: str = "", metric_names=None,
                 user_attrs=(), extra: dict | None = None) -> dict:
    """A study's finished trials as plain JSON (what :func:`rebuild_trials` reads back): one row per trial,
    the parameters ``names`` (uniform on ``bounds``), then the objective values, then ``user_attrs``."""
    import optuna

    rows = []
    for tr in study.trials:
        if tr.state != optuna.trial.TrialState.COMPLETE or tr.values is None:
            continue
        rows.append([float(tr.params[nm]) for nm in names] + [float(v) for v in tr.values]
                    + [float(tr.user_attrs[a]) for a in user_attrs])
    return {"name": name, "directions": [d.name.lower() for d in study.directions],
            "metric_names": list(metric_names or []), "param_names": list(names),
            "bounds": [[float(lo), float(hi)] for lo, hi in bounds], "user_attrs": list(user_attrs),
            "trials": rows, **(extra or {})}


def rebuild_trials(export: dict) -> list:
    """The ``optuna.trial.FrozenTrial`` list of an :func:`export_study` dict (for ``study.add_trials``)."""
    import optuna

    names, attrs = export["param_names"], export.get("user_attrs") or []
    n_values = len(export["directions"])
    dists = {nm: optuna.distributions.FloatDistribution(lo, hi) for nm, (lo, hi) in zip(names, export["bounds"])}
    out = []
    for row in export["trials"]:
        p = len(names)
        out.append(optuna.trial.create_trial(
            params=dict(zip(names, row[:p])), distributions=dists, values=row[p:p + n_values],
            user_attrs=dict(zip(attrs, row[p + n_values:]))))
    return out


class _DropInterruptedTrial(logging.Filter):
    """Drops Optuna's two warnings (one with the traceback) about the trial that Ctrl-C stopped: the
    KeyboardInterrupt goes on to the command, which ends in one line (jobs/cli.py)."""

    def __init__(self):
        super().__init__()
        self.trials: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        m = re.match(r"Trial (\d+) failed", record.getMessage())
        if m is None:
            return True
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.trials.add(m[1])
            return False
        return m[1] not in self.trials


@contextlib.contextmanager
def _quiet_interrupts():
    log = logging.getLogger("optuna.study._optimize")
    f = _DropInterruptedTrial()
    log.addFilter(f)
    try:
        yield
    finally:
        log.removeFilter(f)


def _train_score(t, data: CascadeData, cum_cost: np.ndarray) -> tuple[float, float]:
    a = route(t, data.confidence)
    rows = np.arange(data.n)
    return float(1.0 - data.correct[rows, a].mean()), float(cum_cost[rows, a].mean())


@register("bayes-opt")
class BayesOptTuner(Tuner):
    parameter_constraints = {
        "n_trials": Interval(int, 1, MAX_TRIALS), "sampler": Options(("tpe", "gp")),
        "mode": Options(("multi", "scalar")), "lambdas": Values(Interval(float, 0, 1e12), 1, 100, none=True),
        "seed": SEED, "storage": Text(none=True), "study_name": Text(200),
        "n_startup_trials": Interval(int, 0, MAX_TRIALS),
        "timeout_s": Interval(float, 0, 30 * 86400, open="lo", none=True),
    }

    @classmethod
    def memory_need(cls, n, k, params=None):
        p = params or {}
        studies = 1 if p.get("mode", "multi") == "multi" else len(p.get("lambdas") or DEFAULT_LAMBDAS)
        trials = int(p.get("n_trials", 100)) * studies
        return 8.0 * 16 * n * k + 4096.0 * trials * k, "lower n_trials"  # Optuna keeps every trial in memory

    def __init__(self, n_trials: int = 100, sampler: str = "tpe", mode: str = "multi", lambdas=None,
                 seed: int = 0, storage: str | None = None, study_name: str = "bayes-opt",
                 n_startup_trials: int = 10, timeout_s: float | None = None):
        self.n_trials = n_trials
        self.sampler = sampler
        self.mode = mode
        self.lambdas = lambdas
        self.seed = seed
        self.storage = storage
        self.study_name = study_name
        self.n_startup_trials = n_startup_trials
        self.timeout_s = timeout_s

    def _make_sampler(self, seed: int, multi: bool):
        import optuna

        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials,
                                              multivariate=True)
        if self.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.n_startup_trials)
        raise ValueError(f"bayes-opt: unknown sampler {self.sampler!r}; use tpe or gp")

    def fit(self, train: CascadeData) -> "BayesOptTuner":
        import optuna

        if self.mode not in ("multi", "scalar"):
            raise ValueError(f"bayes-opt: unknown mode {self.mode!r}; use multi or scalar")
        if train.n == 0:
            raise ValueError("bayes-opt: the training split is empty")
        if train.k < 2:
            raise ValueError("bayes-opt: a cascade needs at least two models")
        if int(self.n_trials) < 1:
            raise ValueError("bayes-opt: n_trials must be >= 1")
        self._make_sampler(0, False)  # validate the sampler name before any work
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        t0 = time.perf_counter()
        bounds = threshold_bounds(train.confidence)
        cum_cost = np.cumsum(train.cost, axis=1)
        names = [f"t{j}" for j in range(train.k - 1)]
        deadline = None if self.timeout_s is None else t0 + float(self.timeout_s)
        n_run = 0

        def left() -> float | None:  # the time budget left for the next study (at least one trial runs)
            return None if deadline is None else max(deadline - time.perf_counter(), 1e-9)

        def suggest(trial):
            return np.array([trial.suggest_float(nm, lo, hi) for nm, (lo, hi) in zip(names, bounds)])

        cand_t, cand_e, cand_c = [], [], []
        if self.mode == "multi":
            study = optuna.create_study(directions=["minimize", "minimize"], storage=self.storage,
                                        study_name=self.study_name, load_if_exists=True,
                                        sampler=self._make_sampler(self.seed, True))

            def objective(trial):
                return _train_score(suggest(trial), train, cum_cost)

            before = len(study.trials)
            with _quiet_interrupts():
                study.optimize(objective, n_trials=int(self.n_trials), timeout=left())
            n_run += len(study.trials) - before
            exported = [export_study(study, names, bounds, metric_names=["train_error", "train_cost"])]
            for tr in study.trials:
                if tr.values is None:
                    continue
                cand_t.append(np.array([tr.params[nm] for nm in names]))
                cand_e.append(tr.values[0])
                cand_c.append(tr.values[1])
            n_studies = 1
        else:
            lambdas = list(self.lambdas if self.lambdas is not None else DEFAULT_LAMBDAS)
            exported = []
            for i, lam in enumerate(lambdas):
                study = optuna.create_study(direction="minimize", storage=self.storage,
                                            study_name=f"{self.study_name}-lambda{i}", load_if_exists=True,
                                            sampler=self._make_sampler(self.seed + i, False))

                def objective(trial, lam=lam):
                    t = suggest(trial)
                    e, c = _train_score(t, train, cum_cost)
                    trial.set_user_attr("error", e)
                    trial.set_user_attr("cost", c)
                    return e + lam * c

                before = len(study.trials)
                with _quiet_interrupts():
                    study.optimize(objective, n_trials=int(self.n_trials), timeout=left())
                n_run += len(study.trials) - before
                exported.append(export_study(study, names, bounds, name=f"lambda={float(lam):g}",
                                             metric_names=["train_error + lambda * train_cost"],
                                             user_attrs=("error", "cost"), extra={"lambda": float(lam)}))
                best = study.best_trial
                cand_t.append(np.array([best.params[nm] for nm in names]))
                cand_e.append(best.user_attrs["error"])
                cand_c.append(best.user_attrs["cost"])
            n_studies = len(lambdas)
        # add the two single-model extremes reachable inside the box (first model only / last model only)
        cand_e, cand_c = np.array(cand_e), np.array(cand_c)
        keep = np.flatnonzero(pareto_mask(cand_c, cand_e))
        keep = keep[np.argsort(cand_c[keep], kind="stable")]
        self.thresholds_ = [cand_t[i] for i in keep]
        self.train_error_ = cand_e[keep]
        self.train_cost_ = cand_c[keep]
        self.diagnostics_ = {"mode": self.mode, "sampler": self.sampler, "n_trials": int(self.n_trials),
                             "n_studies": n_studies, "n_candidates": int(len(cand_e)),
                             "n_pareto": int(len(keep)), "storage": self.storage, "n_trials_run": int(n_run),
                             "timeout_s": self.timeout_s,
                             "timed_out": bool(deadline is not None and n_run < int(self.n_trials) * n_studies),
                             "tune_seconds": time.perf_counter() - t0}
        if self.storage is None:  # in memory: the trials, so that the studies can be rebuilt where they are logged
            self.diagnostics_["optuna"] = {"mode": self.mode, "sampler": self.sampler, "seed": int(self.seed),
                                           "studies": exported}
        else:
            self.diagnostics_["study_name"] = self.study_name if self.mode == "multi" else [
                f"{self.study_name}-lambda{i}" for i in range(n_studies)]
        return self
