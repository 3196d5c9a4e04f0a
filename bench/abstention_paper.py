"""Early abstention on MedMCQA, next to Zellinger, Liu & Thomson 2025 (arXiv 2502.09054).

Two measurements, both on the test split with the real labels, for every two-model cascade of each chain
(the paper's 10 llama + 6 qwen/OpenAI cascades):

1. The paper's protocol: a grid of user preferences (abstain cost X in linspace(1e-3, 1, N), cost
   sensitivity lambda in linspace(1e-7, 3e-4, N); the release uses N = 41), thresholds tuned at every
   grid point with early abstention (every stage may abstain) and with final-model abstention only;
   per cascade, test loss (error + X abstention + lambda cost, error = answered and wrong), error, cost
   and abstention rate averaged over the grid; then % change early vs final (abstention: the change in
   points), averaged over cascades.
2. Curves at equal cost: for a few abstain costs, the lambda path (`cascade select --abstain-cost`'s
   tuner) with early, final-model and no abstention; AUC of the test loss over the shared cost range.

    .venv/bin/python bench/abstention_paper.py [--grid 41] [--curve-costs 0.1,0.3,0.5] [--csv DIR]

Chains: ``--results NAME=PATH:m1,m2,...`` (repeatable; default: the two example chains).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cascade.evaluate import curves, tuning  # noqa: E402
from cascade.evaluate.select import single_threaded_blas, take  # noqa: E402
from cascade.tuners import abstention as A  # noqa: E402

CHAINS = {
    "llama": (ROOT / "examples" / "medmcqa-llama.parquet",
              ["llama3.2-1b", "llama3.2-3b", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b"]),
    "qwen_oai": (ROOT / "examples" / "medmcqa-qwen_oai.parquet",
                 ["gpt-4o-mini", "qwen2.5-32b-coder-instruct", "qwen2.5-72b-instruct", "gpt-4o"]),
}
# the release's averages over six benchmarks and 16 cascades (abstract), and its MedMCQA abstention rates
PAPER = {"loss_pct": -2.2, "cost_pct": -13.0, "error_pct": -5.0, "abstention_pts": +4.1,
         "medmcqa_abstention_early": 0.248, "medmcqa_abstention_final": 0.227}


def grid_study(train, test, X_grid, lam_grid) -> dict:
    """Mean test loss, error, cost and abstention over the (X, lambda) grid for early and final-model
    abstention on one cascade."""
    tuners = {st: A.AbstentionTuner(abstain_cost=1.0, stages=st).setup(train) for st in ("all", "last")}
    ref = tuners["all"]
    plain = {lam: ref._minimize(lam, ref.start_, ref.k_ - 1)[:ref.k_ - 1] for lam in lam_grid}
    out = {}
    for st, tu in tuners.items():
        rows = []
        for X in X_grid:
            tu.abstain_cost = X
            zs = [tu.solve(lam, plain=np.concatenate([plain[lam], np.zeros(int(tu.free_.sum()))])) for lam in lam_grid]
            ts, as_ = tu.to_x(np.array(zs))
            for lam, t, a in zip(lam_grid, ts, as_):
                s = A.score_thresholds(t, a, test)
                rows.append((s["error"] + X * s["abstention"] + lam * s["cost"], s["error"], s["cost"], s["abstention"]))
        out[st] = np.mean(np.array(rows), axis=0)
    return out


def curve_study(train, test, X) -> dict:
    """Test AUC of the loss over the shared cost range: early vs final-model vs no abstention."""
    cs = {}
    for st in ("all", "last", "none"):
        c, _, _ = A.tune_prepared(train, test, X, {"stages": st})
        cs[st] = c
    out = {}
    for a, b in (("all", "last"), ("all", "none")):
        cmp = curves.compare_curves(cs[a]["test_cost"], cs[a]["test_error"], cs[b]["test_cost"], cs[b]["test_error"])
        out[f"{a}_vs_{b}"] = cmp.pct_change
    out["abstention_all"] = float(cs["all"]["test_abstention"].mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", action="append", metavar="NAME=PATH:m1,m2,...")
    ap.add_argument("--grid", type=int, default=41, help="points per axis of the preference grid (release: 41)")
    ap.add_argument("--curve-costs", default="0.1,0.3,0.5", help="abstain costs for the curve comparison ('' = skip)")
    ap.add_argument("--csv", help="folder for per-cascade CSV tables")
    args = ap.parse_args(argv)
    chains = {} if args.results else dict(CHAINS)
    for item in args.results or []:
        name, rest = item.split("=", 1)
        path, models = rest.rsplit(":", 1)
        chains[name] = (Path(path), models.split(","))
    X_grid = np.linspace(1e-3, 1.0, args.grid)
    lam_grid = np.linspace(1e-7, 3e-4, args.grid)
    curve_costs = [float(x) for x in args.curve_costs.split(",") if x.strip()]
    grid_rows, curve_rows = [], []
    t0 = time.perf_counter()
    with single_threaded_blas():
        for name, (path, chain) in chains.items():
            df = pd.read_parquet(path)
            prep = tuning.prepare_full(df, models=chain, cost_mode="model-mean")
            for i, j in itertools.combinations(range(len(chain)), 2):
                train, test = take(prep.train, [i, j]), take(prep.test, [i, j])
                cascade = f"{chain[i]} -> {chain[j]}"
                g = grid_study(train, test, X_grid, lam_grid)
                e, f = g["all"], g["last"]
                grid_rows.append({"chain": name, "cascade": cascade, "loss_early": e[0], "loss_final": f[0],
                                  "loss_pct": 100 * (e[0] - f[0]) / f[0], "error_pct": 100 * (e[1] - f[1]) / f[1],
                                  "cost_pct": 100 * (e[2] - f[2]) / f[2], "abstention_early": e[3],
                                  "abstention_final": f[3], "abstention_pts": 100 * (e[3] - f[3])})
                for X in curve_costs:
                    curve_rows.append({"chain": name, "cascade": cascade, "abstain_cost": X, **curve_study(train, test, X)})
                print(f"{name} {cascade}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    grid = pd.DataFrame(grid_rows)
    pd.set_option("display.width", 200)
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    print(f"1. The paper's protocol ({args.grid} x {args.grid} grid of abstain cost x cost sensitivity), test split, "
          "early vs final-model abstention")
    print(grid.to_string(index=False, float_format=fmt))
    cols = ["loss_pct", "error_pct", "cost_pct", "abstention_pts", "abstention_early", "abstention_final"]
    summary = grid.groupby("chain")[cols].mean()
    summary.loc["both (16 cascades)" if len(chains) == 2 else "all"] = grid[cols].mean()
    print("\nmeans per chain (% change early vs final; abstention: change in points and the rates):")
    print(summary.to_string(float_format=fmt))
    print(f"paper (six benchmarks): loss {PAPER['loss_pct']:+.1f}%, error {PAPER['error_pct']:+.1f}%, cost "
          f"{PAPER['cost_pct']:+.1f}%, abstention {PAPER['abstention_pts']:+.1f} pts; MedMCQA abstention rate "
          f"{PAPER['medmcqa_abstention_early']:.3f} early vs {PAPER['medmcqa_abstention_final']:.3f} final")
    if curve_rows:
        cur = pd.DataFrame(curve_rows)
        print("\n2. Curves at equal cost: % change of the test-loss AUC over the shared cost range (negative = early "
              "abstention better)")
        print(cur.groupby(["chain", "abstain_cost"])[["all_vs_last", "all_vs_none", "abstention_all"]].mean()
              .to_string(float_format=fmt))
        print(cur.groupby("abstain_cost")[["all_vs_last", "all_vs_none", "abstention_all"]].mean()
              .to_string(float_format=fmt))
    if args.csv:
        Path(args.csv).mkdir(parents=True, exist_ok=True)
        grid.to_csv(Path(args.csv) / "abstention_grid.csv", index=False)
        if curve_rows:
            pd.DataFrame(curve_rows).to_csv(Path(args.csv) / "abstention_curves.csv", index=False)
    print(f"\n{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
