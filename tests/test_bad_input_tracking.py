"""Bad-input and fault matrix for tracking: `cascade tune --track`, `cascade log`, `cascade sweep`, run as a user
runs them (a subprocess, see tests/badinput.py).

Each case: a command, a tracking store in some bad state (or a bad output folder), the exit status, a fragment
the one-line message must contain, and what must be kept: the tune outputs on disk, the logged folder and the
store untouched, no sweep cell run. Every tracking failure exits 3 with one line (no traceback); bad input
exits 2.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow")

from badinput import ROOT, run_cli, snapshot  # noqa: E402

DEV = ROOT / "examples" / "medmcqa-llama.parquet"
PAIR = "llama3.2-1b,llama3.2-3b"


class _AuthRequired(BaseHTTPRequestHandler):
    """An MLflow server behind authentication: /health answers, every API call is refused with 401."""

    def _answer(self):
        if self.path.rstrip("/") == "/health":
            body, code = b"OK", 200
        else:
            body, code = json.dumps({"error_code": "UNAUTHENTICATED", "message": "credentials required"}).encode(), 401
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *a):  # quiet
        pass


@pytest.fixture(scope="module")
def auth_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _AuthRequired)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A shared folder everyone (also `nobody`, for the read-only case under root) can enter: a tuned output,
    a real MLflow store with one logged run, a sweep spec."""
    root = Path(tempfile.mkdtemp(prefix="trk-matrix-"))
    os.chmod(root, 0o777)
    from jobs import cli

    tuned = root / "tuned"
    assert cli.main(["tune", "--results", str(DEV), "--models", PAIR, "--method", "grid", "--out", str(tuned)]) == 0
    good = root / "good" / "m.db"
    assert cli.main(["log", str(tuned), "--tracking-uri", f"sqlite:///{good}", "--experiment", "seed"]) == 0
    raw = yaml.safe_load((ROOT / "examples" / "sweep-tiny.yaml").read_text())
    raw["records"][0]["path"] = str(DEV)
    raw["out"] = str(root / "sweep-out")
    (root / "spec.yaml").write_text(yaml.safe_dump(raw))
    for p in [root, *root.rglob("*")]:
        os.chmod(p, os.stat(p).st_mode | stat.S_IRWXO)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _store(kind: str, world: Path, tmp: Path, auth_server: str) -> tuple[str, Path | None]:
    """(tracking URI, store file or folder that must stay untouched)"""
    if kind == "bad-uri":
        return "mlflow-store", None
    if kind == "no-host":
        return "http://", None
    if kind == "bad-scheme":
        return "ftp://host/store", None
    if kind == "unreachable":
        return "http://127.0.0.1:1", None
    if kind == "auth-401":
        return auth_server, None
    if kind == "folder":
        (tmp / "store.db").mkdir()
        return f"sqlite:///{tmp / 'store.db'}", tmp / "store.db"
    if kind == "parent-file":
        (tmp / "afile").write_text("x")
        return f"sqlite:///{tmp / 'afile' / 'm.db'}", tmp / "afile"
    if kind == "not-db":
        (tmp / "notes.db").write_text("these are my notes, not an MLflow store\n")
        return f"sqlite:///{tmp / 'notes.db'}", tmp / "notes.db"
    if kind == "read-only":
        db = tmp / "ro" / "m.db"
        db.parent.mkdir()
        shutil.copy(world / "good" / "m.db", db)
        os.chmod(db.parent, 0o777)
        os.chmod(db, 0o444)
        return f"sqlite:///{db}", db
    raise AssertionError(kind)


