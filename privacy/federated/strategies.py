"""Server strategies: what each round asks of the sites and how their answers are merged.

Every strategy has the same small interface, used by the in-process simulator
(:func:`privacy.federated.simulation.simulate`) and by the Flower server app
(:mod:`privacy.flower`)::

    strategy = build_strategy("fedadam", lr=0.05, local_epochs=1)
    strategy.initialize(global_params)            # resets server-optimizer state
    config = strategy.configure_fit(server_round)  # FitConfig sent to every sampled site
    global_params = strategy.aggregate_fit(server_round, global_params, fit_results)

* :class:`FedAvg` — the example-weighted mean of the sites' parameters (McMahan et al. 2017).
* :class:`FedProx` — FedAvg on the server; each site adds ``mu/2 * ||w - w_global||^2`` to its
  local loss (Li et al. 2020). The server only sends ``proximal_mu``.
* :class:`FedAdam`, :class:`FedYogi` — adaptive server optimizers over the pseudo-gradient
  ``Δ = FedAvg(results) - w_global`` (Reddi et al. 2021, "Adaptive Federated Optimization"),
  with the same defaults and update rules as Flower's ``FedAdam``/``FedYogi`` (tests check
  the update against a hand computation). As in Flower, ``eta_l`` is the sites' learning
  rate: it is what :meth:`configure_fit` sends as ``FitConfig.lr`` unless ``lr`` is given.

>>> import numpy as np
>>> from privacy.federated.task import FitResult
>>> s = FedAvg()
>>> s.aggregate_fit(1, [np.zeros(2)], [FitResult([np.ones(2)], 3), FitResult([np.zeros(2)], 1)])
[array([0.75, 0.75])]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from privacy.errors import FederatedError
from privacy.federated.task import FitConfig, FitResult, Parameters

__all__ = [
    "STRATEGIES",
    "FedAdam",
    "FedAvg",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Strategy",
    "build_strategy",
    "weighted_average",
    "weighted_metrics",
]


def weighted_average(results: Sequence[FitResult]) -> Parameters:
    """Example-weighted mean of the sites' parameters (Flower's ``aggregate``).

    Sums in float64 and returns each array in its incoming dtype.

    Raises:
        FederatedError: no results, no examples, or parameter lists that do not line up.
    """
    if not results:
        raise FederatedError("no site results to aggregate")
    total = sum(int(r.num_examples) for r in results)
    if total <= 0:
        raise FederatedError(
            "the sites reported 0 training examples in total; every site needs training cases"
        )
    n_arrays = len(results[0].parameters)
    for r in results:
        if len(r.parameters) != n_arrays:
            raise FederatedError(
                f"sites sent different numbers of parameter arrays ({len(r.parameters)} vs "
                f"{n_arrays}); every site must run the same model"
            )
    out: Parameters = []
    for i in range(n_arrays):
        ref = np.asarray(results[0].parameters[i])
        acc = np.zeros(ref.shape, dtype=np.float64)
        for r in results:
            arr = np.asarray(r.parameters[i])
            if arr.shape != ref.shape:
                raise FederatedError(
                    f"parameter array {i} has shape {arr.shape} at one site and {ref.shape} "
                    "at another; every site must run the same model"
                )
            acc += arr.astype(np.float64) * (int(r.num_examples) / total)
        out.append(acc.astype(ref.dtype) if np.issubdtype(ref.dtype, np.floating) else acc)
    return out


def weighted_metrics(results: Sequence[FitResult]) -> dict[str, float]:
    """Example-weighted mean of each metric the sites reported (sites lacking it are skipped)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for r in results:
        for k, v in r.metrics.items():
            if isinstance(v, (int, float)) and np.isfinite(v):
                sums[k] = sums.get(k, 0.0) + float(v) * r.num_examples
                weights[k] = weights.get(k, 0.0) + r.num_examples
    return {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


class Strategy:
    """Base class: a FitConfig template plus example-weighted averaging.

    Args:
        local_epochs: passes over each site's training data per round.
        local_steps: exact local optimizer steps per round instead of epochs.
        lr: the sites' learning rate.
        batch_size: local batch size (None: full batch).
        seed: base seed sent to the sites (local shuffling, DP noise).
        extra: strategy- or task-specific settings sent with every FitConfig.
    """

    name: ClassVar[str] = "strategy"

    def __init__(
        self,
        *,
        local_epochs: int = 1,
        local_steps: int | None = None,
        lr: float = 1e-3,
        batch_size: int | None = 32,
        seed: int = 0,
        extra: dict[str, float | int | str | bool] | None = None,
    ) -> None:
        if local_epochs < 1:
            raise FederatedError(f"local_epochs must be >= 1, got {local_epochs}")
        if local_steps is not None and local_steps < 1:
            raise FederatedError(f"local_steps must be >= 1 or None, got {local_steps}")
        if lr <= 0:
            raise FederatedError(f"the local learning rate must be > 0, got {lr}")
        self.template = FitConfig(
            server_round=0,
            local_epochs=local_epochs,
            local_steps=local_steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            extra=dict(extra or {}),
        )

    def initialize(self, parameters: Parameters) -> None:
        """Reset server state before round 1 (stateless strategies ignore it)."""

    def configure_fit(self, server_round: int) -> FitConfig:
        """The FitConfig every sampled site receives in ``server_round`` (1-based)."""
        return replace(self.template, server_round=server_round, extra=dict(self.template.extra))

    def aggregate_fit(
        self, server_round: int, global_params: Parameters, results: Sequence[FitResult]
    ) -> Parameters:
        """The new global parameters from the sites' results of ``server_round``."""
        return weighted_average(results)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in the run)."""
        t = self.template
        return {
            "name": self.name,
            "local_epochs": t.local_epochs,
            "local_steps": t.local_steps,
            "lr": t.lr,
            "batch_size": t.batch_size,
            "proximal_mu": t.proximal_mu,
            "seed": t.seed,
            **self._hyper(),
        }

    def _hyper(self) -> dict[str, Any]:
        return {}


class FedAvg(Strategy):
    """Federated averaging: the new global model is the example-weighted mean of the sites'."""

    name = "fedavg"


