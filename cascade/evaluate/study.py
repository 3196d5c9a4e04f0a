"""The comparison protocol of issue 4: every method on the same subsamples, AUC on shared ranges.

For each chain of models and each cascade (ordered sub-sequence of length >= 2), each training size
n in ``n_values`` ("all" = the whole training split) and each of ``n_subsamples`` seeded subsamples:

1. draw n training query ids (the same draw for every method and every cascade of the chain);
2. :func:`cascade.evaluate.tuning.prepare` on those queries only (calibrators fitted on the subsample, costs per
   ``cost_mode``), scored on the full test split;
3. fit every method with the same seed and score its threshold vectors on the test split.

Each method's test curve is compared with the reference method's (``bayes-opt`` by default) on their
shared cost range (:func:`cascade.evaluate.curves.compare_curves`): % change = 100 (AUC_m - AUC_ref)/AUC_ref.
When the two curves share a single cost (a one-point curve, e.g. a fit on a small subsample where every
threshold routes the training queries alike), the errors of the curves' points nearest that cost are
compared instead and ``note`` says so; curves without a shared cost give NaN. Per cascade the % changes are
averaged over subsamples; per cascade length k the per-cascade means are summarised by
:func:`cascade.evaluate.compare.summarize_by_length` (mean, ``>=3`` = mean of the per-k means, one-sided
paired Wilcoxon signed-rank test, percentile bootstrap interval over cascades). The calibration transform
is chosen once per chain (:func:`cascade.evaluate.tuning.choose_transform`). All randomness comes from
``seed``.
"""

from __future__ import annotations

import hashlib
import time
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cascade.evaluate import curves as evaluate
from cascade.evaluate import tuning as tune
from cascade.evaluate.compare import bootstrap_ci, cascades_of, summarize_by_length  # noqa: F401

DEFAULT_N_VALUES = ("10", "20", "30", "50", "100", "all")
DEFAULT_METHODS = ("markov-copula", "bayes-opt", "grid", "random")


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


def subsample_ids(train_ids: np.ndarray, n: str | int, n_subsamples: int, seed: int, chain_name: str) -> list[np.ndarray]:
    """The seeded training subsamples for one n (sorted query ids). 'all' repeats the full split."""
    train_ids = np.sort(np.asarray(train_ids))
    if str(n) == "all":
        return [train_ids for _ in range(n_subsamples)]
    n = int(n)
    if n < 2:
        raise ValueError(f"training size must be >= 2, got {n}")
    if n > len(train_ids):
        raise ValueError(f"training size {n} exceeds the {len(train_ids)} training queries")
    out = []
    for s in range(n_subsamples):
        rng = np.random.default_rng(_seed(seed, chain_name, n, s))
        out.append(np.sort(rng.choice(train_ids, size=n, replace=False)))
    return out


#: Study methods that are not tuners: ``select`` is `cascade select` on the cascade's models (every ordered
#: sub-cascade tuned with its ``method``, the train-side frontier chosen by ``select_on``), its frontier's
#: test curve compared like a tuner's.
SELECT = "select"
SELECT_OPTIONS = ("method", "select_on")


def check_method(method: str) -> None:
    """A method the study can run: a registered tuner or ``select`` (ValueError naming the choices)."""
    if method != SELECT:
        tune.get_method(method)


def validate_method_params(method: str, params: dict) -> dict:
    """``--param METHOD.NAME=VALUE`` for one method; for ``select``: ``method`` (the sub-cascades' tuner,
    default markov-copula), ``select_on`` (:data:`cascade.evaluate.select.SELECT_ON`) and that tuner's
    parameters."""
    if method != SELECT:
        return tune.get_method(method).validate_params(params)
    from cascade.evaluate import select

    params = dict(params)
    inner = str(params.get("method", "markov-copula"))
    if inner == SELECT:
        raise ValueError("--param select.method: the sub-cascades' tuning method cannot be select itself")
    select._rule(params.get("select_on", select.DEFAULT_SELECT_ON))
    rest = {k: v for k, v in params.items() if k not in SELECT_OPTIONS}
    return {**{k: params[k] for k in SELECT_OPTIONS if k in params},
            **tune.get_method(inner).validate_params(rest)}


