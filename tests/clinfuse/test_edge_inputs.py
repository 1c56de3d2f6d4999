"""Inputs users get wrong, and cohorts at the edges of what the statistics can say.

Each test comes from a case a QA pass found mishandled (an internal error, a figure without
a caveat, or a leftover folder); the expected behaviour is the one docs/manifest.md and
docs/evaluation.md describe.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinfuse.cli import main
from clinfuse.errors import ClinFuseError, ConfigError, ModalityLoadError

# -- manifest ---------------------------------------------------------------------------


def test_empty_case_id_and_spreadsheet_tail_rows(tiny_cohort, tmp_path, capsys):
    """An empty id is the case's error, not an internal one; rows of bare commas (as
    spreadsheets export them) are skipped with a warning."""
    frame = pd.read_csv(tiny_cohort, dtype=str)
    frame.loc[3, "case_id"] = ""
    text = frame.to_csv(index=False) + "," * (len(frame.columns) - 1) + "\n"
    text += "," * (len(frame.columns) - 1) + "\n"
    path = tiny_cohort.parent / "m_blank.csv"
    path.write_text(text)
    report = tmp_path / "report.json"
    assert main(["validate", str(path), "--no-read", "--json", str(report)]) == 1
    issues = json.loads(report.read_text())["issues"]
    messages = [i["message"] for i in issues]
    assert "row 5 has an empty case_id; give every case an id" in messages
    assert "2 empty row(s) skipped (file rows 66, 67)" in messages


def test_windows_paths_semicolons_and_labels_as_numbers(tiny_cohort, tmp_path):
    """Backslash paths of a manifest written on Windows resolve; a semicolon-separated file
    is named as such; a label of 2 is shown as 2."""
    from clinfuse.cohort import Cohort
    from clinfuse.errors import CohortError

    frame = pd.read_csv(tiny_cohort, dtype=str)
    has = frame["signal"].notna()
    frame.loc[has, "signal"] = frame.loc[has, "signal"].str.replace("/", "\\")
    frame.loc[0, "label"] = "2"
    path = tiny_cohort.parent / "m_windows.csv"
    frame.to_csv(path, index=False)
    cohort = Cohort.from_manifest(path, strict=False)
    row = next(r for r in cohort.rows if r.case_id == frame.loc[has, "case_id"].iloc[1])
    assert row.signal is not None and Path(row.signal).exists()
    messages = [i.message for i in cohort.issues]
    assert "outcome 'label' is 2; it must be 0 or 1" in messages
    semi = tmp_path / "semi.csv"
    frame.to_csv(semi, index=False, sep=";")
    with pytest.raises(CohortError, match="separated by semicolons"):
        Cohort.from_manifest(semi)


def test_validate_reports_what_training_would_refuse_in_tabular_columns(tiny_cohort, tmp_path):
    frame = pd.read_csv(tiny_cohort, dtype=str)
    frame.loc[1, "crp"] = "inf"
    frame.loc[2, "crp"] = "<0.5"
    frame["note_code"] = [f"free text {i}" for i in range(len(frame))]
    path = tiny_cohort.parent / "m_tab.csv"
    frame.to_csv(path, index=False)
    report = tmp_path / "report.json"
    args = ["validate", str(path), "--no-read", "--tabular", "crp,lactate,note_code"]
    assert main([*args, "--json", str(report)]) == 1
    issues = {
        (i["case_id"], i["field"]): i["message"] for i in json.loads(report.read_text())["issues"]
    }
    ids = frame["case_id"]
    assert issues[(ids[1], "crp")].startswith("tabular value 'inf' is not finite")
    assert issues[(ids[2], "crp")].startswith("tabular value '<0.5' is not a number")
    assert "e.g. 'free text 0', 'free text 1', 'free text 2'" in issues[(None, "note_code")]


def test_tabular_statistics_ignore_infinite_and_stray_text_cells():
    from clinfuse.io.tabular import TabularEncoder

    values = [str(1.5 * i) for i in range(39)]
    frame = pd.DataFrame({"case_id": [f"c{i}" for i in range(41)], "crp": [*values, "<0.5", "inf"]})
    enc = TabularEncoder(["crp"]).fit(frame)
    assert enc.kinds_["crp"] == "numeric"
    expected = np.array([1.5 * i for i in range(39)])
    assert enc.means_["crp"] == pytest.approx(expected.mean())
    assert enc.stds_["crp"] == pytest.approx(expected.std())
    with pytest.raises(ModalityLoadError, match=r"'<0\.5' is not a number") as info:
        enc.transform(frame)
    assert info.value.case_id == "c39"


def test_a_run_that_fails_on_its_manifest_leaves_nothing_and_does_not_block(tiny_cohort, tmp_path):
    from clinfuse.training import train_run
    from tests.conftest import tiny_config

    frame = pd.read_csv(tiny_cohort, dtype=str)
    dup = tiny_cohort.parent / "m_dup.csv"
    pd.concat([frame, frame.iloc[:1]]).to_csv(dup, index=False)
    out = tmp_path / "run"
    with pytest.raises(ClinFuseError, match="appears 2 times"):
        train_run(dup, out, tiny_config(epochs=1))
    assert not out.exists() and not out.with_name("run.partial").exists()
    out.with_name("run.partial").mkdir()  # left by an older version: nothing resumable
    train_run(tiny_cohort, out, tiny_config(epochs=1))
    assert (out / "model" / "model.json").exists()


def test_a_reserved_column_is_not_a_feature():
    from clinfuse.config import load_config

    with pytest.raises(ConfigError, match=r"'label' \(the outcome\): a column with a fixed"):
        load_config(None, {"data.tabular_columns": ["age", "label"]})


def test_scoring_commands_take_allow_external_paths(tiny_run, tiny_cohort, tmp_path):
    """Files outside the manifest's folder are refused by default and read with the flag;
    the flag of one command does not carry over to the next."""
    frame = pd.read_csv(tiny_cohort, dtype=str)
    moved = tmp_path / "store"
    shutil.copytree(tiny_cohort.parent / "signals", moved / "signals")
    frame = frame[frame["signal"].notna()]
    frame["signal"] = [str(moved / "signals" / Path(s).name) for s in frame["signal"]]
    own = tmp_path / "cohort"
    own.mkdir()
    frame.drop(columns=["image", "note", "note_text"], errors="ignore").to_csv(
        own / "manifest.csv", index=False
    )
    out = tmp_path / "p.csv"
    args = ["predict", str(tiny_run), str(own / "manifest.csv"), "--out", str(out)]
    assert main([*args, "--allow-missing-modalities"]) == 1  # every case points outside
    assert not out.exists()
    assert main([*args, "--allow-missing-modalities", "--allow-external-paths"]) == 0
    assert pd.read_csv(out)["present_signal"].sum() == len(frame)
    provenance = json.loads(out.with_name("p.provenance.json").read_text())
    assert provenance["allow_external_paths"] is True  # so the review app reads them too
    out.unlink()
    assert main([*args, "--allow-missing-modalities"]) == 1
    assert not out.exists()


def test_predict_out_naming_a_folder_is_refused_before_scoring(tiny_run, tiny_cohort, tmp_path):
    folder = tmp_path / "preds"
    folder.mkdir()
    assert main(["predict", str(tiny_run), str(tiny_cohort), "--out", str(folder)]) == 1
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["preds"]


def test_sampling_interval_given_as_rate_is_refused_by_name():
    from clinfuse.transforms.signal import Resample

    with pytest.raises(ModalityLoadError, match="multiply the samples by 50,000") as info:
        Resample(100.0)(np.zeros((1, 5000), np.float32), {"fs": 0.002}, case_id="c7")
    assert info.value.case_id == "c7" and info.value.field == "signal_fs"


# -- explanations -----------------------------------------------------------------------


def test_explaining_an_excluded_case_names_why(tiny_run, tiny_cohort, tmp_path):
    from clinfuse.explain.report import explain_run

    frame = pd.read_csv(tiny_cohort, dtype=str)
    case = frame.loc[frame["image"].notna(), "case_id"].iloc[0]
    image = frame.loc[frame["case_id"] == case, "image"].iloc[0]
    broken = tiny_cohort.parent / "broken.dcm"
    broken.write_bytes(b"not a dicom file")
    frame.loc[frame["case_id"] == case, "image"] = "broken.dcm"
    path = tiny_cohort.parent / "m_broken.csv"
    frame.to_csv(path, index=False)
    assert image != "broken.dcm"
    with pytest.raises(ConfigError, match="image: not a readable DICOM file") as info:
        explain_run(tiny_run, path, tmp_path / "ex", case=case)
    assert "force=True" not in str(info.value)
    assert not (tmp_path / "ex").exists()


def test_case_folders_are_one_per_id_and_the_cache_checks_the_id(tmp_path):
    from clinfuse.explain._common import safe_name
    from clinfuse.explain.report import RUN_SUBDIR, load_cached_case

    assert safe_name("case0001") == "case0001"
    assert safe_name("患者0003") != safe_name("病例0003")
    folder = tmp_path / RUN_SUBDIR / "cases" / safe_name("病例0003")
    folder.mkdir(parents=True)
    (folder / "explanation.json").write_text(json.dumps({"case_id": "someone else"}))
    assert load_cached_case(tmp_path, "病例0003") is None


# -- evaluation -------------------------------------------------------------------------


def test_split_of_a_trimmed_development_manifest_is_the_run_s(tiny_run, tiny_cohort, tmp_path):
    """``--split test`` on a copy of the development manifest without some rows evaluates
    the run's test cases, not a fresh split of the remaining rows."""
    from clinfuse.evaluation import evaluate_run

    frame = pd.read_csv(tiny_cohort, dtype=str)
    trimmed = tiny_cohort.parent / "m_trimmed.csv"
    frame.iloc[10:].to_csv(trimmed, index=False)
    result = evaluate_run(tiny_run, trimmed, tmp_path / "ev", split="test", n_boot=0)
    recorded = pd.read_csv(tiny_run / "predictions.csv", dtype={"case_id": str})
    test_ids = set(recorded.loc[recorded["split"] == "test", "case_id"])
    evaluated = set(pd.read_csv(result.out / "predictions.csv", dtype={"case_id": str})["case_id"])
    assert evaluated == test_ids - set(frame["case_id"].iloc[:10])


