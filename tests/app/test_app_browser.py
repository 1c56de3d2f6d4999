"""End to end in a real headless Chromium (Debian ``chromium`` driven by Playwright):
start ``streamlit run`` on a tiny run, log in, open a case, submit a review, find it in
SQLite, and keep a screenshot. Fails (never skips) without Chromium or Playwright:
``make browser`` installs Chromium."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from clinfuse.review.cli import app_script, streamlit_command
from clinfuse.review.settings import AppSettings
from clinfuse.review.store import ReviewStore

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


def _chromium() -> str:
    path = os.environ.get("CLINFUSE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(path).exists(), (
        f"Chromium not found at {path}: install it with `make browser` "
        "(apt-get install -y chromium) or set CLINFUSE_CHROMIUM"
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
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


@pytest.fixture
def server(review_run, review_db, tmp_path):
    port = _free_port()
    settings = AppSettings(run=Path(review_run["run"]), db=review_db)
    log = tmp_path / "streamlit.log"
    env = {**os.environ, **settings.to_env(), "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            streamlit_command(app_script(), host="127.0.0.1", port=port),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _settled(page) -> None:
    """Wait until Streamlit has finished running the script."""
    page.wait_for_timeout(300)
    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(
        0, timeout=STARTUP_S * 1000
    )
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)


def test_review_in_a_real_browser(server, review_db, password, tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(STARTUP_S * 1000)
            page.goto(server)
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password", exact=True).fill(password)
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
            _settled(page)
            expect(page.locator('[data-testid="stDataFrame"]')).to_be_attached()
            page.get_by_role("button", name="Open this case").click()
            expect(page.get_by_role("heading", name="Case review")).to_be_visible()
            _settled(page)
            match = re.search(r"[?&]case=([^&]+)", page.url)
            assert match, page.url
            case_id = match.group(1)
            expect(page.get_by_text("fused risk (calibrated)")).to_be_visible()
            page.get_by_test_id("stRadio").get_by_text("disagree", exact=True).click()
            page.get_by_label("Comment").fill("checked in Chromium; '); DROP TABLE reviews;--")
            page.get_by_role("button", name="Save decision").click()
            expect(page.get_by_text(re.compile(r"Saved review #1 \(disagree\)"))).to_be_visible()
            _settled(page)
            page.screenshot(path=str(tmp_path / "case_review.png"), full_page=True)
        finally:
            browser.close()
    rows = ReviewStore(review_db).reviews()
    assert [(r.case_id, r.reviewer, r.decision) for r in rows] == [(case_id, "alice", "disagree")]
    assert rows[0].comment.endswith("DROP TABLE reviews;--")
    shot = tmp_path / "case_review.png"
    assert shot.exists() and shot.stat().st_size > 10_000