def _run(args, read_only: bool, home: Path, capsys):
    """In this process (``jobs.cli.main``: the same exit status and stderr a user gets, and a check that a
    failure leaves no MLflow run active), except for the read-only store: a subprocess (``run_cli``), as user
    nobody under root (root ignores file modes)."""
    args = [str(a) for a in args]
    if not read_only:
        import mlflow

        from jobs import cli

        capsys.readouterr()
        rc = cli.main(args)
        err = capsys.readouterr().err
        assert mlflow.active_run() is None, "a failed command left an MLflow run active"
        return rc, err
    if os.geteuid() != 0:
        return run_cli(args)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a file cannot be made read-only for this user")
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "jobs.cli", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=600)
    return p.returncode, p.stderr


def _one_line(err: str, prog: str, fragment: str) -> None:
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith(prog + ":") and ("tracking failed" in ln or
                                                                           ln.startswith(prog + ": error:"))]
    assert len(lines) == 1, err[-3000:]
    assert fragment in lines[0], err[-3000:]


@dataclass
class Case:
    name: str
    command: str  # tune | log | sweep | sweep-dry | study
    store: str
    rc: int
    fragment: str


STORE_CASES = [
    ("bad-uri", "is not a tracking URI"),
    ("no-host", "names no host"),
    ("bad-scheme", "unknown scheme"),
    ("unreachable", "is unreachable"),
    ("auth-401", "UNAUTHENTICATED"),
    ("folder", "is a folder"),
    ("parent-file", "is a file"),
    ("not-db", "not a SQLite database"),
    ("read-only", "read"),  # "is read-only" (precheck) or "readonly database" (SQLite)
]
CASES = [Case(f"{cmd}-{kind}", cmd, kind, 3, frag) for cmd in ("tune", "log", "sweep", "study")
         for kind, frag in STORE_CASES]
