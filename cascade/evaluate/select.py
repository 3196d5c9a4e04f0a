"""Cascade selection: which models, in which order, with which thresholds, per budget.

Given a chain of models in cost order, every ordered sub-cascade (the 2^k - 1 non-empty subsets in chain
order, single models included) is tuned with one method on the training split. All their threshold
vectors are pooled as candidates, the training-side Pareto frontier over (cost, error) is taken across
them, and each frontier point is scored on the test split: one curve, and for each budget the cascade
and thresholds to run. A single model is one candidate point (it always answers).

Data are prepared once for the whole chain (:func:`cascade.evaluate.tuning.prepare`: one calibrator per
model, fitted on the queries every chain model answered) and each sub-cascade takes its columns, so every
candidate is scored on the same queries.

Choosing on train (``select_on``, :func:`frontier_of`): ``"shrink"`` (the default) compares candidates
by their error measured on the training labels shrunk toward the tuner's prediction shifted per
sub-cascade to the measured level, (n measured + 10 shifted) / (n + 10) for n training queries: at small
n the model's smooth shape steadies the noisy counts, at large n the labels decide. ``"measured"`` uses
the labels alone, ``"predicted"`` the tuner's own estimates (the model's predictions for markov-copula);
single models have no tuner: every rule uses their measured train error and cost. On MedMCQA subsamples
the default closes a larger share of the gap between a grid search and the oracle (the same selection
fitted on the test split) than ``measured`` at n <= 100 and about the same at full n; the other rules
(bootstrap-bagged choices, a switching penalty, the convex hull, the unshifted prediction) did not win
(docs/select.md).

Baselines on the same test axes: the best single model at each budget (the single models that are
Pareto-optimal on train), the full chain's tuned curve, and the best two-model cascade (the pair whose
train curve has the lowest AUC over the cost range it shares with the full chain's train curve: the
full chain against its best pair). Comparisons: AUC over each pair's shared test cost range (the method
doc, section 6) and the share of that range where the frontier's interpolated test error is lower; over
the frontier's test cost range, the share of budgets where each curve (among those defined there) is best.

With ``abstain_cost`` set, sub-cascades are tuned by :class:`cascade.tuners.abstention.AbstentionTuner`
(early abstention) and "error" on every axis is the loss ``error + abstain_cost * abstention``, where
error counts answered queries that were wrong.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cascade.data.records import CascadeData
from cascade.evaluate import curves
from cascade.evaluate import tuning
from cascade.tuners.routing import pareto_mask, route, score_curve

SELECT_ON = ("predicted", "measured", "blend", "bagged", "hull", "paired", "shifted", "switch", "shrink")
DEFAULT_SELECT_ON = "shrink"  # won on MedMCQA by subsampling (docs/select.md, the selection yardstick)
N_GRID = 1001  # budgets at which curves are compared for the "share of the range" numbers


def single_threaded_blas():
    """BLAS limited to one thread: the tuners' linear algebra is tiny (L-BFGS-B on a few variables), and
    threaded BLAS spinning on a busy machine made it several times slower (measured: 9.7 s vs 2.2 s for
    one abstention fit at load 18 on 2 cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def subcascades_of(chain: list[str]) -> list[list[str]]:
    """Every non-empty ordered sub-sequence of a chain (2^k - 1), single models first, then by length,
    each length in lexicographic order of chain positions."""
    k = len(chain)
    return [[chain[i] for i in c] for r in range(1, k + 1) for c in itertools.combinations(range(k), r)]


def cascade_name(models) -> str:
    return " -> ".join(models)


def take(data: CascadeData, idx: list[int]) -> CascadeData:
    """The columns ``idx`` of a chain's aligned arrays (a sub-cascade on the same queries)."""
    return CascadeData([data.models[i] for i in idx], data.query_id, data.confidence[:, idx],
                       data.correct[:, idx], data.cost[:, idx])


# --------------------------------------------------------------------------------------------------
# Tuning every sub-cascade
# --------------------------------------------------------------------------------------------------

@dataclass
class SubCascade:
    models: list[str]
    curve: pd.DataFrame  # tune's curve columns (+ abstention columns with abstain_cost)
    summary: dict
    tuner: object = None


def _single_curve(method: str, train: CascadeData, test: CascadeData) -> pd.DataFrame:
    m = train.models[0]
    return pd.DataFrame({
        "method": [method], "cascade": [m], "point": [0], "thresholds": [[]],
        "train_error": [float(1.0 - train.correct[:, 0].mean())], "train_cost": [float(train.cost[:, 0].mean())],
        "test_error": [float(1.0 - test.correct[:, 0].mean())], "test_cost": [float(test.cost[:, 0].mean())],
        f"share_{m}": [1.0],
    })


def tune_subcascade(train: CascadeData, test: CascadeData, method: str, params: dict | None = None,
                    abstain_cost: float | None = None) -> SubCascade:
    """Tune one sub-cascade (columns already taken) and score its curve on test."""
    models = list(train.models)
    t0 = time.perf_counter()
    if abstain_cost is not None:
        from cascade.tuners import abstention

        curve, summary, tuner = abstention.tune_prepared(train, test, abstain_cost, params)
        summary["test_auc"] = (curves.auc(curve["test_cost"], curve["test_error"]) if len(models) > 1
                               else float(curve["test_error"].iloc[0]))
        summary["degenerate"] = tuning.degenerate_reasons(train, curve if len(models) > 1 else None)
    elif len(models) == 1:
        curve, tuner = _single_curve(method, train, test), None
        summary = {"method": method, "models": models, "n_train": train.n, "n_test": test.n, "n_points": 1,
                   "kind": "single-model", "test_auc": float(curve["test_error"].iloc[0]),
                   "test_cost_range": [float(curve["test_cost"].iloc[0])] * 2, "params": {}, "diagnostics": {},
                   # a single model is one point by definition: only the training data can make it degenerate
                   "degenerate": tuning.degenerate_reasons(train)}
    else:
        curve, summary, tuner = tuning.tune_prepared(train, test, method, params)
    summary["seconds"] = time.perf_counter() - t0
    return SubCascade(models, curve, summary, tuner)


def _tune_job(args) -> SubCascade:
    train, test, method, params, abstain_cost = args
    with single_threaded_blas():
        sub = tune_subcascade(train, test, method, params, abstain_cost)
    sub.tuner = None  # fitted models stay in the worker (the summary keeps their description)
    return sub


def tune_all(train: CascadeData, test: CascadeData, cascades: list[list[str]], method: str, params: dict | None,
             abstain_cost: float | None = None, jobs: int = 1) -> list[SubCascade]:
    """Tune each cascade (lists of chain models) on its columns of the prepared chain data, in order.
    ``jobs`` > 1: that many forked worker processes (largest cascades first); the tuners then stay in
    the workers (``SubCascade.tuner`` is None)."""
    chain = list(train.models)
    work = [(take(train, [chain.index(m) for m in c]), take(test, [chain.index(m) for m in c]), method, params,
             abstain_cost) for c in cascades]
    jobs = max(1, min(int(jobs or 1), len(work)))
    if jobs == 1:
        with single_threaded_blas():
            return [tune_subcascade(*w) for w in work]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    order = sorted(range(len(work)), key=lambda i: -len(cascades[i]))
    out: list = [None] * len(work)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork")) as pool:
        for i, sub in zip(order, pool.map(_tune_job, [work[i] for i in order])):
            out[i] = sub
    return out


# --------------------------------------------------------------------------------------------------
# Frontier and budgets
# --------------------------------------------------------------------------------------------------

def candidates_frame(subs: list[SubCascade], chain: list[str], train: CascadeData,
                     abstain_cost: float | None = None) -> pd.DataFrame:
    """All (sub-cascade, thresholds) points, with the tuner's train estimate (``train_error``,
    ``train_cost``), the same thresholds measured on the training labels (``measured_train_error``,
    ``measured_train_cost``) and the test values. With ``abstain_cost``, ``*_error`` columns hold the
    loss error + abstain_cost * abstention (the plain error is in ``*_wrong``)."""
    frames = []
    for s in subs:
        c = s.curve.copy()
        idx = [chain.index(m) for m in s.models]
        sub_train = take(train, idx)
        if abstain_cost is not None:
            from cascade.tuners import abstention

            meas = abstention.score_curve(c["thresholds"].tolist(), c["abstain_thresholds"].tolist(), sub_train)
            c["measured_train_wrong"] = meas["error"].to_numpy()
            c["measured_train_abstention"] = meas["abstention"].to_numpy()
            c["measured_train_error"] = meas["error"].to_numpy() + abstain_cost * meas["abstention"].to_numpy()
            c["measured_train_cost"] = meas["cost"].to_numpy()
        elif len(s.models) == 1:
            c["measured_train_error"] = c["train_error"]
            c["measured_train_cost"] = c["train_cost"]
        else:
            meas = score_curve(c["thresholds"].tolist(), sub_train)
            c["measured_train_error"] = meas["error"].to_numpy()
            c["measured_train_cost"] = meas["cost"].to_numpy()
        c["models"] = [list(s.models)] * len(c)
        c["k"] = len(s.models)
        c["n_train"] = train.n  # what the n-weighted frontier rules need when the candidates are pooled later
        for m in chain:
            if f"share_{m}" not in c:
                c[f"share_{m}"] = 0.0
        frames.append(c)
    out = pd.concat(frames, ignore_index=True)
    lead = ["cascade", "models", "k", "point", "thresholds"]
    return out[lead + [col for col in out.columns if col not in lead]]


def _rule(select_on: str) -> tuple[str, float | None]:
    """``name`` or ``name:VALUE`` -> (name, value or None)."""
    name, _, value = str(select_on).partition(":")
    if name not in SELECT_ON:
        raise ValueError(f"unknown select_on (--select-on) rule {select_on!r}; use one of {', '.join(SELECT_ON)}")
    try:
        return name, (float(value) if value else None)
    except ValueError:
        raise ValueError(f"select_on {select_on!r}: the part after ':' must be a number") from None


def _sel_cols(select_on: str) -> tuple[str, str]:
    name, _ = _rule(select_on)
    return ("train_cost", "train_error") if name == "predicted" else ("measured_train_cost",
                                                                      "measured_train_error")


def per_query_losses(candidates: pd.DataFrame, train: CascadeData) -> tuple[np.ndarray, np.ndarray]:
    """(n, C) arrays: each candidate's 0/1 error and cost on every training query (the sub-cascade's
    routing of that query)."""
    chain = list(train.models)
    err = np.empty((train.n, len(candidates)))
    cost = np.empty((train.n, len(candidates)))
    rows = np.arange(train.n)
    for i, (models, t) in enumerate(zip(candidates["models"], candidates["thresholds"])):
        idx = [chain.index(m) for m in models]
        conf = train.confidence[:, idx]
        who = np.zeros(train.n, int) if len(idx) == 1 else route(t, conf)
        err[:, i] = 1.0 - train.correct[rows, np.asarray(idx)[who]]
        cost[:, i] = np.cumsum(train.cost[:, idx], axis=1)[rows, who]
    return err, cost


def _bagged_choice(err: np.ndarray, cost: np.ndarray, budgets: np.ndarray, n_boot: int, seed: int,
                   tie_break=None) -> np.ndarray:
    """For each budget, the candidate most often best (lowest error among those whose cost is within the
    budget; equal errors ordered by ``tie_break``, then the cheaper) over ``n_boot`` bootstrap resamples
    of the training queries; -1 where none is affordable."""
    n, C = err.shape
    rng = np.random.default_rng(seed)
    W = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n  # (B, n) resampling weights
    E, K = W @ err, W @ cost  # (B, C)
    if tie_break is not None:  # errors are multiples of 1/n: a tie-break below that changes no order
        E = E + (0.1 / n) * np.clip(np.asarray(tie_break, float), 0.0, 1.0)[None, :]
    votes = np.zeros((len(budgets), C + 1), int)
    for b in range(n_boot):
        order = np.lexsort((E[b], K[b]))
        e = E[b][order]
        new = e < np.concatenate([[np.inf], np.minimum.accumulate(e)[:-1]])  # a strictly lower error
        pos = np.maximum.accumulate(np.where(new, np.arange(C), 0))  # position of the running minimum
        j = np.searchsorted(K[b][order], budgets * (1 + 1e-9), side="right") - 1  # (float sums of weights)
        pick = np.where(j >= 0, order[pos[np.maximum(j, 0)]], C)
        votes[np.arange(len(budgets)), pick] += 1
    votes[:, C] = -1  # "none" never wins over an affordable candidate
    choice = votes.argmax(axis=1)
    return np.where(votes.max(axis=1) > 0, choice, -1)


def _significant_steps(err_q: np.ndarray, order: np.ndarray, z: float, cascades=None) -> np.ndarray:
    """Thin a frontier (columns of ``err_q`` in cost order): walking up in cost, a point replaces the
    current one only when its training error is lower by more than ``z`` standard errors of the paired
    per-query difference (a more expensive choice has to be better beyond the noise of n queries). With
    ``cascades`` (each point's sub-cascade) the test applies to a change of sub-cascade only: a switch
    between neighbouring budgets must pay beyond the noise, a step along the current one is taken."""
    n = err_q.shape[0]
    keep, cur = [0], 0
    for i in range(1, err_q.shape[1]):
        if cascades is not None and cascades[i] == cascades[cur]:
            keep.append(i)
            cur = i
            continue
        d = err_q[:, cur] - err_q[:, i]
        se = d.std(ddof=1) / np.sqrt(n) if n > 1 else np.inf
        if d.mean() > z * se:
            keep.append(i)
            cur = i
    return order[keep]


def lower_hull_mask(cost, error, mask) -> np.ndarray:
    """The points of ``mask`` (a Pareto set) on the lower convex hull of (cost, error): the ones some
    trade-off error + lambda cost (lambda >= 0) minimises; between two of them a budget is met by
    running one or the other at random."""
    idx = np.flatnonzero(mask)
    idx = idx[np.lexsort((error[idx], cost[idx]))]
    hull: list[int] = []
    for i in idx:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or above the segment a -> i
            if (error[b] - error[a]) * (cost[i] - cost[a]) >= (error[i] - error[a]) * (cost[b] - cost[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    out = np.zeros(len(cost), bool)
    out[hull] = True
    return out


NEEDS_TRAIN = ("blend", "shrink", "bagged", "paired", "switch")


def frontier_of(candidates: pd.DataFrame, select_on: str = DEFAULT_SELECT_ON, train: CascadeData | None = None,
                seed: int = 0) -> pd.DataFrame:
    """The train-side frontier over all candidates, cheapest first, with the budget range in which each
    point is the choice: ``budget_lo`` (its train cost) to ``budget_hi`` (the next point's; inf for the
    last). A budget B picks the frontier point with the largest train cost <= B.

    ``select_on`` (``NAME`` or ``NAME:VALUE``), costs always the measured train costs except for
    ``predicted``; n = training queries (``train``, needed by the rules of :data:`NEEDS_TRAIN`; for
    ``shrink`` and ``blend`` the candidates' ``n_train`` column does):

    - ``measured``: the Pareto frontier of the measured train (cost, error);
    - ``predicted``: of the tuner's own estimates (the model's predictions);
    - ``shifted``: of the predictions shifted per sub-cascade by the mean of (measured - predicted) over
      its points (the model's shape, the data's level);
    - ``shrink:N0`` (N0 = 10 by default): of (n measured + N0 shifted) / (n + N0): the measured error
      shrunk toward the shifted prediction, by as much as N0 queries' worth at small n, hardly at large n;
    - ``blend:N0``: of (n measured + N0 predicted) / (n + N0) (the unshifted prediction);
    - ``hull``: the measured Pareto points on the lower convex hull (fewer points);
    - ``paired:Z``: the measured frontier walked up in cost, a point taken only when its error is lower
      than the current point's by more than Z standard errors of the paired per-query difference;
      ``switch:Z``: the same test for a change of sub-cascade only (a switching penalty);
    - ``bagged:B``: for each candidate's measured cost as a budget, the candidate most often best within
      that budget over B bootstrap resamples of the training queries (ties by the prediction)."""
    name, value = _rule(select_on)
    if name in NEEDS_TRAIN and train is None and not (name in ("blend", "shrink") and "n_train" in candidates):
        raise ValueError(f"select_on {name} needs the training data")
    cost_col, err_col = _sel_cols(select_on)
    c = candidates
    cost = c[cost_col].to_numpy(float)
    error = c[err_col].to_numpy(float)
    pred = c["train_error"].to_numpy(float)
    n = float(train.n) if train is not None else float(c["n_train"].iloc[0]) if "n_train" in c and len(c) else np.nan
    if name in ("shifted", "shrink"):
        keys = [c["cascade"].to_numpy()] + ([c["method"].astype(str).to_numpy()] if "method" in c else [])
        resid = pd.Series(error - pred).groupby(keys).transform("mean").to_numpy()  # per (method,) sub-cascade
        shifted = pred + resid
        n0 = 10.0 if value is None else value
        error = shifted if name == "shifted" else (n * error + n0 * shifted) / (n + n0)
    elif name == "blend":
        n0 = 10.0 if value is None else value
        error = (n * error + n0 * pred) / (n + n0)
    if name == "bagged":
        err_q, cost_q = per_query_losses(c, train)
        budgets = np.unique(cost)
        pick = _bagged_choice(err_q, cost_q, budgets, int(value or 100), seed, tie_break=pred)
        ok = pick >= 0
        budgets, pick = budgets[ok], pick[ok]
        start = np.flatnonzero(np.concatenate([[True], pick[1:] != pick[:-1]]))  # runs of one choice
        f = c.iloc[pick[start]].reset_index(drop=True)
        lo = budgets[start]
    else:
        mask = pareto_mask(cost, error)
        if name == "hull":
            mask &= lower_hull_mask(cost, error, mask)
        order = np.flatnonzero(mask)[np.lexsort((error[mask], cost[mask]))]
        if name in ("paired", "switch"):
            order = _significant_steps(per_query_losses(c.iloc[order], train)[0], order,
                                       1.0 if value is None else value,
                                       c["cascade"].to_numpy()[order] if name == "switch" else None)
        f = c.iloc[order].reset_index(drop=True)
        lo = cost[order]
    f.insert(0, "budget_lo", lo)
    f.insert(1, "budget_hi", np.append(lo[1:], np.inf))
    f.insert(2, "budget", f["budget_lo"])
    return f


def choose(frontier: pd.DataFrame, budget: float) -> pd.Series | None:
    """The frontier row a budget picks (None below the cheapest point)."""
    ok = frontier["budget_lo"].to_numpy(float) <= budget
    return frontier[ok].iloc[-1] if ok.any() else None


# --------------------------------------------------------------------------------------------------
# Curves on the test axes, comparisons
# --------------------------------------------------------------------------------------------------

def _xy(cost, error) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique costs with the mean error at equal cost (the interpolant curves.auc integrates)."""
    cost = np.asarray(cost, float)
    error = np.asarray(error, float)
    uc, inv = np.unique(cost, return_inverse=True)
    return uc, np.bincount(inv, weights=error) / np.bincount(inv)


def interp_error(cost, error, budgets) -> np.ndarray:
    """Linear interpolation of a test curve at ``budgets``; NaN outside the curve's own cost range."""
    x, y = _xy(cost, error)
    b = np.asarray(budgets, float)
    out = np.interp(b, x, y) if len(x) > 1 else np.where(b == x[0], y[0], np.nan)
    return np.where((b >= x[0]) & (b <= x[-1]), out, np.nan)


def best_pair(candidates: pd.DataFrame, chain: list[str], select_on: str = "measured") -> str | None:
    """The two-model cascade whose train curve has the lowest AUC over the train cost range it shares
    with the full chain's train curve (None for a chain of fewer than three models)."""
    if len(chain) < 3:
        return None
    cost_col, err_col = _sel_cols(select_on)
    full = candidates[candidates["cascade"] == cascade_name(chain)]
    best, best_auc = None, np.inf
    for name, g in candidates[candidates["k"] == 2].groupby("cascade", sort=False):
        lo, hi = curves.shared_range(g[cost_col], full[cost_col])
        if hi <= lo:
            continue
        a = curves.auc(g[cost_col], g[err_col], lo, hi)
        if a < best_auc:
            best, best_auc = name, a
    return best


def baseline_curves(candidates: pd.DataFrame, chain: list[str], select_on: str = "measured") -> dict:
    """name -> (label, rows of candidates) for the baselines."""
    cost_col, err_col = _sel_cols(select_on)
    singles = candidates[candidates["k"] == 1]
    singles = singles[pareto_mask(singles[cost_col].to_numpy(float), singles[err_col].to_numpy(float))]
    out = {"best_single": ("best single model at each budget: " + ", ".join(singles.sort_values(cost_col)["cascade"]),
                           singles.sort_values(cost_col))}
    if len(chain) >= 2:
        full = cascade_name(chain)
        out["full_chain"] = (full, candidates[candidates["cascade"] == full])
    pair = best_pair(candidates, chain, select_on)
    if pair is not None:
        out["best_pair"] = (pair, candidates[candidates["cascade"] == pair])
    return out


def compare_to_baselines(frontier: pd.DataFrame, baselines: dict, n_grid: int = N_GRID) -> dict:
    """Frontier vs each baseline on test: AUCs over their shared cost range, % change, and the share of
    that range where the frontier's error is lower; then, over the frontier's test cost range, the share
    of budgets where each curve is the best of those defined there, and the AUCs over the range all share."""
    fc, fe = frontier["test_cost"].to_numpy(float), frontier["test_error"].to_numpy(float)
    out: dict = {"pairwise": {}, "all": {}}
    for name, (label, rows) in baselines.items():
        bc, be = rows["test_cost"].to_numpy(float), rows["test_error"].to_numpy(float)
        cmp = curves.compare_curves(fc, fe, bc, be)
        entry = {"baseline": label, "cost_lo": cmp.lo, "cost_hi": cmp.hi, "auc_frontier": cmp.auc_a,
                 "auc_baseline": cmp.auc_b,
                 "pct_change": cmp.pct_change if cmp.auc_b > 0 else float("nan"), "frontier_better_share": None}
        if cmp.hi > cmp.lo:
            grid = np.linspace(cmp.lo, cmp.hi, n_grid)
            a, b = interp_error(fc, fe, grid), interp_error(bc, be, grid)
            ok = np.isfinite(a) & np.isfinite(b)
            entry["frontier_better_share"] = float(np.mean(a[ok] < b[ok] - 1e-12)) if ok.any() else None
            entry["baseline_better_share"] = float(np.mean(b[ok] < a[ok] - 1e-12)) if ok.any() else None
        out["pairwise"][name] = entry
    named = {"frontier": (fc, fe), **{n: (r["test_cost"].to_numpy(float), r["test_error"].to_numpy(float))
                                      for n, (_, r) in baselines.items()}}
    lo, hi = curves.shared_range(*[c for c, _ in named.values()])
    out["all"]["cost_lo"], out["all"]["cost_hi"] = lo, hi
    out["all"]["auc"] = ({n: curves.auc(c, e, lo, hi) for n, (c, e) in named.items()} if hi > lo else None)
    # who wins where: over the frontier's own test cost range, among the curves defined at each budget
    grid = np.linspace(fc.min(), fc.max(), n_grid) if fc.max() > fc.min() else np.array([fc.min()])
    errs = np.vstack([interp_error(c, e, grid) for c, e in named.values()])
    defined = np.isfinite(errs)
    masked = np.where(defined, errs, np.inf)
    winners = np.argmin(masked, axis=0)
    names = list(named)
    out["all"]["best_share"] = {n: float(np.mean(winners == i)) for i, n in enumerate(names)}
    out["all"]["best_share_range"] = [float(grid[0]), float(grid[-1])]
    return out


# --------------------------------------------------------------------------------------------------
# The whole selection
# --------------------------------------------------------------------------------------------------

def _abstention_method(params: dict | None) -> str:
    from cascade.tuners.abstention import method_name

    return method_name((params or {}).get("stages", "all"))


@dataclass
class Selection:
    chain: list[str]
    method: str
    select_on: str
    candidates: pd.DataFrame
    frontier: pd.DataFrame
    baselines: dict
    comparison: dict
    subcascades: list[SubCascade] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    abstain_cost: float | None = None


def select_prepared(train: CascadeData, test: CascadeData, *, method: str = "markov-copula",
                    params: dict | None = None, select_on: str = DEFAULT_SELECT_ON,
                    abstain_cost: float | None = None, cascades: list[list[str]] | None = None,
                    jobs: int = 1) -> Selection:
    """Tune every sub-cascade of the chain ``train.models`` on prepared (calibrated, cost-scaled) data,
    build the frontier and the baselines and compare them on test."""
    _rule(select_on)
    chain = list(train.models)
    if len(chain) < 2:
        raise ValueError(f"--models: a chain needs at least two models to select from, got {chain}")
    if abstain_cost is not None and not (abstain_cost >= 0):
        raise ValueError(f"--abstain-cost {abstain_cost}: use a number >= 0 (in error units)")
    if abstain_cost is None:
        tuning.get_method(method)  # fail early on an unknown method
    t0 = time.perf_counter()
    subs = tune_all(train, test, cascades or subcascades_of(chain), method, params, abstain_cost, jobs)
    tune_s = time.perf_counter() - t0
    cand = candidates_frame(subs, chain, train, abstain_cost)
    front = frontier_of(cand, select_on, train=train)
    base = baseline_curves(cand, chain, select_on)
    comp = compare_to_baselines(front, base)
    on_front = set(zip(front["cascade"], front["point"]))
    cand["on_frontier"] = [(c, p) in on_front for c, p in zip(cand["cascade"], cand["point"])]
    summary = {
        "kind": "select",
        "chain": chain,
        "method": _abstention_method(params) if abstain_cost is not None else method,
        "select_on": select_on,
        "abstain_cost": abstain_cost,
        "error_axis": "error + abstain_cost * abstention" if abstain_cost is not None else "error",
        "n_train": train.n,
        "n_test": test.n,
        "n_subcascades": len(subs),
        "n_candidates": len(cand),
        "n_frontier": len(front),
        "seconds_tuning": tune_s,
        "frontier_test_auc": curves.auc(front["test_cost"], front["test_error"]),
        "frontier_test_cost_range": [float(front["test_cost"].min()), float(front["test_cost"].max())],
        "answer": answer_rows(front),
        "baselines": comp["pairwise"],
        "all_curves": comp["all"],
        "subcascades": {cascade_name(s.models): {
            "k": len(s.models), "n_points": len(s.curve), "test_auc": s.summary.get("test_auc"),
            "seconds": s.summary.get("seconds"),
            "on_frontier": int(front["cascade"].eq(cascade_name(s.models)).sum())} for s in subs},
    }
    return Selection(chain, method, select_on, cand, front, base, comp, subs, summary, abstain_cost)


def run_selection(records: pd.DataFrame, *, models: list[str], method: str = "markov-copula",
                  benchmark: str | None = None, train_split: str = "train", test_split: str = "test",
                  cost_mode: str = "model-mean", calibration: str = "auto", signal: str = "confidence",
                  transform="auto", params: dict | None = None, select_on: str = DEFAULT_SELECT_ON,
                  abstain_cost: float | None = None, jobs: int = 1) -> Selection:
    """Records -> calibrate once per model -> tune every sub-cascade -> frontier, baselines, comparison."""
    t0 = time.perf_counter()
    if len(models) < 2:
        raise ValueError(f"--models: a chain needs at least two models to select from, got {models}")
    if benchmark is None and "benchmark" in records.columns and records["benchmark"].nunique() == 1:
        benchmark = str(records["benchmark"].iloc[0])  # recorded in the summary
    prep = tuning.prepare_full(
        records, models=models, train_split=train_split, test_split=test_split, benchmark=benchmark,
        signal=signal, calibration=calibration, transform=transform, cost_mode=cost_mode)
    prep_s = time.perf_counter() - t0
    sel = select_prepared(prep.train, prep.test, method=method, params=params, select_on=select_on,
                          abstain_cost=abstain_cost, jobs=jobs)
    extra = {"benchmark": benchmark, "train_split": train_split, "test_split": test_split, "cost_mode": cost_mode,
             "cost_unit": "USD per million queries", "calibration": calibration, "signal": signal,
             "transform": prep.transform.name, "transform_reason": prep.transform.reason,
             "calibrators": [getattr(c, "coef_", np.array([])).tolist() for c in prep.calibrators]}
    sel.summary.update({**extra, "params": params or {}, "jobs": jobs, "seconds_prepare": prep_s,
                        "seconds": time.perf_counter() - t0})
    for s in sel.subcascades:
        s.summary.update(extra)
    from cascade.evaluate import budgets as B  # the benchmark's absolute budgets and the answer at each

    sel.summary["budgets_usd"] = B.benchmark_budgets(records, benchmark, test_split)
    sel.summary["answer_at_budgets"] = B.answer_at_budgets(sel.frontier, sel.summary["budgets_usd"],
                                                           select_on).to_dict("records")
    return sel


# --------------------------------------------------------------------------------------------------
# Reading the answer
# --------------------------------------------------------------------------------------------------

def _groups(frontier: pd.DataFrame):
    """Consecutive frontier rows with the same cascade: (start, stop) row ranges."""
    names = frontier["cascade"].tolist()
    start = 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            yield start, i
            start = i


def _finite_or_none(values) -> list:
    return [float(v) if np.isfinite(v) else None for v in values]


def answer_rows(frontier: pd.DataFrame) -> list[dict]:
    """The frontier as budget ranges -> cascade -> thresholds, test error and cost (JSON-able; an
    abstention threshold of -inf, "never", is null)."""
    rows = []
    for a, b in _groups(frontier):
        g = frontier.iloc[a:b]
        row = {"budget_lo": float(g["budget_lo"].iloc[0]), "budget_hi": _finite_or_none([g["budget_hi"].iloc[-1]])[0],
               "cascade": g["cascade"].iloc[0], "n_points": int(len(g)),
               "test_error": [float(g["test_error"].min()), float(g["test_error"].max())],
               "test_cost": [float(g["test_cost"].min()), float(g["test_cost"].max())],
               "thresholds": [list(map(float, t)) for t in g["thresholds"]]}
        if "abstain_thresholds" in g:
            row["abstain_thresholds"] = [_finite_or_none(t) for t in g["abstain_thresholds"]]
            row["test_abstention"] = [float(g["test_abstention"].min()), float(g["test_abstention"].max())]
        rows.append(row)
    return rows


def _span(lo: float, hi: float, fmt: str) -> str:
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)}-{format(hi, fmt)}"


def table_bands(frontier: pd.DataFrame, max_rows: int = 12) -> list[dict]:
    """Budget bands for the table: the runs of one cascade along the frontier; while there are more than
    ``max_rows``, the band with the narrowest budget range (in log scale) is merged into its narrower
    neighbour. A band is labelled by the cascade that holds most of its budget range (log scale); its
    other cascades are counted."""
    lo = frontier["budget_lo"].to_numpy(float)
    hi = frontier["budget_hi"].to_numpy(float)
    top = lo[-1] * 1.25 if len(lo) else 1.0  # the open last range counts as a quarter more, for weights only
    width = np.log(np.maximum(np.where(np.isfinite(hi), hi, top), lo * (1 + 1e-12)) / np.maximum(lo, 1e-300))
    bands = [{"rows": list(range(a, b)), "weights": {frontier["cascade"].iloc[a]: float(width[a:b].sum())}}
             for a, b in _groups(frontier)]

    def w(band):
        return sum(band["weights"].values())

    while len(bands) > max(1, max_rows):
        i = min(range(len(bands) - 1), key=lambda j: w(bands[j]))  # the open last band is never the narrowest
        j = i + 1 if i == 0 or w(bands[i + 1]) < w(bands[i - 1]) else i - 1
        a, b = sorted((i, j))
        merged = {"rows": bands[a]["rows"] + bands[b]["rows"], "weights": dict(bands[a]["weights"])}
        for c, v in bands[b]["weights"].items():
            merged["weights"][c] = merged["weights"].get(c, 0.0) + v
        bands[a:b + 1] = [merged]
    def main(band):
        return max(band["weights"], key=band["weights"].get)

    i = 0
    while i < len(bands) - 1:  # neighbours that ended up with the same label become one row
        if main(bands[i]) == main(bands[i + 1]):
            merged = {"rows": bands[i]["rows"] + bands[i + 1]["rows"], "weights": dict(bands[i]["weights"])}
            for c, v in bands[i + 1]["weights"].items():
                merged["weights"][c] = merged["weights"].get(c, 0.0) + v
            bands[i:i + 2] = [merged]
        else:
            i += 1
    out = []
    for band in bands:
        g = frontier.iloc[band["rows"]]
        main = max(band["weights"], key=band["weights"].get)
        out.append({"budget_lo": float(g["budget_lo"].iloc[0]), "budget_hi": float(g["budget_hi"].iloc[-1]),
                    "cascade": main, "others": len(band["weights"]) - 1, "n_points": len(g), "rows": g})
    return out


def format_frontier_table(frontier: pd.DataFrame, *, comparison: dict | None = None, title: str | None = None,
                          max_rows: int = 12) -> str:
    """The answer in one table a person reads at a glance: train budget range (USD per million queries)
    -> cascade -> test error and test cost of the points chosen in that range (test loss and abstention
    rate with early abstention). At most ``max_rows`` rows (see :func:`table_bands`: a row naming
    "+N other" merges short runs of other cascades; frontier.parquet has every point). Then, with
    ``comparison``, one line per baseline."""
    has_abs = "test_abstention" in frontier
    head = ["budget (USD/1M q)", "cascade", "pts", "test loss" if has_abs else "test error", "test cost"]
    if has_abs:
        head.insert(4, "abstain")
    body = []
    for band in table_bands(frontier, max_rows):
        g = band["rows"]
        hi = band["budget_hi"]
        budget = f"{band['budget_lo']:.1f}-{hi:.1f}" if np.isfinite(hi) else f">= {band['budget_lo']:.1f}"
        name = band["cascade"] + (f" (+{band['others']} other{'s' if band['others'] > 1 else ''})"
                                  if band["others"] else "")
        row = [budget, name, str(band["n_points"]),
               _span(g["test_error"].max(), g["test_error"].min(), ".3f"),
               _span(g["test_cost"].min(), g["test_cost"].max(), ".1f")]
        if has_abs:
            row.insert(4, _span(g["test_abstention"].min(), g["test_abstention"].max(), ".1%"))
        body.append(row)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = ([title] if title else []) + [line(head), line(["-" * w for w in widths])] + [line(r) for r in body]
    if comparison:
        what = "loss" if has_abs else "error"
        out.append("")
        out.append(f"frontier vs baselines on test (AUC = mean test {what} over the shared cost range; lower is better):")
        import textwrap

        for name, e in comparison.get("pairwise", {}).items():  # wrapped: the lines fit a text viewer
            better = e.get("frontier_better_share")
            text = (f"{name:<12} {e['baseline']}: AUC {e['auc_frontier']:.4f} vs {e['auc_baseline']:.4f} "
                    f"({e['pct_change']:+.1f}%) over cost {e['cost_lo']:.1f}-{e['cost_hi']:.1f}"
                    + (f"; frontier lower on {better:.0%} of it" if better is not None else ""))
            out += textwrap.wrap(text, 110, initial_indent="  ", subsequent_indent="      ")
        share = comparison.get("all", {}).get("best_share")
        if share:
            out += textwrap.wrap("lowest test " + what + " per budget (share of the frontier's test cost range): "
                                 + ", ".join(f"{n} {v:.0%}" for n, v in share.items()), 110,
                                 initial_indent="  ", subsequent_indent="      ")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Plot and outputs
# --------------------------------------------------------------------------------------------------

def frontier_figure(sel: Selection, title: str | None = None):
    """Test error (loss) against test cost: every candidate (grey), the frontier (black, coloured by
    cascade) and the baselines. A matplotlib Figure (no pyplot state)."""
    from matplotlib.figure import Figure

    abstains = sel.abstain_cost is not None and "test_abstention" in sel.frontier
    fig = Figure(figsize=(8, 7.5 if abstains else 5))
    if abstains:
        ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    else:
        ax = fig.subplots()
    c = sel.candidates
    ax.scatter(c["test_cost"], c["test_error"], s=6, color="0.75", label="all sub-cascades (test)", zorder=1)
    styles = {"best_single": ("tab:blue", "s--"), "full_chain": ("tab:orange", "-"), "best_pair": ("tab:green", "-")}
    for name, (label, rows) in sel.baselines.items():
        color, style = styles.get(name, ("tab:gray", "-"))
        r = rows.sort_values("test_cost")
        short = label if len(label) <= 60 else label[:57] + "..."
        ax.plot(r["test_cost"], r["test_error"], style, color=color, ms=4, lw=1.2, alpha=0.8,
                label=f"{name}: {short}", zorder=2)
    f = sel.frontier.sort_values("test_cost")
    ax.plot(f["test_cost"], f["test_error"], "-", color="black", lw=1.8, label="frontier (chosen on train)", zorder=3)
    names = list(dict.fromkeys(sel.frontier["cascade"]))
    import matplotlib

    # distinct colours per cascade (tab20's light/dark pairs look alike): tab10, then Dark2, then Set1
    colours = [matplotlib.colormaps[m](i) for m, n in (("tab10", 10), ("Dark2", 8), ("Set1", 9)) for i in range(n)]
    for i, n in enumerate(names[:len(colours)]):
        g = sel.frontier[sel.frontier["cascade"] == n]
        ax.scatter(g["test_cost"], g["test_error"], s=18, color=colours[i], edgecolor="black", lw=0.4,
                   zorder=4, label=n if len(names) <= 12 else None)
    ax.set_xscale("log")
    if abstains:
        ax2.plot(f["test_cost"], f["test_wrong"], "o-", ms=3, color="tab:red", label="error (answered and wrong)")
        ax2.plot(f["test_cost"], f["test_abstention"], "s-", ms=3, color="tab:purple", label="abstention rate")
        ax2.set_ylabel("frontier, test")
        ax2.set_xlabel("test cost (USD per million queries, log scale)")
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(fontsize=7)
    else:
        ax.set_xlabel("test cost (USD per million queries, log scale)")
    ax.set_ylabel("test loss (error + abstain_cost x abstention)" if sel.abstain_cost is not None else "test error")
    import textwrap

    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_title("\n".join(textwrap.wrap(title or f"{' > '.join(sel.chain)} ({sel.summary.get('method', sel.method)})",
                                         90)), fontsize=8)
    for a in [ax] + ([ax2] if abstains else []):
        a.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks, no crowding
        a.xaxis.set_major_formatter(ScalarFormatter())
        a.xaxis.set_minor_locator(LogLocator(base=10, subs="auto"))
        a.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")
    # the legend beside the axes, never over the curves
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.set_size_inches(11, fig.get_size_inches()[1])
    fig.tight_layout()
    return fig


SELECT_FILES = frozenset({"frontier.parquet", "candidates.parquet", "summary.json", "frontier.png", "cascades",
                          "answer.txt", "report.html"})


def _json_clean(o):
    """JSON-able with non-finite floats as null (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): _json_clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _json_clean(o.tolist())
    if isinstance(o, (np.floating, float)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    return str(o)


def check_out(out) -> Path:
    """``--out`` before any work: not a file, a writable first existing parent, and if it exists, empty or
    a previous ``cascade select`` output (nothing else is ever replaced)."""
    from cascade.evaluate import outputs

    out = outputs.check_out(out, unit=False)
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in SELECT_FILES)
        if foreign:
            raise ValueError(f"--out {out}: the folder holds files that are not a `cascade select` output "
                             f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); give a new or empty "
                             "folder (a previous select output is replaced)")
    return out


def write_selection(sel: Selection, out) -> Path:
    """Write the selection as one folder, atomically: frontier.parquet, candidates.parquet,
    summary.json, frontier.png, answer.txt and cascades/<cascade>/{curve.parquet,summary.json} (each
    sub-cascade in `cascade tune`'s format) go into a temporary folder beside ``out``, which then takes
    its place by rename (a previous select output is moved aside, then removed)."""
    import json
    import os
    import shutil
    import uuid

    from cascade.evaluate import outputs

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        sel.frontier.to_parquet(tmp / "frontier.parquet", index=False)
        sel.candidates.to_parquet(tmp / "candidates.parquet", index=False)
        (tmp / "summary.json").write_text(json.dumps(_json_clean(sel.summary), indent=2))
        (tmp / "answer.txt").write_text(format_frontier_table(sel.frontier, comparison=sel.comparison) + "\n")
        frontier_figure(sel).savefig(tmp / "frontier.png", dpi=120)
        from cascade.evaluate import report  # the interactive page: answer at a chosen budget, curves

        report.write_report(report.selection_report_data(sel), tmp / "report.html")
        names = outputs.cascade_folders([s.models for s in sel.subcascades])
        for name, s in zip(names, sel.subcascades):
            d = tmp / "cascades" / name
            d.mkdir(parents=True)
            s.curve.to_parquet(d / "curve.parquet", index=False)
            (d / "summary.json").write_text(json.dumps(_json_clean(s.summary), indent=2))
        for _ in range(100):
            try:
                os.rename(tmp, out)  # replaces an empty folder
                break
            except OSError:
                if out.exists() and not out.is_dir():
                    raise ValueError(f"--out {out}: is a file; not replacing it") from None
                check_out(out)
                old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(out, old)
                except FileNotFoundError:
                    continue
                shutil.rmtree(old, ignore_errors=True)
        else:
            raise OSError(f"{out}: could not install the output (concurrent writers?)")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def selection_metrics(summary: dict) -> dict:
    """A selection's summary metrics (what tracking logs on the selection run): the frontier's own test AUC, and per baseline the AUCs over the shared range,
    the % change and the share of that range where the frontier is lower."""
    out = {"frontier_test_auc": summary.get("frontier_test_auc"), "n_frontier": summary.get("n_frontier"),
           "n_candidates": summary.get("n_candidates"), "n_subcascades": summary.get("n_subcascades"),
           "seconds": summary.get("seconds"), "seconds_tuning": summary.get("seconds_tuning")}
    for name, e in (summary.get("baselines") or {}).items():
        out[f"{name}.auc_frontier"] = e.get("auc_frontier")
        out[f"{name}.auc_baseline"] = e.get("auc_baseline")
        out[f"{name}.pct_change"] = e.get("pct_change")
        out[f"{name}.frontier_better_share"] = e.get("frontier_better_share")
    for name, v in ((summary.get("all_curves") or {}).get("best_share") or {}).items():
        out[f"best_share.{name}"] = v
    return {k: v for k, v in out.items() if v is not None}


def frontier_log_table(frontier: pd.DataFrame) -> pd.DataFrame:
    """The frontier as a flat table (lists as JSON strings), for tables shown by a UI (MLflow's ``log_table``)."""
    cols = [c for c in ("budget_lo", "budget_hi", "cascade", "point", "thresholds", "abstain_thresholds",
                        "train_error", "train_cost", "measured_train_error", "measured_train_cost", "test_error",
                        "test_cost", "test_wrong", "test_abstention") if c in frontier]
    t = frontier[cols].copy()
    for c in ("thresholds", "abstain_thresholds"):
        if c in t:
            t[c] = t[c].map(lambda v: json.dumps([None if not pd.notna(x) or abs(x) == float("inf") else round(float(x), 6)
                                                  for x in v]))
    return t


__all__ = [
    "SELECT_ON", "SELECT_FILES", "Selection", "SubCascade", "subcascades_of", "cascade_name", "take", "tune_subcascade",
    "tune_all", "candidates_frame", "frontier_of", "choose", "interp_error", "best_pair", "baseline_curves",
    "compare_to_baselines", "select_prepared", "run_selection", "answer_rows", "table_bands",
    "format_frontier_table", "frontier_figure", "check_out", "write_selection", "single_threaded_blas",
    "selection_metrics", "frontier_log_table",
]
