"""The evaluation's case-mix comparison with the development data (TRIPOD+AI 20c): the
membership model on samples drawn alike and apart, standardised mean differences against a
hand computation, unseen category levels, overlap handling, and the report section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from clinfuse.evaluation.casemix import case_mix, development_cases
from clinfuse.io.tabular import TabularEncoder


def _frame(n: int, seed: int, *, shift: float = 0.0, prefix: str = "c") -> pd.DataFrame:
    """Predictions of a two-modality run: fused logit, outcome, per-modality risk and presence."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.5 + shift, 1.0, n)
    note = rng.random(n) < 0.8
    return pd.DataFrame(
        {
            "case_id": [f"{prefix}{i}" for i in range(n)],
            "split": "train",
            "label": (rng.random(n) < expit(z)).astype(int),
            "logit_fusion": z,
            "p_image": expit(z + rng.normal(0, 0.5, n)),
            "p_note": np.where(note, expit(z + rng.normal(0, 0.5, n)), np.nan),
            "present_image": 1,
            "present_note": note.astype(int),
        }
    )


def test_samples_drawn_alike_look_alike_and_shifted_ones_do_not():
    dev = _frame(1500, 0)
    alike = case_mix(dev, _frame(1500, 1, prefix="e"), ["image", "note"])
    assert alike["membership"]["c_statistic"] < 0.56
    assert "reproducibility" in alike["interpretation"]
    apart = case_mix(dev, _frame(1500, 2, shift=1.5, prefix="e"), ["image", "note"])
    assert apart["membership"]["c_statistic"] > 0.8
    assert "transportability" in apart["interpretation"]
    # the fused logit and the modality logits carry the shift; their coefficients lead
    top = list(apart["membership"]["coefficients"])[:3]
    assert {"fused logit", "image logit", "note logit"} & set(top)
    assert apart["evaluated"]["logit_mean"] - apart["development"]["logit_mean"] == pytest.approx(
        1.5, abs=0.1
    )
    assert apart["evaluated"]["availability"]["note"] == pytest.approx(0.8, abs=0.03)


def test_spread_of_the_linear_predictor_is_reported_as_debray_reads_it():
    dev = _frame(1000, 3)
    wide = _frame(1000, 4, prefix="e")
    wide["logit_fusion"] *= 1.6
    res = case_mix(dev, wide, ["image", "note"])
    ratio = res["evaluated"]["logit_sd"] / res["development"]["logit_sd"]
    assert ratio == pytest.approx(1.6, rel=0.1)
    assert "more spread out here" in res["interpretation"]


def test_standardised_mean_differences_match_a_hand_computation():
    rng = np.random.default_rng(5)
    train = pd.DataFrame({"age": rng.normal(60, 10, 400), "sex": rng.choice(["F", "M"], 400)})
    enc = TabularEncoder(["age", "sex"]).fit(train)
    values = pd.DataFrame(
        {
            "age": [*rng.normal(66, 12, 199), None],
            "sex": ["F"] * 100 + ["M"] * 90 + ["X"] * 5 + [""] * 5,
        }
    )
    ev = _frame(200, 6, prefix="e")
    res = case_mix(_frame(300, 7), ev, ["image", "note"], tabular=enc, tabular_values=values)
    age = next(r for r in res["tabular"] if r["column"] == "age")
    observed = values["age"].dropna().to_numpy(float)
    sd_dev = train["age"].std(ddof=0)  # the encoder's training-split SD
    expected = (observed.mean() - train["age"].mean()) / np.sqrt(
        (sd_dev**2 + observed.std(ddof=1) ** 2) / 2
    )
    assert age["smd"] == pytest.approx(expected, rel=1e-12)
    assert age["flagged"] and age["missing_fraction"] == pytest.approx(1 / 200)
    sex = next(r for r in res["tabular"] if r["column"] == "sex")
    assert sex["n_unseen_levels"] == 1 and sex["n_cases_unseen"] == 5 and sex["flagged"]
    assert "X" not in json.dumps(res)  # counted, never listed


def test_overlapping_ids_are_the_same_cases_only_in_the_development_manifest():
    dev = _frame(300, 8)
    ev = pd.concat([dev.iloc[:100], _frame(100, 9, prefix="e")], ignore_index=True)
    same = case_mix(dev, ev, ["image", "note"], same_manifest=True)
    assert same["n_overlap"] == 100 and same["development"]["n_cases"] == 200
    other = case_mix(dev, ev, ["image", "note"], same_manifest=False)
    assert other["n_overlap"] == 0 and other["development"]["n_cases"] == 300
    everything = case_mix(dev, dev, ["image", "note"], same_manifest=True)
    assert everything["membership"] is None
    assert "Every development case" in everything["interpretation"]


