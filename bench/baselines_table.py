"""Re-aggregate a `cascade study` output folder from its runs.csv (no refitting).

    .venv/bin/python bench/baselines_table.py out/baselines-study-medmcqa [--reference bayes-opt] [--seed 0]

Rewrites OUT/summary.csv, OUT/per_cascade.csv and OUT/table.txt with the current aggregation code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from cascade.evaluate import study as protocol


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--reference", default=None)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    out = Path(a.out)
    meta = json.loads((out / "meta.json").read_text())
    runs = pd.read_csv(out / "runs.csv", dtype={"n": str, "error": str}, keep_default_na=False, na_values=[""])
    runs["error"] = runs["error"].fillna("")
    ref = a.reference or meta["reference"]
    seed = meta["seed"] if a.seed is None else a.seed
    per_cascade, summary = protocol.summarize(runs, ref, seed, protocol.default_groups(meta["n_values"]))
    per_cascade.to_csv(out / "per_cascade.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    table = protocol.format_table(summary)
    (out / "table.txt").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
