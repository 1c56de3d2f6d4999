"""Federated training of the fusion model (glue between :mod:`clinfuse` and :mod:`privacy.federated`).

* :func:`federated_run` — a complete run folder (loadable by :func:`clinfuse.load_run`) plus
  ``federated.json`` and the centralized / federated / site-alone evaluation table.
* :func:`privacy_utility` — AUROC with CIs at several ε.
* :func:`fusion_site_task` — one site's :class:`~privacy.federated.task.SiteTask`.

Flower, MONAI and torch load when one of these is first used, not on ``import
clinfuse.federated`` (the CLI imports this package to register its command).
"""

from __future__ import annotations

from clinfuse._lazy import lazy_exports

_LAZY = {
    "FederatedSettings": "clinfuse.federated.run",
    "federated_run": "clinfuse.federated.run",
    "privacy_utility": "clinfuse.federated.run",
    "fusion_site_task": "clinfuse.federated.task",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
