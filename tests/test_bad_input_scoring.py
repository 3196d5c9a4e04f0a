"""Bad input to ``cascade score``: each case is refused with exit 2 and a one-line message naming the field
(or file) and the fix, before any work, leaving the store as it was. Plus secrets redaction in
``score_stats.json`` (a pure function shared with tracking: ``cascade.scoring.config.redact_secrets``).
"""

import json
from pathlib import Path

import pytest
import yaml

from badinput import run_cli, snapshot
from cascade.scoring.config import REDACTED, is_secret_key, load_config, redact_secrets

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "score-mmlu-tiny.yaml"


def _raw(tmp_path: Path) -> dict:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["data_dir"] = str(ROOT / "examples" / "benchmarks")
    raw["out"] = str(tmp_path / "store")
    raw["stages"] = raw["stages"][:1]
    raw["benchmarks"] = [{"name": "mmlu", "splits": ["test"], "limit": 10}]
    raw["shard_size"] = 5
    raw["ray"] = {"progress": False}
    return raw


def _stage(raw, **kv):
    raw["stages"][0].update(kv)


# (case id, change to the config (or a callable taking (raw, tmp_path)), extra CLI args, message fragment)
CASES = [
    ("engine-option-unknown", lambda r: _stage(r, engine_options={"kv_cache_bytes": 1}), [],
     "stages.0.engine_options.kv_cache_bytes: unknown option for engine transformers; valid: none"),
    ("engine-option-secret-looking", lambda r: _stage(r, engine_options={"api_key": "sk-123"}), [],
     "stages.0.engine_options.api_key: unknown option"),
    ("signal-unknown", lambda r: r.update(signals=["mean_logprob", "vibes"]), [],
     "signals.1: unknown signal 'vibes'; known: mean_logprob"),
    ("benchmark-unknown", lambda r: r.update(benchmarks=[{"name": "mmlux"}]), [],
     "benchmarks.0.name: unknown benchmark 'mmlux'"),
    ("benchmark-dotdot", lambda r: r.update(benchmarks=[{"name": ".."}]), [], "unknown benchmark '..'"),
    ("split-escaping", lambda r: r.update(benchmarks=[{"name": "mmlu", "splits": ["../../x"]}]), [],
     "no file"),
    ("stage-name-path", lambda r: _stage(r, name="../escaped"), [], "stages.0.name"),
    ("model-unknown", lambda r: _stage(r, model="no-such-model"), [], "stages.0.model: unknown model"),
    # a hub id neither cached nor known to the hub (here: no hub at all) is refused before Ray starts
    ("model-hub-unresolved", lambda r: _stage(r, model="nosuchorg/nosuchmodel-xyz"), [],
     "stages.0.model: 'nosuchorg/nosuchmodel-xyz' is not in the local Hugging Face cache"),
    ("field-unknown", lambda r: _stage(r, batchsize=4), [], "stages.0.batchsize: unknown field"),
    ("dtype-bad", lambda r: _stage(r, dtype="int3"), [], "stages.0.dtype"),
    ("shard-size-zero", lambda r: r.update(shard_size=0), [], "shard_size"),
    ("runner-needs-vllm", lambda r: _stage(r, runner="ray.data.llm"), [], "stages.0.runner: ray.data.llm runs vLLM"),
    ("data-dir-missing-file", lambda r: r.update(data_dir="/nonexistent-benchmarks"), [],
     "data_dir: no file /nonexistent-benchmarks/mmlu-test.parquet"),
    ("limit-zero", None, ["--limit", "0"], "--limit must be >= 1"),
    ("out-is-a-file", lambda r, tmp: (tmp / "afile").write_text("x") and r.update(out=str(tmp / "afile")), [],
     "out: "),
    ("out-below-a-file", lambda r, tmp: (tmp / "afile").write_text("x") and r.update(out=str(tmp / "afile" / "s")), [],
     "lies below the file"),
]


