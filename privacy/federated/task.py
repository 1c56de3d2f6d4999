"""The contract between federated orchestration and one site's local training.

Everything in :mod:`privacy.federated` (the in-process simulator and the server-side
strategies) and :mod:`privacy.flower` (the real Flower ServerApp/ClientApp) talks to a site
only through :class:`SiteTask`. Parameters travel as a list of NumPy arrays in a fixed
order (the order of the module's ``state_dict`` entries that are trained), exactly what
Flower's ``ArrayRecord``/``NDArrays`` carry, so the simulator and a real deployment run
the same code path on each site.

A site implementation wraps a PyTorch module and that site's data loaders; it never sees
another site's data. :mod:`clinfuse.federated` provides one for the fusion model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["EvalResult", "FitConfig", "FitResult", "Parameters", "SiteTask"]

Parameters = list[np.ndarray]
"""Model parameters in the task's fixed order (float32 or float64 arrays)."""


@dataclass(frozen=True)
class FitConfig:
    """What the server asks of a site in one round.

    Attributes:
        server_round: 1-based round number (seeds local shuffling with ``seed``).
        local_epochs: passes over the site's training data (ignored when ``local_steps``
            is set).
        local_steps: exact number of optimizer steps instead of epochs (None: use epochs).
        lr: local learning rate.
        batch_size: local batch size (None: full batch).
        proximal_mu: FedProx coefficient; the site adds ``mu/2 * ||w - w_global||^2`` to its
            loss. 0 is plain FedAvg local training.
        seed: base seed; a site derives its generator from (seed, server_round, site id).
        extra: strategy-specific settings (e.g. DP-SGD noise multiplier), JSON-serialisable.
    """

    server_round: int
    local_epochs: int = 1
    local_steps: int | None = None
    lr: float = 1e-3
    batch_size: int | None = 32
    proximal_mu: float = 0.0
    seed: int = 0
    extra: dict[str, float | int | str | bool] = field(default_factory=dict)


@dataclass
class FitResult:
    """A site's answer to one round: updated parameters and how many examples produced them."""

    parameters: Parameters
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    """A site's evaluation of the global parameters on its own held-out data."""

    loss: float
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class SiteTask(Protocol):
    """One site's local training and evaluation, generic over the model."""

    site_id: str

    def get_parameters(self) -> Parameters:
        """The current local parameters (copies)."""
        ...

    def fit(self, parameters: Parameters, config: FitConfig) -> FitResult:
        """Load ``parameters``, train locally as ``config`` says, return the new parameters."""
        ...

    def evaluate(self, parameters: Parameters, config: FitConfig) -> EvalResult:
        """Load ``parameters`` and evaluate on this site's evaluation data."""
        ...
