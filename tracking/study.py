"""MLflow logging of a written ``cascade study --out DIR`` (protocol ``compare``): a parent run with the study's
tables and files, and one nested run per (chain, method) with the metrics of
:func:`cascade.evaluate.study.method_metrics` (not one run per fit: a full study has ~17,000 fits). Grouping
the runs table by ``cascade.method`` and sorting by ``pct_change`` answers "which method wins" against the
reference. Everything logged is read from the folder, so ``cascade log DIR`` logs a study written earlier."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .mlflow_log import (OUTPUT_FINGERPRINT_TAG, _flat_params, _log_metrics, _nested, _tags, git_commit, log_summary,
                         parent_run)
from .store import guard, write_lock

STUDY_DESCRIPTION = (
    "cascade-eval studies (`cascade study`): tuning methods fitted on the same seeded training subsamples of "
    "every cascade of a chain, each method's test curve compared with the reference method's on their shared "
    "cost range.\n\n"
    "- Which method wins: group the runs table by the tag `cascade.method` and sort by `pct_change` (mean % "
    "change of AUC vs the reference, tag `cascade.reference`, at the largest training size; negative = better). "
    "`pct_change.n_<n>` is the same per training size, `win_share.n_<n>` the share of cascades where the method "
    "beats the reference.\n"
    "- The parent run (tag `cascade.study=true`) holds the summary per n and cascade length with bootstrap "
    "intervals and Wilcoxon p-values (`summary_table.json`, `table.txt`), the per-cascade table and the "
    "plots.")
SUMMARY_COLUMNS = ["method", "n", "k", "mean_pct_change", "ci95_lo", "ci95_hi", "wilcoxon_p_less", "mean_auc",
                   "mean_auc_ref", "n_cascades", "chain", "vs"]

STUDY_FILES = ("table.txt", "summary.csv", "per_cascade.csv", "runs.csv", "meta.json", "curves.json")


def is_study_dir(d: str | os.PathLike) -> bool:
    d = Path(d)
    return (d / "meta.json").is_file() and (d / "runs.csv").is_file() and (d / "summary.csv").is_file()


def read_study(out_dir: str | os.PathLike) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(meta, runs, per_cascade, summary) of a study folder; ValueError (one line) when a file is unreadable."""
    d = Path(out_dir)
    try:
        meta = json.loads((d / "meta.json").read_text())
        runs = pd.read_csv(d / "runs.csv", dtype={"n": str})
        summary = pd.read_csv(d / "summary.csv", dtype={"n": str, "k": str})
        per_cascade = pd.read_csv(d / "per_cascade.csv", dtype={"n": str}) if (d / "per_cascade.csv").exists() \
            else pd.DataFrame()
    except (OSError, ValueError) as e:
        raise ValueError(f"{d}: not a readable `cascade study` output ({type(e).__name__}: {e}); rerun the study "
                         "or remove that folder") from None
    return meta, runs, per_cascade, summary


def default_experiment(meta: dict) -> str:
    """``<benchmark>-study`` when every chain is of one benchmark, else ``cascade-study``."""
    benches = {c.get("benchmark") for c in (meta.get("chains") or {}).values()}
    return f"{benches.pop()}-study" if len(benches) == 1 and None not in benches else "cascade-study"


def _log_study_report(d: Path, chains: dict, reference, run_id: str) -> None:
    """report.html per chain (the curves at the largest training size, first subsample, every method x cascade)
    at budgets from those curves' cost range (a study folder holds no records), and the description."""
    from cascade.evaluate import budgets as B

    from .mlflow_log import comparison_report, log_report

    if not (d / "curves.json").is_file():
        return
    curves = pd.read_json(d / "curves.json", orient="records", dtype={"n": str})
    if curves.empty:
        return
    descs = []
    for i, (chain, g) in enumerate(curves.groupby("chain", sort=False)):
        ns = list(dict.fromkeys(g["n"].astype(str)))
        n = "all" if "all" in ns else max(ns, key=lambda v: int(v) if v.isdigit() else -1)
        g = g[g["n"].astype(str) == n].drop_duplicates(["cascade", "method"])
        runs = [{"method": r["method"], "cascade": str(r["cascade"]).split(" -> "),
                 "curve": pd.DataFrame({"test_cost": r["test_cost"], "test_error": r["test_error"]})}
                for _, r in g.iterrows() if len(r["test_cost"])]
        costs = [c for r in runs for c in r["curve"]["test_cost"]]
        if not costs:
            continue
        data, desc = comparison_report(f"{chain}: study curves at n={n} (first subsample), vs {reference}", runs,
                                       B.grid(min(costs), max(costs)))
        log_report(data, run_id=run_id, name="report.html" if i == 0 else f"report_{chain}.html")
        descs.append(desc)
    if descs:
        import mlflow

        with guard("setting the study's description"), write_lock():
            mlflow.MlflowClient().set_tag(run_id, "mlflow.note.content", (STUDY_DESCRIPTION + "\n\n" +
                                                                          "\n\n".join(descs))[:60000])


