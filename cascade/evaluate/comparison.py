"""Several methods tuned on one cascade, measured on one cost range: what makes their numbers comparable.

Each tuned curve's own metrics (``test_auc``, ``test_error_at_*pct_budget``: :mod:`cascade.evaluate.metrics`)
are computed on that curve's own test cost range, which differs from method to method, so they do not
compare. :func:`shared_metrics` computes the cascade's shared cost range once (the largest cost range every
usable curve covers: :func:`cascade.evaluate.curves.shared_range`) and, for every method, the AUC on it
(``auc_shared``, the mean test error over the range, lower is better) and the best test error within 25/50/75 %
of it (``error_at_{25,50,75}pct_shared_budget``, the rule of ``curve_metrics`` on the shared range).

Curves that span no cost range (fewer than two distinct finite test costs: a degenerate fit) would shrink the
shared range to a point; they are left out of the range and get NaN shared metrics with the reason in
``shared_note``. :func:`comparison_table` puts it together per cascade, :func:`overlay_figure` draws the
methods' test curves on one axis with the shared range shaded. No MLflow here (``tracking`` logs these).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cascade.evaluate import curves as C
from cascade.evaluate.metrics import BUDGET_FRACTIONS, degenerate_reasons

SHARED_METRICS = ("auc_shared", *(f"error_at_{int(f * 100)}pct_shared_budget" for f in BUDGET_FRACTIONS),
                  "shared_cost_lo", "shared_cost_hi")


@dataclass
class Shared:
    """The shared cost range of one cascade's curves and each method's metrics on it."""

    lo: float
    hi: float
    metrics: dict[str, dict[str, float]]  # method -> SHARED_METRICS
    notes: dict[str, str] = field(default_factory=dict)  # method -> why its shared metrics are NaN


def _xy(curve: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    x = curve["test_cost"].to_numpy(float)
    y = curve["test_error"].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def span_problem(curve: pd.DataFrame) -> str:
    """Why a curve spans no cost range ("" when it does)."""
    x, _ = _xy(curve)
    if len(np.unique(x)) >= 2:
        return ""
    if len(x) == 0:
        return "the curve has no finite point"
    return f"the curve's test cost is a single value ({x[0]:.6g})"


def error_at_budget(curve: pd.DataFrame, budget: float) -> float:
    """The best test error among points costing at most ``budget`` (NaN if none)."""
    x, y = _xy(curve)
    ok = x <= budget + 1e-12
    return float(y[ok].min()) if ok.any() else float("nan")


def shared_metrics(curves: dict[str, pd.DataFrame]) -> Shared:
    """``curves``: method -> test curve (columns test_cost, test_error) of one cascade."""
    nan = float("nan")
    problems = {m: span_problem(c) for m, c in curves.items()}
    usable = [m for m, p in problems.items() if not p]
    notes = {m: f"left out of the shared range: {p}" for m, p in problems.items() if p}
    if usable:
        lo, hi = C.shared_range(*(_xy(curves[m])[0] for m in usable))
    else:
        lo = hi = nan
    if usable and not hi > lo:
        for m in usable:
            notes[m] = (f"the usable curves share no cost range of positive width (lo {lo:.6g}, hi {hi:.6g})")
    out = {}
    for m, c in curves.items():
        row = dict.fromkeys(SHARED_METRICS, nan)
        row["shared_cost_lo"], row["shared_cost_hi"] = lo, hi
        if m not in notes:
            x, y = _xy(c)
            row["auc_shared"] = C.auc(x, y, lo, hi)
            for f in BUDGET_FRACTIONS:
                row[f"error_at_{int(f * 100)}pct_shared_budget"] = error_at_budget(c, lo + f * (hi - lo))
        out[m] = row
    return Shared(lo, hi, out, notes)


def comparison_table(runs: list[dict]) -> tuple[pd.DataFrame, dict[tuple, Shared]]:
    """``runs``: dicts with ``cascade`` (list of models), ``method``, ``curve`` and ``summary`` (and any other
    keys, e.g. ``n``, ``seed``, ``benchmark``, which group curves too). Curves are compared within a group of
    the same benchmark, cascade, n and seed. Returns one row per run (its group's shared range, its shared and
    own-range metrics, degenerate flag and reason, rank by ``auc_shared`` within the group) and the
    :class:`Shared` of each group."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in runs:
        key = (r.get("benchmark") or (r.get("summary") or {}).get("benchmark"), tuple(r["cascade"]),
               str(r.get("n", "all")), r.get("seed", 0))
        groups.setdefault(key, {})[r["method"]] = r
    rows, shared = [], {}
    for key, by_method in groups.items():
        s = shared_metrics({m: r["curve"] for m, r in by_method.items()})
        shared[key] = s
        aucs = pd.Series({m: s.metrics[m]["auc_shared"] for m in by_method})
        ranks = aucs.rank(method="min")
        for m, r in by_method.items():
            summary = r.get("summary") or {}
            reasons = degenerate_reasons(r["curve"], summary)
            # what a reader compares first (method, auc_shared, rank) leads: the UI's table preview cuts columns
            rows.append({"cascade": " -> ".join(key[1]), "method": m, "auc_shared": s.metrics[m]["auc_shared"],
                         "rank_shared": float(ranks[m]) if np.isfinite(aucs[m]) else float("nan"),
                         **s.metrics[m],
                         "test_auc_own_range": summary.get("test_auc", C.auc(*_xy(r["curve"]))),
                         "degenerate": bool(reasons), "degenerate_reason": "; ".join(reasons),
                         "shared_note": s.notes.get(m, ""), "benchmark": key[0], "k": len(key[1]), "n": key[2],
                         "seed": key[3]})
    return pd.DataFrame(rows), shared


def overlay_figure(curves: dict[str, pd.DataFrame], title: str, shared: Shared | None = None):
    """The methods' test error-cost curves on one axis, the shared cost range shaded, AUCs in the legend."""
    from matplotlib.figure import Figure

    shared = shared or shared_metrics(curves)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if np.isfinite(shared.lo) and shared.hi > shared.lo:
        ax.axvspan(shared.lo, shared.hi, color="0.9", zorder=0, label="shared cost range")
    for m, c in curves.items():
        x, y = _xy(c)
        order = np.argsort(x, kind="stable")
        a = shared.metrics[m]["auc_shared"]
        label = f"{m} (auc_shared {a:.4f})" if np.isfinite(a) else f"{m} ({shared.notes.get(m, 'no shared AUC')})"
        ax.plot(x[order], y[order], "o-", ms=3, label=label[:90])
    ax.set_xlabel("test cost (USD per million queries)")
    ax.set_ylabel("test error")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)  # wrapped: never clipped by the figure
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # beside the curves
    fig.set_size_inches(10, 4.5)
    fig.tight_layout()
    return fig


__all__ = ["SHARED_METRICS", "Shared", "comparison_table", "error_at_budget", "overlay_figure", "shared_metrics",
           "span_problem"]


def run_name(method: str, cascade, n="all", seed=0) -> str:
    """The one run-name scheme, leading with what differs between sibling runs: the method, then the cascade
    (models joined by ``>``), the training size and the seed: ``markov-copula | a>b | n=all | seed=0``."""
    models = cascade.split(" -> ") if isinstance(cascade, str) else list(cascade)
    return f"{method} | {'>'.join(models)} | n={n} | seed={seed}"


__all__ += ["run_name"]
