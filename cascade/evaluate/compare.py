"""Comparing tuned curves: the cascades of a chain, the per-cascade table of AUC % changes against a
baseline method, and the per-length summary (one rule for ``cascade compare``, ``cascade study`` and
the demo).

- :func:`cascades_of`: every ordered sub-sequence of a chain, by length, then in chain order.
- :func:`load_tune_outputs` / :func:`compare_outputs`: read ``cascade tune`` output folders and compare
  each method's test curve with the baseline's on the same (benchmark, cascade), over their shared cost
  range (:func:`cascade.evaluate.curves.compare_curves`). Inputs that cannot be compared are refused
  with the folder named (not a tune output, no benchmark, nothing to compare with, the same method
  twice, a different cost mode or test split); a pair without a shared cost range of positive width
  gets NaN and a ``note``.
- :func:`summarize_by_length`: mean % change per cascade length k with a one-sided paired Wilcoxon
  p-value, a ``>=3`` row (the mean of the per-k means, the paper's statistic) and an ``all`` row (the
  plain mean over cascades); optionally percentile bootstrap intervals.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cascade.evaluate import curves

GE3 = ">=3"


def cascades_of(chain: list[str], min_len: int = 2) -> list[list[str]]:
    """Every ordered sub-sequence of length >= min_len of a chain: by length, then in chain order."""
    chain = list(chain)
    if len(chain) < 2:
        raise ValueError(f"a chain needs at least two models, got {chain}")
    if len(set(chain)) != len(chain):
        raise ValueError(f"the chain lists a model twice: {chain}")
    out = []
    for L in range(min_len, len(chain) + 1):
        out += [list(c) for c in itertools.combinations(chain, L)]
    return out


# ------------------------------------------------------------------------------------------------
# per-length summary
# ------------------------------------------------------------------------------------------------

def bootstrap_ci(x, n_boot: int = 2000, level: float = 0.95, seed: int = 0, strata=None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x``; with ``strata``, of the mean of the per-stratum
    means (resampling within each stratum), matching the k >= 3 statistic."""
    x = np.asarray(x, float)
    ok = np.isfinite(x)
    if not ok.any():
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    if strata is None:
        x = x[ok]
        means = rng.choice(x, size=(n_boot, len(x)), replace=True).mean(axis=1)
    else:
        strata = np.asarray(strata)[ok]
        x = x[ok]
        per = [rng.choice(x[strata == s], size=(n_boot, int((strata == s).sum())), replace=True).mean(axis=1)
               for s in np.unique(strata)]
        means = np.mean(per, axis=0)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def summarize_by_length(table: pd.DataFrame, value: str = "pct_change", *, ge3_label: str = GE3,
                        ci_seed: Callable[[str], int] | None = None, extra_means=()) -> pd.DataFrame:
    """One row per cascade length k (``k`` as a string), a ``>=3`` row and an ``all`` row.

    ``mean_<value>``: the mean over cascades of that length; for ``>=3`` the mean of the per-k means
    (every length weighs the same, the paper's rule); for ``all`` the plain mean. NaN values (pairs
    without a shared cost range) are left out. ``wilcoxon_p``: one-sided paired Wilcoxon signed-rank
    p-value that the values are below zero. With ``ci_seed`` (row label -> seed), ``ci95_lo``/``ci95_hi``:
    a percentile bootstrap interval of the same statistic. ``extra_means``: columns whose plain mean
    over the row's cascades is added as ``mean_<col>``."""
    parts = [(str(k), g) for k, g in table.groupby("k")]
    ge3 = table[table["k"] >= 3]
    if len(ge3):
        parts.append((ge3_label, ge3))
    parts.append(("all", table))
    rows = []
    for label, g in parts:
        x = g[value].to_numpy(float)
        if label == ge3_label:
            mean = float(g.groupby("k")[value].mean().mean())
        else:
            mean = float(np.nanmean(x)) if np.isfinite(x).any() else np.nan
        row = {"k": label, "n_cascades": int(len(g)), f"mean_{value}": mean}
        if ci_seed is not None:
            strata = g["k"].to_numpy() if label == ge3_label else None
            row["ci95_lo"], row["ci95_hi"] = bootstrap_ci(x, seed=ci_seed(label), strata=strata)
        row["wilcoxon_p"] = curves.wilcoxon_less(x)
        for col in extra_means:
            row[f"mean_{col}"] = float(g[col].mean())
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# `cascade compare`: tune output folders -> per-cascade table
# ------------------------------------------------------------------------------------------------

