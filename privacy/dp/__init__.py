"""Differential privacy for local training: DP-SGD with Opacus and its accounting.

* :mod:`privacy.dp.accountant` — ε for (σ, q, steps, δ) with the RDP or PRV accountant,
  σ for a target (ε, δ).
* :mod:`privacy.dp.engine` — :class:`DPConfig`, :func:`make_private` (Opacus
  ``PrivacyEngine``), :func:`fix_module` (BatchNorm → GroupNorm), :class:`PrivacySpent`.

Opacus is imported when a function is called, not on ``import privacy.dp``.
"""

from privacy.dp.accountant import (
    ACCOUNTANTS,
    TF_PRIVACY_ORDERS,
    check_delta,
    compute_epsilon,
    noise_multiplier_for,
)
from privacy.dp.engine import DPConfig, PrivacySpent, PrivateTraining, fix_module, make_private

__all__ = [
    "ACCOUNTANTS",
    "TF_PRIVACY_ORDERS",
    "DPConfig",
    "PrivacySpent",
    "PrivateTraining",
    "check_delta",
    "compute_epsilon",
    "fix_module",
    "make_private",
    "noise_multiplier_for",
]