def _fold_models(n: int, k: int, seed: int, *, prefix: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """K fold models scoring the same n cases: each case's true score plus model noise.
    Returns (the ensemble's averaged table, every model's own rows)."""
    rng = np.random.default_rng(seed)
    s = rng.normal(-0.5, 1.0, n)
    rows = []
    for m in range(1, k + 1):
        z = s + rng.normal(0, 0.6, n)
        rows.append(
            pd.DataFrame(
                {
                    "case_id": [f"{prefix}{i}" for i in range(n)],
                    "model": m,
                    "label": np.nan,
                    "logit_fusion": z,
                    "p_image": expit(z),
                    "present_image": 1,
                }
            )
        )
    per_model = pd.concat(rows, ignore_index=True)
    mean = per_model.groupby("case_id", sort=False).mean(numeric_only=True).reset_index()
    return mean.drop(columns="model"), per_model


def test_a_fold_ensemble_is_compared_through_its_models_own_outputs():
    """Out-of-fold development predictions are one model's each; the ensemble's averages
    spread less. Compared through every model's rows (weight 1/K), cases drawn alike look
    alike; compared through the averages they looked less spread out and apart."""
    _, dev_rows = _fold_models(3000, 5, 0, prefix="d")
    # development: each case scored by one model, as a cross-validation's out-of-fold ones
    pick = np.arange(3000) % 5  # case i scored by model pick[i] + 1
    dev = dev_rows.iloc[pick * 3000 + np.arange(3000)].drop(columns="model")
    averaged, per_model = _fold_models(3000, 5, 1, prefix="e")
    old = case_mix(dev, averaged, ["image"])
    new = case_mix(dev, averaged, ["image"], evaluated_models=per_model)
    assert old["evaluated"]["logit_sd"] / old["development"]["logit_sd"] < 0.93
    assert "less spread out" in old["interpretation"]
    assert new["evaluated"]["logit_sd"] / new["development"]["logit_sd"] == pytest.approx(
        1.0, abs=0.04
    )
    assert new["membership"]["c_statistic"] < old["membership"]["c_statistic"]
    assert new["membership"]["n_evaluated"] == 3000 and new["evaluated"]["n_cases"] == 3000
    assert new["fold_models"] == 5 and old["fold_models"] is None
    assert "each of the 5 fold models" in new["interpretation"]


def test_k_equal_rows_of_weight_one_over_k_are_one_row():
    """The weighting against a reference: every case repeated K times with weight 1/K gives
    the unrepeated comparison (c-statistic, coefficients, logit SD)."""
    dev, ev = _frame(400, 5), _frame(300, 6, shift=0.4, prefix="e")
    plain = case_mix(dev, ev, ["image", "note"])
    repeated = pd.concat([ev.assign(model=m) for m in (1, 2, 3)], ignore_index=True)
    weighted = case_mix(dev, ev, ["image", "note"], evaluated_models=repeated)
    assert weighted["membership"]["c_statistic"] == pytest.approx(
        plain["membership"]["c_statistic"], abs=1e-9
    )
    for name, value in plain["membership"]["coefficients"].items():
        assert weighted["membership"]["coefficients"][name] == pytest.approx(value, abs=1e-4)
    assert weighted["evaluated"]["logit_sd"] == pytest.approx(
        ev["logit_fusion"].std(ddof=1), rel=1e-12
    )


def test_fold_model_rows_must_hold_every_case_once_per_model():
    ev = _frame(20, 7, prefix="e")
    rows = pd.concat([ev.assign(model=m) for m in (1, 2)], ignore_index=True)
    with pytest.raises(ValueError, match="once for each of its 2 models"):
        case_mix(_frame(50, 8), ev, ["image"], evaluated_models=rows.iloc[1:])
    with pytest.raises(ValueError, match="once for each"):
        case_mix(_frame(50, 8), ev, ["image"], evaluated_models=pd.concat([rows, rows.iloc[:1]]))
    with pytest.raises(ValueError, match="'model' column"):
        case_mix(_frame(50, 8), ev, ["image"], evaluated_models=ev)


def test_development_cases_are_the_train_and_val_rows():
    frame = pd.DataFrame({"case_id": list("abcd"), "split": ["train", "val", "test", None]})
    assert development_cases(frame)["case_id"].tolist() == ["a", "b"]


def test_evaluate_reports_the_case_mix_of_the_test_split(tiny_run, tiny_cohort, tmp_path):
    from clinfuse.evaluation.evaluate import evaluate_run

    res = evaluate_run(
        tiny_run, tiny_cohort, tmp_path / "ev", split="test", n_boot=20, min_group_size=5
    )
    cm = res.metrics["case_mix"]
    preds = pd.read_csv(tiny_run / "predictions.csv")
    assert cm["development"]["n_cases"] == int(preds["split"].isin(["train", "val"]).sum())
    assert cm["evaluated"]["n_cases"] == res.metrics["n_cases"] and cm["n_overlap"] == 0
    assert 0.5 <= cm["membership"]["c_statistic"] <= 1.0
    assert {r["column"] for r in cm["tabular"]} == set(
        json.loads((tiny_run / "model" / "model.json").read_text())["tabular"]["columns"]
    )
    html = res.report.read_text()
    assert "Case mix compared with the development data" in html and "TRIPOD+AI 20c" in html
