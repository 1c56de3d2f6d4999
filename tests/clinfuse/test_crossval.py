"""k-fold cross-validation: folds against hand checks, no leakage, numbers against
scikit-learn, resume, and bad input refused before anything is written."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from clinfuse.cohort.split import assign_folds
from clinfuse.errors import CohortError, ConfigError
from tests.conftest import tiny_config

MODALITIES = ["signal", "tabular"]  # no BERT, no images: each fold trains in seconds


def _config(**training):
    cfg = tiny_config(epochs=1, **training)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"modalities": MODALITIES})})


# -- fold assignment ------------------------------------------------------------------
def _toy(n_patients: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    pids, labels, sites = [], [], []
    for i in range(n_patients):
        site = f"s{i % 3}"
        y = int(rng.random() < (0.2 + 0.2 * (i % 3)))
        for _ in range(rng.integers(1, 4)):
            pids.append(f"P{i:03d}")
            labels.append(y)
            sites.append(site)
    return pids, labels, sites


def test_folds_are_patient_level_balanced_and_stratified() -> None:
    pids, labels, sites = _toy()
    folds = assign_folds(pids, labels, k=5, seed=7, strata=sites)
    assert sorted(set(folds)) == [1, 2, 3, 4, 5]
    by_patient: dict[str, set[int]] = {}
    for p, f in zip(pids, folds, strict=True):
        by_patient.setdefault(p, set()).add(f)
    assert all(len(v) == 1 for v in by_patient.values())  # every case with its patient
    patient_fold = {p: next(iter(v)) for p, v in by_patient.items()}
    sizes = Counter(patient_fold.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1
    # within every (outcome, site) stratum the folds differ by at most one patient
    first = {}
    for p, y, s in zip(pids, labels, sites, strict=True):
        first.setdefault(p, (y, s))
    for stratum in set(first.values()):
        members = [p for p, key in first.items() if key == stratum]
        counts = Counter(patient_fold[p] for p in members)
        counts.update({f: 0 for f in range(1, 6)})
        assert max(counts.values()) - min(counts.values()) <= 1, stratum
    assert folds == assign_folds(pids, labels, k=5, seed=7, strata=sites)  # seeded
    assert folds != assign_folds(pids, labels, k=5, seed=8, strata=sites)


@pytest.mark.parametrize("k", [1, 121])
def test_fold_count_must_fit_the_patients(k: int) -> None:
    pids, labels, _ = _toy()
    with pytest.raises(ConfigError, match="folds for 120 patients"):
        assign_folds(pids, labels, k=k)


# -- a 2-fold cross-validation through the CLI (shared by the tests below) -------------
@pytest.fixture(scope="module")
def cv(tiny_cohort: Path, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from clinfuse.cli import app

    root = tmp_path_factory.mktemp("cv")
    tiny_config(epochs=1).save(root / "config.yaml")  # modalities: from --modalities
    res = CliRunner().invoke(
        app,
        [
            "crossval",
            str(tiny_cohort),
            "--out",
            str(root / "cv"),
            "--folds",
            "2",
            "--config",
            str(root / "config.yaml"),
            "--modalities",
            ",".join(MODALITIES),
            "--subgroups",
            "sex",
            "--n-boot",
            "50",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "pooled out-of-fold AUROC" in res.output
    return root / "cv"


def test_folder_is_complete_and_nothing_partial_is_left(cv: Path) -> None:
    names = sorted(p.name for p in cv.iterdir())
    assert names == [
        "assignment.csv",
        "config.yaml",
        "crossval.json",
        "evaluation",
        "folds",
        "per_fold.csv",
    ]
    assert sorted(p.name for p in (cv / "folds").iterdir()) == ["fold_1", "fold_2"]
    assert not list(cv.parent.glob("*.partial"))
    for name in ("report.html", "metrics.json", "predictions.csv", "excluded.csv"):
        assert (cv / "evaluation" / name).exists()


def test_every_case_is_scored_by_the_fold_model_that_did_not_train_on_it(
    cv: Path, tiny_cohort: Path
) -> None:
    assignment = pd.read_csv(cv / "assignment.csv", dtype={"case_id": str, "patient_id": str})
    manifest = pd.read_csv(tiny_cohort, dtype=str)
    assert sorted(assignment["case_id"]) == sorted(manifest["case_id"])
    pooled = pd.read_csv(cv / "evaluation" / "predictions.csv", dtype={"case_id": str})
    assert sorted(pooled["case_id"]) == sorted(assignment["case_id"])
    fold_of = dict(zip(assignment["case_id"], assignment["fold"], strict=True))
    assert (pooled["fold"] == pooled["case_id"].map(fold_of)).all()
    for k in (1, 2):
        run = pd.read_csv(cv / "folds" / f"fold_{k}" / "predictions.csv", dtype={"case_id": str})
        held = set(assignment.loc[assignment["fold"] == k, "case_id"])
        held_patients = set(assignment.loc[assignment["fold"] == k, "patient_id"])
        assert set(run.loc[run["split"] == "test", "case_id"]) == held
        trained = run[run["split"].isin(["train", "val"])]
        assert not set(trained["case_id"]) & held
        patient_of = dict(zip(assignment["case_id"], assignment["patient_id"], strict=True))
        assert not set(trained["case_id"].map(patient_of)) & held_patients  # patient-level
        # the pooled risks are the fold run's own test predictions
        mine = pooled[pooled["fold"] == k].set_index("case_id")["p_fusion"]
        theirs = run.set_index("case_id").loc[mine.index, "p_fusion"]
        np.testing.assert_allclose(mine.to_numpy(), theirs.to_numpy(), rtol=0, atol=1e-9)


def test_figures_match_scikit_learn_and_numpy(cv: Path) -> None:
    pooled = pd.read_csv(cv / "evaluation" / "predictions.csv", dtype={"case_id": str})
    summary = json.loads((cv / "crossval.json").read_text())
    metrics = json.loads((cv / "evaluation" / "metrics.json").read_text())
    per_fold = pd.read_csv(cv / "per_fold.csv")
    aucs = []
    for k in (1, 2):
        part = pooled[pooled["fold"] == k]
        auc = roc_auc_score(part["label"], part["p_fusion"])
        row = per_fold[per_fold["fold"] == k].iloc[0]
        assert row["auroc"] == pytest.approx(auc, abs=1e-12)
        assert row["n_cases"] == len(part) and row["n_events"] == part["label"].sum()
        assert row["brier"] == pytest.approx(np.mean((part["p_fusion"] - part["label"]) ** 2))
        aucs.append(auc)
    across = summary["across_folds"]["auroc"]
    assert across["mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert across["sd"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-12)
    pooled_auc = roc_auc_score(pooled["label"], pooled["p_fusion"])
    assert metrics["models"]["fusion"]["auroc"]["value"] == pytest.approx(pooled_auc, abs=1e-12)
    assert summary["pooled"]["auroc"]["value"] == pytest.approx(pooled_auc, abs=1e-12)
    assert metrics["crossval"]["folds"] == 2 and metrics["n_cases"] == len(pooled)
    assert [m["fold"] for m in summary["fold_models"]] == [1, 2]
    assert summary["stratified_by"] == ["outcome", "site"]


def test_report_has_the_cross_validation_section(cv: Path) -> None:
    page = (cv / "evaluation" / "report.html").read_text()
    assert "clinfuse cross-validation report" in page
    assert "Internal validation: 2-fold cross-validation" in page
    assert "TRIPOD+AI 12a, 12c, 23a" in page
    assert "out-of-fold" in page
    assert "Subgroups" in page  # --subgroups sex reached the pooled evaluation
    assert (cv / "evaluation" / "figures" / "folds.png").exists() and "figures/folds.png" in page
    card = json.loads((cv / "evaluation" / "metrics.json").read_text())["model_card"]
    assert card["model"]["info"]["cross_validation"][0]["path"] == "folds/fold_1"
    assert card["limitations"][0].startswith("Internal validation by 2-fold cross-validation")


def test_fold_runs_are_ordinary_runs(cv: Path, tiny_cohort: Path) -> None:
    from clinfuse.model import load_run

    model = load_run(cv / "folds" / "fold_2")
    assert list(model.modalities) == MODALITIES
    frame = model.predict(tiny_cohort)
    assert len(frame) == 64 and frame["p_fusion"].between(0, 1).all()


# -- interruption and resume --------------------------------------------------------
def test_an_interrupted_cross_validation_resumes_to_the_same_result(
    cv: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    from clinfuse.evaluation.crossval import cross_validate

    out = tmp_path / "cv"
    epochs_seen: list[int] = []

    class Stop(Exception):
        pass

    def stop_in_fold_2(record, _max_epochs) -> None:
        epochs_seen.append(record.epoch)
        if len(epochs_seen) == 2:  # the first epoch of fold 2
            raise Stop

    with pytest.raises(Stop):
        cross_validate(
            tiny_cohort,
            out,
            _config(),
            folds=2,
            subgroups=["sex"],
            n_boot=50,
            on_epoch=stop_in_fold_2,
        )
    partial = tmp_path / "cv.partial"
    assert not out.exists() and (partial / "folds" / "fold_1" / "model" / "model.json").exists()
    assert not (partial / "crossval.json").exists()

    with pytest.raises(ConfigError, match="this call asks for"):
        cross_validate(tiny_cohort, out, folds=3, resume=True)
    with pytest.raises(ConfigError, match="this call asks for"):
        cross_validate(tiny_cohort, out, fold_seed=1, resume=True)
    with pytest.raises(ConfigError, match="config differs"):
        cross_validate(tiny_cohort, out, _config(batch_size=8), folds=2, resume=True)
    logs: list[str] = []
    result = cross_validate(  # folds and fold seed: the interrupted run's
        tiny_cohort,
        out,
        _config(),  # the same config again
        subgroups=["sex"],
        n_boot=50,
        resume=True,
        log=logs.append,
    )
    assert "fold 1/2: finished earlier, kept" in logs
    assert not partial.exists()
    first = pd.read_csv(cv / "evaluation" / "predictions.csv", dtype={"case_id": str})
    again = result.predictions
    np.testing.assert_allclose(
        again["p_fusion"].to_numpy(), first["p_fusion"].to_numpy(), rtol=0, atol=1e-6
    )
    assert result.summary["per_fold"] == json.loads((cv / "crossval.json").read_text())["per_fold"]


# -- bad input ------------------------------------------------------------------------
def test_bad_input_is_refused_before_anything_is_written(
    cv: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    from clinfuse.evaluation.crossval import cross_validate

    manifest = tiny_cohort
    out = tmp_path / "cv"
    with pytest.raises(ConfigError, match="use 2 or more"):
        cross_validate(manifest, out, _config(), folds=1)
    with pytest.raises(ConfigError, match="59 folds for 58 patients"):
        cross_validate(manifest, out, _config(), folds=59)
    with pytest.raises(CohortError, match="subgroup column 'ethnicity'"):
        cross_validate(manifest, out, _config(), folds=2, subgroups=["ethnicity"])
    with pytest.raises(ConfigError, match="one after another"):
        cross_validate(manifest, out, _config(strategy="ddp", devices=2), folds=2)
    with pytest.raises(ConfigError, match="threshold"):
        cross_validate(manifest, out, _config(), folds=2, thresholds="0,2")
    with pytest.raises(ConfigError, match=r"cusum_false_alarm is 0\.9"):
        cross_validate(manifest, out, _config(), folds=2, cusum_false_alarm=0.9)
    with pytest.raises(ConfigError, match="nothing to resume"):
        cross_validate(manifest, out, folds=2, resume=True)
    small = tmp_path / "small"
    shutil.copytree(tiny_cohort.parent, small)
    pd.read_csv(small / "manifest.csv").head(12).to_csv(small / "first12.csv", index=False)
    with pytest.raises(CohortError, match=r"fold \d of 4: its (train|val) part has"):
        cross_validate(small / "first12.csv", out, _config(), folds=4)
    shutil.rmtree(small)
    assert list(tmp_path.iterdir()) == []  # no folder, no .partial
    busy = tmp_path / "busy"
    shutil.copytree(cv, busy)
    with pytest.raises(ConfigError, match="already holds a finished run"):
        cross_validate(manifest, busy, _config(), folds=2)


def test_a_cross_validation_compares_with_an_evaluation(
    cv: Path, tiny_run: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    """`clinfuse compare` reads a cross-validation folder's out-of-fold predictions."""
    from clinfuse.evaluation.compare import compare_evaluations
    from clinfuse.evaluation.evaluate import evaluate_run

    evaluation = evaluate_run(tiny_run, tiny_cohort, tmp_path / "eval", split="test", n_boot=20)
    res = compare_evaluations([evaluation.out, cv], tmp_path / "cmp", n_boot=20)
    test_ids = set(evaluation.predictions["case_id"])
    assert res.comparison["n_common_cases"] == len(test_ids)
    assert [m["model"] for m in res.comparison["models"]] == ["eval", "cv"]
    oof = pd.read_csv(cv / "evaluation" / "predictions.csv", dtype={"case_id": str})
    oof = oof[oof["case_id"].isin(test_ids)]
    auc = roc_auc_score(oof["label"], oof["p_fusion"])
    assert res.comparison["models"][1]["auroc"] == pytest.approx(auc, abs=1e-12)


