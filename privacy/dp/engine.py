"""Sample-level DP-SGD with Opacus: one private training setup per site.

:func:`make_private` wraps a module, its optimizer and its data loader with an Opacus
``PrivacyEngine``: per-sample gradients are clipped to ``max_grad_norm`` (flat clipping over
all parameters), Gaussian noise of std ``noise_multiplier * max_grad_norm`` is added to their
sum, and batches are drawn by Poisson sampling (each case with probability
``q = 1 / batches per epoch`` ≈ batch/n, as Opacus sets it),
which is what the accountant assumes.

The noise comes either from ``DPConfig.noise_multiplier`` or from a target ``(ε, δ)`` over a
known number of steps (:func:`privacy.dp.accountant.noise_multiplier_for`, the same search as
Opacus' ``make_private_with_epsilon``; with ``epochs`` that function itself is called).
BatchNorm mixes cases in a batch and is refused by Opacus: :func:`fix_module` swaps it for
GroupNorm (``ModuleValidator.fix``) and logs that it did. Layers Opacus cannot handle (e.g.
a Hugging Face BERT) must stay outside the private module: freeze them and feed their
outputs (cached embeddings) as data.

>>> from privacy.dp import DPConfig
>>> DPConfig(target_epsilon=3.0).accountant
'rdp'
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from privacy.dp.accountant import ACCOUNTANTS, check_delta, noise_multiplier_for
from privacy.errors import DPError

__all__ = [
    "DPConfig",
    "EmptyBatch",
    "PrivacySpent",
    "PrivateTraining",
    "fix_module",
    "make_private",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPConfig:
    """How to train with DP-SGD.

    Attributes:
        target_epsilon: ε to reach after all the steps (None: give ``noise_multiplier``).
        target_delta: δ of the guarantee (< 1/n).
        noise_multiplier: σ; used when ``target_epsilon`` is None.
        max_grad_norm: per-sample gradient clipping norm C.
        accountant: ``rdp`` (default) or ``prv``.
        poisson_sampling: Poisson batches (required for the stated guarantee; False only for
            tests that compare against non-private updates).
        secure_mode: Opacus' cryptographically safe noise (slower; needs ``torchcsprng``).
    """

    target_epsilon: float | None = None
    target_delta: float = 1e-5
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    poisson_sampling: bool = True
    secure_mode: bool = False

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise DPError(
                f"unknown accountant {self.accountant!r}; choose one of {list(ACCOUNTANTS)}"
            )
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise DPError("give exactly one of target_epsilon and noise_multiplier")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise DPError(f"target_epsilon must be > 0, got {self.target_epsilon}")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise DPError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.max_grad_norm <= 0:
            raise DPError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        check_delta(self.target_delta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrivacySpent:
    """The guarantee a private training has used so far (recorded in the run)."""

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fix_module(module: nn.Module, *, note: Callable[[str], None] | None = None) -> nn.Module:
    """Return ``module`` made Opacus-compatible (BatchNorm → GroupNorm), noting any change.

    Raises:
        DPError: a layer Opacus cannot make private remains after the fix.
    """
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(module, strict=False)
    if not problems:
        return module
    fixed = ModuleValidator.fix(module)
    say = note or log.info
    say(
        "DP-SGD: Opacus cannot use "
        + ", ".join(
            sorted({type(p).__name__ + ": " + str(p).splitlines()[0][:80] for p in problems})
        )
        + "; the module was fixed (BatchNorm replaced by GroupNorm) — save and reload the fixed "
        "module, not the original"
    )
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise DPError(
            "the module has layers Opacus cannot make private even after ModuleValidator.fix: "
            f"{[str(p).splitlines()[0] for p in remaining]}; freeze them and feed their outputs "
            "as inputs (e.g. cached embeddings)"
        )
    return fixed


class PrivateTraining:
    """A module, optimizer and loader made private by Opacus, plus its accountant.

    Attributes:
        module: the ``GradSampleModule`` (shares parameters with the original module).
        optimizer: the ``DPOptimizer``.
        data_loader: the (Poisson-sampling) data loader.
        engine: the Opacus ``PrivacyEngine``.
        noise_multiplier: σ in use.
        sample_rate: q of the loader.
    """

    def __init__(
        self,
        engine: Any,
        module: nn.Module,
        optimizer: Any,
        data_loader: Any,
        config: DPConfig,
        sample_rate: float,
    ) -> None:
        self.engine = engine
        self.module = module
        self.optimizer = optimizer
        self.data_loader = data_loader
        self.config = config
        self.noise_multiplier = float(optimizer.noise_multiplier)
        self.sample_rate = float(sample_rate)

    @property
    def steps(self) -> int:
        """Optimizer steps accounted so far."""
        return int(sum(n for _, _, n in self.engine.accountant.history))

    def spent(self) -> PrivacySpent:
        """The (ε, δ) spent so far, by the configured accountant."""
        delta = self.config.target_delta
        eps = 0.0 if self.steps == 0 else float(self.engine.get_epsilon(delta))
        return PrivacySpent(
            epsilon=eps,
            delta=delta,
            accountant=self.config.accountant,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            max_grad_norm=self.config.max_grad_norm,
        )


def make_private(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: torch.utils.data.DataLoader[Any],
    config: DPConfig,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    noise_generator: torch.Generator | None = None,
) -> PrivateTraining:
    """Wrap ``module``/``optimizer``/``data_loader`` for DP-SGD.

    Args:
        module: an Opacus-compatible module (see :func:`fix_module`); its optimizer must
            have been built on this module's parameters.
        optimizer: the optimizer to privatise.
        data_loader: batches of the site's training data (its ``batch_size`` sets q).
        config: the DP settings.
        steps: total optimizer steps the target ε must cover (with ``target_epsilon``).
        epochs: alternatively, total epochs (calls Opacus' ``make_private_with_epsilon``).
        noise_generator: seeded generator for the noise (reproducible tests; not secure).

    Raises:
        DPError: an unreachable target ε, a missing step count, or a module Opacus rejects.
    """
    from opacus import PrivacyEngine

    dataset = data_loader.dataset
    n = len(dataset)  # type: ignore[arg-type]
    batch = data_loader.batch_size
    if batch is None or n == 0:
        raise DPError("DP-SGD needs a data loader with a batch_size and at least one case")
    check_delta(config.target_delta, n)
    sample_rate = 1.0 / len(data_loader)  # what Opacus' Poisson loader and accountant use
    engine = PrivacyEngine(accountant=config.accountant, secure_mode=config.secure_mode)
    common: dict[str, Any] = {
        "module": module,
        "optimizer": optimizer,
        "data_loader": data_loader,
        "max_grad_norm": config.max_grad_norm,
        "poisson_sampling": config.poisson_sampling,
        "noise_generator": noise_generator,
    }
    try:
        if config.target_epsilon is None:
            sigma = float(config.noise_multiplier or 0.0)
            out = engine.make_private(noise_multiplier=sigma, **common)
        elif epochs is not None and steps is None:
            try:
                out = engine.make_private_with_epsilon(
                    target_epsilon=config.target_epsilon,
                    target_delta=config.target_delta,
                    epochs=epochs,
                    **common,
                )
            except ValueError as e:
                if "budget" not in str(e):
                    raise
                raise DPError(
                    f"target epsilon={config.target_epsilon} at delta={config.target_delta} "
                    f"cannot be reached in {epochs} epochs with batches of {batch} out of {n} "
                    f"cases, even with the largest noise Opacus allows ({e}); raise the target "
                    "epsilon, train fewer epochs or use a smaller batch"
                ) from e
        elif steps is not None:
            sigma = noise_multiplier_for(
                config.target_epsilon,
                config.target_delta,
                sample_rate,
                steps,
                accountant=config.accountant,
            )
            out = engine.make_private(noise_multiplier=sigma, **common)
        else:
            raise DPError("a target epsilon needs the number of steps or epochs it must cover")
    except (NotImplementedError, ValueError) as e:
        if isinstance(e, DPError):
            raise
        raise DPError(
            f"Opacus cannot make this module private: {str(e).splitlines()[0]}; run "
            "privacy.dp.fix_module on it, or freeze the layer and feed its outputs as data"
        ) from e
    priv_module, priv_opt, priv_loader = out[:3]
    priv_loader.collate_fn = _EmptyAware(priv_loader.collate_fn)
    return PrivateTraining(engine, priv_module, priv_opt, priv_loader, config, sample_rate)


class EmptyBatch:
    """What a private data loader yields for a Poisson draw of no case when Opacus cannot
    build an empty batch of the task's structure (a batch holding text, e.g. case ids).
    ``len()`` is 0; a training loop takes its noise-only step without calling the loss."""

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "EmptyBatch()"


class _EmptyAware:
    """Opacus' collate wrapper, falling back to :class:`EmptyBatch` for an empty draw it
    cannot shape (it knows tensors, dicts, lists and tuples; it also needs a non-empty batch
    first)."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def __call__(self, batch: list[Any]) -> Any:
        if len(batch) == 0:
            try:
                return self.wrapped(batch)
            except (TypeError, ValueError, AttributeError, IndexError):
                return EmptyBatch()
        return self.wrapped(batch)
