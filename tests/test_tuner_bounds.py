"""Bounded work: every tuner parameter has declared bounds, refused in one line (exit 2) before any work;
a fit whose memory estimate exceeds the machine is refused; bayes-opt takes a time budget; --all-cascades
and `cascade select` say how many cascades they tune and refuse more than --max-cascades; absurd costs are
refused at `cascade import`."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from badinput import run_cli, snapshot

from cascade.data import records
from cascade.tuners import METHODS
from cascade.tuners.abstention import AbstentionTuner
from cascade.tuners.base import Interval, Options, Values, check_memory
from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
TWO = "llama3.2-1b,llama3.2-3b"


def _synthetic(tmp_path: Path, k: int, n: int = 40) -> Path:
    """A store with k models on n train and n test queries (random confidences and labels)."""
    rng = np.random.default_rng(0)
    rows = []
    for split in ("train", "test"):
        for j in range(k):
            rows.append(pd.DataFrame({"benchmark": "b", "split": split, "query_id": np.arange(n), "model": f"m{j}",
                                      "confidence": rng.uniform(-3, 0, n), "correct": rng.integers(0, 2, n) * 1.0,
                                      "input_tokens": 10, "output_tokens": 2, "cost": 1e-6 * (j + 1)}))
    store = tmp_path / f"store{k}"
    records.write_records(pd.concat(rows, ignore_index=True), store)
    return store


@pytest.mark.parametrize("cls", [*METHODS.values(), AbstentionTuner], ids=lambda c: c.name)
def test_every_parameter_has_bounds_its_default_meets(cls):
    rules = cls.constraints()
    for name, param in cls._declared().items():
        assert name in rules, f"{cls.name}: parameter {name} declares no bounds"
        if param.default is not inspect.Parameter.empty:
            assert rules[name].ok(param.default), f"{cls.name}: default {name}={param.default!r} is out of its bounds"


def test_constraints_refuse_nan_inf_and_say_their_bounds():
    i = Interval(float, 0, 1, open="hi")
    assert i.ok(0) and i.ok(0.5) and not i.ok(1) and not i.ok(float("nan")) and not i.ok(float("inf"))
    assert i.text() == "a finite number in [0, 1)"
    assert Interval(int, 1, None).text() == "a whole number >= 1" and not Interval(int, 1).ok(1.5)
    assert Interval(float, 0, None, infinite=True).ok(float("inf"))
    assert Options(("a", "b"), many=True).ok("a,b") and not Options(("a", "b")).ok("c")
    assert Values(Interval(float, 0, 1), 1, 3).ok([0, 1]) and not Values(Interval(float, 0, 1), 1, 3).ok([])


@pytest.mark.parametrize("method, param, words", [
    ("grid", "n_quantiles=0", "parameter n_quantiles must be a whole number in [1, 10000], got 0"),
    ("grid", "n_quantiles=-1", "n_quantiles must be a whole number in [1, 10000], got -1"),
    ("grid", "n_quantiles=100000", "n_quantiles must be a whole number in [1, 10000], got 100000"),
    ("grid", "eps=0.5", "parameter eps must be a finite number in [0, 0.5)"),
    ("margin", "n_rates=1e9", "parameter n_rates must be a whole number in [2, 100000]"),
    ("markov-copula", "n_quad=1e7", "parameter n_quad must be a whole number in [2, 4096]"),
    ("markov-copula", "max_steps=-5", "parameter max_steps must be a whole number in [0, 10000], got -5"),
    ("markov-copula", "lambda_max=nan", "parameter lambda_max must be a finite number in (0, 1e+300]"),
    ("markov-copula", "eps=-1", "parameter eps must be a finite number in [0, 0.5), got -1"),
    ("markov-copula", "growth=1", "parameter growth must be a finite number in (1, 1e+06]"),
    ("markov-copula", "copula=clayton", "parameter copula must be one of gumbel, independence"),
    ("bayes-opt", "n_trials=1e8", "parameter n_trials must be a whole number in [1, 100000]"),
    ("bayes-opt", "timeout_s=0", "parameter timeout_s must be a finite number in (0, 2.592e+06] or none"),
    ("bayes-opt", "seed=-1", "parameter seed must be a whole number in [0, 4.29497e+09]"),
    ("random", "seed=1e10", "parameter seed must be a whole number in [0, 4.29497e+09]"),
    ("copula", "families=gumbel,nosuch", "parameter families must be a comma-separated list of indep"),
])
def test_out_of_bounds_parameters_are_refused_before_any_work(tmp_path, capsys, method, param, words):
    out = tmp_path / "out"
    rc = cli.main(["tune", "--results", str(DEV), "--models", TWO, "--method", method, "--param", param,
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and f"method {method}:" in lines[0], err
    assert not out.exists()


def test_refusal_in_a_real_process_is_one_line_without_traceback(tmp_path):
    rc, err = run_cli(["tune", "--results", DEV, "--models", TWO, "--method", "grid", "--param", "n_quantiles=0",
                       "--out", tmp_path / "out"], timeout=300)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_grid_over_ten_models_is_refused_for_its_memory(tmp_path, capsys):
    store = _synthetic(tmp_path, 10)
    models = ",".join(f"m{j}" for j in range(10))
    before = snapshot(store)
    rc = cli.main(["tune", "--results", str(store), "--models", models, "--method", "grid", "--out",
                   str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "method grid on 10 models and 40 training queries needs about" in err, err
    assert "PiB" in err and "lower n_quantiles or tune fewer models" in err
    assert not (tmp_path / "out").exists() and snapshot(store) == before


def test_memory_estimate_and_refusal():
    grid = METHODS["grid"]
    need, _ = grid.memory_need(1000, 5, {"n_quantiles": 40})
    assert 50e6 < need < 500e6  # 41^4 = 2.8 M cells, a few arrays of them
    assert check_memory(grid, 1000, 3, {}, available=1 << 30) < 1 << 30
    with pytest.raises(ValueError, match=r"needs about .* more than this machine's 1 GiB; the grid has"):
        check_memory(grid, 1000, 6, {"n_quantiles": 100}, available=1 << 30)


def test_all_cascades_says_how_many_and_refuses_beyond_the_bound(tmp_path, capsys):
    store = _synthetic(tmp_path, 10)
    models = ",".join(f"m{j}" for j in range(10))
    rc = cli.main(["tune", "--results", str(store), "--models", models, "--all-cascades", "--method", "random",
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "are 1,013 cascades, more than --max-cascades 256" in err and "--max-cascades 1013" in err
    assert not (tmp_path / "out").exists()
    rc = cli.main(["tune", "--results", str(store), "--models", "m0,m1,m2", "--all-cascades", "--method", "random",
                   "--out", str(tmp_path / "out3")])
    out = capsys.readouterr().out
    assert rc == 0 and "cascade tune: tuning 4 cascade(s): --all-cascades" in out, out
    rc = cli.main(["tune", "--results", str(store), "--models", "m0,m1,m2", "--all-cascades", "--method", "random",
                   "--max-cascades", "3", "--out", str(tmp_path / "out4")])
    assert rc == 2 and "more than --max-cascades 3" in capsys.readouterr().err
    assert not (tmp_path / "out4").exists()


def test_select_says_how_many_and_refuses_beyond_the_bound(tmp_path, capsys):
    store = _synthetic(tmp_path, 10)
    models = ",".join(f"m{j}" for j in range(10))
    rc = cli.main(["select", "--results", str(store), "--models", models, "--method", "random",
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "are 1,023 cascades, more than --max-cascades 256" in err, err
    assert not (tmp_path / "out").exists()


def test_bayes_opt_time_budget_stops_a_huge_trial_count():
    from cascade.tuners.bayes_opt import BayesOptTuner

    rng = np.random.default_rng(0)
    n = 200
    data = records.CascadeData(["a", "b"], np.arange(n), rng.uniform(0, 1, (n, 2)), rng.integers(0, 2, (n, 2)) * 1.0,
                               np.tile([1.0, 10.0], (n, 1)))
    t0 = time.perf_counter()
    tuner = BayesOptTuner(**BayesOptTuner.validate_params({"n_trials": 100000, "timeout_s": 1.0})).fit(data)
    took = time.perf_counter() - t0
    d = tuner.diagnostics_
    assert d["timed_out"] and 1 <= d["n_trials_run"] < 100000 and d["timeout_s"] == 1.0
    assert took < 60  # one trial past the budget at most; generous for a loaded machine
    assert len(tuner.thresholds_) >= 1


@pytest.mark.parametrize("cost, words", [
    (1.7e308, "column 'cost' exceeds 1e+06 USD per query in rows 2"),
    (2e6, "column 'cost' exceeds 1e+06 USD per query"),
    (float("inf"), "column 'cost' must be a finite number"),
    (-1.0, "column 'cost' is negative"),
])
def test_absurd_costs_are_refused_at_import(tmp_path, capsys, cost, words):
    df = pd.read_parquet(DEV)
    df.loc[0, "cost"] = cost
    df.to_parquet(tmp_path / "bad.parquet")
    rc = cli.main(["import", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not records.parquet_files(tmp_path / "store") if (tmp_path / "store").exists() else True


def test_absurd_prices_are_refused_at_import(tmp_path, capsys):
    df = pd.read_parquet(DEV).drop(columns=["cost"])
    df.to_parquet(tmp_path / "tokens.parquet")
    prices = tmp_path / "prices.yaml"
    prices.write_text("".join(f"{m}: {{input: 1.7e308, output: 1.0}}\n" for m in df["model"].unique()))
    rc = cli.main(["import", str(tmp_path / "tokens.parquet"), "--prices", str(prices), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "the cost from --prices exceeds 1e+06 USD per query" in err, err