# -- leave one group out (internal-external cross-validation) -------------------------------
def test_leave_one_site_out_with_a_meta_analysis(tiny_cohort: Path, tmp_path: Path) -> None:
    from clinfuse.evaluation.crossval import cross_validate
    from clinfuse.evaluation.meta import auroc_meta_analysis, oe_meta_analysis

    cfg = tiny_config(epochs=1)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"modalities": ["tabular"]})})
    res = cross_validate(tiny_cohort, tmp_path / "loso", cfg, group_by="site", n_boot=20)
    manifest = pd.read_csv(tiny_cohort, dtype=str)
    sites = sorted(manifest["site"].unique())
    s = res.summary
    assert s["design"] == "leave-one-group-out" and s["folds"] == len(sites)
    assert [r["group"] for r in s["per_fold"]] == sites
    assignment = pd.read_csv(res.out / "assignment.csv", dtype=str)
    site_of = dict(zip(manifest["case_id"], manifest["site"], strict=True))
    for k, site in enumerate(sites, start=1):  # each fold holds out exactly one site
        held = assignment.loc[assignment["fold"] == str(k), "case_id"]
        assert {site_of[c] for c in held} == {site}
        run = pd.read_csv(res.out / "folds" / f"fold_{k}" / "predictions.csv", dtype=str)
        trained = run.loc[run["split"].isin(["train", "val"]), "case_id"]
        assert site not in {site_of[c] for c in trained}
    rows = [r for r in s["per_fold"] if r["auroc"] is not None and 0 < r["auroc"] < 1]
    expected = auroc_meta_analysis([r["auroc"] for r in rows], [r["auroc_se"] for r in rows])
    meta = s["meta_analysis"]["auroc"]
    assert meta["estimate"] == pytest.approx(expected["estimate"], abs=1e-12)
    assert meta["groups"] == [r["group"] for r in rows]
    oe = oe_meta_analysis(
        [r["n_events"] for r in s["per_fold"]], [r["expected_events"] for r in s["per_fold"]]
    )
    assert s["meta_analysis"]["oe_ratio"]["estimate"] == pytest.approx(oe["estimate"], abs=1e-12)
    for k, r in enumerate(s["per_fold"], start=1):  # expected events = Σ risks of the held-out site
        run = pd.read_csv(
            res.out / "folds" / f"fold_{k}" / "predictions.csv", dtype={"case_id": str}
        )
        held = run[(run["split"] == "test") & run["label"].notna()]
        assert r["expected_events"] == pytest.approx(held["p_fusion"].sum(), abs=1e-9)
    page = res.report.read_text()
    assert "O/E ratio" in page
    assert "Internal–external validation: leave one site out" in page
    assert "Random-effects meta-analysis" in page
    card = res.metrics["model_card"]
    assert card["limitations"][0].startswith("Internal–external validation, leaving one site out")


def test_grouping_errors(tiny_cohort: Path, tmp_path: Path) -> None:
    from clinfuse.evaluation.crossval import cross_validate

    out = tmp_path / "cv"
    with pytest.raises(ConfigError, match="not both"):
        cross_validate(tiny_cohort, out, _config(), folds=3, group_by="site")
    with pytest.raises(CohortError, match="group column 'hospital'"):
        cross_validate(tiny_cohort, out, _config(), group_by="hospital")
    small = tmp_path / "small"
    shutil.copytree(tiny_cohort.parent, small)
    m = pd.read_csv(small / "manifest.csv", dtype=str)
    m.assign(ward="A").to_csv(small / "one_ward.csv", index=False)
    with pytest.raises(CohortError, match="'ward' has 1 value"):
        cross_validate(small / "one_ward.csv", out, _config(), group_by="ward")
    m.assign(ward=["A", None] * (len(m) // 2)).to_csv(small / "gaps.csv", index=False)
    with pytest.raises(CohortError, match=r"32 case\(s\) have no 'ward'"):
        cross_validate(small / "gaps.csv", out, _config(), group_by="ward")
    assert not out.exists() and not (tmp_path / "cv.partial").exists()
