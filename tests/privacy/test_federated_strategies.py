"""Server strategies: FedAvg = centralized GD, FedProx(μ=0) = FedAvg, FedAdam/FedYogi by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from privacy.errors import FederatedError
from privacy.federated.simulation import simulate
from privacy.federated.strategies import (
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    build_strategy,
    weighted_average,
)
from privacy.federated.task import FitResult
from privacy.federated.torch_task import TorchSiteTask


def _bce(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)


def _data(
    seed: int = 0, sizes: tuple[int, ...] = (7, 19, 34)
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        x = torch.randn(n, 5, generator=g, dtype=torch.float64) + 0.3 * i  # sites differ
        y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(x[:, 0])).double()
        y[:2] = torch.tensor([0.0, 1.0], dtype=torch.float64)
        out.append((x, y))
    return out


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(5, 1).double()


def _tasks(
    data: list[tuple[torch.Tensor, torch.Tensor]], module: torch.nn.Module
) -> list[TorchSiteTask]:
    import copy

    return [
        TorchSiteTask(f"s{i}", copy.deepcopy(module), TensorDataset(x, y), _bce, labels=y.numpy())
        for i, (x, y) in enumerate(data)
    ]


def test_weighted_average_matches_flower_aggregate() -> None:
    from flwr.server.strategy.aggregate import aggregate

    rng = np.random.default_rng(1)
    results = [FitResult([rng.normal(size=(3, 2)), rng.normal(size=4)], n) for n in (5, 11, 2)]
    ours = weighted_average(results)
    ref = aggregate([(r.parameters, r.num_examples) for r in results])
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_fedavg_one_full_batch_step_equals_centralized_gd() -> None:
    """Σ_k n_k/N (w − lr ∇L_k) = w − lr ∇L_pooled: FedAvg of one full-batch step is GD."""
    data = _data()
    module = _model()
    lr, rounds = 0.5, 4
    strategy = FedAvg(lr=lr, local_steps=1, batch_size=None)
    history = simulate(_tasks(data, module), strategy, rounds, evaluate=False)

    central = _model()
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    opt = torch.optim.SGD(central.parameters(), lr=lr)
    for _ in range(rounds):
        opt.zero_grad()
        _bce(central, (x, y)).backward()
        opt.step()
    expected = [p.detach().numpy() for p in central.parameters()]
    for got, want in zip(history.parameters, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert not np.allclose(history.parameters[0], _model().weight.detach().numpy())


def test_fedprox_mu_zero_equals_fedavg_exactly_and_mu_pulls_towards_global() -> None:
    data = _data(seed=3)
    module = _model()
    kw = {"lr": 0.3, "local_epochs": 3, "batch_size": 4, "seed": 5}
    avg = simulate(_tasks(data, module), FedAvg(**kw), 2, evaluate=False)
    prox0 = simulate(_tasks(data, module), FedProx(proximal_mu=0.0, **kw), 2, evaluate=False)
    for a, b in zip(avg.parameters, prox0.parameters, strict=True):
        assert np.array_equal(a, b)
    start = [p.detach().numpy() for p in module.parameters()]
    prox = simulate(_tasks(data, module), FedProx(proximal_mu=5.0, **kw), 2, evaluate=False)

    def drift(params: list[np.ndarray]) -> float:
        return float(sum(np.sum((p - s) ** 2) for p, s in zip(params, start, strict=True)))

    assert drift(prox.parameters) < drift(avg.parameters)


def test_fedprox_sends_mu_and_fedavg_refuses_it() -> None:
    assert FedProx(proximal_mu=0.25).configure_fit(3).proximal_mu == 0.25
    assert FedAvg().configure_fit(1).proximal_mu == 0.0
    with pytest.raises(FederatedError, match="proximal_mu"):
        build_strategy("fedavg", proximal_mu=0.1)
    with pytest.raises(FederatedError, match="unknown strategy"):
        build_strategy("fedsgd")


def _results() -> tuple[list[np.ndarray], list[FitResult]]:
    g = [np.array([1.0, -2.0]), np.array([[0.5]])]
    r = [
        FitResult([np.array([1.2, -1.0]), np.array([[0.1]])], 3),
        FitResult([np.array([0.8, -2.5]), np.array([[0.9]])], 1),
    ]
    return g, r


def test_fedadam_matches_hand_computation_and_flower_defaults() -> None:
    s = FedAdam()
    assert (s.eta, s.eta_l, s.beta_1, s.beta_2, s.tau) == (0.1, 0.1, 0.9, 0.99, 1e-9)
    assert s.configure_fit(1).lr == 0.1  # eta_l is the sites' learning rate
    g, r = _results()
    s.initialize(g)
    new = s.aggregate_fit(1, g, r)
    # by hand: avg = (3*r0 + r1)/4; Δ = avg − g; m = 0.1Δ; v = 0.01Δ²;
    # η_t = 0.1·sqrt(1 − 0.99²)/(1 − 0.9²); w = g + η_t m/(sqrt(v) + τ)
    avg0 = np.array([(3 * 1.2 + 0.8) / 4, (3 * -1.0 - 2.5) / 4])
    d0 = avg0 - g[0]
    eta_t = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    want0 = g[0] + eta_t * (0.1 * d0) / (np.sqrt(0.01 * d0**2) + 1e-9)
    np.testing.assert_allclose(new[0], want0, rtol=1e-12)
    # second round keeps the moments
    d1 = weighted_average(r)[0] - new[0]
    m1 = 0.9 * 0.1 * d0 + 0.1 * d1
    v1 = 0.99 * 0.01 * d0**2 + 0.01 * d1**2
    eta_t2 = 0.1 * np.sqrt(1 - 0.99**3) / (1 - 0.9**3)
    new2 = s.aggregate_fit(2, new, r)
    np.testing.assert_allclose(new2[0], new[0] + eta_t2 * m1 / (np.sqrt(v1) + 1e-9), rtol=1e-12)


def test_fedyogi_matches_hand_computation() -> None:
    s = FedYogi()
    assert (s.eta, s.eta_l, s.tau) == (1e-2, 0.0316, 1e-3)
    g, r = _results()
    s.initialize(g)
    new = s.aggregate_fit(1, g, r)
    d = weighted_average(r)[1] - g[1]
    v = 0.0 - 0.01 * d**2 * np.sign(0.0 - d**2)
    want = g[1] + 0.01 * (0.1 * d) / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(new[1], want, rtol=1e-12)


def test_fedadam_matches_flower_fedadam() -> None:
    """Same update as flwr.server.strategy.FedAdam over two rounds."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdam as FlowerFedAdam

    g, r = _results()
    ours = FedAdam(eta=0.05, beta_1=0.8)
    ours.initialize(g)
    ref = FlowerFedAdam(initial_parameters=ndarrays_to_parameters(g), eta=0.05, beta_1=0.8)
    params = g
    for rnd in (1, 2):
        params = ours.aggregate_fit(rnd, params, r)
        flower_results = [
            (
                None,
                FitRes(
                    Status(Code.OK, ""), ndarrays_to_parameters(x.parameters), x.num_examples, {}
                ),
            )
            for x in r
        ]
        agg, _ = ref.aggregate_fit(rnd, flower_results, [])  # type: ignore[arg-type]
        for a, b in zip(params, parameters_to_ndarrays(agg), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10)


def test_aggregation_rejects_mismatched_models() -> None:
    with pytest.raises(FederatedError, match="shape"):
        weighted_average([FitResult([np.zeros(2)], 1), FitResult([np.zeros(3)], 1)])
    with pytest.raises(FederatedError, match="0 training examples"):
        weighted_average([FitResult([np.zeros(2)], 0)])
