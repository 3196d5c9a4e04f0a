"""bench/scale.py: the resampled stores keep each query's models together, and the script runs its steps as
CLI subprocesses and reports wall, CPU and peak RSS per size and step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"


def _bench():
    spec = importlib.util.spec_from_file_location("scale", ROOT / "bench" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_resample_keeps_each_querys_models_together(tmp_path):
    out = tmp_path / "r.parquet"
    models, rows = _bench().resample(DEV, 700, out, seed=3)
    src = pq.read_table(DEV).to_pandas()
    got = pq.read_table(out).to_pandas()
    assert rows == len(got) == 2 * 700 * len(models) == 2 * 700 * src["model"].nunique()
    for split in ("train", "test"):
        g = got[got["split"] == split]
        assert g["query_id"].nunique() == 700
        assert (g.groupby("query_id")["model"].nunique() == len(models)).all()
    assert not set(got[got.split == "train"].query_id) & set(got[got.split == "test"].query_id)
    # every new query is one source query of the same split: its models' rows match that query's rows
    cols = ["model", "confidence", "correct", "cost"]
    key = lambda d: tuple(map(tuple, d.sort_values("model")[cols].to_numpy()))  # noqa: E731
    source = {(s, key(g)) for (s, _), g in src.groupby(["split", "query_id"])}
    for (s, _), g in got[got.query_id % 97 == 0].groupby(["split", "query_id"]):
        assert (s, key(g)) in source
    # 700 draws with replacement from 300 train queries: repeats
    assert got[got.split == "train"].groupby("model")["confidence"].nunique().max() <= 300


def test_scale_runs_steps_as_subprocesses_and_reports(tmp_path, capsys):
    js = tmp_path / "m.json"
    rc = _bench().main(["--sizes", "40,80", "--steps", "import,random", "--workdir", str(tmp_path / "w"),
                        "--json", str(js)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "BLAS/OpenMP threads per step: 1" in out and "growth exponent" in out
    got = json.loads(js.read_text())
    assert [(r["queries"], r["step"]) for r in got["steps"]] == [(40, "import"), (40, "random"),
                                                                  (80, "import"), (80, "random")]
    for r in got["steps"]:
        assert r["rows"] == 10 * r["queries"]  # 2 splits x 5 models
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and 30 < r["rss_mb"] < 4000
    assert (tmp_path / "w" / "out-80-random" / "summary.json").exists()


def test_cli_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, jobs.cli; heavy = [m for m in ('numpy', 'pandas', 'pyarrow', 'scipy', 'statsmodels', "
            "'cascade.data.records') if m in sys.modules]; print(heavy); assert not heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_user_error_is_a_value_error():
    from cascade.errors import UserError

    assert issubclass(UserError, ValueError)
    assert str(UserError("column x: fix it")) == "column x: fix it"


def test_step_peak_rss_is_the_steps_own_not_the_parents(tmp_path):
    """Linux carries a process's peak RSS across exec: a step started straight from a parent holding a big
    table reported the parent's peak. Through the wrapper, a bare step reports its own (small) peak."""
    import os
    import sys

    import numpy as np

    big = np.ones(400 * 2 ** 20 // 8)  # 400 MB touched in this process
    bench = _bench()
    small = bench.run_step([sys.executable, "-S", "-c", "pass"], dict(os.environ), tmp_path / "log.txt")
    grows = bench.run_step([sys.executable, "-S", "-c", "b = bytearray(300 * 2 ** 20)"], dict(os.environ),
                           tmp_path / "log2.txt")
    assert big.sum() > 0
    assert small["rss_mb"] < 100, small
    assert 300 < grows["rss_mb"] < 400, grows
    assert small["wall_s"] > 0 and small["cpu_s"] >= 0
    failing = [sys.executable, "-S", "-c", "import sys; print('boom'); sys.exit(3)"]
    try:
        bench.run_step(failing, dict(os.environ), tmp_path / "log3.txt")
    except SystemExit as e:
        assert "boom" in str(e)
    else:
        raise AssertionError("a failing step must stop the benchmark")


def test_breakdown_runs_in_a_fresh_process_and_reports_its_own_peak(tmp_path, capsys):
    import numpy as np

    big = np.ones(600 * 2 ** 20 // 8)  # this process's peak must not show up in the breakdown's
    js = tmp_path / "m.json"
    rc = _bench().main(["--sizes", "60", "--steps", "import", "--workdir", str(tmp_path / "w"), "--breakdown",
                        "--json", str(js)])
    assert rc == 0 and big.sum() > 0
    stages = json.loads(js.read_text())["stages"]
    names = [s[0] for s in stages]
    assert names[0].startswith("imports") and any(n.startswith("calibration") for n in names)
    assert any(n.startswith("test curve") for n in names)
    assert 30 < stages[0][3] < 500, stages[0]  # a fresh Python with the tuning modules, not 600 MB more
    assert "stages of one markov-copula tune" in capsys.readouterr().out
