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
``manifest`` (path on the site's host), ``config`` (the run config as a dict),
``partition``, ``n_sites``, ``seed``, ``optimizer``, ``rounds`` and ``dp`` (a
:class:`~privacy.dp.DPConfig` as a dict, or None).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clinfuse.config import RunConfig
from clinfuse.errors import ConfigError
from clinfuse.federated.run import FederatedSettings, prepare
from clinfuse.federated.task import fusion_site_task
from privacy.dp.engine import DPConfig
from privacy.federated.torch_task import TorchSiteTask

__all__ = ["TASK_FACTORY", "make_site_task", "task_options"]

TASK_FACTORY = "clinfuse.federated.flower_task:make_site_task"
"""The ``task-factory`` value of a clinfuse Flower run."""


def task_options(
    manifest: str,
    config: RunConfig,
    settings: FederatedSettings,
    dp: DPConfig | None = None,
) -> dict[str, Any]:
    """The JSON-ready ``task-options`` every site's factory receives."""
    return {
        "manifest": str(manifest),
        "config": config.model_dump(mode="json"),
        "partition": settings.partition,
        "n_sites": settings.n_sites,
        "seed": settings.seed,
        "optimizer": settings.optimizer,
        "rounds": settings.rounds,
        "dp": None if dp is None else dp.to_dict(),
    }


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
    site = node_config.get("site")
    if site is None or str(site) == "":
        raise ConfigError(
            "the SuperNode's node config has no 'site'; start it with "
            "--node-config \"site='site_a'\" (the site's name in the manifest)",
            field="site",
        )
    manifest = options.get("manifest")
    if not manifest:
        raise ConfigError("task-options has no 'manifest' (the site's manifest path)")
    config = RunConfig.model_validate(options.get("config") or {})
    settings = FederatedSettings(
        partition=str(options.get("partition", "site")),
        n_sites=int(options.get("n_sites", 3)),
        seed=int(options.get("seed", 0)),
        optimizer=str(options.get("optimizer", "adam")),
        rounds=int(options.get("rounds", 1)),
        baselines=False,
    )
    dp_opts = options.get("dp")
    dp = None if not dp_opts else DPConfig(**dict(dp_opts))
    prep = prepare(str(manifest), config, settings, dp=dp, only_site=str(site))
    return fusion_site_task(
        str(site),
        prep.model,
        prep.split("train", str(site)),
        prep.split("val", str(site)),
        dp=dp,
        dp_rounds=settings.rounds,
        optimizer=settings.optimizer,
        keys=prep.keys,
    )
