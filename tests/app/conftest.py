"""Fixtures of the review-app tests: one tiny trained, explained and evaluated run,
built once per test session (shared across pytest-xdist workers through a file lock)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[2] / "app"
ENTRY = APP_DIR / "streamlit_app.py"
PASSWORD = "correct horse"


def _build(root: Path) -> dict[str, str]:
    import pandas as pd

    from clinfuse.evaluation import evaluate_run
    from clinfuse.explain.report import explain_run
    from clinfuse.synth import synthesize_cohort
    from clinfuse.training import train_run
    from tests.conftest import tiny_config

    manifest = synthesize_cohort(
        root / "cohort", n_cases=64, seed=3, image_size=32, signal_fs=50, signal_seconds=4.0
    )
    run = train_run(manifest, root / "run", tiny_config())
    preds = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    complete = preds[preds.filter(like="present_").min(axis=1) == 1]
    case = str(complete["case_id"].iloc[0])
    explain_run(run, manifest, root / "explanations", case=case, note_max_evals=8, n_boot=20)
    evaluate_run(
        run,
        manifest,
        root / "evaluation",
        subgroups=["sex"],
        thresholds=[0.4],
        n_boot=20,
        min_group_size=5,
    )
    missing = preds[preds["present_image"] == 0]["case_id"].iloc[0]
    return {
        "root": str(root),
        "run": str(run),
        "manifest": str(manifest),
        "evaluation": str(root / "evaluation"),
        "explained_case": case,
        "no_image_case": str(missing),
    }


@pytest.fixture(scope="session")
def review_run(tmp_path_factory) -> dict[str, str]:
    """Paths of a tiny run with one case explained in depth and an evaluation folder."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _build(tmp_path_factory.mktemp("review"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "clinfuse_review_run"
    with FileLock(str(shared) + ".lock"):
        done = shared / "paths.json"
        if done.exists():
            return json.loads(done.read_text())
        if shared.exists():
            shutil.rmtree(shared)
        shared.mkdir()
        paths = _build(shared)
        done.write_text(json.dumps(paths))
        return paths


@pytest.fixture(scope="session")
def scored_cohort(review_run, tmp_path_factory) -> dict[str, str]:
    """A second tiny cohort (the same case ids, other patients) scored by the review run
    through ``clinfuse predict``: paths of its manifest and predictions table."""
    from typer.testing import CliRunner

    from clinfuse.cli import app
    from clinfuse.synth import synthesize_cohort

    root = tmp_path_factory.mktemp("scored")
    manifest = synthesize_cohort(
        root / "cohort", n_cases=24, seed=11, image_size=32, signal_fs=50, signal_seconds=4.0
    )
    table = root / "scored" / "new.csv"
    result = CliRunner().invoke(
        app, ["predict", review_run["run"], str(manifest), "--out", str(table), "--workers", "0"]
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    return {"manifest": str(manifest), "predictions": str(table)}


@pytest.fixture
def password() -> str:
    """The password of the test reviewers alice and bob."""
    return PASSWORD


@pytest.fixture
def review_db(tmp_path) -> Path:
    """A fresh review database with reviewers alice and bob."""
    from clinfuse.review.auth import add_reviewer
    from clinfuse.review.store import ReviewStore

    db = tmp_path / "reviews.sqlite"
    store = ReviewStore(db)
    add_reviewer(store, "alice", PASSWORD, display_name="Dr Alice")
    add_reviewer(store, "bob", PASSWORD)
    return db


@pytest.fixture
def app_env(review_run, review_db, monkeypatch) -> dict[str, str]:
    """Environment pointing the app at ``review_run`` and ``review_db``."""
    env = {"CLINFUSE_APP_RUN": review_run["run"], "CLINFUSE_APP_DB": str(review_db)}
    for key in (
        "CLINFUSE_APP_COHORT",
        "CLINFUSE_APP_EVALUATION",
        "CLINFUSE_APP_THRESHOLD",
        "CLINFUSE_APP_PREDICTIONS",
        "CLINFUSE_APP_EXPLANATIONS",
    ):
        monkeypatch.delenv(key, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