class FedProx(FedAvg):
    """FedAvg plus a proximal term in local training.

    Args:
        proximal_mu: μ ≥ 0; each site minimises ``loss + mu/2 * ||w - w_global||^2``.
            μ = 0 is exactly FedAvg.
        **kwargs: see :class:`Strategy`.
    """

    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if proximal_mu < 0:
            raise FederatedError(f"proximal_mu must be >= 0, got {proximal_mu}")
        self.template = replace(self.template, proximal_mu=float(proximal_mu))


class FedOpt(Strategy):
    """Adaptive server optimizers over the pseudo-gradient (Reddi et al. 2021).

    Args:
        eta: server learning rate.
        eta_l: the sites' learning rate (sent as ``FitConfig.lr`` unless ``lr`` is given).
        beta_1: momentum of the first moment.
        beta_2: decay of the second moment.
        tau: adaptivity (added to ``sqrt(v)``).
        **kwargs: see :class:`Strategy`.
    """

    name = "fedopt"
    defaults: ClassVar[dict[str, float]] = {
        "eta": 1e-1,
        "eta_l": 1e-1,
        "beta_1": 0.9,
        "beta_2": 0.99,
        "tau": 1e-9,
    }

    def __init__(
        self,
        *,
        eta: float | None = None,
        eta_l: float | None = None,
        beta_1: float | None = None,
        beta_2: float | None = None,
        tau: float | None = None,
        lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        d = self.defaults
        self.eta = float(d["eta"] if eta is None else eta)
        self.eta_l = float(d["eta_l"] if eta_l is None else eta_l)
        self.beta_1 = float(d["beta_1"] if beta_1 is None else beta_1)
        self.beta_2 = float(d["beta_2"] if beta_2 is None else beta_2)
        self.tau = float(d["tau"] if tau is None else tau)
        if self.eta <= 0 or self.tau < 0 or not (0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1):
            raise FederatedError(
                f"{self.name}: need eta > 0, tau >= 0 and betas in [0, 1); got eta={self.eta}, "
                f"tau={self.tau}, beta_1={self.beta_1}, beta_2={self.beta_2}"
            )
        super().__init__(lr=self.eta_l if lr is None else lr, **kwargs)
        self.m_t: Parameters | None = None
        self.v_t: Parameters | None = None

    def initialize(self, parameters: Parameters) -> None:
        self.m_t = None
        self.v_t = None

    def aggregate_fit(
        self, server_round: int, global_params: Parameters, results: Sequence[FitResult]
    ) -> Parameters:
        avg = weighted_average(results)
        current = [np.asarray(x, dtype=np.float64) for x in global_params]
        delta = [a.astype(np.float64) - c for a, c in zip(avg, current, strict=True)]
        if self.m_t is None:
            self.m_t = [np.zeros_like(d) for d in delta]
        if self.v_t is None:
            self.v_t = [np.zeros_like(d) for d in delta]
        self.m_t = [
            self.beta_1 * m + (1 - self.beta_1) * d for m, d in zip(self.m_t, delta, strict=True)
        ]
        self.v_t = [self._second_moment(v, d) for v, d in zip(self.v_t, delta, strict=True)]
        step = self._step_size(server_round)
        new = [
            c + step * m / (np.sqrt(v) + self.tau)
            for c, m, v in zip(current, self.m_t, self.v_t, strict=True)
        ]
        return [n.astype(np.asarray(g).dtype) for n, g in zip(new, global_params, strict=True)]

    def _second_moment(self, v: np.ndarray, d: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _step_size(self, server_round: int) -> float:
        return self.eta

    def _hyper(self) -> dict[str, Any]:
        return {
            "eta": self.eta,
            "eta_l": self.eta_l,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "tau": self.tau,
        }


class FedAdam(FedOpt):
    """Server-side Adam over the pseudo-gradient (Flower's ``FedAdam``, its defaults).

    ``v ← β2 v + (1 − β2) Δ²``; the step uses Flower's bias-corrected rate
    ``eta * sqrt(1 − β2^(t+1)) / (1 − β1^(t+1))`` for round t.
    """

    name = "fedadam"

    def _second_moment(self, v: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1 - self.beta_2) * d * d

    def _step_size(self, server_round: int) -> float:
        t = server_round + 1.0
        return float(self.eta * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t))


class FedYogi(FedOpt):
    """Server-side Yogi (Flower's ``FedYogi``, its defaults: eta 1e-2, eta_l 0.0316, tau 1e-3).

    ``v ← v − (1 − β2) Δ² sign(v − Δ²)``; no bias correction.
    """

    name = "fedyogi"
    defaults: ClassVar[dict[str, float]] = {
        "eta": 1e-2,
        "eta_l": 0.0316,
        "beta_1": 0.9,
        "beta_2": 0.99,
        "tau": 1e-3,
    }

    def _second_moment(self, v: np.ndarray, d: np.ndarray) -> np.ndarray:
        d2 = d * d
        return v - (1.0 - self.beta_2) * d2 * np.sign(v - d2)


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAdam, FedYogi)
}


def build_strategy(name: str, **kwargs: Any) -> Strategy:
    """A strategy by name (``fedavg``, ``fedprox``, ``fedadam``, ``fedyogi``).

    Keyword arguments the strategy does not take (``proximal_mu`` for FedAvg, ``eta`` for
    FedProx) are refused with a clear message rather than ignored.

    Raises:
        FederatedError: unknown name or an option the strategy does not take.
    """
    key = name.lower()
    if key not in STRATEGIES:
        raise FederatedError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    cls = STRATEGIES[key]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise FederatedError(f"strategy {key!r}: {e}") from e
