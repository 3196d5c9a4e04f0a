"""What a run is summarised by: curve metrics, goodness-of-fit summaries, degenerate-curve reasons, scoring
accuracies, fingerprints (records, output folders) and provenance. Pure functions over results on disk or in
memory; ``tracking/`` logs what these return and computes nothing itself."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

BUDGET_FRACTIONS = (0.25, 0.5, 0.75)
REPO_ROOT = Path(__file__).resolve().parents[2]


def finite(x) -> bool:
    """A real, finite number (bools excluded)."""
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and bool(np.isfinite(x))


# ------------------------------------------------------------------------------------------------
# Curves
# ------------------------------------------------------------------------------------------------

def curve_metrics(curve: pd.DataFrame) -> dict:
    """Test error at set budgets (25/50/75% of the curve's own test cost range) and the best error."""
    c = curve.sort_values("test_cost")
    x, y = c["test_cost"].to_numpy(float), c["test_error"].to_numpy(float)
    if len(x) == 0:
        return {}
    out = {"min_test_error": float(np.nanmin(y)) if np.isfinite(y).any() else float("nan"),
           "test_cost_min": float(np.nanmin(x)), "test_cost_max": float(np.nanmax(x))}
    for f in BUDGET_FRACTIONS:
        budget = out["test_cost_min"] + f * (out["test_cost_max"] - out["test_cost_min"])
        ok = (x <= budget + 1e-12) & np.isfinite(y)
        out[f"test_error_at_{int(f * 100)}pct_budget"] = float(y[ok].min()) if ok.any() else float("nan")
    return out


def abstention_metrics(curve: pd.DataFrame) -> dict:
    """For an early-abstention curve (``cascade tune --abstain-cost``, whose ``test_error`` is the loss
    error + X * abstention): the mean test abstention rate and error (answered and wrong), and both at the
    lowest-loss point within 25/50/75% of the curve's own test cost range. Empty for other curves."""
    if "test_abstention" not in curve or "test_wrong" not in curve or curve.empty:
        return {}
    c = curve.sort_values("test_cost")
    x, y = c["test_cost"].to_numpy(float), c["test_error"].to_numpy(float)
    out = {"mean_test_abstention": float(c["test_abstention"].mean()), "mean_test_wrong": float(c["test_wrong"].mean())}
    for f in BUDGET_FRACTIONS:
        budget = x.min() + f * (x.max() - x.min())
        ok = np.flatnonzero((x <= budget + 1e-12) & np.isfinite(y))
        if len(ok):
            i = ok[np.argmin(y[ok])]
            out[f"test_abstention_at_{int(f * 100)}pct_budget"] = float(c["test_abstention"].iloc[i])
            out[f"test_wrong_at_{int(f * 100)}pct_budget"] = float(c["test_wrong"].iloc[i])
    return out


def degenerate_reasons(curve: pd.DataFrame, summary: dict) -> list[str]:
    """Why a tuned curve cannot be trusted as a curve: the summary's own ``degenerate`` list when it has one
    (written by the tuning step), else what the curve itself shows (fewer than two points, a single test cost,
    non-finite errors or costs)."""
    if "degenerate" in summary:
        d = summary.get("degenerate") or []
        return [str(r) for r in ([d] if isinstance(d, str) else d)]
    reasons = []
    if len(curve) < 2:
        reasons.append(f"the curve has {len(curve)} point(s)")
    if len(curve):
        x = curve["test_cost"].to_numpy(float)
        y = curve["test_error"].to_numpy(float)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            reasons.append("non-finite test cost or error")
        elif len(curve) >= 2 and np.ptp(x) == 0:
            reasons.append(f"the test cost range is a single point ({x[0]:.6g})")
    return reasons


def gof_metrics(gof: dict | None) -> dict:
    """Smallest p-value and number of rejections per part of a goodness-of-fit report."""
    if not gof:
        return {}
    out = {}
    for part in ("marginals", "copulas", "markov"):
        ps = [r["p_value"] for r in gof.get(part, []) if finite(r.get("p_value"))]
        if ps:
            out[f"gof_{part}_min_p"] = float(min(ps))
            out[f"gof_{part}_rejected"] = float(gof.get("rejected", {}).get(part, sum(p < 0.05 for p in ps)))
    return out


def tune_metrics(curve: pd.DataFrame, summary: dict) -> dict:
    """Every number a tuning run is summarised by (non-finite values are left for the caller to drop)."""
    diag = summary.get("diagnostics") or {}
    return {"test_auc": summary.get("test_auc"), "seconds": summary.get("seconds"), "n_points": len(curve),
            "fit_seconds": diag.get("fit_seconds"), "tune_seconds": diag.get("tune_seconds"),
            "degenerate": float(bool(degenerate_reasons(curve, summary))),
            **curve_metrics(curve), **abstention_metrics(curve),
            **gof_metrics(summary.get("goodness_of_fit") or summary.get("gof"))}


def read_tune_output(out_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """The curve and summary a ``cascade tune --out DIR`` folder holds."""
    out_dir = Path(out_dir)
    return pd.read_parquet(out_dir / "curve.parquet"), json.loads((out_dir / "summary.json").read_text())


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------

def load_scored(records_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The records of a scoring output folder, or None when it holds none yet."""
    from cascade.data import records as R

    try:
        return R.load(records_dir)
    except R.RecordsError:
        return None


def load_records(path: str | os.PathLike, benchmark: str | None = None) -> pd.DataFrame:
    """Records a tuning run was fitted on (for its data lineage)."""
    from cascade.data import records as R

    return R.load(path, benchmark=benchmark)


def scoring_metrics(stats: dict, records: pd.DataFrame | None) -> dict:
    """Throughput, token counts (per stage and in total) and accuracy per model/benchmark/split."""
    metrics = {k: stats.get(k) for k in ("seconds", "queries_per_s", "output_tokens_per_s", "n_records",
                                          "scored_records", "skipped_shards", "n_shards")}
    stages = stats.get("stages") or {}
    for name, st in stages.items():
        for k in ("queries_per_s", "output_tokens_per_s", "input_tokens", "output_tokens", "ptrue_input_tokens",
                  "ptrue_output_tokens", "accelerator_seconds", "load_seconds", "retries"):
            metrics[f"{name}.{k}"] = st.get(k)
    for k in ("input_tokens", "output_tokens", "ptrue_input_tokens", "ptrue_output_tokens"):
        vals = [st.get(k) for st in stages.values() if finite(st.get(k))]
        if vals:
            metrics[f"total_{k}"] = sum(vals)
    if records is not None:
        for (bench, split, model), acc in records.groupby(["benchmark", "split", "model"])["correct"].mean().items():
            metrics[f"{model}.{bench}.{split}.accuracy"] = acc
    return metrics


# ------------------------------------------------------------------------------------------------
# Fingerprints and provenance
# ------------------------------------------------------------------------------------------------

def data_fingerprint(data) -> str:
    """sha256 of the records (see :func:`cascade.data.records.fingerprint`)."""
    from cascade.data.records import fingerprint

    return fingerprint(data)


def _output_files(root: Path) -> list[Path]:
    """The files an output folder is made of: hidden entries (temp files, locks, claims) are not."""
    if root.is_file():
        return [root]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and not f.endswith(".lock")]
    return out


def output_fingerprint(path: str | os.PathLike) -> str:
    """A short sha256 of an output folder: every (non-hidden) file's relative name and bytes. The same
    outputs give the same fingerprint wherever the folder lives; any change gives a new one."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such output folder")
    h = hashlib.sha256()
    for f in _output_files(root):
        h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:16]


def git_commit(root: str | os.PathLike = REPO_ROOT) -> str:
    """The checkout's commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
