"""How close `cascade select` gets to its ceiling: the share of the grid-to-oracle gap its frontier closes.

    .venv/bin/python bench/select_gap.py \\
        --results llama=examples/medmcqa-llama.parquet:llama3.2-1b,llama3.2-3b,llama3.1-8b,llama3.1-70b,llama3.1-405b \\
        --results qwen_oai=examples/medmcqa-qwen_oai.parquet:gpt-4o-mini,qwen2.5-32b-coder-instruct,qwen2.5-72b-instruct,gpt-4o \\
        [--n-values 10,20,30,50,100,all] [--subsamples 3] [--method markov-copula] [--rules measured,predicted,...] \\
        [--seed 0] [--jobs 1] [--cache out/select-gap-cache] --out out/select-gap

Per chain, training size n and seeded subsample (the subsamples of ``cascade study``:
:func:`cascade.evaluate.study.subsample_ids`):

- **selected**: `cascade select` on the n training queries (calibrators fitted on them, every sub-cascade
  tuned with ``--method``), its frontier chosen on train by each frontier rule of ``--rules``
  (:data:`cascade.evaluate.select.SELECT_ON`), scored on the full test split;
- **grid**: the whole chain tuned by grid search (40 training quantiles per threshold, Pareto front on
  train), scored on test: ``grid_release`` scores the candidates with the calibrated confidences as the
  paper's release does (the release-style grid), ``grid_labels`` with the labels (`--method grid`);
- **oracle** (the ceiling): the same `cascade select` run with the test split as its training split
  (calibration, tuning and the frontier all on test; rule `measured`), scored on test. It does not depend
  on n.

On the cost range the grid's and the oracle's test curves share (the same range for every rule), with AUC =
mean test error over it (curves interpolated linearly in cost, extended flat beyond their ends):
share closed = (AUC_grid - AUC_selected) / (AUC_grid - AUC_oracle). Per chain and n the AUCs are averaged
over subsamples first (a ratio of means: stable where one subsample's gap is near zero). The sub-cascade
tunings of a cell are computed once for all rules (cached in ``--cache``).
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade.data import records  # noqa: E402
from cascade.evaluate import (
    curves,  # noqa: E402
    select,  # noqa: E402
    tuning,  # noqa: E402
)
from cascade.evaluate import study as protocol  # noqa: E402
from cascade.tuners.grid import GridSearchTuner  # noqa: E402

#: the grid baselines: the release's (candidates scored with calibrated confidences, its pitfall 2) and ours
#: (scored with the labels, `cascade tune --method grid`)
GRIDS = {"grid_release": "calibrated", "grid_labels": "labels"}


def _candidates(train, test, method, params):
    chain = list(train.models)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        subs = select.tune_all(train, test, select.subcascades_of(chain), method, params)
    return select.candidates_frame(subs, chain, train)


def cell(recs, chain_name, chain, n, s, ids, method, params, cache_dir, seed):
    key = hashlib.sha1(repr((chain_name, chain, n, s, method, sorted(params.items()), seed)).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"sel-{key}.pkl" if cache_dir else None
    if path is not None and path.exists():
        return pickle.loads(path.read_bytes())
    train_rows = recs[(recs["split"] == "train") & recs["query_id"].isin(ids)]
    sub = pd.concat([train_rows, recs[recs["split"] == "test"]], ignore_index=True)
    prep = tuning.prepare_full(sub, models=chain)
    t0 = time.perf_counter()
    cand = _candidates(prep.train, prep.test, method, params)
    seconds = time.perf_counter() - t0
    out = {"cand": cand, "train": prep.train, "test": prep.test, "seconds": seconds}
    for name, score in GRIDS.items():
        g = curves.score_curve(GridSearchTuner(score=score).fit(prep.train).thresholds_, prep.test)
        out[name] = (g["cost"].to_numpy(), g["error"].to_numpy())
    if path is not None:
        path.write_bytes(pickle.dumps(out))
    return out


def oracle(recs, chain, method, params):
    prep = tuning.prepare_full(recs, models=chain, train_split="test", test_split="test")
    cand = _candidates(prep.train, prep.test, method, params)
    f = select.frontier_of(cand, "measured")  # on the split it is scored on, the labels are the truth
    return f["test_cost"].to_numpy(), f["test_error"].to_numpy()


def flat_auc(cost, error, lo: float, hi: float) -> float:
    """Mean test error over [lo, hi] of the curve interpolated linearly in cost and extended flat beyond
    its end points (exact: trapezoids between the breakpoints)."""
    x, y = select._xy(cost, error)
    pts = np.unique(np.concatenate([[lo, hi], x[(x > lo) & (x < hi)]]))
    v = np.interp(pts, x, y)
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(pts)) / (hi - lo))


def share(grid, sel, orc) -> dict:
    """AUCs on the cost range the grid and the oracle share (the same range for every frontier rule; the
    selected frontier extended flat beyond its ends)."""
    lo, hi = curves.shared_range(grid[0], orc[0])
    if not hi > lo:
        return {"auc_grid": np.nan, "auc_sel": np.nan, "auc_oracle": np.nan}
    return {"auc_grid": flat_auc(*grid, lo, hi), "auc_sel": flat_auc(*sel, lo, hi),
            "auc_oracle": flat_auc(*orc, lo, hi), "lo": lo, "hi": hi}


def frontier_curve(c, rule):
    f = select.frontier_of(c["cand"], rule, train=c["train"])
    return f["test_cost"].to_numpy(), f["test_error"].to_numpy(), f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", action="append", required=True, help="NAME=PATH[:m1,m2,...] (repeatable)")
    ap.add_argument("--n-values", default="10,20,30,50,100,all")
    ap.add_argument("--subsamples", type=int, default=3)
    ap.add_argument("--method", default="markov-copula")
    ap.add_argument("--rules", default="measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    rules = [r.strip() for r in a.rules.split(",") if r.strip()]
    n_values = [v.strip() for v in a.n_values.split(",")]
    if a.cache:
        Path(a.cache).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for spec in a.results:
        name, _, rest = spec.partition("=")
        path, _, order = rest.partition(":")
        recs = records.load(path)
        chain = order.split(",") if order else list(dict.fromkeys(recs["model"]))
        params = protocol.method_params(a.method, a.seed, None)
        okey = hashlib.sha1(repr(("oracle", name, chain, a.method, a.seed)).encode()).hexdigest()[:16]
        opath = Path(a.cache) / f"orc-{okey}.pkl" if a.cache else None
        if opath is not None and opath.exists():
            orc = pickle.loads(opath.read_bytes())
        else:
            orc = oracle(recs, chain, a.method, params)
            if opath is not None:
                opath.write_bytes(pickle.dumps(orc))
        train_ids = recs.loc[recs["split"] == "train", "query_id"].unique()
        jobs = []
        for n in n_values:
            subs = protocol.subsample_ids(train_ids, n, 1 if n == "all" else a.subsamples, a.seed, name)
            jobs += [(n, s, ids) for s, ids in enumerate(subs)]
        if a.jobs == 1:
            cells = [cell(recs, name, chain, n, s, ids, a.method, params, a.cache, a.seed) for n, s, ids in jobs]
        else:
            from joblib import Parallel, delayed

            cells = Parallel(n_jobs=a.jobs)(delayed(cell)(recs, name, chain, n, s, ids, a.method, params, a.cache,
                                                          a.seed) for n, s, ids in jobs)
        for (n, s, _), c in zip(jobs, cells):
            for rule in rules:
                t1 = time.perf_counter()
                fc, fe, f = frontier_curve(c, rule)
                secs = time.perf_counter() - t1
                sw = int((f["cascade"].to_numpy()[1:] != f["cascade"].to_numpy()[:-1]).sum())
                for g in GRIDS:
                    rows.append({"chain": name, "n": n, "subsample": s, "rule": rule, "grid": g,
                                 **share(c[g], (fc, fe), orc), "n_frontier": len(f), "switches": sw,
                                 "rule_seconds": secs, "tune_seconds": c["seconds"]})
    runs = pd.DataFrame(rows)
    agg = (runs.groupby(["grid", "chain", "rule", "n"], sort=False)
           .agg(auc_grid=("auc_grid", "mean"), auc_sel=("auc_sel", "mean"), auc_oracle=("auc_oracle", "mean"),
                n_frontier=("n_frontier", "mean"), switches=("switches", "mean"), subsamples=("subsample", "size"),
                rule_s=("rule_seconds", "mean"))
           .reset_index())
    agg["closed_pct"] = 100 * (agg["auc_grid"] - agg["auc_sel"]) / (agg["auc_grid"] - agg["auc_oracle"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False)
    agg.to_csv(out / "summary.csv", index=False)
    wide = agg.pivot_table(index=["grid", "chain", "rule"], columns="n", values="closed_pct", sort=False)
    wide = wide[[n for n in n_values if n in wide.columns]]
    pd.set_option("display.width", 200)
    text = ("share of the grid-to-oracle gap closed (%), per chain, rule and n:\n" + wide.round(1).to_string()
            + "\n\n" + agg.round(4).to_string(index=False)
            + f"\n\nmethod {a.method}, n {n_values}, {a.subsamples} subsamples (1 at n=all), seed {a.seed}: "
              f"{time.perf_counter() - t0:.0f} s\n")
    (out / "table.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