def method_params(method: str, seed: int, overrides: dict | None) -> dict:
    """Constructor parameters: the per-method overrides plus ``seed`` when the tuner takes one (for
    ``select``: when its sub-cascades' tuner takes one)."""
    import inspect

    params = validate_method_params(method, (overrides or {}).get(method, {}))
    cls = tune.get_method(params.get("method", "markov-copula") if method == SELECT else method)
    if "seed" in inspect.signature(cls.__init__).parameters:
        params.setdefault("seed", seed)
    return params


_SUB_CACHE: dict = {}
_SUB_CACHE_SIZE = 4096


def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def select_frontier(train, test, params: dict):
    """``select`` on one prepared cascade: every ordered sub-cascade of ``train.models`` tuned with
    ``params["method"]`` (the rest of ``params`` are its parameters), then the train-side frontier by
    ``params["select_on"]``; returns the frontier (test columns scored on ``test``). Sub-cascade tunings
    are cached per process by their data, method and parameters: the cascades of a chain share most of
    their sub-cascades (a 5-model chain's 26 cascades hold 131 multi-model sub-cascades, 26 distinct)."""
    from cascade.evaluate import select

    params = dict(params)
    method = params.pop("method", "markov-copula")
    select_on = params.pop("select_on", select.DEFAULT_SELECT_ON)
    chain = list(train.models)
    key_params = repr(sorted(params.items()))
    subs = []
    with select.single_threaded_blas():
        for c in select.subcascades_of(chain):
            idx = [chain.index(m) for m in c]
            tr, te = select.take(train, idx), select.take(test, idx)
            key = (tuple(c), method, key_params, _digest(tr.confidence, tr.correct, tr.cost, te.confidence,
                                                         te.correct, te.cost))
            sub = _SUB_CACHE.get(key)
            if sub is None:
                sub = select.tune_subcascade(tr, te, method, params)
                sub.tuner = None
                _SUB_CACHE[key] = sub
                while len(_SUB_CACHE) > _SUB_CACHE_SIZE:
                    _SUB_CACHE.pop(next(iter(_SUB_CACHE)))
            subs.append(sub)
    cand = select.candidates_frame(subs, chain, train)
    return select.frontier_of(cand, select_on, train=train)


def run_cell(records: pd.DataFrame, models: list[str], train_ids: np.ndarray, methods: list[str], *,
             seed: int, train_split: str = "train", test_split: str = "test", signal: str = "confidence",
             cost_mode: str = "model-mean", overrides: dict | None = None, benchmark: str | None = None,
             transform="auto") -> list[dict]:
    """One (cascade, subsample): every method's test curve. Returns one row per method."""
    train_rows = records[(records["split"] == train_split) & records["query_id"].isin(train_ids)]
    sub = pd.concat([train_rows, records[records["split"] == test_split]], ignore_index=True)
    train, test, _ = tune.prepare(sub, models=models, train_split=train_split, test_split=test_split,
                                  signal=signal, cost_mode=cost_mode, benchmark=benchmark, transform=transform)
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if m == SELECT:
                    curve = select_frontier(train, test, method_params(m, seed, overrides))
                    degenerate = tune.degenerate_reasons(train, curve)
                else:
                    curve, summary, _ = tune.tune_prepared(train, test, m, method_params(m, seed, overrides))
                    degenerate = summary["degenerate"]
            rows.append({"method": m, "test_cost": curve["test_cost"].to_numpy(),
                         "test_error": curve["test_error"].to_numpy(), "seconds": time.perf_counter() - t0,
                         "error": "", "degenerate": "; ".join(degenerate)})
        except Exception as e:  # a failing method is reported, not hidden: its AUC is NaN
            rows.append({"method": m, "test_cost": np.array([]), "test_error": np.array([]),
                         "seconds": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}",
                         "degenerate": ""})
    return rows


