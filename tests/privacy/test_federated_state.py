"""Cross-round state of a TorchSiteTask: a task rebuilt every round continues exactly.

Flower 1.42 starts a ClientApp process per message, so a site's task is rebuilt each round;
its DP accountant and optimizer state must travel through ``state_dict`` (NumPy only).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from privacy.dp import DPConfig, compute_epsilon
from privacy.errors import FederatedError
from privacy.federated.task import FitConfig, Parameters
from privacy.federated.torch_task import TorchSiteTask


def _data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).float()
    return TensorDataset(x, y)


def _bce(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(
        model(batch[0]).squeeze(-1), batch[1]
    )


def _task(dp: DPConfig | None) -> TorchSiteTask:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    return TorchSiteTask(
        "site-a",
        model,
        _data(),
        _bce,
        optimizer="adam",
        keep_optimizer_state=True,
        dp=dp,
        dp_rounds=3 if dp is not None and dp.target_epsilon is not None else None,
    )


def _through_npz(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a process boundary allows: plain arrays, no pickle."""
    buf = io.BytesIO()
    np.savez(buf, **state)  # type: ignore[arg-type]
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _cfg(r: int) -> FitConfig:
    return FitConfig(server_round=r, local_epochs=1, lr=0.05, batch_size=16, seed=7)


def _two_ways(dp: DPConfig | None, rounds: int = 2) -> tuple[TorchSiteTask, TorchSiteTask]:
    kept = _task(dp)
    params: Parameters = kept.get_parameters()
    for r in range(1, rounds + 1):
        params = kept.fit(params, _cfg(r)).parameters

    state: dict[str, np.ndarray] | None = None
    params2: Parameters = _task(dp).get_parameters()
    rebuilt = _task(dp)
    for r in range(1, rounds + 1):
        rebuilt = _task(dp)  # a fresh process each round
        if state is not None:
            rebuilt.load_state_dict(state)
        params2 = rebuilt.fit(params2, _cfg(r)).parameters
        state = _through_npz(rebuilt.state_dict())
    for a, b in zip(params, params2, strict=True):
        np.testing.assert_array_equal(a, b)
    return kept, rebuilt


def test_dp_task_rebuilt_each_round_matches_one_task_and_its_epsilon() -> None:
    # a fixed σ keeps it fast (a target ε costs a σ search per rebuild); the restored σ
    # overrides whatever a rebuilt task would compute, which the assertions cover
    dp = DPConfig(noise_multiplier=1.1, target_delta=1e-3, max_grad_norm=1.0)
    kept, rebuilt = _two_ways(dp)
    a, b = kept.privacy_spent(), rebuilt.privacy_spent()
    assert a is not None and b is not None
    assert a["steps"] == b["steps"] == 2 * 4  # 64 cases / batches of 16, two rounds
    assert b["epsilon"] == a["epsilon"]
    assert b["noise_multiplier"] == a["noise_multiplier"]
    ref = compute_epsilon(a["noise_multiplier"], a["sample_rate"], a["steps"], 1e-3)
    assert b["epsilon"] == pytest.approx(ref, rel=1e-9)
    state = rebuilt.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert int(state["rounds_fitted"][0]) == 2 and int(state["local_steps"][0]) == 8
    assert any(k.endswith(".exp_avg") for k in state)


def test_without_restored_state_a_rebuilt_task_forgets_its_budget() -> None:
    """The property above is not vacuous: dropping the state loses ε and Adam moments."""
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    kept = _task(dp)
    params = kept.fit(kept.get_parameters(), _cfg(1)).parameters
    kept_params = kept.fit(params, _cfg(2)).parameters
    fresh = _task(dp)
    fresh_params = fresh.fit(params, _cfg(2)).parameters
    a, b = kept.privacy_spent(), fresh.privacy_spent()
    assert a is not None and b is not None
    assert b["steps"] == a["steps"] // 2 and b["epsilon"] < a["epsilon"]
    assert not np.array_equal(kept_params[0], fresh_params[0])


def test_plain_adam_state_carries_over_and_mismatched_state_is_refused() -> None:
    _kept, rebuilt = _two_ways(None)
    assert rebuilt.privacy_spent() is None
    state = rebuilt.state_dict()
    assert "dp.history" not in state
    with pytest.raises(FederatedError, match="trains without DP"):
        _task(None).load_state_dict(
            {**state, "dp.history": np.zeros((1, 3)), "dp.noise_multiplier": np.ones(1)}
        )
    with pytest.raises(FederatedError, match="format"):
        _task(None).load_state_dict({**state, "format": np.asarray([99])})
    with pytest.raises(FederatedError, match="no DP accountant"):
        _task(DPConfig(noise_multiplier=1.0)).load_state_dict(state)
