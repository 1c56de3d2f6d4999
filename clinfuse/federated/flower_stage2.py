"""Stage 2 of ``clinfuse federated --backend flower`` over Flower messages.

After the last round the ServerApp calls :func:`finish` (the run config's ``finish``), which
queries the sites; each SuperNode's ClientApp answers with :func:`answer` (the run config's
``query-handler``):

1. ``stage2.logits`` carries the final global model. The site rebuilds its model, computes
   its validation cases' logits and keeps them in the SuperNode's node state (they never
   leave the site with ``--stage2 aggregates``); it replies with its counts and sums
   (:func:`~clinfuse.federated.stage2.site_summary`), and with ``--stage2 pooled`` also with
   each validation case's unimodal logits, presence and outcome.
2. ``stage2.sums`` (``aggregates`` only; 9 of them on the demo cohort): the log loss,
   gradient and Hessian sums at the parameters the coordinator tries
   (:func:`~clinfuse.federated.stage2.site_sums`), computed from the kept logits: the site
   does not rebuild its model or read its data again, and PyTorch is not imported.

:func:`finish` fits the combiner and the calibrators from the answers
(:func:`~clinfuse.federated.stage2.fit_from_sites`, or
:func:`~clinfuse.federated.stage2.fit_pooled` on the pooled logits) and returns them;
the ServerApp writes them to ``finish.json``, which ``clinfuse federated`` puts into the
run folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from clinfuse.errors import ConfigError
from clinfuse.federated.flower_sites import DESCRIBE, describe
from clinfuse.federated.stage2 import (
    SiteLogits,
    fit_from_sites,
    fit_pooled,
    site_summary,
    site_sums,
)

__all__ = ["FINISH", "QUERY_HANDLER", "answer", "finish"]

QUERY_HANDLER = "clinfuse.federated.flower_stage2:answer"
"""The ``query-handler`` value of a clinfuse Flower run."""

FINISH = "clinfuse.federated.flower_stage2:finish"
"""The ``finish`` value of a clinfuse Flower run."""

LOGITS = "stage2.logits"
SUMS = "stage2.sums"


def _parameters(arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(arrays[k]) for k in sorted(arrays) if k.startswith("param_")]


def _site_logits(query: Any) -> SiteLogits:
    """The site's validation logits under the global model the query carries."""
    from clinfuse.federated.flower_task import site_prep
    from clinfuse.federated.run import site_logits
    from clinfuse.federated.task import trainable_view
    from privacy.federated.torch_task import set_parameters

    prep, site = site_prep(query.node_config, query.task_options)
    set_parameters(trainable_view(prep.model), prep.keys, _parameters(query.arrays))
    return site_logits(prep.model, prep.split("val", site))


def answer(query: Any) -> dict[str, np.ndarray]:
    """A site's answer to a query (a :class:`privacy.flower.client_app.SiteQuery`): the
    stage-2 queries above, and ``stage0.describe`` of a run with site-local manifests
    (:func:`clinfuse.federated.flower_sites.describe`).

    Raises:
        ConfigError: an unknown query, or ``stage2.sums`` before ``stage2.logits``.
    """
    if query.name == LOGITS:
        held = _site_logits(query)
        query.state.clear()
        query.state.update(held.to_arrays())
        out = site_summary(held)
        if query.config.get("send_cases"):
            out |= held.to_arrays()
        return out
    if query.name == DESCRIBE:
        return describe(query)
    if query.name == SUMS:
        if "label" not in query.state:
            raise ConfigError(
                "stage2.sums: this site keeps no validation logits; the coordinator must send "
                "stage2.logits first (was the SuperNode restarted?)",
                field="stage2",
            )
        return site_sums(SiteLogits.from_arrays(query.state), query.arrays)
    raise ConfigError(
        f"unknown query {query.name!r}; expected {DESCRIBE}, {LOGITS} or {SUMS}", field="query"
    )


def finish(
    queries: Any, parameters: list[np.ndarray], options: Mapping[str, Any]
) -> dict[str, Any]:
    """Fit stage 2 from the sites' answers (the ServerApp's ``finish``).

    Args:
        queries: :class:`privacy.flower.server_app.SiteQueries`.
        parameters: the final global model.
        options: the run's ``task-options`` (``config``, ``stage2``, ``modalities``).

    Returns:
        ``{"mode", "sites", "stage2"}``: ``stage2`` is a
        :class:`~clinfuse.federated.stage2.Stage2Fit` as a dict.
    """
    from clinfuse.config import RunConfig

    config = RunConfig.model_validate(options.get("config") or {})
    mode = str(options.get("stage2", "pooled"))
    modalities = [str(m) for m in options.get("modalities") or []]
    if not modalities:
        raise ConfigError("task-options has no 'modalities' (the model's, in order)")
    pooled = mode == "pooled"
    replies = queries.ask(
        LOGITS,
        {f"param_{i:04d}": p for i, p in enumerate(parameters)},
        {"send_cases": pooled},
    )
    sites = sorted(replies)
    method = config.calibration.method
    late = config.fusion.strategy == "late"
    if pooled:
        parts = [SiteLogits.from_arrays(replies[s]) for s in sites]
        held = SiteLogits(
            np.concatenate([p.unimodal for p in parts]),
            np.concatenate([p.present for p in parts]),
            np.concatenate([p.label for p in parts]),
            np.concatenate([p.logit for p in parts]),
        )
        fit = fit_pooled(held, modalities=modalities, method=method, combiner=late)
    else:
        fit = fit_from_sites(
            [replies[s] for s in sites],
            lambda request: [reply for _, reply in sorted(queries.ask(SUMS, request).items())],
            modalities=modalities,
            method=method,
            combiner=late,
        )
    return {"mode": mode, "sites": sites, "stage2": fit.to_dict()}
