"""Helpers of the headless-Chromium tests (test_app_browser.py, test_app_oidc.py): find
Debian's Chromium, serve the dashboard with ``streamlit run`` on a free loopback port, and
wait for Streamlit to settle. A missing Chromium fails (never skips): ``make browser``."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from clinfuse.review.cli import app_script, streamlit_command
from clinfuse.review.settings import AppSettings

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_S = 180
expect.set_options(timeout=STARTUP_S * 1000)  # a loaded 2-core CI box renders slowly


def chromium() -> str:
    """Chromium's executable (``CLINFUSE_CHROMIUM``, else ``chromium`` on the PATH)."""
    path = os.environ.get("CLINFUSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(path).exists(), (
        f"Chromium not found at {path}: install it with `make browser` "
        "(apt-get install -y chromium) or set CLINFUSE_CHROMIUM"
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not become healthy in {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve_app(
    settings: AppSettings, log: Path, *, port: int | None = None, cwd: Path | None = None
) -> Iterator[str]:
    """Serve the dashboard on 127.0.0.1 (``cwd``: where Streamlit looks for
    ``.streamlit/secrets.toml``) and yield its ``http://127.0.0.1:PORT`` address."""
    port = port or free_port()
    env = {**os.environ, **settings.to_env(), "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            streamlit_command(app_script(), host="127.0.0.1", port=port),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def settled(page) -> None:
    """Wait until Streamlit has finished running the script."""
    page.wait_for_timeout(300)
    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(
        0, timeout=STARTUP_S * 1000
    )
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