def test_evaluating_the_development_cases_says_the_figures_are_optimistic(
    tiny_run, tiny_cohort, tmp_path
):
    from clinfuse.evaluation import evaluate_run

    result = evaluate_run(tiny_run, tiny_cohort, tmp_path / "ev", n_boot=0)
    limits = result.metrics["model_card"]["limitations"]
    assert any("run's own training or validation cases" in x for x in limits)
    test_only = evaluate_run(tiny_run, tiny_cohort, tmp_path / "ev2", split="test", n_boot=0)
    assert not any(
        "run's own training" in x for x in test_only.metrics["model_card"]["limitations"]
    )
    from clinfuse.evaluation.compare import compare_evaluations

    again = evaluate_run(tiny_run, tiny_cohort, tmp_path / "ev3", n_boot=0)
    compared = compare_evaluations([result.out, again.out], tmp_path / "cmp", n_boot=0)
    overlap = result.metrics["case_mix"]["n_overlap"]
    assert compared.comparison["optimistic"] == {"ev": overlap, "ev3": overlap}
    assert "Optimistic: ev was evaluated on" in (tmp_path / "cmp" / "report.html").read_text()


def test_delong_gives_no_interval_with_a_single_event():
    from clinfuse.evaluation.delong import delong_ci, delong_test

    rng = np.random.default_rng(0)
    y = np.zeros(100)
    y[7] = 1
    a, b = rng.random(100), rng.random(100)
    ci = delong_ci(y, a)
    assert ci["value"] == pytest.approx(np.mean(a[y == 0] < a[7]))
    assert ci["se"] is None and ci["ci_low"] is None
    test = delong_test(y, a, b)
    assert test["difference"] is not None and test["p_value"] is None and test["se"] is None
    assert delong_ci(1 - y, a)["se"] is None  # a single non-event


