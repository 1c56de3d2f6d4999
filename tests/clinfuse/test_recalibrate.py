"""`clinfuse recalibrate`: the updates against scikit-learn and closed-form references, the
closed testing procedure, and a recalibrated run end to end on the tiny run (new folder,
source untouched, every consumer reading it, bad input)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import chi2
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from clinfuse.calibration import (
    Intercept,
    Updated,
    build_calibrator,
    calibrator_from_dict,
    fit_update,
)
from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.recalibrate import _update_output, closed_test, recalibrate_run


def _sample(a: float, b: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z of a model and outcomes drawn from logit P = a + b·z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.5, 1.3, n)
    y = (rng.random(n) < expit(a + b * z)).astype(float)
    return z, y


# -- the updates ---------------------------------------------------------------------
def test_intercept_update_solves_the_score_equation():
    z, y = _sample(0.8, 1.0, 500, 0)
    a = Intercept().fit(z, y).intercept_
    ref = brentq(lambda t: expit(z + t).sum() - y.sum(), -10, 10, xtol=1e-14)
    assert a == pytest.approx(ref, abs=1e-9)
    assert a == pytest.approx(0.8, abs=0.25)
    assert Intercept().fit(z, y).predict_proba(z).sum() == pytest.approx(y.sum(), rel=1e-9)


def test_logistic_update_matches_scikit_learn():
    z, y = _sample(0.3, 0.6, 800, 1)
    update = fit_update("logistic", z, y)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(z[:, None], y)
    assert update.to_dict()["method"] == "platt"
    assert update.slope_ == pytest.approx(ref.coef_[0, 0], abs=1e-6)
    assert update.intercept_ == pytest.approx(ref.intercept_[0], abs=1e-6)
    np.testing.assert_allclose(
        update.predict_proba(z), ref.predict_proba(z[:, None])[:, 1], atol=1e-7
    )


def test_isotonic_update_is_monotone_and_matches_scikit_learn():
    from sklearn.isotonic import IsotonicRegression

    z, y = _sample(0.0, 0.5, 600, 2)
    update = fit_update("isotonic", z, y)
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(z, y)
    grid = np.linspace(-5, 5, 101)
    np.testing.assert_allclose(update.predict_proba(grid), ref.predict(grid), atol=1e-12)
    assert np.all(np.diff(update.predict_proba(grid)) >= 0)


def test_unknown_update_and_one_class_are_clear_errors():
    z, y = _sample(0.0, 1.0, 50, 3)
    with pytest.raises(ConfigError, match="unknown recalibration method 'spline'"):
        fit_update("spline", z, y)
    with pytest.raises(ConfigError, match="both outcomes"):
        fit_update("intercept", z, np.ones_like(z))


def test_closed_test_deviances_and_p_values_match_references():
    z, y = _sample(0.4, 0.7, 1500, 4)
    res = closed_test(z, y, alpha=0.05)
    n = len(y)
    dev = res["deviance"]
    assert dev["none"] == pytest.approx(2 * n * log_loss(y, expit(z)), rel=1e-10)
    ref_ab = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(z[:, None], y)
    assert dev["logistic"] == pytest.approx(
        2 * n * log_loss(y, ref_ab.predict_proba(z[:, None])[:, 1]), rel=1e-8
    )
    a = brentq(lambda t: expit(z + t).sum() - y.sum(), -10, 10, xtol=1e-14)
    assert dev["intercept"] == pytest.approx(2 * n * log_loss(y, expit(z + a)), rel=1e-10)
    first, second = res["tests"]
    assert first["compare"] == "logistic vs none" and first["df"] == 2
    assert first["p_value"] == pytest.approx(chi2.sf(dev["none"] - dev["logistic"], 2), rel=1e-9)
    assert second["compare"] == "logistic vs intercept" and second["df"] == 1
    assert second["p_value"] == pytest.approx(
        chi2.sf(dev["intercept"] - dev["logistic"], 1), rel=1e-9
    )
    assert res["selected"] == "logistic"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(0.0, 1.0, "none"), (0.9, 1.0, "intercept"), (0.2, 0.45, "logistic")],
)
def test_closed_test_picks_the_update_the_data_were_drawn_from(a, b, expected):
    z, y = _sample(a, b, 3000, 5)
    assert closed_test(z, y)["selected"] == expected


# -- the stored calibrator -----------------------------------------------------------
def test_updated_calibrators_nest_and_round_trip_through_json():
    z, y = _sample(0.5, 0.8, 400, 6)
    base = build_calibrator("platt").fit(z, y)
    once = Updated(base, fit_update("intercept", logit(base.predict_proba(z)), 1 - y))
    twice = Updated(once, fit_update("logistic", logit(once.predict_proba(z)), y))
    again = calibrator_from_dict(json.loads(json.dumps(twice.to_dict())))
    np.testing.assert_allclose(again.predict_proba(z), twice.predict_proba(z), rtol=0, atol=0)
    # the composition, written out by hand
    q1 = expit(logit(base.predict_proba(z)) + once.update.intercept_)
    u = twice.update
    np.testing.assert_allclose(
        twice.predict_proba(z), expit(u.intercept_ + u.slope_ * logit(q1)), atol=1e-12
    )
    with pytest.raises(TypeError, match="assembled from fitted parts"):
        twice.fit(z, y)


def test_unknown_calibrator_in_model_json_names_the_fix():
    with pytest.raises(ConfigError, match="unknown calibrator 'beta'") as e:
        calibrator_from_dict({"method": "beta"})
    assert "upgrade clinfuse" in e.value.hint


def test_a_reversed_ranking_is_refused_for_the_fused_risk_and_dropped_to_intercept_for_a_modality():
    z, y = _sample(0.6, -0.8, 500, 7)
    q = expit(z)
    with pytest.raises(CohortError, match="does not rank this cohort's cases"):
        _update_output("fusion", Intercept(), q, y, method="logistic", alpha=0.05)
    base = Intercept.from_dict({"intercept": 0.0})
    updated, entry = _update_output("image", base, q, y, method="auto", alpha=0.05)
    assert entry["closed_test"]["selected"] == "logistic"  # the data do ask for a slope …
    assert entry["method"] == "intercept"  # … but a non-positive one cannot be used
    assert "does not rank this site's cases" in entry["warning"]
    assert updated.predict_proba(logit(q)).sum() == pytest.approx(y.sum(), rel=1e-9)


# -- a recalibrated run end to end ---------------------------------------------------
def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def site_cohort(tiny_cohort, tmp_path_factory) -> Path:
    """The tiny cohort as a 'new site' with three times the event rate: each event case
    appears three times (new case and patient ids, same files)."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(Path(tiny_cohort).parent, root / "cohort")
    manifest = root / "cohort" / Path(tiny_cohort).name
    frame = pd.read_csv(manifest, dtype=str)
    frame = frame.drop(columns=["split"], errors="ignore")
    events = frame[frame["label"] == "1"]
    copies = [
        events.assign(
            case_id=events["case_id"] + f"-r{k}", patient_id=events["patient_id"] + f"-r{k}"
        )
        for k in (1, 2)
    ]
    pd.concat([frame, *copies], ignore_index=True).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def recalibrated(tiny_run, site_cohort, tmp_path_factory):
    source = tmp_path_factory.mktemp("source") / "run"
    shutil.copytree(tiny_run, source)
    (source / "explanations").mkdir()  # what explain caches in a run: the source's risks
    (source / "explanations" / "summary.json").write_text("{}")
    before = _digest(source)
    out = tmp_path_factory.mktemp("recal") / "site_run"
    result = recalibrate_run(source, site_cohort, out, method="intercept")
    return result, before, source


