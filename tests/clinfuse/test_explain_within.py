"""Within-modality attributions: notes, images (2-D and 3-D), signals, tabular values.

References: Integrated Gradients completeness (Σ attributions = f(x) − f(baseline));
occlusion values recomputed by hand (zero one segment, run the network);
tabular Shapley values by brute-force enumeration of column subsets; the note
SHAP values' efficiency against the run's own unimodal logit.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from math import factorial
from pathlib import Path

import numpy as np
import pytest
import torch

from clinfuse.explain import ExplainerFallbackWarning
from clinfuse.explain.within import (
    UnimodalLogit,
    explain_image,
    explain_note,
    explain_signal,
    explain_tabular,
    image_lesion_mass,
    lesion_mask,
)


@pytest.fixture(scope="module")
def loaded(tiny_run: Path, tiny_cohort: Path):
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader
    from clinfuse.model import load_run

    model = load_run(tiny_run)
    rows = Cohort.from_manifest(tiny_cohort, target=model.config.data.target).rows
    cases = CaseLoader(model.config.data, model.modalities, model.tabular).load_many(rows).cases
    full = [c for c in cases if c["present"].all()]
    return model, cases, full


def _unimodal(model, cases, modality: str) -> np.ndarray:
    raw = model.forward_cases(cases)
    return raw["unimodal"][:, model.modalities.index(modality)]


def test_image_gradient_shap_and_ig_completeness(loaded) -> None:
    model, cases, full = loaded
    case = full[0]
    bg = np.stack([c["image"] for c in cases if c.get("image") is not None][1:9])
    exp = explain_image(model, case, background=bg, n_samples=64)
    assert exp.method == "gradient_shap"
    assert exp.values.shape == case["image"].shape
    assert exp.heatmap.shape == case["image"].shape[1:]
    assert np.abs(exp.values).sum() > 0
    ig = explain_image(model, case, background=bg, methods=["integrated_gradients"], n_samples=200)
    assert ig.method == "integrated_gradients"
    net = UnimodalLogit(model, "image").eval()
    with torch.no_grad():
        fx = float(net(torch.from_numpy(case["image"])[None])[0, 0])
        fref = float(net(torch.from_numpy(bg).mean(0, keepdim=True))[0, 0])
    assert ig.values.sum() == pytest.approx(fx - fref, abs=2e-2 * max(1.0, abs(fx - fref)))


def test_image_fallback_warns_and_names_method(loaded, monkeypatch) -> None:
    import shap

    model, _cases, full = loaded

    class Broken:
        def __init__(self, *a, **k) -> None:
            raise RuntimeError("unsupported module: LayerNorm")

    monkeypatch.setattr(shap, "GradientExplainer", Broken)
    with pytest.warns(ExplainerFallbackWarning, match="falling back to integrated_gradients"):
        exp = explain_image(model, full[0])
    assert exp.method == "integrated_gradients"


def test_image_3d_per_slice() -> None:
    from clinfuse.config import RunConfig
    from clinfuse.model import FusionModel

    cfg = RunConfig.model_validate(
        {
            "data": {"image": {"spatial_size": [16, 16, 16], "ndim": 3}},
            "encoders": {"image": {"name": "small_cnn", "embed_dim": 4, "width": 2}},
        }
    )
    torch.manual_seed(0)
    model = FusionModel.build(cfg, ["image"], in_shapes={"image_channels": 1})
    model.network.eval()
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(1, 16, 16, 16)).astype(np.float32)
    vol[:, 4:8, 4:8, 10:13] += 4.0  # a bright blob on slices 10-12
    case = {"case_id": "v1", "image": vol, "present": np.array([True])}
    exp = explain_image(model, case, methods=["integrated_gradients"], n_samples=64)
    assert exp.heatmap.shape == (16, 16, 16)
    assert exp.slice_mass.shape == (16,)
    assert exp.slice_mass.sum() == pytest.approx(1.0)


def test_signal_occlusion_matches_manual_occlusion(loaded) -> None:
    model, _cases, full = loaded
    case = full[0]
    exp = explain_signal(model, case, segment_seconds=0.5)
    assert exp.method == "occlusion"
    n_leads, n_t = case["signal"].shape
    assert exp.values.shape == (n_leads, n_t)
    assert exp.segment_values.shape == (n_leads, len(exp.segments))
    valid = torch.from_numpy(np.asarray(case["signal_meta"]["valid_mask"], bool))[None]
    net = UnimodalLogit(model, "signal", lambda t: {"signal": t, "valid_mask": valid}).eval()
    x = torch.from_numpy(case["signal"])[None]
    with torch.no_grad():
        fx = float(net(x)[0, 0])
        for lead, seg in [(0, 0), (n_leads - 1, len(exp.segments) - 1), (0, 3)]:
            a, b = exp.segments[seg]
            xo = x.clone()
            xo[0, lead, a:b] = 0.0
            expected = fx - float(net(xo)[0, 0])
            assert exp.segment_values[lead, seg] == pytest.approx(expected, abs=1e-5)


def test_tabular_shap_equals_brute_force(loaded) -> None:
    model, cases, _full = loaded
    case = next(c for c in cases if c.get("tabular") is not None and (c["tabular_mask"] == 0).any())
    exp = explain_tabular(model, case)
    cols = list(model.tabular.columns)
    assert list(exp.feature_names) == cols
    enc = model.network.encoders["tabular"]
    head = model.network.fusion.unimodal_heads["tabular"]
    values = torch.from_numpy(case["tabular"])[None]
    mask = torch.from_numpy(case["tabular_mask"])[None]
    groups = []
    for j, col in enumerate(cols):
        k = 1 if model.tabular.kinds_[col] == "numeric" else len(model.tabular.categories_[col])
        groups += [j] * k
    groups_t = torch.tensor(groups)

    def value(s: set[int]) -> float:
        keep = torch.tensor([g in s for g in groups], dtype=torch.float32)[None]
        with torch.no_grad():
            return float(head(enc({"values": values, "mask": mask * keep}))[0, 0])

    n = len(cols)
    ref = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            w = factorial(k) * factorial(n - k - 1) / factorial(n)
            for s in itertools.combinations(others, k):
                ref[i] += w * (value(set(s) | {i}) - value(set(s)))
    np.testing.assert_allclose(exp.values, ref, atol=1e-6)
    full = _unimodal(model, [case], "tabular")[0]
    assert exp.base_values + exp.values.sum() == pytest.approx(full, abs=1e-5)
    missing_cols = {int(g) for g in groups_t[torch.from_numpy(case["tabular_mask"]) == 0]}
    for j in missing_cols:
        assert exp.values[j] == 0.0 and exp.data[j] is None


def test_note_token_shap_is_additive(loaded) -> None:
    model, _cases, full = loaded
    case = full[0]
    exp = explain_note(model, case, max_evals=40)
    assert exp.method == "partition_text"
    assert len(exp.values) == len(exp.data) > 10
    assert "".join(exp.data).split() == case["note"].split()
    z = _unimodal(model, [case], "note")[0]
    assert float(np.asarray(exp.base_values)) + exp.values.sum() == pytest.approx(z, abs=1e-4)


def test_randomised_model_changes_attributions(loaded) -> None:
    from clinfuse.explain.modality import build_modality_cache, modality_shapley

    model, cases, full = loaded
    case = full[1]
    bg = np.stack([c["image"] for c in cases if c.get("image") is not None][2:10])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExplainerFallbackWarning)
        a = explain_image(model, case, background=bg, methods=["integrated_gradients"])
    rand = copy.deepcopy(model)
    torch.manual_seed(123)
    with torch.no_grad():
        for p in rand.network.encoders["image"].parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        rand.network.fusion.weight_raw.copy_(torch.randn_like(rand.network.fusion.weight_raw))
    b = explain_image(rand, case, background=bg, methods=["integrated_gradients"])
    corr = np.corrcoef(a.heatmap.ravel(), b.heatmap.ravel())[0, 1]
    assert corr < 0.9, corr
    sub = cases[:16]
    phi_a = modality_shapley(model, build_modality_cache(model, sub)).values
    phi_b = modality_shapley(rand, build_modality_cache(rand, sub)).values
    assert np.abs(phi_a - phi_b).max() > 1e-3


def test_lesion_mask_maps_dicom_grid_to_model_grid() -> None:
    # a lesion at DICOM (row 8, col 24) on a 32² image, model grid 16² (X = col, Y = row)
    mask = lesion_mask((16, 16), (32, 32), row=8.0, col=24.0, radius=3.0)
    xs, ys = np.nonzero(mask)
    assert abs(xs.mean() - 11.75) < 0.6 and abs(ys.mean() - 3.75) < 0.6
    heat = np.zeros((16, 16))
    heat[mask] = 1.0
    inside, area = image_lesion_mass(heat, mask)
    assert inside == 1.0 and area == pytest.approx(mask.mean())


@pytest.fixture(scope="module")
def intermediate(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny intermediate-fusion run (attention over modality tokens) and its complete cases."""
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader
    from clinfuse.model import load_run
    from clinfuse.training import train_run
    from tests.conftest import tiny_config

    cfg = tiny_config(epochs=1)
    cfg.fusion.strategy = "intermediate"
    cfg.fusion.hidden, cfg.fusion.n_heads, cfg.fusion.n_layers = 16, 2, 1
    run = train_run(tiny_cohort, tmp_path_factory.mktemp("inter") / "run", cfg)
    model = load_run(run)
    rows = Cohort.from_manifest(tiny_cohort, target=model.config.data.target).rows
    cases = CaseLoader(model.config.data, model.modalities, model.tabular).load_many(rows).cases
    return model, [c for c in cases if c["present"].all()]