def log_study(out_dir: str | os.PathLike, *, experiment: str | None = None, uri: str | None = None,
              output_fingerprint: str | None = None) -> str:
    """Log a study folder; returns the parent run's id. Raises :class:`tracking.TrackingUnavailable` when the
    store fails (the folder is untouched)."""
    from cascade.evaluate import comparison
    from cascade.evaluate.study import method_metrics, method_table

    d = Path(out_dir)
    meta, runs, per_cascade, summary = read_study(d)
    experiment = experiment or default_experiment(meta)
    chains = meta.get("chains") or {}
    reference = meta.get("reference")
    n_values = ",".join(map(str, meta.get("n_values") or []))
    seed = meta.get("seed", 0)
    metrics = method_metrics(runs, summary, reference)
    benches = sorted({str(c.get("benchmark")) for c in chains.values() if c.get("benchmark")})
    params = {"command": "study", "protocol": "compare", "methods": ",".join(meta.get("methods") or []),
              "reference": reference, "n_values": n_values, "n_subsamples": meta.get("n_subsamples"),
              "seed": seed, "cost_mode": meta.get("cost_mode"), "signal": meta.get("signal"),
              "chains": ",".join(chains), "n_cascades": meta.get("n_cascades"), "output": str(d.resolve()),
              **{f"method.{m}.{k}": v for m, p in (meta.get("overrides") or {}).items() for k, v in p.items()}}
    tags = {"cascade.study": "true", "cascade.comparison": "true", "cascade.reference": reference,
            "cascade.benchmark": ",".join(benches) or None, "cascade.logged_from": str(d.resolve()),
            OUTPUT_FINGERPRINT_TAG: output_fingerprint}
    chain_names = list(chains) or list(dict.fromkeys(runs["chain"]))
    name = f"study | {' + '.join(chain_names)} | vs {reference} | n={n_values} | seed={seed}"
    with parent_run(experiment, name, params=params, tags=tags, uri=uri, description=STUDY_DESCRIPTION) as parent:
        import mlflow

        with guard("logging the study's files"), write_lock():
            for f in STUDY_FILES:
                if (d / f).is_file():
                    mlflow.log_artifact(str(d / f))
            if (d / "plots").is_dir():
                mlflow.log_artifacts(str(d / "plots"), "plots")
        lead = [c for c in SUMMARY_COLUMNS if c in summary]  # the method and its number first
        tables = {"summary_table.json": summary[lead + [c for c in summary if c not in lead]]}
        if len(per_cascade):
            lead = [c for c in ("method", "cascade", "n", "pct_change", "auc", "auc_ref") if c in per_cascade]
            tables["per_cascade_table.json"] = per_cascade[lead + [c for c in per_cascade if c not in lead]]
        log_summary(tables=tables, run_id=parent.info.run_id, metrics={
            "n_cascades": meta.get("n_cascades"), "n_fits": len(runs), "n_failed_fits": meta.get("n_failed_fits"),
            "n_degenerate_fits": meta.get("n_degenerate_fits"), "wall_seconds": meta.get("wall_seconds")})
        _log_study_report(d, chains, reference, parent.info.run_id)
        for (chain, method), m in metrics.items():
            info = chains.get(chain) or {}
            models = info.get("models") or []
            run_name = comparison.run_name(method, models or [chain], n_values, seed)
            child_tags = {"cascade.kind": "study", "cascade.method": method, "cascade.chain": chain,
                          "cascade.cascade": " -> ".join(models) or None, "cascade.reference": reference,
                          "cascade.benchmark": info.get("benchmark"),
                          "mlflow.source.git.commit": git_commit()}
            with guard(f"logging the study run {run_name!r}"), write_lock():
                with _nested(run_name, parent.info.run_id, _tags(child_tags)):
                    mlflow.log_params(_flat_params({
                        "chain": chain, "models": " -> ".join(models), "method": method, "reference": reference,
                        "n_values": n_values, "n_subsamples": meta.get("n_subsamples"), "seed": seed,
                        "records": info.get("records"), "benchmark": info.get("benchmark"),
                        **{f"method.{k}": v for k, v in ((meta.get("overrides") or {}).get(method) or {}).items()}}))
                    _log_metrics(m)
                    mlflow.log_table(method_table(runs, chain, method), artifact_file="per_cascade_table.json")
        return parent.info.run_id


__all__ = ["STUDY_FILES", "default_experiment", "is_study_dir", "log_study", "read_study"]