def test_intercept_update_gives_the_site_its_event_rate(recalibrated, tiny_run, site_cohort):
    from clinfuse.model import load_run

    result, _, _ = recalibrated
    source = load_run(tiny_run).predict(site_cohort)
    new = load_run(result.out).predict(site_cohort)
    y = source["label"].to_numpy(float)
    # reference: the intercept solving Σ σ(logit p + a) = Σ y, on the source run's risks
    z = logit(np.clip(source["p_fusion"].to_numpy(float), 1e-6, 1 - 1e-6))
    a = brentq(lambda t: expit(z + t).sum() - y.sum(), -20, 20, xtol=1e-14)
    entry = result.report["outputs"]["fusion"]
    assert entry["method"] == "intercept"
    assert entry["coefficients"]["intercept"]["value"] == pytest.approx(a, abs=1e-8)
    assert a > 0.5  # three times the events: the source run's risks are too low here
    assert entry["before"]["oe_ratio"]["value"] > 1.3
    assert new["p_fusion"].sum() == pytest.approx(y.sum(), rel=1e-8)
    assert entry["after"]["intercept"]["value"] == pytest.approx(0.0, abs=1e-8)
    # ranking unchanged: identical AUROC
    assert roc_auc_score(y, new["p_fusion"]) == roc_auc_score(y, source["p_fusion"])
    # each modality's risk, on the cases that have it
    for m in load_run(tiny_run).modalities:
        has = new[f"present_{m}"].to_numpy(bool)
        if result.report["outputs"][m]["method"] == "intercept":
            assert new.loc[has, f"p_{m}"].sum() == pytest.approx(y[has].sum(), rel=1e-8), m


