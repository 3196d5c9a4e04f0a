"""Shared helpers of the browser tests: Debian's Chromium driven by Playwright (its own browser download does
not work offline), and a real ``mlflow ui --app-name cascade`` on a store. A test using them is skipped when
Chromium or Playwright is missing, except under CI=true (there they must run: `.ci/run` installs Chromium)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    """The Chromium binary ($CHROMIUM, else `chromium` on PATH); skips (fails under CI=true) without it."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if not path:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but Chromium or Playwright is missing (apt-get install chromium; the dev extra)")
        pytest.skip("needs Chromium (apt-get install chromium) and Playwright (the dev extra)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(uri: str, log: Path, timeout: float = 240):
    """``mlflow ui --app-name cascade`` on ``uri`` (loopback, a free port); yields its base URL."""
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(mlflow_bin), "ui", "--app-name", "cascade", "--backend-store-uri", uri,
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    urllib.request.urlopen(base + "/health", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"mlflow ui did not start: {log.read_text()[-2000:]}") from None
                    time.sleep(1)
            yield base
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


@contextlib.contextmanager
def fresh_browser(chromium: str, width: int = 1400, height: int = 900):
    """A Playwright page in a fresh (temporary) Chromium profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium, args=CHROMIUM_ARGS,
                                                   headless=True, viewport={"width": width, "height": height})
        try:
            yield ctx.new_page()
        finally:
            ctx.close()