def test_calibration_without_a_positive_variance_has_no_interval():
    from clinfuse.evaluation.calibration import _wald, expected_calibration_error

    assert _wald(0.3, -1e-9, 1.96) == {"value": 0.3, "ci_low": None, "ci_high": None}
    assert _wald(0.3, float("nan"), 1.96)["ci_high"] is None
    low = _wald(0.3, 0.04, 1.96)
    assert low["ci_low"] == pytest.approx(0.3 - 1.96 * 0.2)
    ece, table = expected_calibration_error(np.zeros(0), np.zeros(0))
    assert ece is None and table["n"].sum() == 0


def test_pooling_keeps_zero_event_sites_with_a_continuity_correction():
    from clinfuse.evaluation.meta import group_meta_analysis, oe_meta_analysis

    rows = [
        {"group": "a", "auroc": 0.7, "auroc_se": 0.04, "calibration_slope": 1.0,
         "calibration_slope_se": 0.1, "n_events": 30, "expected_events": 25.0},
        {"group": "b", "auroc": 0.75, "auroc_se": 0.05, "calibration_slope": 0.9,
         "calibration_slope_se": 0.2, "n_events": 20, "expected_events": 22.0},
        {"group": "c", "auroc": None, "auroc_se": None, "calibration_slope": None,
         "calibration_slope_se": None, "n_events": 0, "expected_events": 4.0},
    ]  # fmt: skip
    meta = group_meta_analysis(rows)
    assert meta["auroc"]["groups"] == ["a", "b"]
    assert [x["group"] for x in meta["auroc"]["left_out"]] == ["c"]
    assert meta["oe_ratio"]["groups"] == ["a", "b", "c"]
    assert meta["oe_ratio"]["continuity_corrected"] == ["c"]
    direct = oe_meta_analysis([30, 20, 0.5], [25.0, 22.0, 4.5])
    assert meta["oe_ratio"]["estimate"] == pytest.approx(direct["estimate"])


