"""A run as the app sees it: folder checks, case-id lookup, uncertainty band, worklist."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from clinfuse.calibration import build_calibrator
from clinfuse.errors import ConfigError
from clinfuse.review.runview import (
    UnknownCaseError,
    _logistic_refits,
    calibration_band,
    open_run_view,
    run_fingerprint,
)
from clinfuse.review.worklist import filter_worklist, sort_worklist


def test_missing_and_incomplete_run_folders_say_what_is_wrong(tmp_path, review_run):
    with pytest.raises(ConfigError, match="does not exist"):
        open_run_view(tmp_path / "nope")
    (tmp_path / "unfinished.partial").mkdir()
    with pytest.raises(ConfigError, match="training did not finish"):
        open_run_view(tmp_path / "unfinished")
    broken = tmp_path / "broken"
    shutil.copytree(review_run["run"], broken)
    (broken / "predictions.csv").unlink()
    (broken / "model" / "model.json").unlink()
    with pytest.raises(ConfigError, match=r"incomplete: missing model/model.json, predictions.csv"):
        open_run_view(broken)


def test_case_ids_are_looked_up_by_exact_match_only(review_run):
    view = open_run_view(review_run["run"])
    cid = review_run["explained_case"]
    assert view.resolve_case(cid) == cid
    for bad in ("../../etc/passwd", "/etc/passwd", cid + "/..", " " + cid, cid.upper(), None, 3):
        with pytest.raises(UnknownCaseError, match="no case"):
            view.resolve_case(bad)
        with pytest.raises(UnknownCaseError):
            view.case_view(bad)


def test_cached_explanation_must_name_the_same_case(review_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(review_run["run"], run)
    view = open_run_view(run, cohort=review_run["manifest"])
    cid = review_run["explained_case"]
    cv = view.case_view(cid)
    assert cv.explanation is not None and cv.explanation["case_id"] == cid
    ms = cv.modality_shapley
    assert ms["base_value"] + sum(ms["phi"].values()) == pytest.approx(ms["logit_fusion"], abs=1e-5)
    assert ms["logit_fusion"] == pytest.approx(cv.prediction["logit_fusion"], abs=1e-4)
    # a cache folder whose JSON names another id is not shown for this case
    import json

    path = run / "explanations" / "cases" / cid / "explanation.json"
    data = json.loads(path.read_text())
    data["case_id"] = cid + "_other"
    path.write_text(json.dumps(data))
    assert view.case_view(cid).explanation is None


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_vectorised_refits_equal_the_runs_calibrators(method):
    rng = np.random.default_rng(1)
    z = rng.normal(size=60)
    y = (rng.random(60) < 1 / (1 + np.exp(-(1.3 * z - 0.4)))).astype(float)
    grid = np.linspace(-3, 3, 9)
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=3).astype(float)
    got = _logistic_refits(z, y, counts, grid, intercept=method == "platt")
    for b, w in enumerate(counts):
        idx = np.repeat(np.arange(60), w.astype(int))
        ref = build_calibrator(method).fit(z[idx], y[idx]).predict_proba(grid)
        np.testing.assert_allclose(got[b], ref, atol=2e-4)


def test_band_contains_the_calibrated_point_and_narrows_with_more_data():
    rng = np.random.default_rng(0)

    def width(n: int) -> float:
        z = rng.normal(size=n)
        y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
        low, high = calibration_band(z, y, np.array([0.5]), method="platt", n_boot=200)
        p = build_calibrator("platt").fit(z, y).predict_proba(np.array([0.5]))
        assert low[0] <= p[0] <= high[0]
        return float(high[0] - low[0])

    assert width(2000) < width(50) / 3
    low, high = calibration_band(np.zeros(3), np.array([0, 1, 0.0]), np.array([0.2]), method="none")
    assert low[0] == high[0]


def test_worklist_has_no_labels_and_filters_and_sorts(review_run):
    view = open_run_view(review_run["run"], threshold=0.45)
    status = {view.case_ids[0]: {"n_reviewers": 1, "decisions": {"alice": "agree"}}}
    table = view.worklist(status, reviewer="alice")
    assert "label" not in table.columns
    assert len(table) == 64 and set(view.modalities) <= set(table.columns)
    assert ((table["risk_low"] <= table["risk"]) & (table["risk"] <= table["risk_high"])).all()
    expected = np.where(
        table["risk_low"] >= 0.45,
        "above",
        np.where(table["risk_high"] < 0.45, "below", "straddles"),
    )
    assert (table["vs_threshold"] == expected).all()
    mine = filter_worklist(table, status="reviewed by me")
    assert list(mine["case_id"]) == [view.case_ids[0]]
    assert len(filter_worklist(table, status="not yet reviewed by me")) == 63
    no_image = filter_worklist(table, modalities=["image"])
    assert no_image["image"].all() and len(no_image) == int(table["image"].sum())
    site_a = filter_worklist(table, sites=["site_a"])
    assert set(site_a["site"]) == {"site_a"}
    by_risk = sort_worklist(table, "risk")
    assert by_risk["risk"].is_monotonic_decreasing
    by_unc = sort_worklist(table, "uncertainty")
    assert by_unc["uncertainty"].is_monotonic_decreasing
    with pytest.raises(ConfigError):
        filter_worklist(table, status="whatever")


def test_fingerprint_follows_the_weights(review_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(review_run["run"], run)
    fp = run_fingerprint(run)
    assert fp == run_fingerprint(review_run["run"]) and len(fp) == 16
    (run / "model" / "fusion.safetensors").write_bytes(b"changed")
    assert run_fingerprint(run) != fp


def test_missing_cohort_keeps_the_run_usable(review_run, tmp_path):
    view = open_run_view(review_run["run"], cohort=tmp_path / "gone" / "manifest.csv")
    cv = view.case_view(review_run["explained_case"])
    assert "not found" in cv.errors["manifest"]
    assert cv.explanation is not None  # predictions and cached explanations still show
    assert isinstance(view.worklist(), pd.DataFrame)


def test_explanation_is_computed_on_demand_and_cached(review_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(review_run["run"], run)
    view = open_run_view(run, cohort=review_run["manifest"])
    cid = next(c for c in view.case_ids if c != review_run["explained_case"])
    assert view.case_view(cid).explanation is None
    result = view.compute_explanation(cid, note_max_evals=8)
    cv = view.case_view(cid)
    assert cv.explanation is not None and cv.explanation["case_id"] == cid == result["case_id"]
    ms = cv.modality_shapley
    assert ms["base_value"] + sum(ms["phi"].values()) == pytest.approx(
        cv.prediction["logit_fusion"], abs=1e-4
    )
    present = [m for m, p in cv.present.items() if p and m != "tabular"]
    assert set(present) <= set(cv.explanation["within"])
    leftovers = [
        p.name for p in (run / "explanations" / "cases").iterdir() if p.name.startswith(".")
    ]
    assert leftovers == []


def test_opening_a_run_imports_neither_torch_nor_monai(review_run):
    """The worklist needs only light files: the config models live in ``clinfuse.config``,
    not in the heavy modules, so the app's first page does not wait for PyTorch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from clinfuse.review.runview import open_run_view\n"
        f"view = open_run_view({review_run['run']!r}, n_boot=5)\n"
        "assert len(view.worklist()) == 64\n"
        "print(sorted(m for m in ('torch', 'monai', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_first_use_of_the_model_from_several_threads_at_once(review_run):
    """MONAI's first import is not thread-safe (its subpackages import each other: two threads
    importing it together meet a partially initialised module). Streamlit can run a page
    twice at once, so every path of RunView that needs MONAI imports it under one lock."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from clinfuse.review.runview import open_run_view\n"
        f"view = open_run_view({review_run['run']!r}, n_boot=5)\n"
        f"cv = view.case_view({review_run['explained_case']!r})\n"
        "errors = []\n"
        "def use(what):\n"
        "    try:\n"
        "        view.signal_window(cv) if what == 'signal' else view.model()\n"
        "    except Exception as e:\n"
        "        errors.append(repr(e))\n"
        "threads = [threading.Thread(target=use, args=(w,)) for w in ('signal', 'model') * 2]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "print(errors)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