def test_intermediate_fusion_attributions_add_up_to_the_fused_logit(intermediate) -> None:
    """Early/intermediate fusion: the target is the fused logit with the other modalities held
    at this case, so tabular and note SHAP values add up to the case's fused logit and the
    image's Integrated Gradients to the fused-logit difference (completeness)."""
    from clinfuse.explain.within import FusedLogit

    model, full = intermediate
    case = full[0]
    fused = float(model.forward_cases([case])["logit"][0])
    tab = explain_tabular(model, case)
    assert tab.target.startswith("fused logit")
    assert tab.base_values + tab.values.sum() == pytest.approx(fused, abs=1e-5)
    note = explain_note(model, case, max_evals=30)
    assert float(np.asarray(note.base_values)) + note.values.sum() == pytest.approx(fused, abs=1e-4)
    assert note.target == "fused logit (note varied, others held)"
    ig = explain_image(model, case, methods=["integrated_gradients"], n_samples=200)
    net = UnimodalLogit(model, "image", head=FusedLogit(model, case, "image")).eval()
    x = torch.from_numpy(case["image"])[None]
    with torch.no_grad():
        fx, fref = float(net(x)[0, 0]), float(net(torch.zeros_like(x))[0, 0])
    assert fx == pytest.approx(fused, abs=1e-5)  # the held-out modalities reproduce the case
    assert ig.values.sum() == pytest.approx(fx - fref, abs=2e-2 * max(1.0, abs(fx - fref)))
    # the late-fusion target is unchanged: the unimodal logit
    assert explain_tabular(*_late_model_and_case(intermediate)).target == "tabular unimodal logit"


def _late_model_and_case(intermediate):
    model, full = intermediate
    late = copy.copy(model)
    late.config = model.config.model_copy(deep=True)
    late.config.fusion.strategy = "late"
    return late, full[0]