CASES += [Case("sweep-dry-bad-uri", "sweep-dry", "bad-uri", 3, "is not a tracking URI"),
          Case("sweep-dry-not-db", "sweep-dry", "not-db", 3, "not a SQLite database")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_tracking_failure_exits_3_and_keeps_results(case, world, tmp_path, auth_server, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tmp = Path(tempfile.mkdtemp(prefix="case-", dir=world))
    os.chmod(tmp, 0o777)
    uri, store = _store(case.store, world, tmp, auth_server)
    store_before = snapshot(store) if store is not None else None
    tuned_before = snapshot(world / "tuned")
    if case.command == "tune":
        out = tmp / "out"
        args = ["tune", "--results", DEV, "--models", PAIR, "--method", "grid", "--out", out, "--track",
                "--tracking-uri", uri]
        prog = "cascade tune"
    elif case.command == "log":
        args = ["log", world / "tuned", "--results", DEV, "--tracking-uri", uri]
        prog = "cascade log"
    elif case.command == "study":
        out = tmp / "study"
        args = ["study", "--results", DEV, "--methods", "grid,random", "--reference", "random", "--n-values", "all",
                "--subsamples", "1", "--max-len", "2", "--no-plots", "--out", out, "--tracking-uri", uri]
        prog = "cascade study"
    else:
        out = tmp / "sweep-out"
        args = ["sweep", world / "spec.yaml", "--tracking-uri", uri, "--out", out, "--no-progress"]
        if case.command == "sweep-dry":
            args.append("--dry-run")
        prog = "cascade sweep"
    rc, err = _run(args, case.store == "read-only", tmp, capsys)
    assert rc == case.rc, err[-3000:]
    _one_line(err, prog, case.fragment)
    if store is not None:
        assert snapshot(store) == store_before, "the store was changed"
    line = next(ln for ln in err.splitlines() if ln.startswith(prog + ": tracking failed"))
    if case.command == "tune":  # the results are kept, and the one line says where and how to log them
        assert (out / "curve.parquet").exists() and (out / "summary.json").exists()
        assert f"the results are kept in {out}" in line and f"cascade log {out} --results" in line
    elif case.command == "study":  # refused before the fits, or the study kept with the command that logs it
        if (out / "runs.csv").exists():
            assert f"the results are kept in {out}" in line and f"cascade log {out}" in line
        else:
            assert "nothing was run" in line
    elif case.command == "log":
        assert snapshot(world / "tuned") == tuned_before
    else:  # nothing was run
        assert "no cell was run" in err
        assert not any(out.rglob("summary.json")) if out.exists() else True


# ------------------------------------------------------------------------------------------------
# cascade log: bad output folders (exit 2, nothing logged)
# ------------------------------------------------------------------------------------------------

def _bad_folder(kind: str, world: Path, tmp: Path) -> Path:
    d = tmp / "outs"
    if kind == "missing":
        return d
    if kind == "a-file":
        d.write_text("x")
        return d
    d.mkdir()
    if kind == "empty":
        return d
    shutil.copytree(world / "tuned", d / "ok")
    bad = d / "bad"
    shutil.copytree(world / "tuned", bad)
    if kind == "broken-summary":
        (bad / "summary.json").write_text("{not json")
    elif kind == "summary-not-tune":
        (bad / "summary.json").write_text(json.dumps({"hello": 1}))
    elif kind == "no-curve":
        (bad / "curve.parquet").unlink()
    elif kind == "broken-stats":
        shutil.rmtree(d)
        d.mkdir()
        (d / "score_stats.json").write_text("[1, 2")
    return d


@pytest.mark.parametrize("kind, fragment", [
    ("missing", "no such folder"),
    ("a-file", "not a folder"),
    ("empty", "neither summary.json"),
    ("broken-summary", "not a readable summary.json"),
    ("summary-not-tune", "needs `models` and `method`"),
    ("no-curve", "without curve.parquet"),
    ("broken-stats", "score_stats.json: not valid JSON"),
    ("missing-results", "no such results store"),
])
def test_log_bad_folder_exits_2_and_logs_nothing(kind, fragment, world, tmp_path, capsys):
    if kind == "missing-results":
        d = tmp_path / "outs"
        shutil.copytree(world / "tuned", d)
    else:
        d = _bad_folder(kind, world, tmp_path)
    db = tmp_path / "m.db"
    results = tmp_path / "nope.parquet" if kind == "missing-results" else DEV
    rc, err = _run(["log", d, "--results", results, "--tracking-uri", f"sqlite:///{db}"], False, tmp_path, capsys)
    assert rc == 2, err[-3000:]
    _one_line(err, "cascade log", fragment)
    assert not db.exists(), "a refused `cascade log` created the store"


# ------------------------------------------------------------------------------------------------
# cascade sweep: bad specs (exit 2 before any work: no store, no output folder)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("change, fragment", [
    (lambda r: r.update(methods=[{"name": "bayes-opt", "params": {"n_trial": 10}}]), "unknown parameter 'n_trial'"),
    (lambda r: r.update(seeds=[0, 0]), "same cell twice"),
    (lambda r: r["records"][0].update(path="no-such.parquet"), "records.0.path"),
    (lambda r: r.update(methods=["no-such-method"]), "methods"),
    (None, "no such sweep spec"),
], ids=["unknown-param", "duplicate-cells", "missing-records", "unknown-method", "missing-spec"])
def test_sweep_bad_spec_exits_2_before_any_work(change, fragment, dry, tmp_path, capsys):
    raw = yaml.safe_load((ROOT / "examples" / "sweep-tiny.yaml").read_text())
    raw["records"][0]["path"] = str(DEV)
    raw["out"] = str(tmp_path / "out")
    spec = tmp_path / "spec.yaml"
    if change is not None:
        change(raw)
        spec.write_text(yaml.safe_dump(raw))
    db = tmp_path / "m.db"
    args = ["sweep", spec, "--tracking-uri", f"sqlite:///{db}", "--no-progress"] + (["--dry-run"] if dry else [])
    rc, err = _run(args, False, tmp_path, capsys)
    assert rc == 2, err[-3000:]
    _one_line(err, "cascade sweep", fragment)
    assert not db.exists() and not (tmp_path / "out").exists()
