"""``clinfuse app``: the Typer command adds reviewers, checks the run, builds the streamlit call."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

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
