"""docs/operations.md's `ray job submit` recipe, run verbatim.

The fenced bash block after ``<!-- test: ray-job-recipe -->`` is read from the doc and run as written by
bash from the repository root; only the variables the recipe reads with defaults (ports, ``STORE``,
``OUT``) and the token file (``RAY_AUTH_TOKEN_PATH``, so the user's ``~/.ray/auth_token`` is not touched)
come from the test. Token auth is on (``RAY_AUTH_MODE=token`` is in the block). The sweep's runs must
land FINISHED in the absolute store, and the head must be gone afterwards.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
MARK = "<!-- test: ray-job-recipe -->"


def recipe(text: str | None = None) -> str:
    """The bash block right after the marker."""
    text = DOC.read_text() if text is None else text
    i = text.index(MARK)
    m = re.compile(r"```bash\n(.*?)\n```", re.S).search(text, i)
    assert m is not None and text[i + len(MARK):m.start()].strip() == "", "the marker must precede a ```bash block"
    return m.group(1)


def test_recipe_block_is_marked_and_complete():
    block = recipe()
    # what makes it work as written: token auth on, the project's venv, an isolated loopback head,
    # an absolute store, and stopping only this head
    for needle in ("export RAY_AUTH_MODE=token", "ray get-auth-token --generate", ".venv/bin", "--temp-dir=",
                   "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "ray job submit",
                   '--tracking-uri "sqlite:///$STORE"', "$PWD/mlflow.db", "kill -TERM $HEAD_PID", "wait $HEAD_PID",
                   "CASCADE_GIT_COMMIT"):
        assert needle in block, needle
    assert "ray stop" not in block.replace("`ray stop`", "")  # never stops other Rays
    assert not re.search(r"/(work|tmp|home)/", block)  # no machine paths
    # it is the section's first code block: a reader following the doc meets it before anything else
    section = DOC.read_text().split("## `ray job submit`", 1)[1]
    assert section.index(MARK) < section.index("```")


def test_recipe_parser_refuses_an_unmarked_block():
    with pytest.raises((ValueError, AssertionError)):
        recipe("text\n```bash\necho hi\n```\n")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _kill_heads(tmpdir: Path) -> None:
    """End the process groups of the Ray processes this test started (they name our temp dir)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(tmpdir) in cmd:
            try:
                os.killpg(os.getpgid(int(proc.name)), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.mark.slow
def test_recipe_runs_as_written(tmp_path):
    venv_bin = ROOT / ".venv" / "bin"
    if not (venv_bin / "ray").exists():
        pytest.skip("the ray CLI is not installed in the project's .venv")
    try:
        import aiohttp_cors  # noqa: F401  (ray[default]: the dashboard and job server)
    except ImportError:
        pytest.skip("ray[default] is not installed: pip install 'ray[default]==2.60.*'")
    short = Path(tempfile.mkdtemp(prefix="rd", dir="/tmp"))  # mktemp -d lands here: short socket paths
    token_file = tmp_path / "token"
    token_file.write_text(secrets.token_hex(32))
    ports = dict(zip(["GCS_PORT", "DASH_PORT", "AGENT_PORT", "AGENT_GRPC_PORT", "METRICS_PORT", "RUNTIME_ENV_PORT"],
                     map(str, _free_ports(6))))
    store, out = tmp_path / "mlflow.db", tmp_path / "out"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI")}
    # a fresh shell: no venv on PATH (the recipe puts the project's there before its first `ray`)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not p.rstrip("/").endswith(("/.venv/bin", "/.venv-vllm/bin")))
    env.update(ports, STORE=str(store), OUT=str(out), TMPDIR=str(short), RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_USAGE_STATS_ENABLED="0", PATH=path)
    t0 = time.time()
    try:
        r = subprocess.run(["bash", "-c", recipe()], cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
        log = r.stdout[-4000:] + r.stderr[-4000:]
        assert r.returncode == 0, log  # every line worked, the head's stop included
        assert "command not found" not in r.stderr, log
        assert "ran 4 cells, logged 4" in r.stdout + r.stderr, log
        assert re.search(r"Job 'raysubmit_\w+' succeeded", r.stdout + r.stderr), log
        assert "Authentication required" not in r.stdout + r.stderr, log
        with sqlite3.connect(store) as db:
            rows = db.execute("select r.status from runs r join experiments e on r.experiment_id = e.experiment_id "
                              "join tags t on t.run_uuid = r.run_uuid where e.name = 'sweep-tiny' "
                              "and t.key = 'cascade.cell_key'").fetchall()
            head_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip()
            tags = db.execute("select t.key, t.value from tags t join runs r on t.run_uuid = r.run_uuid "
                              "join experiments e on r.experiment_id = e.experiment_id "
                              "where e.name = 'sweep-tiny'").fetchall()
        assert sorted(s for (s,) in rows) == ["FINISHED"] * 4
        commits = {v for k, v in tags if k == "mlflow.source.git.commit"}
        assert commits == {head_commit}, commits  # the submitting side's commit, not "unknown"
        assert {v for k, v in tags if k == "ray.job_submission_id"} and \
            all(v.startswith("raysubmit_") for k, v in tags if k == "ray.job_submission_id")
        # the records' real benchmark and fingerprint, not "unknown", although the job reads its temporary copy
        from cascade.data import records as R

        assert {v for k, v in tags if k == "cascade.benchmark"} == {"medmcqa"}
        assert {v for k, v in tags if k == "cascade.data_fingerprint"} == {
            R.fingerprint(ROOT / "examples" / "medmcqa-llama.parquet")}
        assert (out / "sweep-tiny").is_dir()
        # the head is gone: nothing left running that names this head's temp dir
        deadline = time.time() + 10
        while time.time() < deadline:
            left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _names(p, short)]
            if not left:
                break
            time.sleep(1)
        assert not left, "the recipe left its Ray head running"
        print(f"recipe ran in {time.time() - t0:.0f} s", file=sys.stderr)
    finally:
        _kill_heads(short)
        shutil.rmtree(short, ignore_errors=True)


def _names(proc: Path, tmpdir: Path) -> bool:
    try:
        return str(tmpdir) in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
