"""Reproduce the published per-cascade AUCs on MedMCQA (llama chain): Markov-copula vs grid search.

Usage: python bench/reproduce_paper.py [--results examples/medmcqa-llama.parquet]
        [--paper examples/medmcqa-paper-auc.json] [--out out/reproduce] [--grid-score calibrated|labels]
        [--stop-reference chain|cascade]

Prints a per-cascade table (ours next to the published values, relative differences) and the mean
% change per cascade length; writes the table as CSV.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade.evaluate import curves as evaluate  # noqa: E402
from cascade.data import records  # noqa: E402
from cascade.evaluate import tuning as tune  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="examples/medmcqa-llama.parquet")
    ap.add_argument("--paper", default="examples/medmcqa-paper-auc.json")
    ap.add_argument("--out", default="out/reproduce")
    ap.add_argument("--grid-score", default="calibrated", choices=["calibrated", "labels"])
    ap.add_argument("--stop-reference", default="chain", choices=["chain", "cascade"])
    ap.add_argument("--start", default="midpoint", choices=["midpoint", "warm"])
    ap.add_argument("--marginal-fit", default="mle", choices=["mle", "em"])
    ap.add_argument("--integration", default="table", choices=["table", "exact"])
    args = ap.parse_args(argv)

    paper = json.loads(Path(args.paper).read_text())
    chain = paper["definitions"]["models_llama_chain"]
    df = records.load(args.results)
    # The release's lambda stop rule compares with the chain's first model (train mean cost).
    ref_cost = df[(df.split == "train") & (df.model == chain[0])]["cost"].mean() * tune.COST_SCALE
    rows = []
    t_all = time.perf_counter()
    for rec in paper["per_cascade"]:
        models = [chain[i] for i in rec["cascade"]]
        train, test, _ = tune.prepare(df, models=models, cost_mode="model-mean")
        mc_curve, mc_sum, _ = tune.tune_prepared(train, test, "markov-copula", {
            "stop_reference": args.stop_reference, "reference_cost": ref_cost, "start": args.start,
            "marginal_fit": args.marginal_fit, "integration": args.integration})
        gr_curve, gr_sum, _ = tune.tune_prepared(train, test, "grid", {"score": args.grid_score})
        cmp = evaluate.compare_curves(mc_curve.test_cost, mc_curve.test_error, gr_curve.test_cost, gr_curve.test_error)
        rows.append({
            "cascade": "".join(map(str, rec["cascade"])), "k": len(models),
            "auc_mc": cmp.auc_a, "auc_mc_paper": rec["auc_markov_copula"],
            "auc_grid": cmp.auc_b, "auc_grid_paper": rec["auc_gridsearch"],
            "pct_change": cmp.pct_change, "pct_change_paper": rec["pct_change"],
            "lo": cmp.lo, "hi": cmp.hi, "lo_paper": rec["cost_lo"], "hi_paper": rec["cost_hi"],
            "n_mc": len(mc_curve), "n_mc_paper": rec["n_points_markov_copula"],
            "n_grid": len(gr_curve), "n_grid_paper": rec["n_points_gridsearch"],
            "s_mc": mc_sum["seconds"], "s_grid": gr_sum["seconds"],
        })
    t = pd.DataFrame(rows)
    t["rel_mc_%"] = 100 * (t.auc_mc / t.auc_mc_paper - 1)
    t["rel_grid_%"] = 100 * (t.auc_grid / t.auc_grid_paper - 1)
    pd.set_option("display.width", 200)
    cols = ["cascade", "k", "auc_mc", "auc_mc_paper", "rel_mc_%", "auc_grid", "auc_grid_paper", "rel_grid_%",
            "pct_change", "pct_change_paper", "n_mc", "n_mc_paper", "n_grid", "n_grid_paper", "s_mc"]
    print(t[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    summ = []
    for k, g in t.groupby("k"):
        summ.append({"k": k, "mean_pct": g["pct_change"].mean(), "mean_pct_paper": g["pct_change_paper"].mean()})
    s = pd.DataFrame(summ)
    print(s.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    ge3 = s[s.k >= 3]
    print(f"k>=3 mean of per-k means: ours {ge3.mean_pct.mean():.3f}%  paper {ge3.mean_pct_paper.mean():.3f}%")
    print(f"within 1%: markov-copula {int((t['rel_mc_%'].abs() <= 1).sum())}/{len(t)}, "
          f"grid {int((t['rel_grid_%'].abs() <= 1).sum())}/{len(t)}; max |rel| mc {t['rel_mc_%'].abs().max():.2f}% "
          f"grid {t['rel_grid_%'].abs().max():.2f}%")
    print(f"total seconds {time.perf_counter() - t_all:.1f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t.to_csv(out / "paper_comparison.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
