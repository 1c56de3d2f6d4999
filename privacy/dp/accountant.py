"""Privacy accounting for DP-SGD: ε from (σ, q, steps, δ), and σ for a target (ε, δ).

Thin, tested wrappers around Opacus' accountants:

* ``rdp`` (the default here) — Rényi DP of the subsampled Gaussian mechanism (Mironov et al.
  2019), converted to (ε, δ) with the tighter conversion of Balle et al. 2020 (Opacus'
  ``privacy_analysis.get_privacy_spent``). Opacus' default orders are the list TensorFlow
  Privacy's ``compute_dp_sgd_privacy`` uses; :data:`TF_PRIVACY_ORDERS` is TF Privacy's
  current list (``dp_accounting``), which gives the same values on its published tests.
* ``prv`` — privacy random variables (Gopi et al. 2021), numerically tighter than RDP.

Reference values reproduced by the tests (``tests/privacy/test_dp.py``):
σ = 1.5, q = 0.04, 2250 steps, δ = 1e-5 → RDP ε = 7.32911117143 (Opacus' test suite);
same with 2249 steps → PRV ε = 6.777395712150674; σ = 1.3, q = 150/60000, 6000 steps,
δ = 1e-5 → 0.7242234026109595 and σ = 1.0, q = 100/100000, 30000 steps, δ = 1e-7 →
1.4154988495444845 (TensorFlow Privacy's test suite, its order list).

>>> round(compute_epsilon(1.5, 0.04, 2250, 1e-5), 6)
7.329111
"""

from __future__ import annotations

from collections.abc import Sequence

from privacy.errors import DPError

__all__ = [
    "ACCOUNTANTS",
    "TF_PRIVACY_ORDERS",
    "check_delta",
    "compute_epsilon",
    "noise_multiplier_for",
]

ACCOUNTANTS = ("rdp", "prv")

TF_PRIVACY_ORDERS: list[float] = (
    [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5]
    + [float(x) for x in range(5, 64)]
    + [128.0, 256.0, 512.0]
)
"""RDP orders of TensorFlow Privacy's ``compute_dp_sgd_privacy_lib`` / ``dp_accounting``."""


def check_delta(delta: float, n: int | None = None) -> None:
    """δ must be in (0, 1); a δ at or above 1/n protects nobody (it allows leaking one case).

    Raises:
        DPError: δ out of range, or δ ≥ 1/n when ``n`` (the number of training cases) is given.
    """
    if not 0 < delta < 1:
        raise DPError(f"delta must be in (0, 1), got {delta}; a usual choice is 1e-5")
    if n is not None and n > 0 and delta >= 1.0 / n:
        raise DPError(
            f"delta={delta} is not below 1/n = 1/{n}: with that δ the guarantee allows one "
            f"case's data to leak; choose delta < {1.0 / n:.2g} (e.g. 1e-5)"
        )


def _check_inputs(sample_rate: float, steps: int) -> None:
    if not 0 < sample_rate <= 1:
        raise DPError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 0:
        raise DPError(f"steps must be >= 0, got {steps}")


def compute_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    accountant: str = "rdp",
    orders: Sequence[float] | None = None,
) -> float:
    """ε spent by ``steps`` DP-SGD steps with noise ``σ`` and Poisson sampling rate ``q``.

    Args:
        noise_multiplier: σ, the Gaussian noise std divided by the clipping norm.
        sample_rate: q, the probability that a case is in a batch (batch size / n).
        steps: optimizer steps.
        delta: δ of the (ε, δ) guarantee.
        accountant: ``rdp`` or ``prv``.
        orders: RDP orders (``rdp`` only); default Opacus' list.

    Raises:
        DPError: unknown accountant or out-of-range inputs.
    """
    from opacus.accountants import PRVAccountant, RDPAccountant

    check_delta(delta)
    _check_inputs(sample_rate, steps)
    if noise_multiplier < 0:
        raise DPError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    if accountant == "rdp":
        acc = RDPAccountant()
        acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
        if orders is not None:
            return float(acc.get_epsilon(delta, alphas=list(orders)))
        return float(acc.get_epsilon(delta))
    if accountant == "prv":
        prv = PRVAccountant()
        prv.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
        return float(prv.get_epsilon(delta))
    raise DPError(f"unknown accountant {accountant!r}; choose one of {list(ACCOUNTANTS)}")


def noise_multiplier_for(
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    *,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The smallest σ (to ``epsilon_tolerance``) whose ε after ``steps`` steps is ≤ the target.

    Raises:
        DPError: the target cannot be reached (Opacus gives up above σ = 2000), or bad inputs.
    """
    from opacus.accountants.utils import get_noise_multiplier

    check_delta(target_delta)
    _check_inputs(sample_rate, steps)
    if accountant not in ACCOUNTANTS:
        raise DPError(f"unknown accountant {accountant!r}; choose one of {list(ACCOUNTANTS)}")
    if target_epsilon <= 0:
        raise DPError(f"target epsilon must be > 0, got {target_epsilon}")
    if steps == 0:
        return 0.0
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=target_delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
        )
    except ValueError as e:
        raise DPError(
            f"target epsilon={target_epsilon} at delta={target_delta} cannot be reached with "
            f"sample rate {sample_rate:.4g} over {steps} steps, even with the largest noise "
            f"Opacus allows ({e}); raise the target epsilon, train fewer steps (rounds, local "
            "epochs) or use a smaller batch"
        ) from e