@dataclass
class TuneOutput:
    """One ``cascade tune`` output: its folder, the DIR argument it was found under, summary and curve."""

    folder: Path
    source: str
    summary: dict
    curve: pd.DataFrame

    @property
    def key(self) -> tuple:
        return (self.summary["benchmark"], tuple(self.summary["models"]))

    @property
    def method(self) -> str:
        return self.summary["method"]


def load_tune_outputs(dirs) -> list[TuneOutput]:
    """Every ``cascade tune`` output under each DIR (the folder itself, or searched recursively). Raises
    FileNotFoundError/ValueError naming the folder when one is missing, holds none, or one is not a
    complete tune output."""
    found = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"{d}: no such folder")
        if not d.is_dir():
            raise ValueError(f"{d}: is a file, not a folder; pass `cascade tune --out` folders")
        summaries = [d / "summary.json"] if (d / "summary.json").exists() else sorted(d.rglob("summary.json"))
        if not summaries:
            raise ValueError(f"{d}: no summary.json found; pass `cascade tune --out` folders")
        for s in summaries:
            try:
                summ = json.loads(s.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{s}: cannot be read as JSON ({e}); re-run `cascade tune` for it") from None
            missing = [k for k in ("method", "models") if not isinstance(summ, dict) or not summ.get(k)]
            if missing:
                raise ValueError(f"{s}: not a `cascade tune` summary (no {', '.join(missing)})")
            if not summ.get("benchmark"):
                raise ValueError(f"{s}: the summary names no benchmark, so its cascade cannot be matched; re-run "
                                 "`cascade tune` (it records the benchmark)")
            curve_path = s.parent / "curve.parquet"
            if not curve_path.exists():
                raise ValueError(f"{s.parent}: summary.json without curve.parquet")
            try:
                curve = pd.read_parquet(curve_path)
            except Exception as e:  # a damaged file: name it
                raise ValueError(f"{curve_path}: cannot be read ({type(e).__name__}: {e})") from None
            lack = [c for c in ("test_cost", "test_error") if c not in curve.columns]
            if lack or curve.empty:
                raise ValueError(f"{curve_path}: not a tune curve ({'no ' + ', '.join(lack) if lack else 'no rows'})")
            found.append(TuneOutput(s.parent, str(d), summ, curve))
    return found


def _as_outputs(found) -> list[TuneOutput]:
    return [f if isinstance(f, TuneOutput) else TuneOutput(Path("."), "", f[0], f[1]) for f in found]


def compare_table(found, baseline: str, *, at_single_cost: bool = False) -> pd.DataFrame:
    """Per (benchmark, cascade) with the baseline method: one row per other method with the AUCs over
    the shared cost range and the % change (negative = the method beats the baseline). ``found``: a list
    of :class:`TuneOutput` or of (summary, curve) pairs. Rows without a shared cost range of positive
    width have NaN AUCs and say why in ``note``."""
    by_cascade: dict[tuple, dict[str, TuneOutput]] = {}
    outs = _as_outputs(found)
    for o in outs:
        by_cascade.setdefault((o.summary.get("benchmark"), tuple(o.summary["models"])), {})[o.method] = o
    # early abstention (`cascade tune --abstain-cost`): those curves' test_error is the loss error + X abstention;
    # a curve without abstention has loss = error, so the AUCs compare losses at equal cost
    abstaining = any(o.summary.get("abstain_cost") is not None for o in outs)
    rows = []
    for (bench, models), methods in by_cascade.items():
        if baseline not in methods:
            continue
        base = methods[baseline].curve
        for method, o in methods.items():
            if method == baseline:
                continue
            curve = o.curve
            cmp = curves.compare_curves(curve.test_cost, curve.test_error, base.test_cost, base.test_error,
                                        at_single_cost=at_single_cost)
            rows.append({"benchmark": bench, "cascade": " -> ".join(models), "k": len(models), "method": method,
                         "baseline": baseline, "cost_lo": cmp.lo, "cost_hi": cmp.hi, "auc": cmp.auc_a,
                         "auc_baseline": cmp.auc_b, "pct_change": cmp.pct_change, "note": cmp.note})
            if abstaining:
                rows[-1].update({"abstain_cost": o.summary.get("abstain_cost"),
                                 "abstention": float(curve["test_abstention"].mean()) if "test_abstention" in curve
                                 else 0.0})
    return pd.DataFrame(rows)


def compare_outputs(found: list[TuneOutput], baseline: str | None = None) -> tuple[pd.DataFrame, str]:
    """Check that the outputs can be compared, then :func:`compare_table`. The baseline defaults to the
    method of the last output. Refuses (ValueError, naming the folder): fewer than two methods, an unknown
    baseline, the same method twice on one cascade, a method and its baseline tuned with a different
    ``cost_mode``/``test_split``, and a DIR none of whose curves has a counterpart."""
    methods = [o.method for o in found]
    if len(set(methods)) < 2:
        raise ValueError(f"compare needs curves of at least two methods; found only {sorted(set(methods))}")
    baseline = baseline or methods[-1]
    if baseline not in methods:
        raise ValueError(f"--baseline {baseline!r} is not among the methods found ({', '.join(sorted(set(methods)))})")
    seen: dict[tuple, TuneOutput] = {}
    for o in found:
        k = (*o.key, o.method)
        if k in seen:
            raise ValueError(f"{o.folder} and {seen[k].folder} both hold {o.method} on {' -> '.join(o.key[1])} "
                             f"({o.key[0]}); pass only one of them")
        seen[k] = o
    bases = {o.key: o for o in found if o.method == baseline}
    used: set[str] = set()
    for o in found:
        b = bases.get(o.key)
        if b is None or b is o:
            continue
        for field in ("cost_mode", "test_split"):
            if o.summary.get(field) != b.summary.get(field):
                raise ValueError(f"{o.folder}: {field} {o.summary.get(field)!r} differs from the baseline's "
                                 f"{b.summary.get(field)!r} ({b.folder}); tune both with the same --"
                                 f"{'cost' if field == 'cost_mode' else 'test-split'}")
        xa, xb = o.summary.get("abstain_cost"), b.summary.get("abstain_cost")
        if xa is not None and xb is not None and xa != xb:
            raise ValueError(f"{o.folder}: abstain_cost {xa} differs from the baseline's {xb} ({b.folder}), so their "
                             "losses are not comparable; tune both with the same --abstain-cost")
        used.update((o.source, b.source))
    for d in dict.fromkeys(o.source for o in found):
        if d in used:
            continue
        mine = [o for o in found if o.source == d]
        what = sorted({f"{o.method} on {' -> '.join(o.key[1])} ({o.key[0]})" for o in mine})
        if all(o.method == baseline for o in mine):
            why = f"it holds only the baseline {baseline}, and no other method was tuned on its cascades"
        else:
            have = sorted({f"{' -> '.join(k[1])} ({k[0]})" for k in bases}) or ["none"]
            why = f"the baseline {baseline} was tuned on {', '.join(have[:4])}{' ...' if len(have) > 4 else ''}"
        raise ValueError(f"{d}: nothing to compare ({'; '.join(what[:3])}{' ...' if len(what) > 3 else ''}): {why}; "
                         "tune the same --models and --benchmark with each method")
    return compare_table(found, baseline), baseline


__all__ = ["cascades_of", "bootstrap_ci", "summarize_by_length", "TuneOutput", "load_tune_outputs",
           "compare_table", "compare_outputs", "GE3"]
