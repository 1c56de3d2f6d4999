"""Real federated training with Flower: ServerApp, ClientApp and a local launcher.

The same :class:`~privacy.federated.task.SiteTask` that the in-process simulator
(:func:`privacy.federated.simulation.simulate`) drives runs here behind Flower, one
SuperNode per site, with the SuperLink on the coordinating host:

* :mod:`privacy.flower.client_app` — the generic ClientApp: builds the site's task from
  the run's ``task-factory`` (``package.module:function``) and the SuperNode's node config,
  and keeps the task's ``state_dict()`` between rounds in Flower's per-node context;
* :mod:`privacy.flower.server_app` — the ServerApp: Flower's FedAvg/FedProx/FedAdam/FedYogi,
  client-level DP (``DifferentialPrivacyServerSideFixedClipping``, ε from Opacus' RDP
  accountant), SecAgg+ (``SecAggPlusWorkflow``), dropout handling, outputs written after
  every round;
* :mod:`privacy.flower.local` — :func:`~privacy.flower.local.run_local_federation` starts a
  SuperLink and one SuperNode per site on loopback, runs the app with ``flwr run`` and
  returns the final global model;
* :mod:`privacy.flower.config` — the run settings (:class:`~privacy.flower.config.FlowerRunConfig`);
* :mod:`privacy.flower.results` — the output files and :func:`~privacy.flower.results.read_result`.

The Flower app project is the folder :data:`APP_DIR` (its ``pyproject.toml`` names the
apps). ``docs/federated_deployment.md`` shows the same app on real hosts.

Importing this package does not import Flower; the submodules do.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_DIR"]

APP_DIR = Path(__file__).resolve().parent / "app"
"""The Flower app project folder (``flwr run APP_DIR <connection>``)."""