def test_a_cusum_signal_whose_shift_reverted_claims_no_lasting_change():
    from clinfuse.evaluation.cusum import describe_change, risk_adjusted_cusum

    rng = np.random.default_rng(4)
    n = 3000
    p = np.full(n, 0.3)
    truth = p.copy()
    truth[1000:1400] = 0.08  # fewer events than predicted for a while, then as predicted
    y = (rng.random(n) < truth).astype(float)
    dates = np.datetime64("2020-01-01") + np.arange(n) // 3
    cusum = risk_adjusted_cusum(y, p, dates)
    signals = [s for ch in cusum.to_dict()["charts"] for s in ch["signals"] if "change" in s]
    assert signals
    last = signals[-1]
    text = describe_change(last)
    if last["change"]["lasting"]:
        assert "the change is estimated at" in text
    else:
        assert text.startswith("no lasting change located")
    assert any(not s["change"]["lasting"] for s in signals)


def test_samplesize_from_an_evaluation_below_chance_says_what_to_give(tmp_path, monkeypatch):
    from clinfuse.evaluation import samplesize

    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.3).astype(float)
    p = np.where(y == 1, 0.2, 0.5) + rng.normal(0, 0.01, 200)
    where = tmp_path / "predictions.csv"
    monkeypatch.setattr(samplesize, "_evaluation_outcomes", lambda folder: (y, p, where))
    with pytest.raises(ConfigError, match=r"AUROC is 0\.000, not above 0\.5") as info:
        samplesize.from_evaluation(tmp_path)
    assert "--c-statistic" in str(info.value)


def test_platt_scaling_stays_finite_on_separated_validation_cases():
    """Eight validation cases whose outcomes the logit separates: the unpenalised fit ran
    away (slope 700); Platt's targets keep it finite. Unseparated cases fit as before."""
    from clinfuse.calibration import Platt, calibrator_from_dict

    z = np.array([0.30, 0.32, 0.35, 0.40, 0.52, 0.55, 0.60, 0.63])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    platt = Platt().fit(z, y)
    assert platt.separated_ and abs(platt.slope_) < 100
    p = platt.predict_proba(z)
    n_pos = n_neg = 4
    assert p.min() > 1 / (n_neg + 2) / 3 and p.max() < 1 - 1 / (n_pos + 2) / 3
    again = calibrator_from_dict(platt.to_dict())
    assert again.to_dict() == platt.to_dict()

    rng = np.random.default_rng(0)
    z2 = rng.normal(size=400)
    y2 = (rng.random(400) < 1 / (1 + np.exp(-1.5 * z2))).astype(float)
    fitted = Platt().fit(z2, y2)
    assert not fitted.separated_ and "separated" not in fitted.to_dict()
    from sklearn.linear_model import LogisticRegression

    ref = LogisticRegression(C=1e12, tol=1e-10, max_iter=1000).fit(z2[:, None], y2)
    assert fitted.slope_ == pytest.approx(ref.coef_[0, 0], rel=1e-3)


