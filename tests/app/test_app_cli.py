"""``clinfuse app``: the Typer command adds reviewers, checks the run, builds the streamlit call."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from clinfuse.errors import ConfigError
from clinfuse.review import cli as review_cli
from clinfuse.review.auth import authenticate
from clinfuse.review.store import ReviewStore, default_db_path


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command(name="app", epilog=review_cli.APP_EPILOG)(review_cli.app)

    @app.command()
    def _other() -> None:  # a second command keeps `app` a named subcommand
        pass

    return app


def test_add_reviewer_then_login(review_run, tmp_path, monkeypatch):
    db = tmp_path / "r.sqlite"
    monkeypatch.setenv("CLINFUSE_REVIEWER_PASSWORD", "a long password")
    result = CliRunner().invoke(
        _cli(), ["app", review_run["run"], "--db", str(db), "--add-reviewer", "carol"]
    )
    assert result.exit_code == 0, result.output
    assert "added reviewer 'carol'" in result.output
    assert authenticate(ReviewStore(db), "carol", "a long password") == "carol"
    again = CliRunner().invoke(
        _cli(), ["app", review_run["run"], "--db", str(db), "--add-reviewer", "carol"]
    )
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_bad_run_is_refused_before_starting_streamlit(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(review_cli.subprocess, "call", lambda *a, **k: started.append(a) or 0)
    result = CliRunner().invoke(_cli(), ["app", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "does not exist" in str(result.exception)
    assert not started


def test_streamlit_is_started_headless_on_the_app(review_run, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        review_cli.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0
    )
    result = CliRunner().invoke(
        _cli(), ["app", review_run["run"], "--port", "8642", "--threshold", "0.3"]
    )
    assert result.exit_code == 0, result.output
    ((cmd, env),) = calls
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(cmd[4]) == review_cli.app_script() and Path(cmd[4]).name == "streamlit_app.py"
    assert cmd[cmd.index("--server.port") + 1] == "8642"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert env["CLINFUSE_APP_RUN"] == str(Path(review_run["run"]).resolve())
    assert env["CLINFUSE_APP_DB"] == str(default_db_path(Path(review_run["run"]).resolve()))
    assert float(env["CLINFUSE_APP_THRESHOLD"]) == 0.3
    assert "no reviewer account yet" in result.output


def test_deactivate_list_and_reactivate_reviewers(review_run, tmp_path, monkeypatch):
    """A coordinator stops an account (it can no longer log in or save decisions; its past
    decisions stay), lists the accounts, and lets it back in — each step audited."""
    db = tmp_path / "r.sqlite"
    monkeypatch.setenv("CLINFUSE_REVIEWER_PASSWORD", "a long password")
    base = ["app", review_run["run"], "--db", str(db)]
    assert CliRunner().invoke(_cli(), [*base, "--add-reviewer", "dave"]).exit_code == 0
    store = ReviewStore(db)

    def save(case_id: str) -> None:
        store.add_review(
            case_id=case_id,
            reviewer="dave",
            decision="agree",
            risk_shown=0.4,
            threshold=0.5,
            model_version="m1",
        )

    save("case0001")
    out = CliRunner().invoke(_cli(), [*base, "--deactivate-reviewer", "dave", "--list-reviewers"])
    assert out.exit_code == 0, out.output
    assert "deactivated 'dave'" in out.output
    assert re.search(r"dave\s+password\s+deactivated", out.output)
    assert authenticate(store, "dave", "a long password") is None
    with pytest.raises(ConfigError, match="deactivated"):
        save("case0002")
    assert len(store.reviews(reviewer="dave")) == 1  # the past decision stays
    back = CliRunner().invoke(_cli(), [*base, "--reactivate-reviewer", "dave"])
    assert back.exit_code == 0 and authenticate(store, "dave", "a long password") == "dave"
    events = [e["action"] for e in reversed(store.audit_log())]  # oldest first
    assert events.index("reviewer_deactivated") < events.index("reviewer_reactivated")
    unknown = CliRunner().invoke(_cli(), [*base, "--deactivate-reviewer", "nobody"])
    assert unknown.exit_code != 0 and "no reviewer account named 'nobody'" in str(unknown.exception)
