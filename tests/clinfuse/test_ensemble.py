"""Fold ensemble of a cross-validation folder: risks against each fold model's own
predictions, evaluation numbers against scikit-learn, and a changed folder refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from clinfuse.errors import ConfigError
from tests.conftest import tiny_config

MODALITIES = ["image", "signal", "tabular"]  # trainable encoders: each fold model differs


@pytest.fixture(scope="module")
def cv(tiny_cohort: Path, tmp_path_factory) -> Path:
    from clinfuse.evaluation.crossval import cross_validate

    cfg = tiny_config(epochs=1)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"modalities": MODALITIES})})
    out = tmp_path_factory.mktemp("ens") / "cv"
    cross_validate(tiny_cohort, out, cfg, folds=3, n_boot=20)
    return out


@pytest.fixture(scope="module")
def new_cohort(tmp_path_factory) -> Path:
    """Cases no fold model saw (another seed of the synthetic generator)."""
    from clinfuse.synth import synthesize_cohort

    root = tmp_path_factory.mktemp("new")
    return synthesize_cohort(
        root / "cohort", n_cases=48, seed=11, image_size=32, signal_fs=50, signal_seconds=4.0
    )


def test_ensemble_risk_is_the_mean_of_the_fold_models_own_predictions(
    cv: Path, new_cohort: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from clinfuse.cli import app
    from clinfuse.model import load_run

    out = tmp_path / "p.csv"
    res = CliRunner().invoke(app, ["predict", str(cv), str(new_cohort), "--out", str(out)])
    assert res.exit_code == 0, res.output
    ens = pd.read_csv(out, dtype={"case_id": str}).set_index("case_id")
    # reference: every fold model loads and scores the cohort by itself (its own tabular
    # encoder, its own loader) — the ensemble loads once and re-encodes only the tabular values
    folds = [
        load_run(cv / "folds" / f"fold_{k}").predict(new_cohort).set_index("case_id")
        for k in (1, 2, 3)
    ]
    assert sorted(ens.index) == sorted(folds[0].index)
    risks = np.stack([f.loc[ens.index, "p_fusion"].to_numpy() for f in folds])
    assert not np.allclose(risks[0], risks[1])  # the fold models do differ
    np.testing.assert_allclose(ens["p_fusion"], risks.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(ens["p_fusion_sd"], risks.std(axis=0, ddof=1), atol=1e-9)
    np.testing.assert_allclose(ens["p_fusion_min"], risks.min(axis=0), atol=1e-9)
    np.testing.assert_allclose(ens["p_fusion_max"], risks.max(axis=0), atol=1e-9)
    logits = np.stack([f.loc[ens.index, "logit_fusion"].to_numpy() for f in folds])
    np.testing.assert_allclose(ens["logit_fusion"], logits.mean(axis=0), atol=1e-9)
    for m in MODALITIES:
        per = np.stack([f.loc[ens.index, f"p_{m}"].to_numpy() for f in folds])
        np.testing.assert_allclose(ens[f"p_{m}"], per.mean(axis=0), atol=1e-9)  # NaN = NaN
        assert (ens[f"present_{m}"] == folds[0].loc[ens.index, f"present_{m}"]).all()
    # beside the table, each fold model's own outputs (for the case-mix comparison)
    rows = pd.read_csv(tmp_path / "p.fold_models.csv", dtype={"case_id": str})
    assert len(rows) == 3 * len(ens) and sorted(rows["model"].unique()) == [1, 2, 3]
    for k, fold in enumerate(folds, start=1):
        own = rows[rows["model"] == k].set_index("case_id").loc[ens.index]
        for col in ["p_fusion", "logit_fusion", *[f"p_{m}" for m in MODALITIES]]:
            np.testing.assert_allclose(own[col], fold.loc[ens.index, col], atol=1e-9)
    assert json.loads((tmp_path / "p.provenance.json").read_text())["fold_models"] == (
        "p.fold_models.csv"
    )


def test_evaluating_the_ensemble_on_new_cases(cv: Path, new_cohort: Path, tmp_path: Path) -> None:
    from clinfuse.ensemble import load_ensemble
    from clinfuse.evaluation.evaluate import evaluate_run, model_sha256

    res = evaluate_run(cv, new_cohort, tmp_path / "ev", n_boot=20)
    frame = pd.read_csv(tmp_path / "ev" / "predictions.csv", dtype={"case_id": str})
    auc = res.metrics["models"]["fusion"]["auroc"]["value"]
    assert auc == pytest.approx(roc_auc_score(frame["label"], frame["p_fusion"]), abs=1e-12)
    direct = load_ensemble(cv).predict(new_cohort).set_index("case_id")
    np.testing.assert_allclose(
        frame.set_index("case_id").loc[direct.index, "p_fusion"], direct["p_fusion"], atol=1e-12
    )
    assert res.metrics["run"]["fold_ensemble"] == [
        model_sha256(cv / "folds" / f"fold_{k}") for k in (1, 2, 3)
    ]
    # the ablation goes through all fold models: keeping every modality is the ensemble risk
    rows = {r["name"]: r for r in res.metrics["ablation"]["rows"]}
    assert set(rows) >= {"image only", "without signal", "all modalities"}
    card = res.metrics["model_card"]
    assert card["model"]["info"]["ensemble"] == "mean of 3 fold models' calibrated risks"
    ensemble_notes = [
        t for t in card["limitations"] if t.startswith("The model is a fold ensemble")
    ]
    assert len(ensemble_notes) == 1 and "optimistic" not in ensemble_notes[0]
    mix = res.metrics["case_mix"]
    assert mix["n_overlap"] == 0
    # compared through each fold model's own outputs, like the out-of-fold development ones
    assert mix["fold_models"] == 3 and mix["membership"]["n_evaluated"] == len(frame)
    own = load_ensemble(cv).score_manifest(new_cohort).per_model
    assert mix["evaluated"]["logit_sd"] == pytest.approx(
        np.sqrt(((own["logit_fusion"] - own["logit_fusion"].mean()) ** 2).sum() / 3 / 47)
    )
    pooled = pd.read_csv(cv / "evaluation" / "predictions.csv")
    assert mix["development"]["logit_sd"] == pytest.approx(pooled["logit_fusion"].std())
    # an evaluation of the ensemble calibrates conformal sets for it; the cross-validation's
    # own (out-of-fold, single fold models) does not
    from clinfuse.errors import ConfigError
    from clinfuse.evaluation.conformal import ConformalSets, conformal_from_evaluation

    sets = conformal_from_evaluation(tmp_path / "ev", cv, alpha=0.2)
    direct_sets = ConformalSets.fit(frame["label"], frame["p_fusion"], alpha=0.2)
    assert sets.positive_from == direct_sets.positive_from
    assert sets.negative_up_to == direct_sets.negative_up_to
    with pytest.raises(ConfigError, match="cross-validation's own evaluation"):
        conformal_from_evaluation(cv / "evaluation", cv)


def test_evaluating_on_the_cross_validation_cohort_is_flagged_optimistic(
    cv: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    from clinfuse.evaluation.evaluate import evaluate_run

    res = evaluate_run(cv, tiny_cohort, tmp_path / "ev", n_boot=0)
    assert res.metrics["case_mix"]["n_overlap"] == res.metrics["n_cases"]
    note = next(t for t in res.metrics["model_card"]["limitations"] if "fold ensemble" in t)
    assert "optimistic" in note


def test_a_changed_or_unfinished_folder_is_refused(cv: Path, tmp_path: Path) -> None:
    from clinfuse.ensemble import FoldEnsemble, load_ensemble
    from clinfuse.model import load_run

    with pytest.raises(ConfigError, match="cross-validation folder") as e:
        load_run(cv)
    assert "load_ensemble" in (e.value.hint or "")
    copy = tmp_path / "cv"
    shutil.copytree(cv, copy)
    meta = copy / "folds" / "fold_2" / "model" / "model.json"
    data = json.loads(meta.read_text())
    data["info"]["epochs_run"] = 99
    meta.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="fold 2's model differs"):
        load_ensemble(copy)
    shutil.rmtree(copy / "folds" / "fold_3")
    with pytest.raises(ConfigError, match=r"fold 2's model differs|fold 3's model is missing"):
        load_ensemble(copy)
    partial = tmp_path / "half"
    Path(f"{partial}.partial").mkdir()
    with pytest.raises(ConfigError) as e:
        load_ensemble(partial)
    assert "--resume" in (e.value.hint or "")
    with pytest.raises(ConfigError, match="at least two"):
        FoldEnsemble([load_run(cv / "folds" / "fold_1")])


def test_ensemble_modality_shapley_is_the_mean_of_the_fold_models(
    cv: Path, new_cohort: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from clinfuse.cli import app
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader
    from clinfuse.ensemble import load_ensemble
    from clinfuse.explain.modality import build_modality_cache, modality_shapley
    from clinfuse.model import load_run

    out = tmp_path / "ex"
    res = CliRunner().invoke(app, ["explain", str(cv), str(new_cohort), "--out", str(out)])
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(out / "modality_shapley.csv", dtype={"case_id": str}).set_index("case_id")
    # reference: each fold model explained on its own (its own loader and tabular encoder)
    phis, bases = [], []
    for k in (1, 2, 3):
        model = load_run(cv / "folds" / f"fold_{k}")
        cohort = Cohort.from_manifest(new_cohort, target=model.config.data.target)
        cases = CaseLoader(model.config.data, model.modalities, model.tabular).load_many(
            cohort.rows
        )
        cache = build_modality_cache(model, cases.cases)
        exp = modality_shapley(model, cache)
        order = [cache.index_of(c) for c in frame.index]
        phis.append(np.asarray(exp.values)[order])
        bases.append(np.asarray(exp.base_values)[order])
    phis = np.stack(phis)
    for j, m in enumerate(MODALITIES):
        np.testing.assert_allclose(frame[f"phi_{m}"], phis[:, :, j].mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(
            frame[f"phi_{m}_sd"], phis[:, :, j].std(axis=0, ddof=1), atol=1e-6
        )
    np.testing.assert_allclose(frame["base_value"], np.mean(bases, axis=0), atol=1e-6)
    # additive: base + Σφ is the ensemble's mean fused logit
    pred = load_ensemble(cv).predict(new_cohort).set_index("case_id").loc[frame.index]
    np.testing.assert_allclose(frame["logit_fusion"], pred["logit_fusion"], atol=1e-4)
    importance = json.loads((out / "modality_importance.json").read_text())
    assert set(importance["mean_abs_phi"]) == set(MODALITIES)
    assert sorted(p.name for p in out.iterdir()) == [
        "index.json",
        "modality_importance.json",
        "modality_importance.png",
        "modality_shapley.csv",
    ]
    # an unknown --case is refused before any work, naming it; a used --out is refused too
    res = CliRunner().invoke(
        app, ["explain", str(cv), str(new_cohort), "--out", str(tmp_path / "ex2"), "--case", "x"]
    )
    assert res.exit_code != 0 and "case id 'x' is not in the cohort" in str(res.exception)
    res = CliRunner().invoke(app, ["explain", str(cv), str(new_cohort), "--out", str(out)])
    assert res.exit_code != 0 and not (tmp_path / "ex2").exists()


def test_one_case_explained_by_the_ensemble_is_the_mean_of_its_fold_models(
    cv: Path, new_cohort: Path, tmp_path: Path
) -> None:
    """``clinfuse explain CV COHORT --case C``: every attribution is the mean of the fold
    models' own (each explained alone with the same reference images), the risk is the
    ensemble's, and the spread is the fold models'."""
    from typer.testing import CliRunner

    from clinfuse.cli import app
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.ensemble import load_ensemble
    from clinfuse.explain.modality import build_modality_cache, modality_shapley
    from clinfuse.explain.report import explain_case, image_background
    from clinfuse.model import load_run

    pred = load_ensemble(cv).predict(new_cohort).set_index("case_id")
    complete = pred[pred.filter(like="present_").min(axis=1) == 1]
    cid = str(complete.index[0])
    out = tmp_path / "ex"
    res = CliRunner().invoke(
        app,
        ["explain", str(cv), str(new_cohort), "--out", str(out), "--case", cid, "--n-boot", "0"],
    )
    assert res.exit_code == 0, res.output + str(res.exception)
    got = json.loads((out / "cases" / cid / "explanation.json").read_text())
    assert (out / "cases" / cid / "image_heatmap.png").exists()
    # reference: each fold model alone, on its own loader (its tabular encoder)
    singles = []
    for k in (1, 2, 3):
        model = load_run(cv / "folds" / f"fold_{k}")
        cohort = Cohort.from_manifest(new_cohort, target=model.config.data.target)
        row = cohort[cid]
        case = model.loader().load(row)
        exp = modality_shapley(model, build_modality_cache(model, [case]))
        singles.append(
            explain_case(
                model,
                case,
                base_value=float(exp.base_values[0]),
                phi={m: float(exp.values[0, j]) for j, m in enumerate(model.modalities)},
                image_background=image_background(model.config.data, cohort.rows, exclude=cid),
            )
        )
    ms = got["modality_shapley"]
    for m in MODALITIES:
        phis = [s["modality_shapley"]["phi"][m] for s in singles]
        assert ms["phi"][m] == pytest.approx(np.mean(phis), abs=1e-6)
        assert got["ensemble"]["phi_sd"][m] == pytest.approx(np.std(phis, ddof=1), abs=1e-6)
    risks = [s["modality_shapley"]["risk_fusion"] for s in singles]
    assert ms["risk_fusion"] == pytest.approx(pred.loc[cid, "p_fusion"], abs=1e-5)
    assert ms["risk_fusion"] == pytest.approx(np.mean(risks), abs=1e-6)
    assert got["ensemble"]["risk_fusion_min"] == pytest.approx(
        pred.loc[cid, "p_fusion_min"], abs=1e-5
    )
    assert got["ensemble"]["risk_fusion_max"] == pytest.approx(
        pred.loc[cid, "p_fusion_max"], abs=1e-5
    )
    assert ms["base_value"] + sum(ms["phi"].values()) == pytest.approx(
        pred.loc[cid, "logit_fusion"], abs=1e-4
    )
    within = got["within"]
    np.testing.assert_allclose(
        within["image"]["heatmap"],
        np.mean([s["within"]["image"]["heatmap"] for s in singles], axis=0),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        within["signal"]["segment_values"],
        np.mean([s["within"]["signal"]["segment_values"] for s in singles], axis=0),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        [f["phi"] for f in within["tabular"]["features"]],
        np.mean([[f["phi"] for f in s["within"]["tabular"]["features"]] for s in singles], axis=0),
        atol=1e-9,
    )
    assert [f["name"] for f in within["tabular"]["features"]] == [
        f["name"] for f in singles[0]["within"]["tabular"]["features"]
    ]
    assert within["tabular"]["base_value"] == pytest.approx(
        np.mean([s["within"]["tabular"]["base_value"] for s in singles])
    )


def test_review_app_on_cases_the_ensemble_scored(
    cv: Path, new_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``clinfuse app CV --predictions P``: the band is the fold models' range, and an
    explanation computed in the app is the ensemble's."""
    from typer.testing import CliRunner

    from clinfuse.cli import app
    from clinfuse.review.runview import open_run_view
    from clinfuse.scored import model_version, read_provenance

    table = tmp_path / "scored.csv"
    res = CliRunner().invoke(app, ["predict", str(cv), str(new_cohort), "--out", str(table)])
    assert res.exit_code == 0, res.output
    assert read_provenance(table)["model_version"] == model_version(cv)
    with pytest.raises(ConfigError, match="no worklist of its own"):
        open_run_view(cv)
    view = open_run_view(cv, predictions=table)
    scored = pd.read_csv(table, dtype={"case_id": str})
    assert view.ensemble and view.fingerprint == model_version(cv)
    np.testing.assert_allclose(view.predictions["risk_low"], scored["p_fusion_min"])
    np.testing.assert_allclose(view.predictions["risk_high"], scored["p_fusion_max"])
    above = view.predictions["vs_threshold"] == "above"
    assert (scored.loc[above, "p_fusion_min"] >= view.threshold).all()
    assert "fold models" in view.band_note and "3 fold models" in (view.source_note or "")
    cid = str(scored.loc[scored.filter(like="present_").min(axis=1) == 1, "case_id"].iloc[0])
    result = view.compute_explanation(cid)
    assert result["ensemble"]["n_models"] == 3
    assert result["modality_shapley"]["risk_fusion"] == pytest.approx(
        float(scored.set_index("case_id").loc[cid, "p_fusion"]), abs=1e-5
    )
    shown = view.case_view(cid)
    assert shown.explanation["within"].keys() == {"image", "signal", "tabular"}
    assert shown.modality_shapley["phi_sd"] == result["ensemble"]["phi_sd"]
    # the case page: the band named as the models' range, their disagreement per modality
    from streamlit.testing.v1 import AppTest

    from clinfuse.review.auth import add_reviewer
    from clinfuse.review.store import ReviewStore

    db = tmp_path / "r.sqlite"
    add_reviewer(ReviewStore(db), "alice", "a long password")
    env = {"CLINFUSE_APP_RUN": str(cv), "CLINFUSE_APP_DB": str(db)}
    env["CLINFUSE_APP_PREDICTIONS"] = str(table)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("CLINFUSE_APP_COHORT", "CLINFUSE_APP_EVALUATION", "CLINFUSE_APP_EXPLANATIONS"):
        monkeypatch.delenv(key, raising=False)
    entry = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
    at = AppTest.from_file(str(entry), default_timeout=120).run()
    at.text_input(key="login_username").input("alice")
    at.text_input(key="login_password").input("a long password")
    at.button(key="login_submit").click().run()
    at.session_state["case_id"] = cid
    at.switch_page("pages/case_review.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.label for m in at.metric][1] == "fold models' range"
    assert any("Disagreement between the fold models" in str(c.value) for c in at.caption)
    each = view.fold_model_risks(cid)  # the models behind the band, in fold order
    row = scored.set_index("case_id").loc[cid]
    assert each is not None and len(each) == 3 and np.mean(each) == pytest.approx(row["p_fusion"])
    assert (min(each), max(each)) == pytest.approx((row["p_fusion_min"], row["p_fusion_max"]))
    assert any("Each fold model's risk" in str(c.value) for c in at.caption)
    # the cohort page compares the case mix through the fold models' own outputs
    mix = view.scored_case_mix()
    assert mix is not None and mix["fold_models"] == 3
    assert mix["development"]["n_cases"] == len(pd.read_csv(cv / "evaluation" / "predictions.csv"))
    at.switch_page("pages/cohort.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("fold models' outputs" in str(m.value) for m in at.markdown)
    # a table scored before the per-model outputs were written: a hint, not a wrong reading
    models = tmp_path / "scored.fold_models.csv"
    rows = pd.read_csv(models, dtype={"case_id": str})
    models.unlink()
    from clinfuse.review.cohort import scored_case_mix_table

    shown, text = scored_case_mix_table(open_run_view(cv, predictions=table))
    assert shown is None and "rescore" in text
    # outputs that do not match the table are refused when the app opens
    rows.iloc[1:].to_csv(models, index=False)
    with pytest.raises(ConfigError, match="fold models' outputs do not match") as err:
        open_run_view(cv, predictions=table)
    assert err.value.path == str(models)
    rows.to_csv(models, index=False)
    # a fold model replaced after scoring: the table's version no longer matches
    (cv / "folds" / "fold_2" / "config.yaml").write_text(
        (cv / "folds" / "fold_2" / "config.yaml").read_text() + "\n"
    )
    try:
        with pytest.raises(ConfigError, match="scored by model version"):
            open_run_view(cv, predictions=table)
    finally:
        text = (cv / "folds" / "fold_2" / "config.yaml").read_text()
        (cv / "folds" / "fold_2" / "config.yaml").write_text(text[:-1])


def test_scoring_in_chunks_gives_the_same_ensemble_risks(
    cv: Path, new_cohort: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming the cohort in chunks of 7 rows (memory: one chunk of decoded inputs) gives
    the risks, spread and ablation scorer of loading it whole."""
    import clinfuse.data
    from clinfuse.ensemble import load_ensemble

    ensemble = load_ensemble(cv)
    cohort = ensemble.models[0].checked_cohort(new_cohort)
    whole = ensemble.score(cohort)
    monkeypatch.setattr(clinfuse.data, "SCORING_CHUNK", 7)
    chunked = ensemble.score(cohort)
    pd.testing.assert_frame_equal(whole.frame, chunked.frame, atol=1e-9, rtol=0)
    assert whole.scorer is not None and chunked.scorer is not None
    for keep in (["image"], ["signal", "tabular"], MODALITIES):
        np.testing.assert_allclose(whole.scorer(keep), chunked.scorer(keep), atol=1e-9)


def test_fold_warnings_are_merged_per_column() -> None:
    """Each fold model flags an extreme value against its own training mean: the case gets one
    warning per column, saying how many models flagged it when not all did."""
    from clinfuse.ensemble import merge_fold_warnings

    per_fold = [
        ["crp 164 is 11.1 SD above the training mean (14.9 ± 13.5)"],
        [
            "crp 164 is 10.0 SD above the training mean (15.4 ± 14.8)",
            "sex has a level never seen in training (treated as missing)",
        ],
        ["crp 164 is 11.2 SD above the training mean (15 ± 13.3)"],
    ]
    assert merge_fold_warnings(per_fold, ["age", "sex", "crp"]) == [
        "sex has a level never seen in training (treated as missing) (in 1 of 3 fold models)",
        "crp 164 is 11.1 SD above the training mean (14.9 ± 13.5)",
    ]
    assert merge_fold_warnings([[], [], []], ["crp"]) == []


def test_recalibrating_the_fold_ensemble_as_a_whole(
    cv: Path, new_cohort: Path, tmp_path: Path
) -> None:
    """``clinfuse recalibrate CV SITE``: the update is the maximum-likelihood logistic fit
    (scikit-learn, unpenalised) of the outcome on the logit of the ensemble's mean risk; the
    new folder's risks, band, evaluation and explanation go through it; the source and its
    fold models are untouched, and its tables and evaluations are not taken for the new
    folder's."""
    from scipy.special import expit, logit
    from sklearn.linear_model import LogisticRegression
    from typer.testing import CliRunner

    from clinfuse.cli import app
    from clinfuse.ensemble import load_ensemble
    from clinfuse.evaluation.evaluate import evaluate_run
    from clinfuse.evaluation.recalibrate import recalibrate_run
    from clinfuse.review.runview import open_run_view
    from clinfuse.scored import evaluates_model, model_version

    before = model_version(cv)
    source = load_ensemble(cv).predict(new_cohort).set_index("case_id")
    out = tmp_path / "cv_site"
    res = CliRunner().invoke(
        app, ["recalibrate", str(cv), str(new_cohort), "--out", str(out), "--method", "logistic"]
    )
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "new fold ensemble" in res.output
    assert model_version(cv) == before and not (cv / "ensemble_calibration.json").exists()
    assert model_version(out) != before
    update = json.loads((out / "recalibration.json").read_text())["outputs"]["fusion"]["update"]
    z, y = logit(source["p_fusion"].to_numpy()), source["label"].to_numpy()
    ref = LogisticRegression(penalty=None, tol=1e-10, max_iter=1000).fit(z[:, None], y)
    assert update["slope"] == pytest.approx(ref.coef_[0][0], abs=1e-4)
    assert update["intercept"] == pytest.approx(ref.intercept_[0], abs=1e-4)

    site = load_ensemble(out)
    got = site.predict(new_cohort).set_index("case_id").loc[source.index]

    def g(p: pd.Series) -> np.ndarray:
        return expit(update["intercept"] + update["slope"] * logit(p.to_numpy()))

    np.testing.assert_allclose(got["p_fusion"], g(source["p_fusion"]), atol=1e-9)
    np.testing.assert_allclose(got["p_fusion_min"], g(source["p_fusion_min"]), atol=1e-9)
    np.testing.assert_allclose(got["p_fusion_max"], g(source["p_fusion_max"]), atol=1e-9)
    np.testing.assert_allclose(got["logit_fusion"], source["logit_fusion"], atol=1e-12)
    assert "fusion: logistic update" in site.info["recalibrated"]
    # fitted on these cases: calibration-in-the-large 0 and slope 1 there (the ML fit's property)
    ev = evaluate_run(out, new_cohort, tmp_path / "ev", n_boot=0)
    cal = ev.metrics["calibration"]["fusion"]
    assert cal["intercept"]["value"] == pytest.approx(0.0, abs=1e-4)
    assert cal["slope"]["value"] == pytest.approx(1.0, abs=1e-4)
    # the source's evaluations and scored tables are another version's
    source_eval = evaluate_run(cv, new_cohort, tmp_path / "ev_source", n_boot=0)
    assert not evaluates_model(out, source_eval.metrics["run"])
    assert evaluates_model(out, ev.metrics["run"])
    table = tmp_path / "scored.csv"
    res = CliRunner().invoke(app, ["predict", str(cv), str(new_cohort), "--out", str(table)])
    assert res.exit_code == 0, res.output
    with pytest.raises(ConfigError, match="scored by model version"):
        open_run_view(out, predictions=table)
    res = CliRunner().invoke(app, ["predict", str(out), str(new_cohort), "--out", str(table)])
    view = open_run_view(out, predictions=table)
    assert view.recalibration and "logistic update" in view.recalibration
    first = str(got.index[0])  # each model's risk through the update: the band's ends
    assert (min(view.fold_model_risks(first)), max(view.fold_model_risks(first))) == (
        pytest.approx((got.loc[first, "p_fusion_min"], got.loc[first, "p_fusion_max"]))
    )
    # one case explained by the recalibrated ensemble: its risk and range
    cid = str(got.index[0])
    res = CliRunner().invoke(
        app,
        ["explain", str(out), str(new_cohort), "--out", str(tmp_path / "ex"), "--case", cid],
    )
    assert res.exit_code == 0, res.output + str(res.exception)
    exp = json.loads((tmp_path / "ex" / "cases" / cid / "explanation.json").read_text())
    assert exp["modality_shapley"]["risk_fusion"] == pytest.approx(got.loc[cid, "p_fusion"])
    assert exp["ensemble"]["risk_fusion_max"] == pytest.approx(got.loc[cid, "p_fusion_max"])
    # refused before any case is scored: the source as --out, a used --out
    with pytest.raises(ConfigError, match="--out is the source"):
        recalibrate_run(cv, new_cohort, cv)
    with pytest.raises(ConfigError, match="not empty"):
        recalibrate_run(cv, new_cohort, out)
    # a damaged calibration file is named, not ignored (the risks would silently change)
    damaged = tmp_path / "cv_damaged"
    shutil.copytree(out, damaged)
    (damaged / "ensemble_calibration.json").write_text('{"calibrators": {"fusion": {"method": 1}}}')
    with pytest.raises(ConfigError, match="ensemble's calibration") as err:
        load_ensemble(damaged)
    assert err.value.path == str(damaged / "ensemble_calibration.json")
    # recalibrated again: the second update applies after the first
    again = recalibrate_run(out, new_cohort, tmp_path / "cv_site2", method="intercept")
    shift = again.report["outputs"]["fusion"]["update"]["intercept"]
    twice = load_ensemble(tmp_path / "cv_site2").predict(new_cohort).set_index("case_id")
    np.testing.assert_allclose(
        twice.loc[source.index, "p_fusion"], expit(logit(got["p_fusion"]) + shift), atol=1e-9
    )