def _cascade_task(records, chain_name, models, subsamples, methods, reference, seed, kw):
    out_rows, curves = [], []
    for n, subs in subsamples.items():
        for s, ids in enumerate(subs):
            cell_seed = _seed(seed, chain_name, n, s)
            rows = run_cell(records, models, ids, methods, seed=cell_seed, **kw)
            by = {r["method"]: r for r in rows}
            ref = by.get(reference)
            for r in rows:
                rec = {"chain": chain_name, "cascade": " -> ".join(models), "k": len(models), "n": str(n),
                       "subsample": s, "method": r["method"], "n_points": len(r["test_cost"]),
                       "seconds": r["seconds"], "error": r["error"], "degenerate": r["degenerate"],
                       "auc_own": evaluate.auc(r["test_cost"], r["test_error"]) if len(r["test_cost"]) else np.nan}
                if ref is not None and len(ref["test_cost"]) and len(r["test_cost"]):
                    cmp = evaluate.compare_curves(r["test_cost"], r["test_error"], ref["test_cost"], ref["test_error"],
                                                  at_single_cost=True)
                    rec.update({"cost_lo": cmp.lo, "cost_hi": cmp.hi, "auc": cmp.auc_a, "auc_ref": cmp.auc_b,
                                "pct_change": cmp.pct_change, "note": cmp.note})
                else:
                    rec.update({"cost_lo": np.nan, "cost_hi": np.nan, "auc": np.nan, "auc_ref": np.nan,
                                "pct_change": np.nan, "note": "no curve"})
                out_rows.append(rec)
                if s == 0:
                    curves.append({"chain": chain_name, "cascade": rec["cascade"], "n": str(n), "method": r["method"],
                                   "test_cost": r["test_cost"].tolist(), "test_error": r["test_error"].tolist()})
    return out_rows, curves


@dataclass
class StudyResult:
    runs: pd.DataFrame  # one row per chain x cascade x n x subsample x method
    per_cascade: pd.DataFrame
    summary: pd.DataFrame
    curves: pd.DataFrame
    meta: dict = field(default_factory=dict)


def _summarize_one(runs: pd.DataFrame, reference: str, seed: int, groups: dict, chain_label: str):
    pcs, rows = [], []
    for gname, ns in groups.items():
        sel = runs[runs["n"].isin(ns) & (runs["method"] != reference)]
        if sel.empty:
            continue
        pc = (sel.groupby(["chain", "cascade", "k", "method"], as_index=False)
              .agg(auc=("auc", "mean"), auc_ref=("auc_ref", "mean"), pct_change=("pct_change", "mean"),
                   n_runs=("pct_change", "size"), n_failed=("error", lambda e: int((e.fillna("") != "").sum()))))
        pc.insert(0, "n", gname)
        pcs.append(pc)
        for m, g in pc.groupby("method"):
            summ = summarize_by_length(g, ci_seed=lambda kname: _seed(seed, chain_label, gname, m, kname),
                                       extra_means=("auc", "auc_ref"))
            summ = summ.rename(columns={"wilcoxon_p": "wilcoxon_p_less"})
            summ.insert(0, "vs", reference)
            summ.insert(0, "method", m)
            summ.insert(0, "n", gname)
            summ.insert(0, "chain", chain_label)
            rows += summ[["chain", "n", "method", "vs", "k", "n_cascades", "mean_pct_change", "ci95_lo", "ci95_hi",
                          "wilcoxon_p_less", "mean_auc", "mean_auc_ref"]].to_dict("records")
    return pcs, rows


