"""`clinfuse evaluate` end to end on the tiny run: metrics.json contract, report in a real
headless Chromium (no missing images), bad input, atomic output, the CLI function."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.evaluate import evaluate_run

FAST = {"n_boot": 50, "min_group_size": 10, "min_group_events": 2}


@pytest.fixture(scope="module")
def evaluation(tiny_run, tiny_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report"
    return evaluate_run(
        tiny_run, tiny_cohort, out, subgroups=["sex", "age_band"], thresholds=[0.2, 0.4], **FAST
    )


@pytest.fixture
def cohort_copy(tiny_cohort, tmp_path):
    """A writable copy of the tiny cohort folder; returns its manifest path."""
    root = tmp_path / "cohort"
    shutil.copytree(Path(tiny_cohort).parent, root)
    return root / Path(tiny_cohort).name


def test_metrics_json_keeps_the_design_contract(evaluation, tiny_run):
    from clinfuse.model import load_run

    data = json.loads((evaluation.out / "metrics.json").read_text())
    mods = load_run(tiny_run).modalities
    assert data["n_cases"] == len(evaluation.predictions)
    assert data["n_events"] == int(evaluation.predictions["label"].sum())
    for name in ["fusion", *mods]:
        for metric in ("auroc", "auprc", "brier"):
            block = data["models"][name][metric]
            assert {"value", "ci_low", "ci_high"} <= set(block)
            assert block["ci_low"] <= block["value"] <= block["ci_high"]
    for key in (
        "calibration",
        "decision_curve",
        "thresholds",
        "subgroups",
        "ablation",
        "robustness",
        "participants",
        "model_card",
        "discrimination",
    ):
        assert key in data
    assert set(data["subgroups"]) == {"sex", "age_band", "site"}
    assert [r["threshold"] for r in data["thresholds"]["fusion"]] == [0.2, 0.4]
    # the fused AUROC is the one sklearn gives on the written predictions
    from sklearn.metrics import roc_auc_score

    pred = pd.read_csv(evaluation.out / "predictions.csv")
    assert data["models"]["fusion"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(pred["label"], pred["p_fusion"]), abs=1e-12
    )


def test_ablation_all_row_equals_the_fused_model_on_complete_cases(evaluation):
    m = evaluation.metrics
    pred = evaluation.predictions
    complete = pred[[c for c in pred if c.startswith("present_")]].all(axis=1)
    from sklearn.metrics import roc_auc_score

    all_row = next(r for r in m["ablation"]["rows"] if r["kind"] == "all")
    assert m["ablation"]["n_cases"] == int(complete.sum())
    assert all_row["auroc"]["value"] == pytest.approx(
        roc_auc_score(pred.loc[complete, "label"], pred.loc[complete, "p_fusion"]), abs=1e-6
    )
    kinds = [r["kind"] for r in m["ablation"]["rows"]]
    assert kinds.count("alone") == len(m["robustness"]["rows"]) == kinds.count("leave_one_out")


def test_outputs_and_figures_written_atomically(evaluation):
    out = evaluation.out
    for name in ("metrics.json", "report.html", "predictions.csv", "excluded.csv", "subgroups.csv"):
        assert (out / name).is_file()
    for name in ("roc", "calibration", "reliability", "decision_curve", "risk_distribution"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (out / "figures" / f"{name}.svg").read_bytes()[:500]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    html = (out / "report.html").read_text()
    for item in (
        "TRIPOD+AI 9, 20a",
        "TRIPOD+AI 14, 23a",
        "TRIPOD+AI 12d, 23b",
        "TRIPOD+AI 11, 27a",
    ):
        assert item in html
    assert 'src="http' not in html and "<script" not in html


def test_report_opens_in_headless_chromium_with_no_missing_images(evaluation):
    from playwright import sync_api

    from tests.app.browser_support import CHROMIUM_FLAGS, chromium

    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium(),
            args=["--headless", *CHROMIUM_FLAGS],
        )
        try:
            page = browser.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto((evaluation.out / "report.html").resolve().as_uri())
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
            assert page.locator("h2").count() >= 9
        finally:
            browser.close()
    assert len(widths) >= 6
    assert all(w > 0 for w in widths), widths
    assert errors == []


def test_cohort_without_labels_is_a_clear_error(cohort_copy, tiny_run, tmp_path):
    df = pd.read_csv(cohort_copy)
    df.drop(columns=["label"]).to_csv(cohort_copy, index=False)
    with pytest.raises(CohortError, match="outcome column 'label' is missing") as e:
        evaluate_run(tiny_run, cohort_copy, tmp_path / "out", **FAST)
    assert e.value.field == "label"
    assert not (tmp_path / "out").exists()


def test_cohort_not_matching_the_run(cohort_copy, tiny_run, tmp_path):
    pd.read_csv(cohort_copy).drop(columns=["signal"]).to_csv(cohort_copy, index=False)
    with pytest.raises(CohortError, match="signal"):
        evaluate_run(tiny_run, cohort_copy, tmp_path / "out", **FAST)


def test_unknown_subgroup_column(tiny_run, tiny_cohort, tmp_path):
    with pytest.raises(CohortError, match="subgroup column 'ethnicity'") as e:
        evaluate_run(tiny_run, tiny_cohort, tmp_path / "out", subgroups=["ethnicity"], **FAST)
    assert e.value.field == "ethnicity"


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.1", "0.1,abc"])
def test_thresholds_outside_unit_interval(tiny_run, tiny_cohort, tmp_path, bad):
    with pytest.raises(ConfigError) as e:
        evaluate_run(tiny_run, tiny_cohort, tmp_path / "out", thresholds=bad, **FAST)
    assert e.value.field == "thresholds"


def test_single_class_cohort_reports_calibration(cohort_copy, tiny_run, tmp_path):
    df = pd.read_csv(cohort_copy)
    df[df["label"] == 0].to_csv(cohort_copy, index=False)
    res = evaluate_run(tiny_run, cohort_copy, tmp_path / "out", **FAST)
    m = res.metrics
    assert m["n_events"] == 0
    assert m["models"]["fusion"]["auroc"]["value"] is None
    assert m["calibration"]["fusion"]["brier"] is not None
    assert m["calibration"]["fusion"]["oe_ratio"]["value"] == 0.0
    assert any("AUROC" in n and "undefined" in n for n in m["notes"])
    html = (res.out / "report.html").read_text()
    assert "undefined" in html and "Calibration" in html


def test_existing_output_needs_overwrite(evaluation, tiny_run, tiny_cohort):
    with pytest.raises(ConfigError, match="exists"):
        evaluate_run(tiny_run, tiny_cohort, evaluation.out, **FAST)


def test_cli_function_exit_codes(tiny_run, tiny_cohort, tmp_path):
    import typer
    from typer.testing import CliRunner

    from clinfuse.evaluation.cli import EVALUATE_EPILOG, evaluate

    app = typer.Typer()
    app.command(epilog=EVALUATE_EPILOG)(evaluate)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    out = tmp_path / "cli_out"
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(tiny_run),
            str(tiny_cohort),
            "--out",
            str(out),
            "--n-boot",
            "50",
            "--min-group-size",
            "10",
            "--subgroups",
            "sex",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "report:" in res.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["participants"]["split"] is None
    assert np.isclose(data["n_cases"], len(pd.read_csv(out / "predictions.csv")))
    help_text = runner.invoke(app, ["evaluate", "--help"]).output
    assert "--thresholds" in help_text and "Examples" in help_text


@pytest.mark.parametrize("strategy", ["late", "early", "intermediate"])
def test_ablation_scorer_equals_rerunning_the_model_with_modalities_missing(
    tiny_run, tiny_cohort, strategy
):
    """The scorer runs the encoders once and only the head per subset; the reference runs
    the whole model on cases whose masked modalities are marked missing."""
    import itertools

    import torch

    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader
    from clinfuse.evaluation.ablation import masked_fusion_probabilities
    from clinfuse.fusion import FusionConfig, build_fusion
    from clinfuse.model import load_run

    model = load_run(tiny_run)
    if strategy != "late":  # an untrained head of that kind is enough to compare the two paths
        torch.manual_seed(0)
        model.network.fusion = build_fusion(
            FusionConfig(strategy=strategy, hidden=16, n_heads=2, n_layers=1),
            model.modalities,
            dict(model.network.fusion.embed_dims),
        ).eval()
    cohort = Cohort.from_manifest(tiny_cohort, target=model.config.data.target)
    loader = CaseLoader(model.config.data, model.modalities, model.tabular)
    cases = loader.load_many(cohort.rows).cases
    scorer = masked_fusion_probabilities(model, cases)
    base = np.stack([c["present"] for c in cases])
    mods = model.modalities
    for r in range(1, len(mods) + 1):
        for keep in itertools.combinations(mods, r):
            present = base & np.array([m in keep for m in mods])[None, :]
            edited = [dict(c, present=present[i]) for i, c in enumerate(cases)]
            p = model.probabilities(model.forward_cases(edited))["fusion"]
            expected = np.where(present.any(axis=1), p, np.nan)
            np.testing.assert_allclose(scorer(list(keep)), expected, atol=1e-6, rtol=0)


def test_sample_size_needed_is_computed_from_the_evaluated_predictions(evaluation):
    """TRIPOD+AI 9: the report says how many cases Riley et al.'s criteria ask for here."""
    from sklearn.metrics import roc_auc_score

    from clinfuse.evaluation.samplesize import validation_sample_size

    m = evaluation.metrics
    pred = evaluation.predictions
    y, p = pred["label"].to_numpy(float), pred["p_fusion"].to_numpy(float)
    expected = validation_sample_size(
        prevalence=y.mean(), c_statistic=roc_auc_score(y, p), lp_values=np.log(p / (1 - p))
    )
    assert m["sample_size"]["n"] == expected.n and m["sample_size"]["n_available"] == len(y)
    assert len(y) < expected.n  # the tiny cohort is far too small, and the card says so
    note = next(t for t in m["model_card"]["limitations"] if t.startswith("Small evaluation"))
    assert f"{expected.n:,} cases" in note and "clinfuse samplesize" in note
    page = (evaluation.out / "report.html").read_text()
    assert "<b>Sample size.</b>" in page and f"ask for {expected.n:,} cases" in page
