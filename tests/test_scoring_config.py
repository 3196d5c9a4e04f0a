"""The scoring config: validation, clear errors, exit status 2 and no output on bad input."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cascade.scoring.config import ConfigError, ScoreConfig, load_config
from jobs.commands.score import main as score_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "score-mmlu-tiny.yaml"


def _cfg(tmp_path, **over):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["data_dir"] = str(ROOT / "examples" / "benchmarks")
    raw["out"] = str(tmp_path / "out")
    raw.update(over)
    return raw


def _write(tmp_path, raw) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_example_config_is_valid_and_paths_are_relative_to_it():
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg, ScoreConfig)
    assert [s.model for s in cfg.stages] == ["smollm2-135m", "gemma3-270m"]
    assert cfg.benchmarks[0].name == "mmlu" and cfg.bench_limit(cfg.benchmarks[0]) == 50
    assert cfg.bench_splits(cfg.benchmarks[0]) == ["train", "test"]
    assert Path(cfg.data_dir) == (ROOT / "examples" / "benchmarks").resolve()
    assert Path(cfg.out) == (ROOT / "runs" / "score-mmlu-tiny").resolve()


def test_benchmark_names_may_be_plain_strings(tmp_path):
    cfg = load_config(_cfg(tmp_path, benchmarks=["mmlu"]))
    assert cfg.benchmarks[0].name == "mmlu" and cfg.bench_splits(cfg.benchmarks[0]) == ["test"]


@pytest.mark.parametrize("change,message", [
    (lambda r: r.update(benchmarks=[{"name": "mmlux"}]), r"benchmarks\.0\.name: unknown benchmark 'mmlux'"),
    (lambda r: r["stages"][0].update(model="no-such-model"), r"stages\.0\.model: unknown model 'no-such-model'"),
    (lambda r: r["stages"][1].update(dtype="int3"), r"stages\.1\.dtype"),
    (lambda r: r["stages"][0].update(batchsize=4), r"stages\.0\.batchsize: unknown field"),
    (lambda r: r["stages"][1].update(name="smollm2-135m"), r"stage names must be unique"),
    (lambda r: r["stages"][0]["resources"].update(num_cpus=0), r"stages\.0\.resources\.num_cpus"),
    (lambda r: r["stages"][0]["price"].update(input=-1), r"stages\.0\.price\.input"),
    (lambda r: r.update(signals=["mean_logprob", "vibes"]), r"signals\.1"),
    (lambda r: r.update(stages=[]), r"stages"),
    (lambda r: r.pop("out"), r"out: Field required"),
    (lambda r: r.update(splits=["validation"], benchmarks=[{"name": "mmlu"}]), r"no file .*mmlu-validation\.parquet"),
    (lambda r: r["stages"][0]["resources"].update(tensor_parallel_size=2), r"tensor_parallel_size: only the vllm engine"),
])
def test_bad_configs_name_the_field(tmp_path, change, message):
    raw = _cfg(tmp_path)
    change(raw)
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_engine_without_vllm_is_refused(tmp_path):
    raw = _cfg(tmp_path)
    raw["stages"][0]["engine"] = "vllm"
    with pytest.raises(ConfigError, match=r"stages\.0\.engine: vllm is not installed"):
        load_config(raw)


def test_cli_exits_2_before_any_work(tmp_path, capsys):
    raw = _cfg(tmp_path)
    raw["stages"][0]["model"] = "no-such-model"
    assert score_main([str(_write(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert "stages.0.model" in err and "no-such-model" in err
    assert not (tmp_path / "out").exists()
    assert score_main([str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text("stages: [unclosed")
    assert score_main([str(tmp_path / "bad.yaml")]) == 2


def test_dataset_lacking_a_column_fails_before_work(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    df = pd.read_parquet(ROOT / "examples" / "benchmarks" / "mmlu-test.parquet").drop(columns=["choices"])
    df.to_parquet(data / "mmlu-test.parquet")
    raw = _cfg(tmp_path, data_dir=str(data), benchmarks=[{"name": "mmlu", "splits": ["test"]}])
    assert score_main([str(_write(tmp_path, raw))]) == 2
    assert "lacks column(s) choices" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_check_mode_plans_shards(tmp_path, capsys):
    raw = _cfg(tmp_path)
    assert score_main([str(_write(tmp_path, raw)), "--check"]) == 0
    out = capsys.readouterr().out
    assert "90 queries x 2 stage(s), 8 shards" in out
    assert not (tmp_path / "out").exists()


def test_cascade_cli_lists_score():
    from jobs.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["score", str(EXAMPLE), "--check"])
    assert args.command == "score" and callable(args.func)


def test_plan_cuts_deterministic_shards_and_refuses_a_store_cut_differently(tmp_path):
    from jobs.score import plan

    cfg = load_config(_cfg(tmp_path))
    shards, per_split = plan(cfg)
    assert {k: len(v) for k, v in per_split.items()} == {("mmlu", "train"): 40, ("mmlu", "test"): 50}
    names = sorted(sh.path.name for sh in shards["smollm2-135m"])
    assert names == ["test-000000-000025.parquet", "test-000025-000050.parquet",
                     "train-000000-000025.parquet", "train-000025-000040.parquet"]
    assert [(sh.start, sh.end) for sh in shards["gemma3-270m"] if sh.split == "test"] == [(0, 25), (25, 50)]
    assert per_split[("mmlu", "test")].kind == "parquet" and per_split[("mmlu", "test")].n == 50
    stale = tmp_path / "out" / "mmlu" / "gemma3-270m" / "test-000000-000010.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    with pytest.raises(ConfigError, match="test-000000-000010.parquet.*cuts them differently"):
        plan(cfg)
