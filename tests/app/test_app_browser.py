"""End to end in a real headless Chromium (Debian ``chromium`` driven by Playwright):
start ``streamlit run`` on a tiny run, log in, open a case, submit a review, find it in
SQLite, and keep a screenshot. Fails (never skips) without Chromium or Playwright:
``make browser`` installs Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from clinfuse.review.settings import AppSettings
from clinfuse.review.store import ReviewStore
from tests.app.browser_support import CHROMIUM_FLAGS, STARTUP_S, chromium, serve_app, settled


@pytest.fixture
def server(review_run, review_db, tmp_path):
    settings = AppSettings(run=Path(review_run["run"]), db=review_db)
    with serve_app(settings, tmp_path / "streamlit.log") as url:
        yield url


def test_review_in_a_real_browser(server, review_db, password, tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(STARTUP_S * 1000)
            page.goto(server)
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password", exact=True).fill(password)
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
            settled(page)
            expect(page.locator('[data-testid="stDataFrame"]')).to_be_attached()
            page.get_by_role("button", name="Open this case").click()
            expect(page.get_by_role("heading", name="Case review")).to_be_visible()
            settled(page)
            match = re.search(r"[?&]case=([^&]+)", page.url)
            assert match, page.url
            case_id = match.group(1)
            expect(page.get_by_text("fused risk (calibrated)")).to_be_visible()
            page.get_by_test_id("stRadio").get_by_text("disagree", exact=True).click()
            page.get_by_label("Comment").fill("checked in Chromium; '); DROP TABLE reviews;--")
            page.get_by_role("button", name="Save decision").click()
            expect(page.get_by_text(re.compile(r"Saved review #1 \(disagree\)"))).to_be_visible()
            settled(page)
            page.screenshot(path=str(tmp_path / "case_review.png"), full_page=True)
        finally:
            browser.close()
    rows = ReviewStore(review_db).reviews()
    assert [(r.case_id, r.reviewer, r.decision) for r in rows] == [(case_id, "alice", "disagree")]
    assert rows[0].comment.endswith("DROP TABLE reviews;--")
    shot = tmp_path / "case_review.png"
    assert shot.exists() and shot.stat().st_size > 10_000