def test_source_run_is_untouched_and_the_new_run_is_complete(recalibrated):
    result, before, source = recalibrated
    assert _digest(source) == before
    out = result.out
    assert not (out / "explanations").exists()  # stale: it shows the source's risks
    assert not list(out.parent.glob(".*tmp-*"))
    info = json.loads((out / "run.json").read_text())
    assert info["complete"] and info["recalibrated_from"] == str(source.resolve())
    stored = json.loads((out / "recalibration.json").read_text())
    assert stored["schema"] == "clinfuse.recalibration.v1"
    assert stored["n_cases"] == result.report["n_cases"]
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["calibrators"]["fusion"]["method"] == "updated"
    assert meta["calibrators"]["fusion"]["update"]["method"] == "intercept"
    # predictions.csv now holds the updated model's risks for the development cases
    cal = calibrator_from_dict(meta["calibrators"]["fusion"])
    preds = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(
        preds["p_fusion"], cal.predict_proba(preds["logit_fusion"].to_numpy(float)), atol=1e-12
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("fusion", *meta["modalities"]):
        for metric in ("auroc", "auprc", "brier"):
            assert {"value", "ci_low", "ci_high"} <= set(metrics["models"][name][metric])
    old = json.loads((source / "metrics.json").read_text())
    assert (
        metrics["models"]["fusion"]["auroc"]["value"] == old["models"]["fusion"]["auroc"]["value"]
    )
    assert metrics["recalibration"]["method"]["fusion"] == "intercept"


def test_recalibrating_again_nests_and_finds_nothing_left_to_fix(
    recalibrated, site_cohort, tmp_path
):
    result, _, _ = recalibrated
    again = recalibrate_run(result.out, site_cohort, tmp_path / "again", method="intercept")
    assert again.report["outputs"]["fusion"]["coefficients"]["intercept"]["value"] == pytest.approx(
        0.0, abs=1e-6
    )
    meta = json.loads((tmp_path / "again" / "model" / "model.json").read_text())
    assert meta["calibrators"]["fusion"]["base"]["method"] == "updated"
    auto = recalibrate_run(result.out, site_cohort, tmp_path / "auto")
    assert auto.method() == "none"  # calibrated in the large already; no evidence for a slope
    meta = json.loads((tmp_path / "auto" / "model" / "model.json").read_text())
    assert meta["calibrators"]["fusion"]["base"]["method"] != "updated"  # kept as it was
    # the band's cases stay those of the (still outermost) first update
    assert (tmp_path / "auto" / "recalibration_cases.csv").read_bytes() == (
        result.out / "recalibration_cases.csv"
    ).read_bytes()


def test_review_app_band_comes_from_the_site_update(recalibrated):
    from clinfuse.review.runview import open_run_view

    result, _, _ = recalibrated
    view = open_run_view(result.out, n_boot=100)
    f = view.predictions
    assert (f["risk_low"] <= f["p_fusion"] + 1e-12).all() and (
        f["p_fusion"] <= f["risk_high"] + 1e-12
    ).all()
    assert f["uncertainty"].median() > 0
    assert view.recalibration.startswith(
        "Recalibrated for a site: fused risk intercept update, fitted on "
        f"{result.report['n_cases']} cases"
    )
    seen = pd.read_csv(result.out / "recalibration_cases.csv")
    assert len(seen) == result.report["n_cases"] and set(seen["label"]) == {0, 1}


def test_evaluate_names_the_update_in_the_model_card(recalibrated, site_cohort, tmp_path):
    from clinfuse.evaluation.evaluate import evaluate_run

    result, _, _ = recalibrated
    res = evaluate_run(result.out, site_cohort, tmp_path / "ev", n_boot=20, min_group_size=5)
    assert res.metrics["model_card"]["model"]["recalibrated"]["fusion"] == "intercept"
    assert res.metrics["calibration"]["fusion"]["intercept"]["value"] == pytest.approx(0, abs=1e-6)
    assert "site update" in res.report.read_text()
    digest = hashlib.sha256((result.out / "model" / "model.json").read_bytes()).hexdigest()
    assert res.metrics["run"]["model_sha256"] == digest


def test_the_app_does_not_take_the_source_runs_evaluation_for_the_recalibrated_one(recalibrated):
    from clinfuse.review.runview import open_run_view

    result, _, source = recalibrated
    sibling = result.out.parent / "evaluation"
    sibling.mkdir(exist_ok=True)
    source_digest = hashlib.sha256((source / "model" / "model.json").read_bytes()).hexdigest()
    (sibling / "metrics.json").write_text(json.dumps({"run": {"model_sha256": source_digest}}))
    assert open_run_view(result.out, n_boot=10).evaluation is None
    own = hashlib.sha256((result.out / "model" / "model.json").read_bytes()).hexdigest()
    (sibling / "metrics.json").write_text(json.dumps({"run": {"model_sha256": own}}))
    assert open_run_view(result.out, n_boot=10).evaluation == sibling
    shutil.rmtree(sibling)


# -- bad input -----------------------------------------------------------------------
def test_bad_input_is_named_and_leaves_nothing_behind(tiny_run, site_cohort, tmp_path, monkeypatch):
    import clinfuse.evaluation.recalibrate as mod

    with pytest.raises(ConfigError, match="unknown recalibration method 'beta'"):
        recalibrate_run(tiny_run, site_cohort, tmp_path / "a", method="beta")
    with pytest.raises(ConfigError, match=r"alpha is 1\.5"):
        recalibrate_run(tiny_run, site_cohort, tmp_path / "a", alpha=1.5)
    with pytest.raises(ConfigError, match="--out is the source run"):
        recalibrate_run(tiny_run, site_cohort, tiny_run)
    with pytest.raises(ConfigError, match="not a finished run folder"):
        recalibrate_run(tmp_path, site_cohort, tmp_path / "a")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        recalibrate_run(tiny_run, site_cohort, busy)
    assert (busy / "keep.txt").read_text() == "x"

    frame = pd.read_csv(site_cohort, dtype=str)
    one_class = site_cohort.with_name("one_class.csv")
    frame[frame["label"] == "0"].to_csv(one_class, index=False)
    with pytest.raises(CohortError, match="recalibration needs events and non-events"):
        recalibrate_run(tiny_run, one_class, tmp_path / "a")
    unlabelled = site_cohort.with_name("unlabelled.csv")
    frame.drop(columns=["label"]).to_csv(unlabelled, index=False)
    with pytest.raises(CohortError, match="outcome column 'label' is missing"):
        recalibrate_run(tiny_run, unlabelled, tmp_path / "a")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "_rewrite_predictions", boom)
    with pytest.raises(OSError, match="disk full"):
        recalibrate_run(tiny_run, site_cohort, tmp_path / "a", method="intercept")
    assert not (tmp_path / "a").exists()
    assert not list(tmp_path.glob(".a.tmp-*"))


def test_cli_prints_the_table_and_exit_codes(tiny_run, site_cohort, tmp_path, capsys):
    from clinfuse.cli import main

    out = tmp_path / "cli_run"
    assert (
        main(
            [
                "recalibrate",
                str(tiny_run),
                str(site_cohort),
                "--out",
                str(out),
                "--method",
                "intercept",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "recalibrated on" in text and "intercept" in text and "fusion" in text
    assert (out / "recalibration.json").exists()
    assert (
        main(
            [
                "recalibrate",
                str(tiny_run),
                str(site_cohort),
                "--out",
                str(tmp_path / "b"),
                "--method",
                "spline",
            ]
        )
        == 1
    )
    assert "unknown recalibration method" in capsys.readouterr().err
    assert main(["recalibrate", "--help"]) == 0
    assert "clinfuse recalibrate" in capsys.readouterr().out
