"""The fusion model's site task for the real Flower federation (``--backend flower``).

Each SuperNode's ClientApp builds its site's task with :func:`make_site_task`, named in the
Flower run config as ``task-factory = "clinfuse.federated.flower_task:make_site_task"``.
Flower 1.42 starts a fresh ClientApp process per message, so the factory must be cheap and
deterministic: it reloads only that site's manifest rows, rebuilds the model from the
seeded config, and reads the frozen encoders' embeddings from the on-disk
:class:`~clinfuse.training.embed.EmbeddingCache` (computed once by the first process);
nothing is kept in memory between rounds. Cross-round state (the DP-SGD accountant, the
optimizer) travels through :meth:`~privacy.federated.torch_task.TorchSiteTask.state_dict`.

``node_config`` (the SuperNode's ``--node-config``): ``site`` (the site's name in the
manifest's site column, or of the synthetic partition: ``site_0``...).

``options`` (the run's ``task-options``, the same at every site), see :func:`task_options`:
``manifest`` (path on the site's host; with ``site_local`` every site reads its node
config's ``manifest`` instead and builds its model from the ``plan`` the run's ``start``
added, :mod:`clinfuse.federated.flower_sites`), ``config`` (the run config as a dict),
``partition``, ``n_sites``, ``seed``, ``optimizer``, ``rounds``, ``dp`` (a
:class:`~privacy.dp.DPConfig` as a dict, or None), ``stage2`` (``pooled`` or
``aggregates``) and ``modalities`` (the model's, in order).

After the rounds the coordinator fits stage 2 over Flower messages
(:mod:`clinfuse.federated.flower_stage2`, the run's ``query-handler`` and ``finish``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clinfuse.config import RunConfig
from clinfuse.errors import ConfigError
from clinfuse.federated.flower_sites import site_manifest
from clinfuse.federated.run import FederatedSettings, Prepared, prepare, prepare_site
from clinfuse.federated.task import fusion_site_task
from privacy.dp.engine import DPConfig
from privacy.federated.torch_task import TorchSiteTask

__all__ = ["TASK_FACTORY", "make_site_task", "site_prep", "task_options"]

TASK_FACTORY = "clinfuse.federated.flower_task:make_site_task"
"""The ``task-factory`` value of a clinfuse Flower run."""


def task_options(
    manifest: str,
    config: RunConfig,
    settings: FederatedSettings,
    dp: DPConfig | None = None,
    modalities: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON-ready ``task-options`` every site's factory receives."""
    return {
        "stage2": settings.stage2,
        "modalities": list(modalities or config.data.modalities or []),
        "manifest": str(manifest),
        "config": config.model_dump(mode="json"),
        "partition": settings.partition,
        "n_sites": settings.n_sites,
        "seed": settings.seed,
        "optimizer": settings.optimizer,
        "rounds": settings.rounds,
        "dp": None if dp is None else dp.to_dict(),
    }


def site_prep(node_config: Mapping[str, Any], options: Mapping[str, Any]) -> tuple[Prepared, str]:
    """The site's cases and a fresh model (:func:`~clinfuse.federated.run.prepare`).

    Raises:
        ConfigError: ``site`` or ``manifest`` missing, or the site's model has other
            modalities than the run's ``modalities``.
        CohortError: the site has no usable cases.
    """
    site = node_config.get("site")
    if site is None or str(site) == "":
        raise ConfigError(
            "the SuperNode's node config has no 'site'; start it with "
            "--node-config \"site='site_a'\" (the site's name in the manifest)",
            field="site",
        )
    config = RunConfig.model_validate(options.get("config") or {})
    settings = FederatedSettings(
        partition=str(options.get("partition", "site")),
        n_sites=int(options.get("n_sites", 3)),
        seed=int(options.get("seed", 0)),
        optimizer=str(options.get("optimizer", "adam")),
        rounds=int(options.get("rounds", 1)),
        baselines=False,
    )
    if options.get("site_local"):
        plan = options.get("plan")
        if not plan:
            raise ConfigError(
                f"site {site!r}: the run uses site-local manifests but no plan reached this "
                "site; the run's start function makes it before round 1 (was the SuperNode "
                "started or restarted after the run began?)",
                field="plan",
                hint="restart the run with every SuperNode connected",
            )
        own = site_manifest(dict(node_config), dict(options))
        prep = prepare_site(own, config, settings, str(site), dict(plan), dp=_dp(options))
    else:
        shared = options.get("manifest")
        if not shared:
            raise ConfigError("task-options has no 'manifest' (the site's manifest path)")
        prep = prepare(str(shared), config, settings, dp=_dp(options), only_site=str(site))
    expected = list(options.get("modalities") or [])
    if expected and list(prep.modalities) != expected:
        raise ConfigError(
            f"site {site!r}: its data gives the modalities {prep.modalities}, the run's model "
            f"has {expected}",
            field="modalities",
            hint="set data.modalities in the run config so every site builds the same model",
        )
    return prep, str(site)


def _dp(options: Mapping[str, Any]) -> DPConfig | None:
    dp_opts = options.get("dp")
    return None if not dp_opts else DPConfig(**dict(dp_opts))


def make_site_task(node_config: Mapping[str, Any], options: Mapping[str, Any]) -> TorchSiteTask:
    """Build one site's fusion-model task from the manifest rows of that site.

    Args:
        node_config: the SuperNode's node config; ``site`` names the site.
        options: the run's task options (:func:`task_options`).

    Raises:
        ConfigError: ``site`` or ``manifest`` missing.
        CohortError: the site has no usable cases.
        privacy.errors.SiteDataError: the site lacks an outcome class.
    """
    prep, site = site_prep(node_config, options)
    return fusion_site_task(
        site,
        prep.model,
        prep.split("train", site),
        prep.split("val", site),
        dp=_dp(options),
        dp_rounds=int(options.get("rounds", 1)),
        optimizer=str(options.get("optimizer", "adam")),
        keys=prep.keys,
    )