def summarize(runs: pd.DataFrame, reference: str, seed: int = 0, groups: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cascade means over subsamples, then per (chain, n group, method, k): mean % change, one-sided
    Wilcoxon p, bootstrap CI. Chain "all" pools the cascades of every chain."""
    runs = runs.copy()
    runs["n"] = runs["n"].astype(str)
    groups = groups or {n: [n] for n in runs["n"].unique()}
    chains = list(dict.fromkeys(runs["chain"]))
    pcs, _ = _summarize_one(runs, reference, seed, groups, "all")
    rows = []
    for label in (["all"] + chains if len(chains) > 1 else chains):
        sub = runs if label == "all" else runs[runs["chain"] == label]
        rows += _summarize_one(sub, reference, seed, groups, label)[1]
    return pd.concat(pcs, ignore_index=True) if pcs else pd.DataFrame(), pd.DataFrame(rows)


def default_groups(n_values) -> dict:
    n_values = [str(n) for n in n_values]
    groups = {n: [n] for n in n_values}
    small = [n for n in n_values if n != "all" and int(n) <= 30]
    if small:
        groups["<=30"] = small
    return groups


def run_study(chains: dict[str, pd.DataFrame], *, chain_models: dict[str, list[str]] | None = None,
              methods=DEFAULT_METHODS, reference: str = "bayes-opt", n_values=DEFAULT_N_VALUES,
              n_subsamples: int = 20, seed: int = 0, n_jobs: int = 1, overrides: dict | None = None,
              train_split: str = "train", test_split: str = "test", signal: str = "confidence",
              cost_mode: str = "model-mean", max_len: int | None = None, transform="auto",
              progress=None) -> StudyResult:
    """Run the protocol. ``chains`` maps a chain name to its records (one benchmark); the chain's order is
    ``chain_models[name]`` or the order in which models first appear in the records. ``transform``:
    auto | one-sided | two-sided | identity, chosen once per chain (``meta["transforms"]``)."""
    methods = list(methods)
    if not methods:
        raise ValueError("no methods given")
    for m in methods:
        check_method(m)  # unknown method -> ValueError naming the choices
    for m, p in (overrides or {}).items():
        if m not in methods:
            raise ValueError(f"--param {m}.*: {m} is not among the methods ({', '.join(methods)})")
        validate_method_params(m, p)  # unknown parameter -> ValueError naming the valid ones
    if reference not in methods:
        raise ValueError(f"the reference method {reference!r} must be one of the methods {methods}")
    if n_subsamples < 1:
        raise ValueError("n_subsamples must be >= 1")
    kw = dict(train_split=train_split, test_split=test_split, signal=signal, cost_mode=cost_mode,
              overrides=overrides)
    tasks, transforms = [], {}
    for name, recs in chains.items():
        order = (chain_models or {}).get(name) or list(dict.fromkeys(recs["model"]))
        train_ids = recs.loc[recs["split"] == train_split, "query_id"].unique()
        if len(train_ids) == 0:
            raise ValueError(f"chain {name}: the training split {train_split!r} is empty")
        subsamples = {str(n): subsample_ids(train_ids, n, n_subsamples, seed, name) for n in n_values}
        chain_cascades = cascades_of(order)
        choice = tune.choose_transform(recs, models=order, signal=signal, splits=(train_split, test_split),
                                       transform=transform)
        transforms[name] = {"transform": choice.name, "transform_reason": choice.reason}
        for models in chain_cascades:
            if max_len is None or len(models) <= max_len:
                tasks.append((recs, name, models, subsamples, dict(kw, transform=choice)))
    t0 = time.perf_counter()
    if n_jobs == 1:
        results = []
        for i, (recs, name, models, subs, task_kw) in enumerate(tasks):
            results.append(_cascade_task(recs, name, models, subs, methods, reference, seed, task_kw))
            if progress:
                progress(f"[{i + 1}/{len(tasks)}] {name}: {' -> '.join(models)} ({time.perf_counter() - t0:.0f}s)")
    else:
        from joblib import Parallel, delayed

        # longest cascades first so the pool stays busy
        order_idx = sorted(range(len(tasks)), key=lambda i: -len(tasks[i][2]))
        res = Parallel(n_jobs=n_jobs, verbose=5 if progress else 0)(
            delayed(_cascade_task)(tasks[i][0], tasks[i][1], tasks[i][2], tasks[i][3], methods, reference, seed,
                                   tasks[i][4])
            for i in order_idx)
        results = [None] * len(tasks)
        for i, r in zip(order_idx, res):
            results[i] = r
    runs = pd.DataFrame([row for r, _ in results for row in r])
    curves = pd.DataFrame([c for _, cl in results for c in cl]) if results else pd.DataFrame()
    per_cascade, summary = summarize(runs, reference, seed, default_groups(n_values))
    meta = {"methods": methods, "reference": reference, "n_values": list(map(str, n_values)),
            "n_subsamples": n_subsamples, "seed": seed, "n_jobs": n_jobs, "cost_mode": cost_mode,
            "signal": signal, "n_cascades": len(tasks), "seconds": time.perf_counter() - t0,
            "overrides": overrides or {}, "transforms": transforms,
            "n_degenerate_fits": int((runs["degenerate"] != "").sum()) if len(runs) else 0}
    return StudyResult(runs, per_cascade, summary, curves, meta)


def format_table(summary: pd.DataFrame) -> str:
    """A readable plain-text table: one row per (chain, n, k), one column per method with
    'mean % change [95% CI] p=Wilcoxon' against the reference."""
    if summary.empty:
        return "(no comparisons)"
    df = summary.copy()
    df["cell"] = [f"{m:+6.2f} [{a:+.2f},{b:+.2f}] p={p:.2g}" if np.isfinite(m) else "n/a"
                  for m, a, b, p in zip(df["mean_pct_change"], df["ci95_lo"], df["ci95_hi"], df["wilcoxon_p_less"])]
    ref = df["vs"].iloc[0]
    if "chain" not in df.columns:
        df["chain"] = "all"
    nk = df.groupby(["chain", "n", "k"], sort=False)["n_cascades"].first()
    wide = df.pivot_table(index=["chain", "n", "k"], columns="method", values="cell", aggfunc="first", sort=False)
    wide.insert(0, "cascades", nk.reindex(wide.index).to_numpy())
    wide.columns.name = None
    head = (f"% change of mean test error over the shared cost range (AUC) vs {ref}; negative = better than {ref}.\n"
            f"Cell: mean over cascades [95% bootstrap CI] p = one-sided paired Wilcoxon (< 0).\n")
    return head + wide.reset_index().to_string(index=False)


def plot_curves(curves: pd.DataFrame, outdir, n: str = "all") -> list:
    """One PNG per cascade: each method's test error-cost curve (first subsample of size ``n``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = []
    sel = curves[curves["n"] == str(n)]
    for (chain, cascade), g in sel.groupby(["chain", "cascade"], sort=False):
        fig, ax = plt.subplots(figsize=(6, 4))
        for _, r in g.iterrows():
            c, e = np.asarray(r["test_cost"]), np.asarray(r["test_error"])
            if len(c) == 0:
                continue
            o = np.argsort(c, kind="stable")
            ax.plot(c[o], e[o], marker=".", label=r["method"])
        ax.set_xlabel("test cost (USD per million queries)")
        ax.set_ylabel("test error")
        ax.set_title(f"{chain}: {cascade} (n={n})", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"{chain}__{cascade.replace(' -> ', '_')}__n{n}.png".replace("/", "_")
        fig.savefig(outdir / name, dpi=90)
        plt.close(fig)
        files.append(outdir / name)
    return files


def margin_study(records: pd.DataFrame, models: list[str], *, signal: str = "conf_top2_margin",
                 train_split: str = "train", test_split: str = "test", benchmark: str | None = None,
                 n_budgets: int = 100, n_orders: int = 3, warmup: int = 20, seed: int = 0,
                 transform="auto") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Margin sampling online (on the test stream) vs offline (quantiles fitted on train) vs random routing,
    for a two-model cascade, at the same ``n_budgets`` budgets between the cheap model's cost and the cost
    of always escalating (model-mean costs, USD per million queries). Returns (per-budget frame, summary)."""
    from cascade.tuners.margin import accuracy_at_budgets, budget_area, online_margin_curve

    if len(models) != 2:
        raise ValueError(f"margin sampling compares a cheap and an expensive model; got {len(models)} models")
    train, test, _ = tune.prepare(records, models=models, train_split=train_split, test_split=test_split,
                                  signal=signal, cost_mode="model-mean", benchmark=benchmark, transform=transform)
    from cascade.data.records import cascade_data

    raw_test = cascade_data(records, models, test_split, signal=signal, benchmark=benchmark)
    c0, c1 = float(test.cost[0, 0]), float(test.cost[0, 1])
    online, area_online = online_margin_curve(raw_test.confidence[:, 0], test.correct, c0, c1,
                                              n_budgets=n_budgets, n_orders=n_orders, warmup=warmup, seed=seed)
    budgets = online["budget"].to_numpy()
    curve, _, _ = tune.tune_prepared(train, test, "margin", {"seed": seed})
    acc_off = accuracy_at_budgets(curve["test_cost"], curve["test_error"], budgets)
    # random routing: escalate with probability (B - c0)/c1, exact expectation
    acc0, acc1 = test.correct.mean(axis=0)
    p = np.clip((budgets - c0) / c1, 0, 1)
    acc_rand = (1 - p) * acc0 + p * acc1
    online["offline_accuracy"] = acc_off
    online["random_accuracy"] = acc_rand
    summary = pd.DataFrame([
        {"form": "online (test stream)", "area": area_online,
         "max_spend_ratio": float(online["max_spend_ratio"].max())},
        {"form": "offline (train quantiles)", "area": budget_area(budgets, acc_off), "max_spend_ratio": np.nan},
        {"form": "random routing", "area": budget_area(budgets, acc_rand), "max_spend_ratio": 1.0},
    ])
    summary.insert(0, "cascade", " -> ".join(models))
    summary["cheap_accuracy"] = acc0
    summary["expensive_accuracy"] = acc1
    summary["n_test"] = test.n
    summary["n_train"] = train.n
    return online, summary


def _label(v) -> str:
    """A training-size or length label as a metric-name part: ``all``, ``20``, ``<=30`` -> ``le30``,
    ``>=3`` -> ``ge3``."""
    return str(v).replace("<=", "le").replace(">=", "ge").replace(" ", "")


def method_table(runs: pd.DataFrame, chain: str, method: str) -> pd.DataFrame:
    """One (chain, method)'s fits of a study, per training size n and cascade: mean % change, AUCs and the
    number of subsamples (the table a tracking run per chain x method carries)."""
    mine = runs[(runs["chain"] == chain) & (runs["method"] == method)]
    return (mine.groupby(["n", "cascade", "k"], sort=False)
            .agg(pct_change=("pct_change", "mean"), auc=("auc", "mean"), auc_ref=("auc_ref", "mean"),
                 auc_own=("auc_own", "mean"), n_subsamples=("subsample", "size"))
            .reset_index())


def method_metrics(runs: pd.DataFrame, summary: pd.DataFrame, reference: str) -> dict:
    """What a study says about each (chain, method), as flat metrics (for one tracking run per chain x method,
    not one per fit): ``{(chain, method): {name: value}}``.

    Per training size n (``n_<n>``), from ``runs`` (the reference compared with itself gives 0 % and its own
    AUC): ``pct_change.n_<n>`` the mean over cascades of the per-cascade mean % change of AUC vs the
    reference on their shared cost range (negative = better than the reference), ``auc.n_<n>`` /
    ``auc_ref.n_<n>`` the mean AUCs on those shared ranges, ``auc_own.n_<n>`` the mean own-range AUC,
    ``win_share.n_<n>`` the share of cascades with a negative mean % change. Per n group and cascade length k
    (``k2``, ``k3``, ``kge3`` = mean of the per-k means, ``kall``), from ``summary``:
    ``pct_change.n_<g>.k<k>`` and ``wilcoxon_p.n_<g>.k<k>`` (one-sided, < 0). Headline ``pct_change``: the
    largest n's (``all`` when studied). Counts: ``n_fits``, ``n_failed_fits``, ``n_degenerate_fits``,
    ``fit_seconds``."""
    runs = runs.copy()
    runs["n"] = runs["n"].astype(str)
    for col in ("error", "degenerate", "note"):
        if col in runs:
            runs[col] = runs[col].astype(object).fillna("").astype(str)
    n_order = list(dict.fromkeys(runs["n"]))
    out: dict = {}
    for (chain, method), g in runs.groupby(["chain", "method"], sort=False):
        m: dict = {"n_fits": int(len(g)), "n_failed_fits": int((g["error"] != "").sum()),
                   "n_degenerate_fits": int((g["degenerate"] != "").sum()),
                   "fit_seconds": float(g["seconds"].sum())}
        for n, gn in g.groupby("n", sort=False):
            pc = gn.groupby("cascade").agg(pct=("pct_change", "mean"), auc=("auc", "mean"), ref=("auc_ref", "mean"),
                                           own=("auc_own", "mean"))
            m[f"pct_change.n_{_label(n)}"] = float(pc["pct"].mean())
            m[f"auc.n_{_label(n)}"] = float(pc["auc"].mean())
            m[f"auc_ref.n_{_label(n)}"] = float(pc["ref"].mean())
            m[f"auc_own.n_{_label(n)}"] = float(pc["own"].mean())
            m[f"win_share.n_{_label(n)}"] = float((pc["pct"].dropna() < 0).mean()) if pc["pct"].notna().any() else np.nan
        last = "all" if "all" in n_order else n_order[-1]
        m["pct_change"] = m.get(f"pct_change.n_{_label(last)}", np.nan)
        if len(summary):
            s = summary[(summary["chain"] == chain) & (summary["method"] == method)]
            for _, r in s.iterrows():
                key = f"n_{_label(r['n'])}.k{_label(r['k'])}"
                m[f"pct_change.{key}"] = float(r["mean_pct_change"])
                m[f"wilcoxon_p.{key}"] = float(r["wilcoxon_p_less"])
        out[(chain, method)] = m
    return out
