"""Contract suite over every fusion strategy (STYLE 13), plus the late-fusion combiner and calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression

from clinfuse.calibration import CALIBRATORS, build_calibrator, calibrator_from_dict
from clinfuse.errors import ConfigError
from clinfuse.fusion import (
    FUSION_STRATEGIES,
    FusionConfig,
    LateFusion,
    build_fusion,
    modality_dropout,
)

MODS = ["image", "note", "signal", "tabular"]
DIMS = {"image": 8, "note": 12, "signal": 6, "tabular": 4}
STRATEGIES = sorted(FUSION_STRATEGIES)


def _inputs(batch: int = 6, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = {m: torch.randn(batch, d, generator=g) for m, d in DIMS.items()}
    present = torch.rand(batch, len(MODS), generator=g) > 0.3
    present[:, 0] = present[:, 0] | ~present.any(dim=1)  # at least one modality per case
    return emb, present


def _head(strategy: str):
    torch.manual_seed(0)
    head = build_fusion(
        FusionConfig(strategy=strategy, hidden=16, n_heads=2, n_layers=1), MODS, DIMS
    )
    return head.eval()


def test_every_strategy_is_registered():
    assert STRATEGIES == ["early", "intermediate", "late"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_output_shapes(strategy):
    emb, present = _inputs()
    out = _head(strategy)(emb, present)
    assert out.logit.shape == (6,)
    assert out.unimodal.shape == (6, 4)
    assert torch.all(out.unimodal[~present] == 0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradients_reach_every_used_parameter(strategy):
    head = _head(strategy).train()
    emb, present = _inputs()
    present[:] = True
    emb = {m: e.requires_grad_(True) for m, e in emb.items()}
    out = head(emb, present)
    (out.logit.sum() + out.unimodal.sum()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(e.grad is not None and e.grad.abs().sum() > 0 for e in emb.values())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_missing_modality_values_are_ignored(strategy):
    """The mask decides, never the values: garbage in an absent modality changes nothing."""
    head = _head(strategy)
    emb, present = _inputs()
    ref = head(emb, present)
    noisy = {
        m: torch.where(present[:, i : i + 1], e, torch.randn_like(e) * 100)
        for i, (m, e) in enumerate(emb.items())
    }
    out = head(noisy, present)
    torch.testing.assert_close(out.logit, ref.logit, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.unimodal, ref.unimodal, rtol=0, atol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_prediction_does_not_depend_on_batch_mates(strategy):
    head = _head(strategy)
    emb, present = _inputs(batch=8)
    full = head(emb, present).logit
    for i in range(8):
        one = head({m: e[i : i + 1] for m, e in emb.items()}, present[i : i + 1]).logit
        torch.testing.assert_close(one, full[i : i + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_save_load_round_trip_is_identical(strategy, tmp_path):
    head = _head(strategy)
    save_file(
        {k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / "f.safetensors")
    )
    again = build_fusion(head.config, MODS, DIMS).eval()
    again.load_state_dict(load_file(str(tmp_path / "f.safetensors")))
    emb, present = _inputs()
    assert torch.equal(again(emb, present).logit, head(emb, present).logit)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_bad_inputs_raise(strategy):
    head = _head(strategy)
    emb, present = _inputs()
    with pytest.raises(ValueError, match="presence mask"):
        head(emb, present[:, :2])
    with pytest.raises(ValueError, match="missing embeddings"):
        head({m: e for m, e in emb.items() if m != "note"}, present)
    with pytest.raises(ValueError, match="'image' must be"):
        head({**emb, "image": emb["image"][:, :3]}, present)


def test_unknown_strategy_and_bad_heads():
    with pytest.raises(ValueError):
        FusionConfig(strategy="stacked")
    with pytest.raises(ConfigError, match="divisible"):
        build_fusion(FusionConfig(strategy="intermediate", hidden=10, n_heads=4), MODS, DIMS)


def test_modality_dropout_keeps_a_present_modality():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(2000, 4, generator=g) > 0.4
    present[:, 1] |= ~present.any(dim=1)
    kept = modality_dropout(present, 0.9, torch.Generator().manual_seed(1))
    assert torch.all(kept <= present)  # a subset
    assert torch.all(kept.sum(dim=1) >= 1)
    assert kept.sum() < present.sum()
    assert torch.equal(modality_dropout(present, 0.0), present)


def test_late_fusion_is_additive_over_present_modalities():
    head = _head("late")
    head.weight_raw.data = torch.tensor([0.3, -1.0, 2.0, 0.1])
    head.center.copy_(torch.tensor([0.5, -0.2, 0.0, 1.0]))
    head.bias.data = torch.tensor(-0.7)
    emb, present = _inputs()
    out = head(emb, present)
    contrib = head.contributions(out.unimodal, present)
    torch.testing.assert_close(out.logit, head.bias + contrib.sum(dim=1))
    assert torch.all(contrib[~present] == 0)
    assert torch.all(head.weights >= 0)


def test_combiner_fit_matches_sklearn_logistic_regression():
    """With positive true weights the constraint is inactive: the fit equals unpenalised logistic regression."""
    rng = np.random.default_rng(0)
    n = 4000
    z = rng.normal(size=(n, 3))
    present = np.ones((n, 3), dtype=bool)
    logit = -0.5 + z @ np.array([1.2, 0.6, 0.3])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    head = build_fusion(FusionConfig(), ["a", "b", "c"], {"a": 2, "b": 2, "c": 2})
    assert isinstance(head, LateFusion)
    head.fit_combiner(torch.tensor(z), torch.tensor(present), torch.tensor(y), l2=0.0)
    ref = LogisticRegression(C=np.inf).fit(z - z.mean(axis=0), y)
    np.testing.assert_allclose(head.weights.detach().numpy(), ref.coef_[0], atol=2e-3)
    np.testing.assert_allclose(float(head.bias.detach()), ref.intercept_[0], atol=2e-3)


def test_combiner_weights_stay_non_negative_for_an_inverted_modality():
    rng = np.random.default_rng(1)
    n = 3000
    y = rng.integers(0, 2, n).astype(float)
    z = np.stack([y * 2 + rng.normal(size=n), -(y * 2) + rng.normal(size=n)], axis=1)
    head = build_fusion(FusionConfig(), ["a", "b"], {"a": 2, "b": 2})
    head.fit_combiner(torch.tensor(z), torch.ones(n, 2, dtype=torch.bool), torch.tensor(y))
    w = head.weights.detach().numpy()
    assert w[0] > 0.5 and 0 <= w[1] < 0.05


# -- calibration --------------------------------------------------------------
def _logits(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.normal(size=n) * 1.5 - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-true))).astype(float)
    return 3.0 * true + 2.0, y  # over-confident and shifted


def test_platt_equals_sklearn_unpenalised_logistic_regression():
    z, y = _logits()
    cal = build_calibrator("platt").fit(z, y)
    ref = LogisticRegression(C=np.inf).fit(z[:, None], y)
    assert cal.slope_ == pytest.approx(ref.coef_[0, 0], abs=1e-3)
    assert cal.intercept_ == pytest.approx(ref.intercept_[0], abs=1e-3)
    np.testing.assert_allclose(cal.predict_proba(z), ref.predict_proba(z[:, None])[:, 1], atol=1e-4)


def test_temperature_recovers_the_scale():
    rng = np.random.default_rng(0)
    true = rng.normal(size=20000) * 1.5
    y = (rng.random(true.size) < 1 / (1 + np.exp(-true))).astype(float)
    cal = build_calibrator("temperature").fit(3.0 * true, y)
    assert cal.temperature_ == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize("method", sorted(CALIBRATORS))
def test_calibrators_round_trip_and_improve_log_loss(method):
    from sklearn.metrics import log_loss

    z, y = _logits()
    cal = build_calibrator(method).fit(z, y)
    again = calibrator_from_dict(cal.to_dict())
    np.testing.assert_array_equal(again.predict_proba(z), cal.predict_proba(z))
    p = cal.predict_proba(z)
    assert np.all((p >= 0) & (p <= 1))
    raw = log_loss(y, 1 / (1 + np.exp(-z)))
    if method != "none":
        assert log_loss(y, np.clip(p, 1e-6, 1 - 1e-6)) < raw


def test_calibration_needs_both_classes():
    with pytest.raises(ConfigError, match="both outcomes"):
        build_calibrator("platt").fit(np.array([0.1, 0.2]), np.array([1.0, 1.0]))
    with pytest.raises(ConfigError, match="unknown calibration"):
        build_calibrator("beta")
