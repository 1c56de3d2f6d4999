"""Federated training of the fusion model (glue between :mod:`clinfuse` and :mod:`privacy.federated`).

* :func:`federated_run` — a complete run folder (loadable by :func:`clinfuse.load_run`) plus
  ``federated.json`` and the centralized / federated / site-alone evaluation table.
* :func:`privacy_utility` — AUROC with CIs at several ε.
* :func:`fusion_site_task` — one site's :class:`~privacy.federated.task.SiteTask`.
"""

from clinfuse.federated.run import FederatedSettings, federated_run, privacy_utility
from clinfuse.federated.task import fusion_site_task

__all__ = ["FederatedSettings", "federated_run", "fusion_site_task", "privacy_utility"]
