"""The engine registry: an engine is one module that registers itself; config, stage loading and the
job ask the registry. This file adds an engine (a transformers engine that scores in float32 whatever the
stage's dtype, declaring a field and fewer signals) and uses it end to end without editing the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from cascade.scoring.config import ConfigError, load_config
from cascade.scoring.engines import registry
from cascade.scoring.engines.registry import EngineSpec
from cascade.scoring.engines.transformers_engine import TransformersEngine

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "benchmarks"
NAME = "transformers-fp32"


class Fp32Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threads_per_batch: int = Field(1, ge=1)


class Fp32Transformers(TransformersEngine):
    """The transformers engine, always in float32, batches of one per thread (its own stage field)."""

    name = NAME

    @classmethod
    def stage_kwargs(cls, st) -> dict:
        kw = super().stage_kwargs(st)
        kw["dtype"] = "float32"
        kw["batch_size"] = st.engine_fields().threads_per_batch
        return kw


SPEC = EngineSpec(name=NAME, factory=f"{__name__}:Fp32Transformers", needs="local_model",
                  description="transformers in float32", fields=Fp32Fields,
                  signals=("mean_logprob", "first_logprob", "top2_margin"))


@pytest.fixture
def added():
    registry.register(SPEC)
    yield SPEC
    registry.unregister(NAME)


def _cfg(tmp_path, **stage):
    return {"benchmarks": [{"name": "mmlu", "splits": ["test"], "limit": 4}], "data_dir": str(EXAMPLES),
            "out": str(tmp_path / "store"), "signals": ["mean_logprob", "first_logprob", "top2_margin"],
            "stages": [{"name": "s", "model": "smollm2-135m", **stage}], "ray": {"progress": False}}


def test_built_in_engines_are_registered_by_their_modules():
    assert {"transformers", "vllm", "openai"} <= set(registry.names())
    assert registry.get("transformers").needs == "local_model" and registry.get("openai").needs == "endpoint"
    assert registry.get("vllm").gpu_runner == "ray.data.llm" and registry.get("vllm").tensor_parallel
    assert registry.get("openai").preflight is not None and registry.get("openai").fields is not None
    for name in registry.names():  # the factory's module is the one that registers it
        assert registry.get(name).engine_class().__module__ == registry.get(name).module


def test_a_duplicate_name_is_refused(added):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(EngineSpec(name="transformers", factory=f"{__name__}:Fp32Transformers",
                                     needs="local_model"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(EngineSpec(name=NAME, factory="somewhere.else:Engine", needs="local_model"))
    assert registry.register(SPEC) is SPEC  # the same module registering again (a reload) is no new engine
    with pytest.raises(ValueError, match="needs must be"):
        registry.register(EngineSpec(name="x", factory="m:C", needs="a GPU"))


def test_config_asks_the_registry(tmp_path, added):
    cfg = load_config(_cfg(tmp_path, engine=NAME, threads_per_batch=2))
    assert cfg.stages[0].engine_fields().threads_per_batch == 2
    with pytest.raises(ConfigError, match=r"stages\.0\.engine: .*unknown engine 'nope'; use one of .*transformers-fp32"):
        load_config(_cfg(tmp_path, engine="nope"))
    with pytest.raises(ConfigError, match=r"stages\.0\.threads_per_batch: unknown field; .*engine transformers adds none"):
        load_config(_cfg(tmp_path, engine="transformers", threads_per_batch=2))
    with pytest.raises(ConfigError, match=r"stages\.0\.threads_per_batch: Input should be greater than or equal to 1"):
        load_config(_cfg(tmp_path, engine=NAME, threads_per_batch=0))
    raw = _cfg(tmp_path, engine=NAME)
    raw["signals"] = ["mean_logprob", "ptrue"]
    with pytest.raises(ConfigError, match=r"stages\.0\.engine: engine transformers-fp32 cannot give the signal\(s\) ptrue"):
        load_config(raw)
    with pytest.raises(ConfigError, match=r"stages\.0\.runner: ray\.data\.llm runs vLLM only"):
        load_config(_cfg(tmp_path, engine=NAME, runner="ray.data.llm"))
    with pytest.raises(ConfigError, match=r"tensor_parallel_size: only the vllm engine shards"):
        load_config(_cfg(tmp_path, engine=NAME, resources={"tensor_parallel_size": 2}))


def test_an_endpoint_stage_is_not_checked_as_a_local_model(tmp_path):
    raw = _cfg(tmp_path, engine="openai", model="served-name", base_url="http://127.0.0.1:9/v1")
    assert load_config(raw).stages[0].engine_fields().base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(ConfigError, match=r"stages\.0\.base_url: required by engine openai"):
        load_config(_cfg(tmp_path, engine="openai", model="served-name"))
    with pytest.raises(ConfigError, match=r"stages\.0\.api_key_env: .*name of an environment variable.*not the key"):
        load_config(_cfg(tmp_path, engine="openai", model="m", base_url="http://h/v1", api_key_env="sk-abc123"))
    with pytest.raises(ConfigError, match=r"stages\.0\.max_cost_usd: the stage has no price"):
        load_config(_cfg(tmp_path, engine="openai", model="m", base_url="http://h/v1", max_cost_usd=1.0))


@pytest.mark.slow
def test_the_added_engine_scores_through_the_stage_worker(tmp_path, added):
    """The job's stage worker (as Ray Data runs it) loads the added engine through the registry."""
    import json

    from cascade.data import benchmarks as B
    from jobs.score import StageWorker, _item_json, output_columns

    cfg = load_config(_cfg(tmp_path, engine=NAME, dtype="bfloat16", resources={"threads": 2}))
    st = cfg.stages[0]
    w = StageWorker(st.model_dump(), list(cfg.signals), cfg.grading.model_dump(), "r1",
                    output_columns(cfg, ["mmlu"]), engine_module=st.engine_spec().module)
    assert isinstance(w.engine, Fp32Transformers) and w.engine.dtype == "float32" and w.engine.batch_size == 1
    import pandas as pd

    its = B.items("mmlu", B.load_split("mmlu", "test", data_dir=EXAMPLES, limit=4))
    batch = pd.DataFrame({"shard": "k", "stage": "s", "benchmark": "mmlu", "split": "test",
                          "query_id": [it.query_id for it in its], "item": [_item_json(it) for it in its]})
    out = w(batch)
    assert list(out["query_id"]) == [0, 1, 2, 3] and (out["engine"] == NAME).all()
    assert np.isfinite(out[["conf_mean_logprob", "conf_first_logprob", "conf_top2_margin"]].to_numpy()).all()
    methods = json.loads(out["signal_methods"].iloc[0])
    assert methods == {"conf_mean_logprob": "full-vocab", "conf_first_logprob": "full-vocab",
                       "conf_top2_margin": "full-vocab"}
