"""The in-process simulator, site sampling, dropouts, partitions and site input checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from privacy.errors import FederatedError, SiteDataError
from privacy.federated.partition import (
    iid_partition,
    label_skew_partition,
    make_partition,
    partition_by_column,
    quantity_skew_partition,
)
from privacy.federated.simulation import sample_sites, simulate
from privacy.federated.strategies import FedAvg
from privacy.federated.task import FitConfig, FitResult, SiteTask
from privacy.federated.torch_task import TorchSiteTask, check_site_labels


def _bce(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)


def _tasks(n_sites: int = 3, n: int = 12) -> list[TorchSiteTask]:
    torch.manual_seed(0)
    base = torch.nn.Linear(4, 1)
    g = torch.Generator().manual_seed(1)
    tasks = []
    for i in range(n_sites):
        x = torch.randn(n, 4, generator=g)
        y = torch.tensor([0.0, 1.0] * (n // 2))
        tasks.append(
            TorchSiteTask(
                f"site{i}",
                copy.deepcopy(base),
                TensorDataset(x, y),
                _bce,
                eval_data=TensorDataset(x, y),
                labels=y.numpy(),
            )
        )
    return tasks


class Flaky:
    """Wraps a task; raises ConnectionError in ``fit`` for the given rounds (a dropout)."""

    def __init__(self, task: TorchSiteTask, fail_rounds: set[int]) -> None:
        self.task = task
        self.site_id = task.site_id
        self.fail_rounds = fail_rounds

    def get_parameters(self):
        return self.task.get_parameters()

    def fit(self, parameters, config: FitConfig) -> FitResult:
        if config.server_round in self.fail_rounds:
            self.task.fit(parameters, config)  # half-done work that never reaches the server
            raise ConnectionError(f"{self.site_id} lost its connection")
        return self.task.fit(parameters, config)

    def evaluate(self, parameters, config):
        return self.task.evaluate(parameters, config)


def test_tasks_satisfy_protocol_and_history_has_per_site_metrics() -> None:
    tasks = _tasks()
    assert all(isinstance(t, SiteTask) for t in tasks)
    seen: list[int] = []
    h = simulate(
        tasks, FedAvg(lr=0.1, batch_size=4), 3, on_round=lambda r, p: seen.append(r.server_round)
    )
    assert seen == [1, 2, 3]
    assert h.sites == ["site0", "site1", "site2"]
    last = h.rounds[-1]
    assert set(last.evaluate) == set(h.sites) and set(last.fit) == set(h.sites)
    assert last.fit["site1"]["steps"] == 3 and last.fit["site1"]["num_examples"] == 12
    # the weighted mean of equal-size sites is the plain mean
    mean = np.mean([last.evaluate[s]["loss"] for s in h.sites])
    assert last.evaluate_aggregated["loss"] == pytest.approx(mean)
    assert len(h.metric("loss")) == 3 and h.to_dict()["strategy"]["name"] == "fedavg"


def test_dropout_mid_round_completes_with_the_others() -> None:
    gd = {"lr": 0.1, "local_steps": 1, "batch_size": None}  # deterministic local work
    tasks = _tasks()
    flaky = [tasks[0], Flaky(tasks[1], {2}), tasks[2]]
    h = simulate(flaky, FedAvg(**gd), 2, min_fit_clients=2)
    r2 = h.rounds[1]
    assert r2.completed == ["site0", "site2"]
    assert "ConnectionError" in r2.failed["site1"] and "site1" not in r2.fit
    assert set(r2.evaluate) == {"site0", "site1", "site2"}  # everyone evaluates the new model
    # round 2's model is the weighted mean of the two sites that answered
    fresh = _tasks()
    after_one = simulate(fresh, FedAvg(**gd), 1, evaluate=False).parameters
    cfg = FedAvg(**gd).configure_fit(2)
    a = fresh[0].fit(after_one, cfg).parameters
    c = fresh[2].fit(after_one, cfg).parameters
    for got, x, y in zip(h.parameters, a, c, strict=True):
        np.testing.assert_allclose(got, (x + y) / 2, rtol=1e-6)


def test_too_few_sites_raise_and_keep_last_global_model() -> None:
    tasks = _tasks()
    flaky = [Flaky(tasks[0], {2}), Flaky(tasks[1], {2}), tasks[2]]
    after_one = simulate(_tasks(), FedAvg(lr=0.1, batch_size=4), 1, evaluate=False).parameters
    with pytest.raises(FederatedError, match="only 1 of 3 sampled sites") as err:
        simulate(flaky, FedAvg(lr=0.1, batch_size=4), 3, min_fit_clients=2, evaluate=False)
    kept = err.value.parameters
    assert isinstance(kept, list)
    for a, b in zip(kept, after_one, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(err.value.history.rounds) == 1  # type: ignore[attr-defined]


def test_sampling_is_seeded_and_sized() -> None:
    ids = [f"s{i}" for i in range(10)]
    a = [sample_sites(ids, r, 3, seed=7) for r in range(1, 6)]
    b = [sample_sites(ids, r, 3, seed=7) for r in range(1, 6)]
    assert a == b and all(len(x) == 3 for x in a)
    assert len({tuple(x) for x in a}) > 1  # different rounds sample different sites
    assert sample_sites(ids, 1, 3, seed=8) != a[0] or sample_sites(ids, 2, 3, seed=8) != a[1]
    h = simulate(
        _tasks(5, 8), FedAvg(lr=0.1, batch_size=4), 2, clients_per_round=2, seed=3, evaluate=False
    )
    assert [r.sampled for r in h.rounds] == [sample_sites(h.sites, r, 2, seed=3) for r in (1, 2)]
    with pytest.raises(FederatedError, match="min_fit_clients=3"):
        simulate(_tasks(), FedAvg(), 1, clients_per_round=2, min_fit_clients=3)


def test_site_without_one_class_is_refused_by_name() -> None:
    with pytest.raises(SiteDataError, match=r"site 'north'.*class \[1\]"):
        check_site_labels("north", np.zeros(20))
    x = torch.randn(6, 4)
    with pytest.raises(SiteDataError, match="site 'east'"):
        TorchSiteTask(
            "east",
            torch.nn.Linear(4, 1),
            TensorDataset(x, torch.zeros(6)),
            _bce,
            labels=np.zeros(6),
        )


def test_site_smaller_than_batch_is_refused_and_not_a_dropout() -> None:
    tasks = _tasks(2, 12)
    with pytest.raises(
        SiteDataError, match=r"site 'site0' has 12 training cases, fewer than the batch size 32"
    ):
        simulate(tasks, FedAvg(batch_size=32), 1)


def test_partitions_are_disjoint_complete_and_seeded() -> None:
    y = np.array([0] * 80 + [1] * 20)
    for parts in (
        iid_partition(100, 4, seed=1),
        quantity_skew_partition(100, 4, alpha=0.5, seed=1),
        label_skew_partition(y, 4, alpha=0.3, seed=1),
        make_partition("site", column=["b", "a", "b", "c"]),
    ):
        allidx = np.concatenate(list(parts.values()))
        assert len(allidx) == len(set(allidx.tolist()))
        assert sorted(allidx.tolist()) == list(range(len(allidx)))
    assert partition_by_column(["b", "a", "b"])["b"].tolist() == [0, 2]
    a = label_skew_partition(y, 4, alpha=0.3, seed=1)
    b = label_skew_partition(y, 4, alpha=0.3, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # label skew makes event rates differ between sites more than IID does
    iid = iid_partition(100, 4, seed=1)
    spread = lambda p: np.ptp([y[v].mean() for v in p.values()])  # noqa: E731
    assert spread(a) > spread(iid)
    sizes = [len(v) for v in quantity_skew_partition(100, 4, alpha=0.3, seed=2).values()]
    assert max(sizes) > 2 * min(sizes)
    with pytest.raises(SiteDataError, match="row 1 has no site"):
        partition_by_column(["a", ""])
