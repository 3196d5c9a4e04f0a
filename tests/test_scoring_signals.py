"""The signal registry is the one place a confidence signal is defined (column, transform, needs, compute)."""

import math
from pathlib import Path

import numpy as np
import pytest

from cascade.data import benchmarks as B
from cascade.scoring import signals as S
from cascade.scoring.config import load_config
from cascade.scoring.engines.base import GenResult

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "benchmarks"


def _cfg(tmp_path, signals):
    return {"benchmarks": [{"name": "mmlu", "splits": ["test"], "limit": 4}], "data_dir": str(EXAMPLES),
            "out": str(tmp_path / "out"), "signals": signals,
            "stages": [{"name": "smol", "model": "smollm2-135m", "dtype": "float32"}]}


def _result(**kw) -> GenResult:
    base = dict(token_ids=[5, 6, 2], text="B", token_logprobs=[-0.1, -0.7, -0.01], top2_logprobs=(-0.1, -2.5),
                watch_logprobs=[-3.0, -0.1, -4.0, -5.0], input_tokens=30, output_tokens=3, stopped=True, seconds=0.1)
    base.update(kw)
    return GenResult(**base)


def test_registry_drives_config_expected_columns_and_calibration():
    from jobs.score import expected_columns

    assert set(S.names()) == {"mean_logprob", "first_logprob", "top2_margin", "top2_logit_margin", "choice_logprob",
                              "ptrue"}
    cols = [s.column for s in S.SIGNALS.values()]
    assert len(set(cols)) == len(cols) and all(c.startswith("conf_") for c in cols)
    assert "conf_choice_logprob" in expected_columns("mmlu", list(S.names()))
    assert "conf_choice_logprob" not in expected_columns("gsm8k", list(S.names()))
    assert S.by_column("conf_ptrue").transform == "two-sided" and S.by_column("confidence") is None
    assert S.needed(["ptrue", "mean_logprob"], "number") == {"ptrue", "generation"}
    assert S.needed(["choice_logprob"], "free_text") == set()


def test_builtin_signals_compute_what_the_docs_say():
    item = B.Item(0, "q", "B", ["A", "B", "C", "D"], ["B"])
    obs = S.Observation(item, "multiple_choice", _result(), _result(watch_logprobs=[-0.2, -1.8], token_ids=[7]))
    v = S.compute(list(S.names()), obs)
    assert v["conf_mean_logprob"] == pytest.approx(-0.4)  # stop token left out
    assert v["conf_first_logprob"] == pytest.approx(-0.1)
    assert v["conf_top2_margin"] == pytest.approx(math.exp(-0.1) - math.exp(-2.5))
    assert v["conf_top2_logit_margin"] == pytest.approx(2.4)
    lse = np.logaddexp.reduce([-3.0, -0.1, -4.0, -5.0])
    assert v["conf_choice_logprob"] == pytest.approx(-0.1 - lse)  # the answer names B
    assert v["conf_ptrue"] == pytest.approx(-0.2 - np.logaddexp(-0.2, -1.8))
    free = S.compute(list(S.names()), S.Observation(item, "free_text", _result(), _result(watch_logprobs=[-1, -1])))
    assert "conf_choice_logprob" not in free and free["conf_ptrue"] == pytest.approx(math.log(0.5))


def test_a_new_signal_is_one_registry_entry(tmp_path, monkeypatch):
    """Register conf_last_logprob: configs accept it, scoring computes it, shards expect it, tuning knows its
    transform; nothing else changes."""
    from jobs.score import expected_columns

    monkeypatch.setattr(S, "SIGNALS", dict(S.SIGNALS))
    S.register(S.Signal("last_logprob", "conf_last_logprob", "one-sided", "generation",
                        "log-probability of the last answer token", lambda o: o.answer_logprobs[-1]))
    cfg = load_config(_cfg(tmp_path, ["mean_logprob", "last_logprob"]))
    assert cfg.signals == ["mean_logprob", "last_logprob"]
    assert load_config(_cfg(tmp_path, None) | {"signals": list(S.names())}).signals[-1] == "last_logprob"
    assert "conf_last_logprob" in expected_columns("mmlu", cfg.signals)
    assert S.by_column("conf_last_logprob").transform == "one-sided"
    item = B.Item(0, "q", "B", ["A", "B"], ["B"])
    assert S.compute(cfg.signals, S.Observation(item, "multiple_choice", _result()))["conf_last_logprob"] == -0.7


def test_registering_a_bad_signal_is_refused():
    with pytest.raises(ValueError, match="transform must be one of"):
        S.register(S.Signal("x", "conf_x", "sideways", "generation", ""))
    with pytest.raises(ValueError, match="needs must be one of"):
        S.register(S.Signal("x", "conf_x", "identity", "telepathy", ""))
    with pytest.raises(ValueError, match="must start with conf_"):
        S.register(S.Signal("x", "x", "identity", "generation", ""))
    assert "x" not in S.SIGNALS


@pytest.mark.slow
def test_a_new_signal_is_scored_by_the_real_stage(tmp_path, monkeypatch):
    from cascade.scoring.engines import GenRequest, make_engine
    from cascade.scoring.models import materialize
    from cascade.scoring.stage import Prompter, StageInfo, score_items

    monkeypatch.setattr(S, "SIGNALS", dict(S.SIGNALS))
    S.register(S.Signal("last_logprob", "conf_last_logprob", "one-sided", "generation",
                        "log-probability of the last answer token", lambda o: o.answer_logprobs[-1]))
    eng = make_engine("transformers", materialize("smollm2-135m"), dtype="float32", batch_size=2, threads=2)
    its = B.items("mmlu", B.load_split("mmlu", "test", data_dir=EXAMPLES, limit=2))
    info = StageInfo("smol", "transformers", "p", "float32")
    df = score_items(eng, info, "mmlu", "test", its, signals=["last_logprob", "mean_logprob"])
    assert [c for c in df if c.startswith("conf_")] == ["conf_last_logprob", "conf_mean_logprob"]
    p = Prompter(eng.tokenizer)
    for it, got in zip(its, df["conf_last_logprob"]):
        r = eng.generate([GenRequest(p.ids(it.prompt), B.get("mmlu").max_new_tokens)])[0]
        lps = r.token_logprobs[:-1] if r.stopped and len(r.token_logprobs) > 1 else r.token_logprobs
        assert got == pytest.approx(lps[-1], abs=2e-3)


def test_default_signal_column_comes_from_the_registry():
    assert S.default_column(["conf_ptrue", "conf_mean_logprob"]) == "conf_mean_logprob"
    assert S.default_column(["confidence", "conf_mean_logprob"]) == "confidence"
    assert S.default_column(["conf_ptrue"]) == "conf_ptrue" and S.default_column(["cost"]) is None
