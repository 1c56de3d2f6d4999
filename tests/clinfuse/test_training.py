"""Training smoke tests on a tiny synthetic cohort: run folder, reload, missing modalities, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clinfuse.config import load_config
from clinfuse.errors import ClinFuseError, CohortError, ConfigError
from clinfuse.model import FusionModel, load_run
from clinfuse.training import train_run
from tests.conftest import tiny_config


def test_run_folder_is_complete(tiny_run):
    for name in (
        "config.yaml",
        "data_report.json",
        "metrics.json",
        "predictions.csv",
        "train_log.csv",
        "model/model.json",
        "model/fusion.safetensors",
    ):
        assert (tiny_run / name).exists(), name
    assert not (tiny_run.parent / "r1.partial").exists()
    assert not list(tiny_run.rglob("*.pkl")) and not list(tiny_run.rglob("*.pt"))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for name in ("fusion", "image", "note", "signal", "tabular"):
        for metric in ("auroc", "auprc", "brier"):
            block = metrics["models"][name][metric]
            assert set(block) == {"value", "ci_low", "ci_high"}
            assert block["ci_low"] <= block["value"] <= block["ci_high"]
    frame = pd.read_csv(tiny_run / "predictions.csv")
    test = frame[frame.split == "test"]
    assert metrics["n_cases"] == len(test) and metrics["n_events"] == int(test.label.sum())
    report = json.loads((tiny_run / "data_report.json").read_text())
    assert report["n_used"] == len(frame) == 64
    assert sum(report["availability"]["patterns"].values()) == 64
    # config.yaml is fully resolved and reloadable
    cfg = load_config(tiny_run / "config.yaml")
    assert cfg.data.modalities == ["image", "note", "signal", "tabular"]


def test_predictions_have_the_contract_columns(tiny_run):
    frame = pd.read_csv(tiny_run / "predictions.csv")
    expected = ["case_id", "split", "label", "p_fusion", "logit_fusion"]
    expected += [f"p_{m}" for m in ("image", "note", "signal", "tabular")]
    expected += [f"present_{m}" for m in ("image", "note", "signal", "tabular")]
    expected += ["input_warnings"]
    assert list(frame.columns) == expected
    for m in ("image", "note", "signal"):
        missing = frame[f"present_{m}"] == 0
        assert frame.loc[missing, f"p_{m}"].isna().all()
        assert frame.loc[~missing, f"p_{m}"].between(0, 1).all()
    assert set(frame.split) == {"train", "val", "test"}


def test_reloaded_run_predicts_bit_for_bit(tiny_run, tiny_cohort):
    model = load_run(tiny_run)
    again = model.predict(tiny_cohort)
    saved = pd.read_csv(tiny_run / "predictions.csv")
    np.testing.assert_array_equal(again["p_fusion"].to_numpy(), saved["p_fusion"].to_numpy())
    np.testing.assert_array_equal(
        again["logit_fusion"].to_numpy(), saved["logit_fusion"].to_numpy()
    )


def test_predictions_name_inputs_outside_the_training_data(tiny_run, tiny_cohort, tmp_path):
    model = load_run(tiny_run)
    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, root)
    manifest = pd.read_csv(root / tiny_cohort.name, dtype=str)
    target = manifest["case_id"].iloc[0]
    mean, sd = model.tabular.means_["crp"], model.tabular.stds_["crp"]
    manifest.loc[0, "crp"] = str(mean + 10 * sd)
    manifest.loc[0, "sex"] = "unknown-level"
    manifest.to_csv(root / tiny_cohort.name, index=False)
    frame = model.predict(root / tiny_cohort.name).set_index("case_id")
    before = pd.read_csv(tiny_run / "predictions.csv", dtype={"case_id": str}).set_index("case_id")
    warned = frame.loc[target, "input_warnings"]
    assert f"crp {mean + 10 * sd:g} is 10.0 SD above the training mean" in warned
    assert "sex has a level never seen in training" in warned
    others = frame.index[frame.index != target]
    assert frame.loc[others, "input_warnings"].tolist() == (
        before.loc[others, "input_warnings"].fillna("").tolist()
    )


def test_removing_a_file_equals_masking_the_modality(tiny_run, tiny_cohort, tmp_path):
    """A case without its image file is predicted exactly as the same case with the image masked out."""
    model = load_run(tiny_run)
    manifest = pd.read_csv(tiny_cohort, dtype=str)
    full = manifest.dropna(subset=["image", "note", "signal"]).head(4).copy()
    root = tiny_cohort.parent
    rows = []
    for k, mods_kept in enumerate([("note", "signal"), ("image",), ("signal",), ()]):
        row = full.iloc[k].copy()
        for col in ("image", "note", "signal"):
            row[col] = str(root / row[col]) if col in mods_kept else ""
        rows.append(row)
    reduced = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(reduced, index=False)
    from clinfuse.cohort import Cohort
    from clinfuse.data import CaseLoader

    pred = model.predict(Cohort.from_manifest(reduced, allow_external_paths=True))
    # the same cases with every file, masked by hand
    loader = CaseLoader(model.config.data, model.modalities, model.tabular)
    cohort_full = Cohort.from_manifest(tiny_cohort).subset(list(full.case_id))
    cases = loader.load_many(cohort_full.rows).cases
    for k, mods_kept in enumerate([("note", "signal"), ("image",), ("signal",), ()]):
        keep = set(mods_kept) | {"tabular"}
        cases[k]["present"] = np.array([m in keep for m in model.modalities])
    raw = model.forward_cases(cases)
    np.testing.assert_allclose(pred["logit_fusion"].to_numpy(), raw["logit"], rtol=0, atol=1e-6)
    # 1, 2 and 3 modalities present: every case got a prediction
    assert pred["p_fusion"].notna().all()
    assert pred[[f"present_{m}" for m in model.modalities]].sum(axis=1).tolist() == [3, 2, 2, 1]


def test_cohort_lacking_a_run_modality_is_an_error(tiny_run, tiny_cohort, tmp_path):
    manifest = pd.read_csv(tiny_cohort, dtype=str).drop(columns=["signal"])
    for col in ("image", "note"):
        manifest[col] = [
            str(tiny_cohort.parent / v) if isinstance(v, str) else "" for v in manifest[col]
        ]
    path = tmp_path / "no_signal.csv"
    manifest.to_csv(path, index=False)
    model = load_run(tiny_run)
    from clinfuse.cohort import Cohort

    c = Cohort.from_manifest(path, allow_external_paths=True)
    with pytest.raises(CohortError, match=r"no column for modalities \['signal'\]"):
        model.predict(c)
    frame = model.predict(c, allow_missing_modalities=True)
    assert (frame["present_signal"] == 0).all() and len(frame) == len(manifest)


@pytest.mark.parametrize("strategy", ["early", "intermediate"])
def test_comparator_strategies_train(tiny_cohort, tmp_path, strategy):
    cfg = tiny_config(epochs=1)
    cfg.fusion.strategy = strategy
    out = train_run(tiny_cohort, tmp_path / strategy, cfg)
    frame = pd.read_csv(out / "predictions.csv")
    assert frame["p_fusion"].between(0, 1).all()
    model = load_run(out)
    assert model.network.fusion.strategy == strategy


def test_ft_transformer_tabular_encoder_trains_and_reloads(tiny_cohort, tmp_path):
    cfg = tiny_config(epochs=1)
    cfg.data.modalities = ["tabular", "signal"]
    cfg.encoders["tabular"] = {"name": "ft_transformer", "embed_dim": 4, "d_token": 8, "n_heads": 2}
    out = train_run(tiny_cohort, tmp_path / "ftt", cfg)
    model = load_run(out)
    assert type(model.network.encoders["tabular"]).__name__ == "FTTransformerEncoder"
    saved = pd.read_csv(out / "predictions.csv")
    again = model.predict(tiny_cohort)
    np.testing.assert_array_equal(again["p_tabular"].to_numpy(), saved["p_tabular"].to_numpy())
    assert saved["p_tabular"].between(0, 1).all()


def test_training_is_deterministic_on_cpu(tiny_cohort, tiny_run, tmp_path):
    again = train_run(tiny_cohort, tmp_path / "r2", tiny_config())
    a = pd.read_csv(tiny_run / "predictions.csv")
    b = pd.read_csv(again / "predictions.csv")
    np.testing.assert_array_equal(a["logit_fusion"].to_numpy(), b["logit_fusion"].to_numpy())


def test_resume_after_interruption_gives_the_same_model(tiny_cohort, tmp_path):
    cfg = tiny_config(epochs=3, patience=5)
    full = train_run(tiny_cohort, tmp_path / "full", cfg)

    class Stop(Exception):
        pass

    def stop_after_two(record, _max):
        if record.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train_run(tiny_cohort, tmp_path / "cut", cfg, on_epoch=stop_after_two)
    assert not (tmp_path / "cut").exists()  # never a half-written run folder that looks complete
    assert (tmp_path / "cut.partial" / "checkpoints" / "last.ckpt").exists()
    with pytest.raises(ConfigError, match="unfinished run"):
        train_run(tiny_cohort, tmp_path / "cut", cfg)
    resumed = train_run(tiny_cohort, tmp_path / "cut", None, resume=True)
    a = pd.read_csv(full / "predictions.csv")
    b = pd.read_csv(resumed / "predictions.csv")
    np.testing.assert_array_equal(a["logit_fusion"].to_numpy(), b["logit_fusion"].to_numpy())
    log = pd.read_csv(resumed / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3]


def test_resume_with_another_config_is_refused(tiny_cohort, tmp_path):
    def stop(record, _max):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(tiny_cohort, tmp_path / "cut", tiny_config(), on_epoch=stop)
    other = tiny_config()
    other.encoders["image"]["embed_dim"] = 16
    with pytest.raises(ConfigError, match="differs from the one the interrupted run"):
        train_run(tiny_cohort, tmp_path / "cut", other, resume=True)


def test_checkpoint_from_another_model_is_refused(tiny_cohort, tmp_path):
    def stop(record, _max):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(tiny_cohort, tmp_path / "a", tiny_config(), on_epoch=stop)
    with pytest.raises(KeyboardInterrupt):
        cfg = tiny_config()
        cfg.encoders["image"]["embed_dim"] = 16
        train_run(tiny_cohort, tmp_path / "b", cfg, on_epoch=stop)
    shutil.copy(
        tmp_path / "a.partial" / "checkpoints" / "last.ckpt",
        tmp_path / "b.partial" / "checkpoints" / "last.ckpt",
    )
    with pytest.raises(ConfigError, match="another config"):
        train_run(tiny_cohort, tmp_path / "b", None, resume=True)


# -- bad input -------------------------------------------------------------------
def _rewrite(cohort: Path, tmp_path: Path, edit) -> Path:
    frame = pd.read_csv(cohort, dtype=str)
    for col in ("image", "note", "signal"):
        frame[col] = [str(cohort.parent / v) if isinstance(v, str) else "" for v in frame[col]]
    frame = edit(frame)
    path = tmp_path / "edited.csv"
    frame.to_csv(path, index=False)
    return path


def test_unknown_encoder_name(tiny_cohort, tmp_path):
    cfg = tiny_config()
    cfg.encoders["image"] = {"name": "vgg99"}
    with pytest.raises(ConfigError, match="vgg99"):
        train_run(tiny_cohort, tmp_path / "r", cfg)


def test_cohort_without_labels(tiny_cohort, tmp_path):
    path = _rewrite(tiny_cohort, tmp_path, lambda f: f.drop(columns=["label"]))
    cfg = tiny_config()
    cfg.data.allow_external_paths = True
    with pytest.raises(CohortError, match="outcome column 'label' is missing"):
        train_run(path, tmp_path / "r", cfg)
    assert not (tmp_path / "r").exists()


def test_label_all_one_class(tiny_cohort, tmp_path):
    path = _rewrite(tiny_cohort, tmp_path, lambda f: f.assign(label="1"))
    cfg = tiny_config()
    cfg.data.allow_external_paths = True
    with pytest.raises(CohortError, match="needs both 0 and 1"):
        train_run(path, tmp_path / "r", cfg)


def test_unknown_config_field_is_a_config_error(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("training:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"training\.epochz"):
        load_config(bad)


def test_bad_cases_are_excluded_and_recorded(tiny_cohort, tmp_path):
    def corrupt(frame):
        broken = tmp_path / "broken.dcm"
        broken.write_bytes(b"not a dicom at all")
        frame.loc[0, "image"] = str(broken)
        frame.loc[1, "note"] = str(tmp_path / "missing.txt")
        return frame

    path = _rewrite(tiny_cohort, tmp_path, corrupt)
    cfg = tiny_config(epochs=1)
    cfg.data.allow_external_paths = True
    out = train_run(path, tmp_path / "r", cfg)
    report = json.loads((out / "data_report.json").read_text())
    excluded = {e["case_id"]: e for e in report["excluded"]}
    assert set(excluded) == {"case0001", "case0002"}
    assert excluded["case0001"]["field"] == "image"
    assert "not found" in excluded["case0002"]["message"]
    assert report["n_used"] == 62
    frame = pd.read_csv(out / "predictions.csv")
    assert not set(excluded) & set(frame.case_id)


def test_a_run_that_exists_is_not_overwritten(tiny_run, tiny_cohort):
    with pytest.raises(ConfigError, match="finished run"):
        train_run(tiny_cohort, tiny_run, tiny_config())


def test_load_run_on_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ClinFuseError, match=r"model\.json"):
        FusionModel.from_pretrained(tmp_path)


@pytest.mark.gpu
def test_cuda_training_and_prediction(tiny_cohort, tmp_path):
    assert torch.cuda.is_available()
    out = train_run(tiny_cohort, tmp_path / "gpu", tiny_config(device="cuda"))
    info = json.loads((out / "model" / "model.json").read_text())["info"]
    assert info["trained_on"] != "cpu"
    on_gpu = load_run(out, device="cuda").predict(tiny_cohort)
    on_cpu = load_run(out, device="cpu").predict(tiny_cohort)
    assert on_gpu["p_fusion"].between(0, 1).all()
    # the same weights give the same risks on either device (fp32 inference)
    np.testing.assert_allclose(on_gpu["logit_fusion"], on_cpu["logit_fusion"], atol=1e-3)
    saved = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(saved["logit_fusion"], on_cpu["logit_fusion"], atol=1e-5)


@pytest.mark.gpu
def test_cuda_evaluation_matches_cpu(tiny_run, tiny_cohort, tmp_path):
    from clinfuse.evaluation.evaluate import evaluate_run

    kw = {"n_boot": 20, "min_group_size": 10, "min_group_events": 2}
    gpu = evaluate_run(tiny_run, tiny_cohort, tmp_path / "gpu", device="cuda", **kw).metrics
    cpu = evaluate_run(tiny_run, tiny_cohort, tmp_path / "cpu", device="cpu", **kw).metrics
    assert gpu["models"]["fusion"]["auroc"]["value"] == pytest.approx(
        cpu["models"]["fusion"]["auroc"]["value"], abs=1e-3
    )
    for a, b in zip(gpu["ablation"]["rows"], cpu["ablation"]["rows"], strict=True):
        assert a["auroc"]["value"] == pytest.approx(b["auroc"]["value"], abs=1e-3)


@pytest.mark.gpu
def test_cuda_intermediate_fusion_bf16(tiny_cohort, tmp_path):
    cfg = tiny_config(device="cuda", epochs=1)
    cfg.fusion.strategy = "intermediate"
    out = train_run(tiny_cohort, tmp_path / "gpu_int", cfg)
    frame = pd.read_csv(out / "predictions.csv")
    assert frame["p_fusion"].between(0, 1).all() and len(frame) == 64
