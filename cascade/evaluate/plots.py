"""Figures of tuned curves (matplotlib objects; no pyplot state, no display: safe in workers and tests)."""

from __future__ import annotations

import pandas as pd


def error_cost_figure(curve: pd.DataFrame, title: str):
    """The test error-cost curve (and the tuner's train estimate, when the curve has one) as a Figure."""
    from matplotlib.figure import Figure

    import textwrap

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    c = curve.sort_values("test_cost")
    ax.plot(c["test_cost"], c["test_error"], "o-", ms=3, label="test (measured)")
    if "train_cost" in c and c["train_cost"].notna().any():
        t = curve.sort_values("train_cost")
        ax.plot(t["train_cost"], t["train_error"], "s--", ms=2, alpha=0.6, label="train (tuner's estimate)")
    ax.set_xlabel("cost (USD per million queries)")
    ax.set_ylabel("error")
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)  # wrapped: never clipped by the figure
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.6)
    fig.tight_layout()
    return fig
