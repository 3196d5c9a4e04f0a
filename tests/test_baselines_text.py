"""The learned text signals (scorer, router) with an injected encoder; the real MiniLM one is slow."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from cascade.evaluate import curves as evaluate
from cascade.evaluate import tuning as tune
from cascade.tuners.learned import SIGNALS, add_learned_signal


def hash_encoder(texts, dim=64):
    """Bag-of-words hashing: a deterministic stand-in for the sentence encoder."""
    out = np.zeros((len(texts), dim))
    for i, t in enumerate(texts):
        for w in str(t).lower().split():
            out[i, zlib.crc32(w.encode()) % dim] += 1.0
    return out


def text_records(n_train=120, n_test=200, seed=0):
    """Cheap model 'a' fails on questions with the word 'hard' and when it answers 'unsure'."""
    rng = np.random.default_rng(seed)
    questions, rows = {}, []
    for split, n in (("train", n_train), ("test", n_test)):
        hard = rng.random(n) < 0.5
        questions[split] = {i: f"question {i} is {'hard' if h else 'easy'} about topic{i % 7}" for i, h in enumerate(hard)}
        ca = np.where(hard, rng.random(n) < 0.15, rng.random(n) < 0.9)
        cb = rng.random(n) < 0.85
        for m, c, cost in (("a", ca, 1e-6), ("b", cb, 1e-5)):
            ans = np.where(c, "the answer is B", "unsure maybe C") if m == "a" else np.full(n, "B")
            rows.append(pd.DataFrame({"benchmark": "syn", "split": split, "query_id": np.arange(n), "model": m,
                                      "correct": c, "confidence": np.log(rng.uniform(0.3, 1.0, n)),
                                      "input_tokens": 10, "output_tokens": 1, "cost": cost, "answer": ans}))
    return pd.concat(rows, ignore_index=True), questions


@pytest.mark.parametrize("kind", ["router", "scorer"])
def test_learned_signal_separates_and_tunes(kind):
    recs, qs = text_records()
    out = add_learned_signal(recs, qs, kind=kind, encode=hash_encoder)
    col = SIGNALS[kind]
    test_a = out[(out.split == "test") & (out.model == "a")]
    s1, s0 = test_a.loc[test_a.correct, col], test_a.loc[~test_a.correct, col]
    auroc = (s1.to_numpy()[:, None] > s0.to_numpy()[None, :]).mean()
    assert auroc > (0.9 if kind == "scorer" else 0.7)
    train, test, _ = tune.prepare(out, models=["a", "b"], signal=col)
    t = tune.get_method(kind)().fit(train)
    curve = evaluate.score_curve(t.thresholds_, test)
    # the learned signal beats random routing (the straight line) over the shared range
    rnd = tune.get_method("random")().fit(train)
    rc = evaluate.score_curve(rnd.thresholds_, test)
    cmp = evaluate.compare_curves(curve["cost"], curve["error"], rc["cost"], rc["error"])
    assert cmp.pct_change < -5


def test_learned_signal_train_is_out_of_fold():
    recs, qs = text_records(seed=1)
    out = add_learned_signal(recs, qs, kind="router", encode=hash_encoder, seed=0)
    again = add_learned_signal(recs, qs, kind="router", encode=hash_encoder, seed=0)
    assert np.array_equal(out[SIGNALS["router"]], again[SIGNALS["router"]])
    other = add_learned_signal(recs, qs, kind="router", encode=hash_encoder, seed=1)
    tr = (out.split == "train").to_numpy()
    assert not np.allclose(out.loc[tr, SIGNALS["router"]], other.loc[tr, SIGNALS["router"]])  # folds differ
    assert np.allclose(out.loc[~tr, SIGNALS["router"]], other.loc[~tr, SIGNALS["router"]])  # full-train fit


def test_learned_signal_bad_input():
    recs, qs = text_records()
    with pytest.raises(ValueError, match="unknown"):
        add_learned_signal(recs, qs, kind="nope", encode=hash_encoder)
    with pytest.raises(ValueError, match="answer"):
        add_learned_signal(recs.drop(columns="answer"), qs, kind="scorer", encode=hash_encoder)
    with pytest.raises(ValueError, match="question text"):
        add_learned_signal(recs, {"train": qs["train"]}, kind="router", encode=hash_encoder)
    with pytest.raises(ValueError, match="empty"):
        add_learned_signal(recs[recs.split == "test"], qs, kind="router", encode=hash_encoder)


@pytest.mark.slow
def test_minilm_encoder_loads_offline():
    from cascade.tuners.learned import benchmark_questions, load_encoder

    from cascade.data import benchmarks as B

    enc = load_encoder()
    root = B.benchmarks_dir()
    if root is not None and B.local_file(root, "medmcqa", "train") is not None:
        qs = benchmark_questions("medmcqa", "train")
    else:  # the benchmark folder is absent beside this checkout: the encoder is what is under test
        qs = {0: "Which vitamin deficiency causes scurvy?", 1: "What is the drug of choice for absence seizures?"}
    e = enc([qs[0], qs[1], qs[0]])
    assert e.shape == (3, 384)
    assert np.allclose(e[0], e[2]) and not np.allclose(e[0], e[1])
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
