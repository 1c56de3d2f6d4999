"""DP-SGD (Opacus) and its accounting: published reference values, clipping, noise-free equivalence."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from privacy.dp import (
    TF_PRIVACY_ORDERS,
    DPConfig,
    compute_epsilon,
    fix_module,
    make_private,
    noise_multiplier_for,
)
from privacy.errors import DPError
from privacy.federated.simulation import simulate
from privacy.federated.strategies import FedAvg
from privacy.federated.task import FitConfig
from privacy.federated.torch_task import TorchSiteTask


# -- accountant: published reference values ------------------------------------------
def test_rdp_matches_opacus_test_suite() -> None:
    # Opacus tests/accountants_test.py: σ=1.5, q=0.04, 2250 steps, δ=1e-5
    assert compute_epsilon(1.5, 0.04, 2250, 1e-5) == pytest.approx(7.32911117143, abs=1e-9)


def test_prv_matches_opacus_test_suite() -> None:
    # Opacus tests/accountants_test.py (PRV): int(90 / 0.04) = 2249 steps, assertAlmostEqual
    # to 7 places (our value differs from the published one by 2e-9)
    eps = compute_epsilon(1.5, 0.04, 2249, 1e-5, accountant="prv")
    assert eps == pytest.approx(6.777395712150674, abs=5e-8)


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "delta", "expected"),
    [
        (1.3, 150 / 60000, 6000, 1e-5, 0.7242234026109595),
        (1.0, 100 / 100000, 30000, 1e-7, 1.4154988495444845),
    ],
)
def test_rdp_matches_tf_privacy_test_suite(
    sigma: float, q: float, steps: int, delta: float, expected: float
) -> None:
    # TensorFlow Privacy compute_dp_sgd_privacy tests, with its order list
    eps = compute_epsilon(sigma, q, steps, delta, orders=TF_PRIVACY_ORDERS)
    assert eps == pytest.approx(expected, rel=1e-9)


def test_noise_for_target_epsilon_round_trips_and_unreachable_target_is_clear() -> None:
    # q = 1 keeps the search cheap (closed-form RDP of the Gaussian mechanism)
    sigma = noise_multiplier_for(2.0, 1e-5, 1.0, 50)
    eps = compute_epsilon(sigma, 1.0, 50, 1e-5)
    assert 1.98 <= eps <= 2.0
    # the RDP-to-DP conversion over orders ≤ 63 cannot go below ~0.1 at δ = 1e-5
    with pytest.raises(DPError, match="cannot be reached"):
        noise_multiplier_for(1e-3, 1e-5, 1.0, 1000)
    with pytest.raises(DPError, match="delta"):
        DPConfig(target_epsilon=1.0, target_delta=0.0)
    with pytest.raises(DPError, match="exactly one"):
        DPConfig()


# -- DP-SGD ---------------------------------------------------------------------------
def _data(n: int = 32, d: int = 6, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 3.0  # big inputs → gradients larger than the clip
    y = torch.tensor([0.0, 1.0] * (n // 2))
    return TensorDataset(x, y)


def _model(d: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def _bce(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)


def test_per_sample_gradients_are_clipped_to_max_grad_norm() -> None:
    clip, batch = 0.5, 8
    data = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(data, batch_size=batch)
    cfg = DPConfig(noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False)
    private = make_private(model, opt, loader, cfg)
    x, y = next(iter(private.data_loader))
    private.optimizer.zero_grad()
    _bce(private.module, (x, y)).backward()
    params = [p for p in private.module.parameters() if p.requires_grad]
    per_sample = torch.cat([p.grad_sample.reshape(batch, -1) for p in params], dim=1)
    norms = per_sample.norm(dim=1)
    assert (norms > clip).any()  # clipping has work to do
    private.optimizer.pre_step()  # clip, add (zero) noise, average
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = per_sample * factor[:, None]
    assert float(clipped.norm(dim=1).max()) <= clip + 1e-6
    flat_grad = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(flat_grad, clipped.sum(0) / batch, rtol=1e-5, atol=1e-7)
    # one case at a time: Opacus' own update is that case's gradient clipped to norm ≤ C
    for i in range(4):
        private.optimizer.zero_grad()
        _bce(private.module, (x[i : i + 1], y[i : i + 1])).backward()
        private.optimizer.pre_step()
        g = torch.cat([p.grad.reshape(-1) for p in params]) * batch  # undo the 1/B scaling
        assert float(g.norm()) <= clip + 1e-5
        torch.testing.assert_close(g, clipped[i] if i == 0 else g)


def test_noise_zero_and_huge_clip_reproduce_the_non_private_update() -> None:
    data = _data()
    base = _model()
    cfg = FitConfig(server_round=1, local_epochs=3, lr=0.05, batch_size=None)
    plain = TorchSiteTask("a", copy.deepcopy(base), data, _bce)
    dp = TorchSiteTask(
        "a",
        copy.deepcopy(base),
        data,
        _bce,
        dp=DPConfig(noise_multiplier=0.0, max_grad_norm=1e9, poisson_sampling=False),
    )
    start = plain.get_parameters()
    a = plain.fit(start, cfg)
    b = dp.fit(start, cfg)
    for x, y in zip(a.parameters, b.parameters, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a.parameters[0], start[0])


def test_target_epsilon_is_spent_over_the_rounds_and_recorded() -> None:
    data = _data(64)
    tasks = [
        TorchSiteTask(
            f"s{i}",
            _model(),
            _data(64, seed=i),
            _bce,
            dp=DPConfig(target_epsilon=3.0, target_delta=1e-3, max_grad_norm=1.0),
            dp_rounds=3,
        )
        for i in range(2)
    ]
    assert len(data) == 64
    # full batches (q = 1) keep the σ search cheap on a 2-core CI machine
    h = simulate(tasks, FedAvg(lr=0.1, batch_size=None, local_epochs=2), 3, evaluate=False)
    spent = tasks[0].privacy_spent()
    assert spent is not None and spent["steps"] == 3 * 2 and spent["accountant"] == "rdp"
    assert 2.9 <= spent["epsilon"] <= 3.0
    # the recorded value is the accountant's value for the recorded (σ, q, steps, δ)
    assert spent["epsilon"] == pytest.approx(
        compute_epsilon(spent["noise_multiplier"], spent["sample_rate"], spent["steps"], 1e-3),
        rel=1e-9,
    )
    assert h.rounds[-1].fit["s0"]["epsilon"] == pytest.approx(spent["epsilon"])


def test_make_private_with_epsilon_over_epochs() -> None:
    data = _data(64)
    model = _model()
    # q = 1 (full batches) keeps Opacus' σ search cheap; the accountants' subsampled
    # values are checked against published references above
    loader = DataLoader(data, batch_size=64)
    cfg = DPConfig(target_epsilon=2.0, target_delta=1e-3)
    private = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loader, cfg, epochs=3
    )
    for _ in range(3):
        for x, y in private.data_loader:
            private.optimizer.zero_grad()
            if len(y):
                _bce(private.module, (x, y)).backward()
            private.optimizer.step()
    spent = private.spent()
    assert spent.steps == 3 and spent.accountant == "rdp"
    assert 1.9 <= spent.epsilon <= 2.02


def test_unreachable_epsilon_at_a_site_is_a_clear_error_not_a_dropout() -> None:
    task = TorchSiteTask(
        "tiny",
        _model(),
        _data(16),
        _bce,
        dp=DPConfig(target_epsilon=1e-3, target_delta=1e-5),
        dp_rounds=50,
    )
    with pytest.raises(DPError, match="cannot be reached"):
        simulate([task], FedAvg(lr=0.1, batch_size=None, local_epochs=5), 2)


def test_batchnorm_is_fixed_with_a_logged_note(caplog: pytest.LogCaptureFixture) -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)
    )
    with caplog.at_level(logging.INFO, logger="privacy.dp.engine"):
        fixed = fix_module(model)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in fixed.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in fixed.modules())
    assert "BatchNorm replaced by GroupNorm" in caplog.text
    with pytest.raises(DPError, match="fix_module"):
        make_private(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4),
            DPConfig(noise_multiplier=1.0),
        )


def test_an_empty_poisson_draw_of_batches_holding_text_is_an_empty_batch() -> None:
    """Batches with case ids (text): Opacus cannot shape an empty draw of them and raised
    TypeError, which dropped the site; the private loader now yields an EmptyBatch."""
    from privacy.dp.engine import EmptyBatch
    from privacy.federated.torch_task import batch_length

    rows = [
        {"x": torch.randn(3), "y": torch.tensor(float(i % 2)), "id": f"c{i}"} for i in range(20)
    ]

    def collate(items: list[dict]) -> dict:
        return {
            "x": torch.stack([r["x"] for r in items]),
            "label": torch.stack([r["y"] for r in items]),
            "case_id": [r["id"] for r in items],
        }

    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(rows, batch_size=1, collate_fn=collate)  # q = 1/20: many empty draws
    private = make_private(model, opt, loader, DPConfig(noise_multiplier=1.0, max_grad_norm=1.0))
    torch.manual_seed(0)
    sizes = [batch_length(b) for _ in range(5) for b in private.data_loader]
    assert 0 in sizes and max(sizes) >= 1
    empties = [b for b in private.data_loader if batch_length(b) == 0]
    assert all(isinstance(b, EmptyBatch) or len(b["label"]) == 0 for b in empties)