# -- cross-validation and federated runs ----------------------------------------------


def test_group_folds_keep_a_returning_patient_out_of_training():
    """Leave-one-group-out: a patient with cases in the held-out group and in others has
    those other cases in no part of that fold (no model scores a patient it trained on)."""
    from types import SimpleNamespace

    from clinfuse.evaluation.crossval import fold_splits

    rows = [
        SimpleNamespace(case_id=f"c{i}", patient_id=f"p{i}", label=i % 2, site=None)
        for i in range(12)
    ]
    rows.append(SimpleNamespace(case_id="c12", patient_id="p0", label=1, site=None))
    folds = [1] * 4 + [2] * 4 + [3] * 4 + [2]  # p0 in groups 1 and 2
    plan = fold_splits(SimpleNamespace(rows=rows), folds, 1, fractions=(0.6, 0.2, 0.2), seed=0)
    assert plan["c0"] == "test" and "c12" not in plan
    assert {c for c, s in plan.items() if s == "test"} == {"c0", "c1", "c2", "c3"}
    plan2 = fold_splits(SimpleNamespace(rows=rows), folds, 2, fractions=(0.6, 0.2, 0.2), seed=0)
    assert plan2["c12"] == "test" and "c0" not in plan2


def test_a_federated_model_some_site_never_trained_is_refused():
    from types import SimpleNamespace

    from clinfuse.federated.run import _check_every_site_contributed
    from privacy.errors import FederatedError

    rounds = [
        SimpleNamespace(completed=["c"], failed={"a": "TypeError: x", "b": "TypeError: y"}),
        SimpleNamespace(completed=["b", "c"], failed={"a": "TypeError: z"}),
    ]
    history = SimpleNamespace(rounds=rounds, sites=["a", "b", "c"])
    with pytest.raises(
        FederatedError, match=r"1 of 3 sites failed in every round.*a: TypeError: x"
    ):
        _check_every_site_contributed(history)
    rounds[0].completed.append("a")
    _check_every_site_contributed(history)


def test_an_encoder_option_typo_fails_before_any_folder(tiny_cohort, tmp_path):
    from clinfuse.training import train_run
    from tests.conftest import tiny_config

    cfg = tiny_config(epochs=1)
    cfg.encoders["tabular"] = {"name": "mlp", "hiden": [8]}
    with pytest.raises(ConfigError, match=r"encoders\.tabular: .*hiden"):
        train_run(tiny_cohort, tmp_path / "run", cfg)
    assert list(tmp_path.iterdir()) == []
    cfg.encoders["tabular"] = {"name": "nosuch"}
    with pytest.raises(ConfigError, match="unknown tabular encoder 'nosuch'"):
        train_run(tiny_cohort, tmp_path / "run", cfg)


def test_commands_that_cannot_resume_do_not_suggest_it(tmp_path):
    from clinfuse.training.run import _prepare_folders

    (tmp_path / "fed.partial").mkdir()
    (tmp_path / "fed.partial" / "config.yaml").write_text("{}")
    with pytest.raises(ConfigError) as info:
        _prepare_folders(tmp_path / "fed", resume=False, overwrite=False, resumable=False)
    assert "--resume" not in str(info.value) and "--overwrite" in str(info.value)


def test_python_api_says_what_to_pass(tiny_run, tiny_cohort, tmp_path):
    from clinfuse.evaluation import evaluate_run
    from clinfuse.model import load_run

    with pytest.raises(ConfigError, match="expected the path of a run folder, got int"):
        load_run(123)
    model = load_run(tiny_run)
    with pytest.raises(ConfigError, match="expected a manifest path or a Cohort, got DataFrame"):
        model.predict(pd.read_csv(tiny_cohort))
    result = evaluate_run(tiny_run, tiny_cohort, tmp_path / "ev", subgroups="sex", n_boot=0)
    assert "sex" in result.metrics["subgroups"]