@pytest.mark.parametrize("case,change,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_refused_before_any_work(tmp_path, case, change, args, message):
    raw = _raw(tmp_path)
    store = tmp_path / "store"
    (store / "mmlu").mkdir(parents=True)
    (store / "keep.txt").write_text("untouched")
    if change is not None:
        change(raw, tmp_path) if change.__code__.co_argcount == 2 else change(raw)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    before = snapshot(tmp_path)
    rc, err = run_cli(["score", cfg, "--no-progress", *args], timeout=300)
    assert rc == 2, err[-2000:]
    assert message in err, err[-2000:]
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("cascade score: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_bad_yaml_and_missing_config(tmp_path):
    (tmp_path / "bad.yaml").write_text("stages: [unclosed")
    rc, err = run_cli(["score", tmp_path / "bad.yaml"])
    assert rc == 2 and "not valid YAML" in err
    rc, err = run_cli(["score", tmp_path / "missing.yaml"])
    assert rc == 2 and "no such config file" in err


def test_store_cut_differently_is_refused_and_left_alone(tmp_path):
    raw = _raw(tmp_path)
    folder = tmp_path / "store" / "mmlu" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "test-000000-000004.parquet").write_bytes(b"not really")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    before = snapshot(tmp_path)
    rc, err = run_cli(["score", cfg, "--no-progress"])
    assert rc == 2 and "cuts them differently" in err and "test-000000-000004.parquet" in err
    assert snapshot(tmp_path) == before


def test_engine_option_types_are_checked(tmp_path):
    from cascade.scoring.config import ConfigError, _engine_option_problems, StageConfig

    st = StageConfig(name="v", model="smollm2-135m", engine="vllm",
                     engine_options={"kv_cache_memory_bytes": "1GB", "max_logprobs": 50, "gpu_memory_utilization": 1,
                                     "swap": True})
    probs = _engine_option_problems("stages.0", st)
    assert probs == ["stages.0.engine_options.kv_cache_memory_bytes: expected int, got '1GB'",
                     "stages.0.engine_options.swap: unknown option for engine vllm; valid: gpu_memory_utilization, "
                     "kv_cache_memory_bytes, max_logprobs"]
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("key,secret", [
    ("api_key", True), ("HF_TOKEN", True), ("hf_token", True), ("clientSecret", True), ("db-password", True),
    ("Password", True), ("AWS_SECRET_ACCESS_KEY", True), ("apikey", True), ("auth", True), ("token", True),
    ("max_new_tokens", False), ("input_tokens", False), ("tokenizer", False), ("cell_key", False),
    ("kv_cache_memory_bytes", False), ("model", False), ("address", False),
])
def test_secret_looking_keys(key, secret):
    assert is_secret_key(key) is secret


def test_redact_secrets_is_pure_and_keeps_counts():
    obj = {"api_key": "sk-1", "stages": [{"engine_options": {"hf_token": "hf_x", "max_logprobs": 20}}],
           "n": {"Secret": {"inner": "x", "k": 3}}, "address": "ray://me:hunter2@head:10001",
           "max_new_tokens": 8, "token_count": None, "password": ""}
    copy = json.loads(json.dumps(obj))
    red = redact_secrets(obj)
    assert obj == copy  # input unchanged
    assert red["api_key"] == REDACTED and red["stages"][0]["engine_options"] == {"hf_token": REDACTED,
                                                                                  "max_logprobs": 20}
    assert red["n"] == {"Secret": {"inner": REDACTED, "k": 3}}
    assert red["address"] == f"ray://me:{REDACTED}@head:10001"
    assert red["max_new_tokens"] == 8 and red["token_count"] is None and red["password"] == ""
    assert "hunter2" not in json.dumps(red) and "sk-1" not in json.dumps(red)


def test_score_stats_json_has_secrets_redacted(tmp_path):
    from jobs.score import save_stats

    raw = _raw(tmp_path)
    raw["ray"]["address"] = "ray://admin:s3cr3t-pw@head:10001"
    cfg = load_config(raw)
    stats = {"out_dir": str(tmp_path / "store"), "scored_records": 3, "skipped_shards": 0}
    logged = save_stats(stats, cfg)
    text = (tmp_path / "store" / "_score_stats.json").read_text()
    assert "s3cr3t-pw" not in text and "s3cr3t-pw" not in json.dumps(logged)
    assert json.loads(text)["config"]["ray"]["address"] == f"ray://admin:{REDACTED}@head:10001"
