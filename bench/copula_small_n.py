"""Choosing ``copula``'s small-sample rule: copula variants against markov-copula, per training size n.

    .venv/bin/python bench/copula_small_n.py \\
        --results llama=examples/medmcqa-llama.parquet:llama3.2-1b,llama3.2-3b,llama3.1-8b,llama3.1-70b,llama3.1-405b \\
        --results qwen_oai=examples/medmcqa-qwen_oai.parquet:gpt-4o-mini,qwen2.5-32b-coder-instruct,qwen2.5-72b-instruct,gpt-4o \\
        --variant default= --variant rule=obs_per_par=10 --variant paper=families=indep,gumbel \\
        [--n-values 10,20,30,50,100,all] [--subsamples 4] [--min-k 3] [--seed 0] [--jobs 1] \\
        [--cache out/copula-small-n-cache] --out out/copula-small-n

The cells are ``cascade study``'s: every chain, cascade (length >= ``--min-k``), training size n and seeded
subsample (:func:`cascade.evaluate.study.subsample_ids`, the per-cell seed of the study, the calibration
transform chosen once per chain), calibrators fitted on the subsample, curves scored on the full test
split. In each cell markov-copula and the reference (bayes-opt) are fitted once (cached in ``--cache``:
a later run with other variants reuses them), then every ``--variant NAME=p1=v1;p2=v2`` of ``copula``
(parameters separated by ';'; an empty list is the default ``copula``).

Printed per variant and n, k >= 3 as the mean of the per-k means over cascades (per cascade the mean
over subsamples): ``cop-vs-ref`` and ``mc-vs-ref``, the % change of AUC against the reference on each
pair's shared cost range (what ``cascade study`` reports, negative = better than the reference), their
difference ``diff`` (negative = copula better than markov-copula), its one-sided paired Wilcoxon
p-values over cascades (``p_worse``: is copula worse?; ``p_better``), and ``direct``: copula against
markov-copula on their own shared range.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
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

BASE = ("markov-copula", "bayes-opt")


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition("=")
    params = {}
    for item in filter(None, (p.strip() for p in rest.split(";"))):
        key, _, value = item.partition("=")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        params[key] = value
    return name, params


def _curve(train, test, method, params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            curve, _, _ = tune.tune_prepared(train, test, method, params)
        except Exception as e:  # reported as a missing curve
            return np.array([]), np.array([]), f"{type(e).__name__}: {e}"
    return curve["test_cost"].to_numpy(), curve["test_error"].to_numpy(), ""


def _cmp(a, b):
    if not len(a[0]) or not len(b[0]):
        return np.nan
    return evaluate.compare_curves(a[0], a[1], b[0], b[1], at_single_cost=True).pct_change


def cascade_task(recs, chain, models, subsamples, variants, seed, transform, cache_dir):
    done = Path(cache_dir) / f"rows-{chain}-{'_'.join(models)}.csv" if cache_dir else None
    if done is not None and done.exists():  # a finished cascade of an earlier run with these variants
        old = pd.read_csv(done, dtype={"n": str})
        want = {name for name, _ in variants}
        if want <= set(old["variant"]) and set(map(str, subsamples)) <= set(old["n"]):
            old = old[old["variant"].isin(want) & old["n"].isin(list(map(str, subsamples)))]
            return old.fillna({"error": ""}).to_dict("records")
    rows = []
    for n, subs in subsamples.items():
        for s, ids in enumerate(subs):
            cell_seed = protocol._seed(seed, chain, n, s)
            train_rows = recs[(recs["split"] == "train") & recs["query_id"].isin(ids)]
            sub = pd.concat([train_rows, recs[recs["split"] == "test"]], ignore_index=True)
            train, test, _ = tune.prepare(sub, models=models, transform=transform)
            key = hashlib.sha1(repr((chain, models, n, s, seed)).encode()).hexdigest()[:16]
            path = Path(cache_dir) / f"{key}.pkl" if cache_dir else None
            if path is not None and path.exists():
                base = pickle.loads(path.read_bytes())
            else:
                base = {m: _curve(train, test, m, protocol.method_params(m, cell_seed, None)) for m in BASE}
                if path is not None:
                    path.write_bytes(pickle.dumps(base))
            mc, ref = base["markov-copula"], base["bayes-opt"]
            for name, params in variants:
                p = dict(params)
                p.setdefault("seed", cell_seed)
                t0 = time.perf_counter()
                cop = _curve(train, test, "copula", p)
                rows.append({"variant": name, "chain": chain, "cascade": " -> ".join(models), "k": len(models),
                             "n": str(n), "subsample": s, "cop_vs_ref": _cmp(cop, ref), "mc_vs_ref": _cmp(mc, ref),
                             "direct": _cmp(cop, mc), "seconds": time.perf_counter() - t0, "error": cop[2]})
    if cache_dir:  # progress: each finished cascade's rows, readable while the run goes on
        pd.DataFrame(rows).to_csv(Path(cache_dir) / f"rows-{chain}-{'_'.join(models)}.csv", index=False)
    return rows


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    from scipy import stats

    out = []
    for (v, chain, n), g in _groups(runs):
        pc = g.groupby(["cascade", "k"], as_index=False)[["cop_vs_ref", "mc_vs_ref", "direct"]].mean()
        pc["diff"] = pc["cop_vs_ref"] - pc["mc_vs_ref"]
        big = pc[pc["k"] >= 3]
        if big.empty:
            continue
        perk = big.groupby("k")[["cop_vs_ref", "mc_vs_ref", "diff", "direct"]].mean().mean()
        d = big["diff"].dropna()
        nz = d[d != 0]
        p_worse = stats.wilcoxon(nz, alternative="greater").pvalue if len(nz) >= 2 else np.nan
        p_better = stats.wilcoxon(nz, alternative="less").pvalue if len(nz) >= 2 else np.nan
        out.append({"variant": v, "chain": chain, "n": n, "cascades": len(big), "cop_vs_ref": perk["cop_vs_ref"],
                    "mc_vs_ref": perk["mc_vs_ref"], "diff": perk["diff"], "p_worse": p_worse, "p_better": p_better,
                    "direct": perk["direct"], "fit_s": g["seconds"].mean()})
    return pd.DataFrame(out)


def _groups(runs):
    order = list(dict.fromkeys(runs["n"]))
    for v in dict.fromkeys(runs["variant"]):
        r = runs[runs["variant"] == v]
        for chain in ["all"] + list(dict.fromkeys(r["chain"])):
            c = r if chain == "all" else r[r["chain"] == chain]
            for n in order + ["<=30"]:
                g = c[c["n"].isin([x for x in order if x != "all" and int(x) <= 30])] if n == "<=30" else c[c["n"] == n]
                if len(g):
                    yield (v, chain, n), g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", action="append", required=True, help="NAME=PATH[:m1,m2,...] (repeatable)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=p1=v1;p2=v2 (copula parameters)")
    ap.add_argument("--n-values", default="10,20,30,50,100,all")
    ap.add_argument("--subsamples", type=int, default=4)
    ap.add_argument("--min-k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--cache", default=None, help="folder for the markov-copula / bayes-opt curves of each cell")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    variants = [parse_variant(v) for v in (a.variant or ["default="])]
    n_values = [v.strip() for v in a.n_values.split(",")]
    if a.cache:
        Path(a.cache).mkdir(parents=True, exist_ok=True)
    tasks = []
    for spec in a.results:
        name, _, rest = spec.partition("=")
        path, _, order = rest.partition(":")
        recs = records.load(path)
        chain = order.split(",") if order else list(dict.fromkeys(recs["model"]))
        train_ids = recs.loc[recs["split"] == "train", "query_id"].unique()
        subs = {n: protocol.subsample_ids(train_ids, n, a.subsamples, a.seed, name) for n in n_values}
        choice = tune.choose_transform(recs, models=chain, splits=("train", "test"))
        tasks += [(recs, name, m, subs, choice) for m in protocol.cascades_of(chain) if len(m) >= a.min_k]
    t0 = time.perf_counter()
    order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i][2]))
    job = [(tasks[i][0], tasks[i][1], tasks[i][2], tasks[i][3], variants, a.seed, tasks[i][4], a.cache) for i in order]
    if a.jobs == 1:
        res = [cascade_task(*t) for t in job]
    else:
        from joblib import Parallel, delayed

        res = Parallel(n_jobs=a.jobs)(delayed(cascade_task)(*t) for t in job)
    runs = pd.DataFrame([r for rows in res for r in rows])
    summ = summarize(runs)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False)
    summ.to_csv(out / "summary.csv", index=False)
    pd.set_option("display.width", 200)
    text = summ.round({"cop_vs_ref": 2, "mc_vs_ref": 2, "diff": 2, "p_worse": 3, "p_better": 3, "direct": 2,
                       "fit_s": 2}).to_string(index=False)
    text += (f"\n{len(tasks)} cascades (k >= {a.min_k}), n {n_values}, {a.subsamples} subsamples, seed {a.seed}: "
             f"{time.perf_counter() - t0:.0f} s\n")
    (out / "table.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
