"""Single sign-on end to end: a real OpenID Connect provider (``oidc-provider-mock``, served by
werkzeug on a loopback port in a thread of the test process), the real dashboard served by
``streamlit run`` with ``[auth]`` in ``.streamlit/secrets.toml`` (its working directory is a
temporary folder, so nothing is written into the checkout), and headless Chromium.

Log in through the provider's authorization page, land on the worklist, find the OIDC reviewer
and its login in SQLite, log out through the provider's end-session page; a denied
authorization leaves the user on the login page with nothing written. Like test_app_browser.py,
fails (never skips) without Chromium: ``make browser``."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import oidc_provider_mock
import pytest
from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

from clinfuse.review.auth import add_reviewer
from clinfuse.review.settings import AppSettings
from clinfuse.review.store import ReviewStore
from tests.app.browser_support import (
    CHROMIUM_FLAGS,
    STARTUP_S,
    chromium,
    free_port,
    serve_app,
    settled,
)

EMAIL = "reviewer@example.org"
NAME = "Dr Reviewer"


def _put_user(provider: str, sub: str, claims: dict[str, object]) -> None:
    """Set the claims of a subject typed on the authorization page (default: only its e-mail)."""
    request = urllib.request.Request(
        f"{provider}/users/{sub}",
        data=json.dumps(claims).encode(),
        headers={"Content-Type": "application/json"},
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 204


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The provider's address (``http://127.0.0.1:PORT``); it knows ``EMAIL`` with a name."""
    server = make_server("127.0.0.1", 0, oidc_provider_mock.app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        _put_user(url, EMAIL, {"email": EMAIL, "name": NAME})
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def sso_app(provider, review_run, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The dashboard with ``[auth]`` pointing at ``provider``: its browser address
    (``http://localhost:PORT``, the host of ``redirect_uri``) and review database."""
    home = tmp_path_factory.mktemp("sso")
    db = home / "reviews.sqlite"
    add_reviewer(ReviewStore(db), "alice", "correct horse")
    port = free_port()
    (home / ".streamlit").mkdir()
    (home / ".streamlit" / "secrets.toml").write_text(
        "[auth]\n"
        f'redirect_uri = "http://localhost:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "clinfuse-review"\n'
        f'client_secret = "{secrets.token_hex(16)}"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n'
    )
    settings = AppSettings(run=Path(review_run["run"]), db=db)
    with serve_app(settings, home / "streamlit.log", port=port, cwd=home):
        yield {"url": f"http://localhost:{port}", "db": str(db), "log": str(home / "streamlit.log")}


@pytest.fixture
def page(sso_app):
    """A page in a fresh Chromium (no cookies from another test)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(STARTUP_S * 1000)
            yield page
        finally:
            browser.close()


def _rows(db: str, sql: str, *params: object) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _events(db: str, actor: str) -> list[tuple[str, dict]]:
    rows = _rows(db, "SELECT actor, action, detail FROM audit_log ORDER BY event_id")
    return [(action, json.loads(detail)) for who, action, detail in rows if who == actor]


def _on_login_page(page) -> None:
    expect(page.get_by_role("heading", name="clinfuse review: log in")).to_be_visible()
    settled(page)
    expect(page.get_by_role("button", name="Log in with single sign-on")).to_be_visible()


def test_single_sign_on_login_and_logout(sso_app, provider, page, tmp_path):
    page.goto(sso_app["url"])
    _on_login_page(page)
    page.get_by_role("button", name="Log in with single sign-on").click()

    # the provider's authorization page: type the subject and authorize
    expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()
    assert page.url.startswith(f"{provider}/oauth2/authorize?"), page.url
    assert "client_id=clinfuse-review" in page.url
    page.locator("input[name=sub]").fill(EMAIL)
    page.get_by_role("button", name="Authorize").click()

    # back in the dashboard, logged in as the e-mail
    expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
    settled(page)
    assert page.url.startswith(sso_app["url"]), page.url
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text(f"Reviewer: {EMAIL}")).to_be_visible()
    expect(page.locator('[data-testid="stDataFrame"]')).to_be_attached()
    page.screenshot(path=str(tmp_path / "sso_worklist.png"), full_page=True)

    db = sso_app["db"]
    assert _rows(
        db, "SELECT username, display_name, auth, password_hash FROM reviewers ORDER BY username"
    ) == [
        ("alice", "alice", "password", ANY),
        (EMAIL, NAME, "oidc", None),
    ]
    assert _events(db, EMAIL) == [
        ("reviewer_added", {"auth": "oidc"}),
        ("login", {"method": "oidc"}),
    ]

    # the identity cookie logs a new session in too, without a second account
    page.reload()
    expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
    settled(page)
    assert _rows(db, "SELECT count(*) FROM reviewers WHERE username = ?", EMAIL) == [(1,)]

    # log out: the provider's end-session page, then the dashboard's login page
    sidebar.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="End Session")).to_be_visible()
    assert page.url.startswith(f"{provider}/oauth2/end_session?"), page.url
    page.get_by_role("button", name="End session").click()
    _on_login_page(page)
    assert page.url.startswith(sso_app["url"]), page.url
    assert [a for a, _ in _events(db, EMAIL)] == ["reviewer_added", "login", "login", "logout"]
    assert not [c for c in page.context.cookies() if c["name"].startswith("_streamlit_user")]

    # the cookie is gone: a new session is not logged in
    page.reload()
    _on_login_page(page)
    expect(page.get_by_role("heading", name="Worklist")).to_have_count(0)
    assert [a for a, _ in _events(db, EMAIL)][-1] == "logout"


def test_denied_single_sign_on_stays_logged_out(sso_app, provider, page):
    db = sso_app["db"]
    before = _rows(db, "SELECT event_id, actor, action FROM audit_log ORDER BY event_id")
    reviewers = _rows(db, "SELECT username, auth FROM reviewers ORDER BY username")
    page.goto(sso_app["url"])
    _on_login_page(page)
    page.get_by_role("button", name="Log in with single sign-on").click()
    expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()
    page.get_by_role("button", name="Deny").click()

    _on_login_page(page)
    assert page.url.startswith(sso_app["url"]), page.url
    expect(page.get_by_role("heading", name="Worklist")).to_have_count(0)
    assert not [c for c in page.context.cookies() if c["name"].startswith("_streamlit_user")]
    assert _rows(db, "SELECT username, auth FROM reviewers ORDER BY username") == reviewers
    assert _rows(db, "SELECT event_id, actor, action FROM audit_log ORDER BY event_id") == before
    assert "access_denied" in Path(sso_app["log"]).read_text()


def _sign_in_as(page, url: str, sub: str) -> None:
    """Open the app, choose single sign-on and authorize ``sub`` at the provider."""
    page.goto(url)
    _on_login_page(page)
    page.get_by_role("button", name="Log in with single sign-on").click()
    expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()
    page.locator("input[name=sub]").fill(sub)
    page.get_by_role("button", name="Authorize").click()


def test_single_sign_on_never_logs_in_as_a_local_account(sso_app, provider, page):
    """An identity whose e-mail is the name of a password account is refused, with the reason
    on the login page; the local account is not touched and nobody is logged in."""
    db = sso_app["db"]
    clash = "clash@example.org"
    add_reviewer(ReviewStore(db), clash, "its own password")
    _sign_in_as(page, sso_app["url"], clash)

    expect(page.get_by_text("Single sign-on refused")).to_be_visible()
    expect(page.get_by_text("is a local account")).to_be_visible()
    expect(page.get_by_role("heading", name="Worklist")).to_have_count(0)
    assert _rows(db, "SELECT auth FROM reviewers WHERE username = ?", clash) == [("password",)]
    assert "login" not in [a for a, _ in _events(db, clash)]


@pytest.mark.parametrize(
    ("sub", "claims", "reason"),
    [
        ("no-mail", {"name": "No Mail"}, "sent no e-mail address"),
        ("unverified", {"email": "u@example.org", "email_verified": False}, "not verified"),
    ],
)
def test_single_sign_on_without_a_usable_email_is_refused(
    sso_app, provider, page, sub, claims, reason
):
    """An identity with no e-mail claim, or one the provider marks unverified, is refused with
    the reason on the login page; no account is created."""
    db = sso_app["db"]
    reviewers = _rows(db, "SELECT username FROM reviewers ORDER BY username")
    _put_user(provider, sub, claims)
    _sign_in_as(page, sso_app["url"], sub)

    expect(page.get_by_text("Single sign-on refused")).to_be_visible()
    expect(page.get_by_text(reason)).to_be_visible()
    expect(page.get_by_role("heading", name="Worklist")).to_have_count(0)
    assert _rows(db, "SELECT username FROM reviewers ORDER BY username") == reviewers
