"""Small shared helpers for bad-input matrix tests (every layer uses the same two functions).

- ``run_cli(args, cwd=None, env=None, timeout=600) -> (rc, stderr)``: run ``cascade ARGS`` in a fresh
  Python process (``python -m jobs.cli``, the interpreter running the tests, this checkout on
  ``PYTHONPATH``), so exit codes, tracebacks and stderr are exactly what a user sees.
- ``snapshot(path) -> {relative path: sha256 | "<dir>"}``: everything under a folder (or one file), to
  assert "left untouched" as ``snapshot(store) == before``. A missing path gives ``{}``. Lock files
  (``*.lock``), which exist only to be locked and may be created by a refused write, are left out.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, cwd=None, env=None, timeout: float = 600) -> tuple[int, str]:
    """Run ``cascade *args`` in a subprocess; return (exit status, stderr)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=cwd or ROOT, env=full_env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stderr


def snapshot(path) -> dict[str, str]:
    """Relative path -> sha256 of every file (``"<dir>"`` for folders) under ``path``; ``{}`` if missing."""
    path = Path(path)
    if not path.exists():
        return {}
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    out: dict[str, str] = {}
    for p in sorted(path.rglob("*")):
        if p.name.endswith(".lock"):
            continue
        rel = p.relative_to(path).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out
