"""Yardsticks for ``--method copula`` (issue 11): the study protocol of ``cascade study`` plus an oracle.

    .venv/bin/python bench/copula_study.py \\
        --results llama=examples/medmcqa-llama.parquet --results qwen_oai=examples/medmcqa-qwen_oai.parquet \\
        [--methods copula,markov-copula,grid,bayes-opt] [--n-values 10,20,30,50,100,all] [--subsamples 20] \\
        [--subsamples-all 20] [--seed 0] [--jobs 2] [--param copula.criterion=bic] --out out/copula-study

Every chain, cascade, training size n and seeded subsample is fitted exactly as ``cascade study`` does it
(:func:`cascade.evaluate.study.run_cell`, the same subsamples and per-cell seeds), once for all methods;
then ``copula`` is compared with every other method on their shared cost range (% change of AUC,
negative = copula better; per cascade the mean over subsamples, per k the mean over cascades with a
one-sided paired Wilcoxon p-value, ``>=3`` = mean of the per-k means, ``<=30`` = n in {10, 20, 30}).

The oracle: the grid search of ``--method grid`` (40 quantiles, Pareto front) run on the *test* split and
scored on it, i.e. the best thresholds the grid could pick with hindsight. It is a yardstick, not a
method. Its curve does not depend on the training subsample. Reported: ``markov-copula`` vs oracle (the
gap), ``copula`` vs oracle, and per cascade the share of the gap that ``copula`` closes,
(AUC_mc - AUC_copula) / (AUC_mc - AUC_oracle) on the cost range shared by the three curves.

The target of issue 11 (printed at the end): at n = all, k >= 3, copula's improvement over markov-copula
(minus its % change) >= min(1%, half of markov-copula's gap to the oracle in %), with a one-sided
Wilcoxon p < 0.05; and at n <= 30 no worse than markov-copula (mean % change <= 0).

``--speed`` only times ``copula``'s fit + full curve for k = 2..K on the first ``--results`` chain.

Outputs in --out: runs.csv (one row per comparison per cell), summary.csv, closure.csv (per cascade),
table.txt, meta.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade.data import records  # noqa: E402
from cascade.evaluate import curves as evaluate  # noqa: E402
from cascade.evaluate import study as protocol  # noqa: E402
from cascade.evaluate import tuning as tune  # noqa: E402
from cascade.tuners.grid import GridSearchTuner  # noqa: E402

SUBJECT = "copula"


def oracle_curve(recs: pd.DataFrame, models: list[str], **kw) -> tuple[np.ndarray, np.ndarray]:
    """Grid search fitted on the test split and scored on it (calibrators from the full training split)."""
    _, test, _ = tune.prepare(recs, models=models, **kw)
    grid = GridSearchTuner().fit(test)
    scored = evaluate.score_curve(grid.thresholds_, test)
    return scored["cost"].to_numpy(), scored["error"].to_numpy()


def closure(mc, cop, orc) -> dict:
    """AUCs of the three curves on their common cost range and the share of the gap copula closes."""
    lo, hi = evaluate.shared_range(mc[0], cop[0], orc[0])
    a_mc, a_cop, a_or = (evaluate.auc(c, e, lo, hi) for c, e in (mc, cop, orc))
    gap = a_mc - a_or
    return {"auc_mc3": a_mc, "auc_copula3": a_cop, "auc_oracle3": a_or,
            "closed": (a_mc - a_cop) / gap if gap > 0 else np.nan}


def in_sample_cell(recs, models, methods, seed, overrides, kw) -> list[dict]:
    """Every method fitted on the whole training split and scored on it (n = all only)."""
    train, test, _ = tune.prepare(recs, models=models, **kw)
    out = []
    for m in methods:
        curve, _, _ = tune.tune_prepared(train, test, m, protocol.method_params(m, seed, overrides))
        out.append({"method": m, "test_cost": curve["test_cost"].to_numpy(), "test_error": curve["test_error"].to_numpy(),
                    "error": ""})
    return out


def cascade_task(recs, chain, models, subsamples, methods, seed, overrides, kw):
    orc = oracle_curve(recs, models, **kw)
    rows, clos = [], []
    for n, subs in subsamples.items():
        for s, ids in enumerate(subs):
            cell_seed = protocol._seed(seed, chain, n, s)  # the per-cell seed of `cascade study`
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kw["test_split"] == kw["train_split"]:
                    res = in_sample_cell(recs, models, methods, cell_seed, overrides, kw)
                else:
                    res = protocol.run_cell(recs, models, ids, methods, seed=cell_seed, overrides=overrides, **kw)
            curves = {r["method"]: (r["test_cost"], r["test_error"]) for r in res}
            errors = {r["method"]: r["error"] for r in res}
            curves["oracle"] = orc
            base = {"chain": chain, "cascade": " -> ".join(models), "k": len(models), "n": str(n), "subsample": s}
            pairs = [(SUBJECT, m) for m in methods if m != SUBJECT] + [(SUBJECT, "oracle")]
            pairs += [(m, "oracle") for m in methods if m != SUBJECT]
            for a, b in pairs:
                ok = len(curves.get(a, ((),))[0]) and len(curves.get(b, ((),))[0])
                row = dict(base, method=a, vs=b, error=errors.get(a, "") or errors.get(b, ""))
                if ok:
                    cmp = evaluate.compare_curves(*curves[a], *curves[b])
                    row.update(auc=cmp.auc_a, auc_ref=cmp.auc_b, pct_change=cmp.pct_change)
                else:
                    row.update(auc=np.nan, auc_ref=np.nan, pct_change=np.nan)
                rows.append(row)
            if "markov-copula" in curves and len(curves[SUBJECT][0]) and len(curves["markov-copula"][0]):
                clos.append(dict(base, **closure(curves["markov-copula"], curves[SUBJECT], orc)))
    return rows, clos


def closure_summary(pc: pd.DataFrame) -> list[str]:
    """Gap closed over cascades with k >= 3: sum(AUC_mc - AUC_copula) / sum(AUC_mc - AUC_oracle) (stable when
    single gaps are near zero), the median of the per-cascade shares, and how many cascades close >= half."""
    lines = ["gap closed, k >= 3 (ratio of sums over cascades; median; cascades closing >= 50%):"]
    for chain, g in [("all", pc)] + list(pc.groupby("chain")):
        g = g[g["k"] >= 3]
        if not len(g):
            continue
        ratio = (g["auc_mc3"] - g["auc_copula3"]).sum() / (g["auc_mc3"] - g["auc_oracle3"]).sum()
        share = g["closed"].dropna()
        lines.append(f"  {chain}: {100 * ratio:.1f}%; median {100 * share.median():.1f}%; "
                     f"{int((share >= 0.5).sum())}/{len(share)}")
    return lines


def target_lines(summary: pd.DataFrame) -> list[str]:
    def cell(chain, n, method, vs):
        sel = summary[(summary["chain"] == chain) & (summary["n"] == n) & (summary["method"] == method)
                      & (summary["vs"] == vs) & (summary["k"] == ">=3")]
        return sel.iloc[0] if len(sel) else None

    lines = ["Target (issue 11), k >= 3 = mean of the per-k means:"]
    for chain in dict.fromkeys(summary["chain"]):
        c_mc, g = cell(chain, "all", SUBJECT, "markov-copula"), cell(chain, "all", "markov-copula", "oracle")
        if c_mc is None or g is None:
            continue
        improvement, gap = -c_mc["mean_pct_change"], g["mean_pct_change"]
        need = min(1.0, 0.5 * gap) if np.isfinite(gap) else 1.0
        ok = improvement >= need and c_mc["wilcoxon_p_less"] < 0.05
        small = cell(chain, "<=30", SUBJECT, "markov-copula")
        s_txt = (f"; n<=30: {small['mean_pct_change']:+.2f}% ({'no worse' if small['mean_pct_change'] <= 0 else 'WORSE'})"
                 if small is not None else "")
        lines.append(f"  {chain}: n=all improvement {improvement:+.2f}% (p={c_mc['wilcoxon_p_less']:.3g}); markov-copula's "
                     f"gap to the oracle {gap:+.2f}%; needed {need:.2f}% -> {'MET' if ok else 'NOT MET'}{s_txt}")
    return lines


def speed(path: str, repeats: int = 3) -> list[str]:
    """Seconds (wall and CPU of this process) to fit ``copula`` and trace its curve for the first k models of
    the chain in ``path``, k = 2..K; the pair-copula cache is cleared before every repeat."""
    import statistics

    from cascade.tuners import copula

    recs = records.load(path)
    chain = list(dict.fromkeys(recs["model"]))
    lines = [f"{'k':>2} {'fit s':>7} {'fit+curve s':>12} {'cpu s':>7} {'points':>7}"]
    for k in range(2, len(chain) + 1):
        train, _, _ = tune.prepare(recs, models=chain[:k])
        wall, cpu, fit = [], [], []
        for _ in range(repeats):
            copula._PAIR_CACHE.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            tuner = copula.CopulaTuner().fit(train)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            fit.append(tuner.diagnostics_["fit_seconds"])
        lines.append(f"{k:>2} {statistics.median(fit):>7.3f} {statistics.median(wall):>12.3f} "
                     f"{statistics.median(cpu):>7.3f} {len(tuner.thresholds_):>7}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", action="append", required=True, help="NAME=PATH[:m1,m2,...] (repeatable)")
    ap.add_argument("--speed", action="store_true", help="only time fit + curve for k = 2..K on the first --results")
    ap.add_argument("--methods", default="copula,markov-copula,grid,bayes-opt")
    ap.add_argument("--n-values", default="10,20,30,50,100,all")
    ap.add_argument("--subsamples", type=int, default=20)
    ap.add_argument("--subsamples-all", type=int, default=None,
                    help="repeats at n=all (default: --subsamples); they differ only through the per-cell seed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--param", action="append", default=[], help="METHOD.NAME=VALUE")
    ap.add_argument("--test-split", default="test",
                    help="split the curves are scored on; 'train' scores in-sample (separates the model's fit "
                         "from the train -> test shift)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.speed:
        print("\n".join(speed(a.results[0].partition("=")[2].partition(":")[0])))
        return 0
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if SUBJECT not in methods:
        methods.insert(0, SUBJECT)
    overrides: dict = {}
    for p in a.param:
        key, _, value = p.partition("=")
        meth, _, name = key.partition(".")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        overrides.setdefault(meth, {})[name] = value
    if not a.out:
        ap.error("--out is required (except with --speed)")
    n_values = [v.strip() for v in a.n_values.split(",")]
    if a.test_split == "train" and n_values != ["all"]:
        ap.error("--test-split train scores in-sample: use it with --n-values all")
    kw = dict(train_split="train", test_split=a.test_split, signal="confidence", cost_mode="model-mean")
    tasks = []
    for spec in a.results:
        name, _, rest = spec.partition("=")
        path, _, order = rest.partition(":")
        recs = records.load(path)
        chain = order.split(",") if order else list(dict.fromkeys(recs["model"]))
        train_ids = recs.loc[recs["split"] == "train", "query_id"].unique()
        subs = {n: protocol.subsample_ids(train_ids, n, a.subsamples_all if n == "all" and a.subsamples_all
                                          else a.subsamples, a.seed, name) for n in n_values}
        tasks += [(recs, name, models, subs) for models in protocol.cascades_of(chain)]
    t0 = time.perf_counter()
    order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i][2]))
    if a.jobs == 1:
        res = [cascade_task(*tasks[i], methods, a.seed, overrides, kw) for i in order]
    else:
        from joblib import Parallel, delayed

        res = Parallel(n_jobs=a.jobs, verbose=5)(
            delayed(cascade_task)(*tasks[i], methods, a.seed, overrides, kw) for i in order)
    runs = pd.DataFrame([r for rows, _ in res for r in rows])
    clos = pd.DataFrame([c for _, cl in res for c in cl])
    groups = protocol.default_groups(n_values)
    parts = []
    for vs, g in runs.groupby("vs"):
        _, summ = protocol.summarize(g.drop(columns="vs"), vs, a.seed, groups)
        parts.append(summ)
    summary = pd.concat(parts, ignore_index=True)
    per_cascade_closure = (clos[clos["n"] == "all"].groupby(["chain", "cascade", "k"], as_index=False)
                           [["auc_mc3", "auc_copula3", "auc_oracle3", "closed"]].mean()) if len(clos) else clos
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    per_cascade_closure.to_csv(out / "closure.csv", index=False)
    lines = []
    for vs in dict.fromkeys(summary["vs"]):
        sub = summary[summary["vs"] == vs]
        for m in dict.fromkeys(sub["method"]):
            lines.append(f"== {m} vs {vs} ==")
            lines.append(protocol.format_table(sub[sub["method"] == m]))
    if len(per_cascade_closure):
        lines.append("== share of markov-copula's gap to the oracle that copula closes (n=all, common cost range) ==")
        lines.append(per_cascade_closure.round(4).to_string(index=False))
        lines += closure_summary(per_cascade_closure)
    lines += target_lines(summary)
    seconds = time.perf_counter() - t0
    lines.append(f"{len(tasks)} cascades, methods {methods}, n {n_values}, {a.subsamples} subsamples "
                 f"({a.subsamples_all or a.subsamples} at n=all), "
                 f"seed {a.seed}, jobs {a.jobs}: {seconds:.0f} s")
    (out / "table.txt").write_text("\n".join(lines) + "\n")
    (out / "meta.json").write_text(json.dumps({"argv": sys.argv[1:] if argv is None else argv, "methods": methods,
                                               "n_values": n_values, "subsamples": a.subsamples,
                                               "subsamples_all": a.subsamples_all, "seed": a.seed,
                                               "jobs": a.jobs, "overrides": overrides, "seconds": seconds}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
