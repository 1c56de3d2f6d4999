"""A Flower deployment where every site keeps its own manifest (no shared file).

The operator's run config names :func:`start` (the run's ``start``); before round 1 the
ServerApp calls it, and it asks every site to describe its data (the query
``stage0.describe``, answered by :func:`describe`, through the run's ``query-handler``
:func:`clinfuse.federated.flower_stage2.answer`). Each site reads its manifest (the
SuperNode's ``--node-config "site='hospital-a' manifest='/data/fl/cohort.csv'"``), splits its
own patients, and answers with counts and summaries only
(:func:`~clinfuse.federated.sites.describe_site`). :func:`start` combines them into the
run's plan (:func:`~clinfuse.federated.sites.plan_from_sites`: the modalities, the tabular
encoder fitted from the sites' sums, the input shapes), which the ServerApp gives to every
site in the task options (``plan``, ``modalities``). Every site then builds the same seeded
model from it (:func:`~clinfuse.federated.run.prepare_site`), one of them sends its fresh
parameters as the initial global model, the rounds and stage 2 run as usual, and
``clinfuse flower-assemble`` turns the ServerApp's output folder into a run folder
(:mod:`clinfuse.federated.assemble`).

Imports stay light: a site answers a stage-2 query in a fresh process through this module
without importing PyTorch.

:func:`site_run_config` is the run config of such a deployment (``clinfuse flower-config``
writes it as TOML for ``flwr run --run-config``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from clinfuse.config import RunConfig
from clinfuse.errors import ClinFuseError, ConfigError

if TYPE_CHECKING:
    from clinfuse.federated.run import FederatedSettings
    from privacy.dp.engine import DPConfig

__all__ = [
    "DESCRIBE",
    "START",
    "decode_json",
    "describe",
    "encode_json",
    "site_manifest",
    "site_run_config",
    "start",
]

START = "clinfuse.federated.flower_sites:start"
"""The ``start`` value of a clinfuse Flower run with site-local manifests."""

DESCRIBE = "stage0.describe"
"""The query a site answers with :func:`describe`."""


def encode_json(obj: Any) -> np.ndarray:
    """A JSON-ready object as a uint8 array (query replies carry numeric arrays only)."""
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8).copy()


def decode_json(arr: np.ndarray) -> Any:
    """The inverse of :func:`encode_json`."""
    return json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8"))


def site_manifest(node_config: dict[str, Any], options: dict[str, Any]) -> str:
    """The manifest a site reads: its node config's ``manifest``, else the run's.

    Raises:
        ConfigError: neither names one.
    """
    manifest = node_config.get("manifest") or options.get("manifest")
    if not manifest:
        raise ConfigError(
            f"site {node_config.get('site')!r} has no manifest: start its SuperNode with "
            "--node-config \"site='...' manifest='/path/to/manifest.csv'\"",
            field="manifest",
        )
    return str(manifest)


def describe(query: Any) -> dict[str, np.ndarray]:
    """A site's answer to ``stage0.describe``: its data's counts and summaries as JSON.

    Raises:
        ConfigError: the SuperNode's node config lacks ``site`` or ``manifest``.
        CohortError: the manifest is unusable or holds other sites' rows.
    """
    site = query.node_config.get("site")
    if not site:
        raise ConfigError(
            "the SuperNode's node config has no 'site'; start it with "
            "--node-config \"site='hospital-a' manifest='/data/fl/cohort.csv'\"",
            field="site",
        )
    from clinfuse.federated.sites import describe_site, site_cohort

    config = RunConfig.model_validate(query.task_options.get("config") or {})
    try:
        cohort = site_cohort(
            site_manifest(query.node_config, query.task_options), config, str(site)
        )
        description = describe_site(cohort, config)
    except ClinFuseError as e:  # the coordinator sees a node id: name the site
        if e.reason.startswith(f"site {site!r}"):
            raise
        raise ConfigError(f"site {site!r}: {e}") from e
    return {"description": encode_json(description)}


def start(queries: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The run's ``start``: the plan from every site's description (before round 1).

    Returns:
        ``{"plan", "task_options": {"plan", "modalities"}}``; the ServerApp writes it to
        ``start.json`` and gives ``task_options`` to every site.
    """
    from clinfuse.federated.sites import plan_from_sites

    config = RunConfig.model_validate(options.get("config") or {})
    replies = queries.ask(DESCRIBE)
    descriptions = {site: decode_json(r["description"]) for site, r in replies.items()}
    plan = plan_from_sites(descriptions, config)
    return {"plan": plan, "task_options": {"plan": plan, "modalities": plan["modalities"]}}


def site_run_config(
    config: RunConfig,
    settings: FederatedSettings,
    *,
    n_sites: int,
    output_dir: str = "",
    dp: DPConfig | None = None,
    round_timeout: float = 600.0,
    connect_timeout: float = 120.0,
) -> Any:
    """The Flower run config of a deployment with site-local manifests.

    Args:
        config: the run config every site builds its model from.
        settings: rounds, strategy, stage 2, seed (``partition`` is the sites themselves).
        n_sites: SuperNodes the run waits for (every one trains in every round unless
            ``settings.clients_per_round`` is smaller).
        output_dir: the ServerApp's output folder on the coordinator.
        dp: sample-level DP-SGD at every site.

    Returns:
        A :class:`privacy.flower.config.FlowerRunConfig` (``to_toml()`` for
        ``flwr run --run-config``).

    Raises:
        ConfigError: an unknown stage 2 or isotonic calibration with aggregates.
    """
    from clinfuse.federated.flower_run import flower_config
    from clinfuse.federated.run import check_stage2

    check_stage2(settings, config)
    return flower_config(
        None,
        config,
        settings,
        dp,
        n_sites,
        None,
        [],
        output_dir=output_dir,
        round_timeout=round_timeout,
        connect_timeout=connect_timeout,
    )
