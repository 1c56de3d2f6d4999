"""``clinfuse flower-assemble``: a run folder from a Flower deployment's output, on the
coordinator, without any site's data.

A Flower run with site-local manifests (:mod:`clinfuse.federated.flower_sites`) leaves, in
the ServerApp's ``output-dir``: ``federation.json`` (settings and rounds),
``start.json`` (the plan: modalities, the tabular encoder fitted from the sites' sums,
input shapes, each site's counts), ``parameters.safetensors`` (the final global model) and
``finish.json`` (stage 2: the combiner and the calibrators). :func:`assemble_run` rebuilds
the model from the plan, loads the global parameters, puts stage 2 in and writes a run
folder that ``clinfuse predict`` and ``clinfuse evaluate`` load like any other (built in
``OUT.partial``, renamed when complete):

    config.yaml, model/    the model (safetensors + JSON)
    federated.json         settings, rounds, per-site metrics, DP (ε, δ) per site, stage 2,
                           the plan's site counts
    data_report.json       modalities, the sites' split counts and availability (no case)
    train_log.csv          per round: seconds and the sites' weighted validation metrics
    run.json               complete, federated, evaluated: false

The coordinator has no case, so the folder has no ``predictions.csv`` or ``metrics.json``:
each site evaluates the model on its own test cases with
``clinfuse evaluate RUN MANIFEST --split test`` (its split is the one it trained with).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clinfuse import __version__
from clinfuse._files import publish
from clinfuse.config import RunConfig
from clinfuse.errors import ConfigError
from clinfuse.federated.run import (
    _dp_friendly,
    dp_summary,
    run_record,
    set_stage2,
    stage2_record,
    train_log,
)
from clinfuse.federated.stage2 import Stage2Fit
from clinfuse.federated.task import trainable_view
from clinfuse.io.tabular import TabularEncoder
from clinfuse.model import FusionModel
from clinfuse.training.run import _json_default, _prepare_folders, _write_json

__all__ = ["assemble_run", "plan_model"]


def _read(flower_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The run's result and its task options with the start's update.

    Raises:
        ConfigError: not a completed clinfuse run with site-local manifests.
    """
    from privacy.errors import FederatedError
    from privacy.flower.config import merge_options
    from privacy.flower.results import read_result

    try:
        result = read_result(flower_dir)
    except FederatedError as e:
        raise ConfigError(str(e), path=flower_dir, hint="pass the ServerApp's output-dir") from e
    if result.status != "completed":
        raise ConfigError(
            f"the Flower run did not complete (status {result.status}: {result.error}); "
            "parameters.safetensors holds its last global model but the model is not finished",
            path=flower_dir,
            hint="fix the cause in federation.json's error and the logs, and rerun",
        )
    options = dict((result.record.get("config") or {}).get("task_options") or {})
    if not options.get("site_local"):
        raise ConfigError(
            "this Flower run read a shared manifest; `clinfuse federated --backend flower` "
            "already wrote its run folder",
            path=flower_dir,
            hint="flower-assemble is for runs with site-local manifests (clinfuse flower-config)",
        )
    if result.start is None or result.finish is None or result.parameters is None:
        missing = [
            name
            for name, value in (
                ("start.json", result.start),
                ("finish.json", result.finish),
                ("parameters.safetensors", result.parameters),
            )
            if value is None
        ]
        raise ConfigError(f"the Flower run's folder lacks {', '.join(missing)}", path=flower_dir)
    return result, merge_options(options, result.start.get("task_options"))


def plan_model(options: dict[str, Any], say: Callable[[str], None] | None = None) -> FusionModel:
    """The fresh seeded model every site built from the run's plan (task options with the
    start's ``plan``), with the same encoders as the sites' (GroupNorm under DP-SGD)."""
    from privacy.dp.engine import DPConfig

    plan = dict(options["plan"])
    modalities = list(plan["modalities"])
    config = RunConfig.model_validate(options.get("config") or {})
    if options.get("dp"):
        DPConfig(**dict(options["dp"]))  # a broken DP setting fails here, not later
        config = _dp_friendly(config, modalities, say or (lambda _m: None))
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"modalities": modalities})}
    )
    tabular = None if plan.get("tabular") is None else TabularEncoder.from_dict(plan["tabular"])
    torch.manual_seed(config.training.seed)
    return FusionModel.build(
        config, modalities, tabular=tabular, in_shapes=dict(plan.get("in_shapes") or {})
    )


def assemble_run(
    flower_dir: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write a run folder from a completed Flower run with site-local manifests.

    Args:
        flower_dir: the ServerApp's ``output-dir``.
        out: the run folder to create.
        overwrite: replace an existing run folder.
        log: one-line progress messages.

    Returns:
        The run folder.

    Raises:
        ConfigError: not a completed run with site-local manifests, or a global model
            that does not fit the plan's model.
    """
    from clinfuse.federated.flower_run import _spent, history_from_record
    from privacy.dp.engine import DPConfig
    from privacy.federated.torch_task import parameter_keys, set_parameters

    t_start = time.perf_counter()
    say = log or (lambda _m: None)
    flower_dir = Path(flower_dir)
    result, options = _read(flower_dir)
    plan = dict(options["plan"])
    dp = None if not options.get("dp") else DPConfig(**dict(options["dp"]))
    model = plan_model(options, say)
    config = model.config
    tabular = model.tabular
    view = trainable_view(model)
    keys = parameter_keys(view)
    if len(keys) != len(result.parameters):
        raise ConfigError(
            f"the global model has {len(result.parameters)} arrays, the plan's model "
            f"{len(keys)}; was the run made by another clinfuse version?",
            path=flower_dir / "parameters.safetensors",
        )
    set_parameters(view, keys, result.parameters)
    finish = result.finish
    fit = Stage2Fit.from_dict(finish["stage2"])
    set_stage2(model, fit)
    sites = [str(s) for s in finish.get("sites") or sorted(plan["sites"])]
    strategy = str(result.record["config"].get("strategy", "fedavg"))
    history = history_from_record(result.record, result.parameters, strategy, sites)
    spent = _spent(history, dp)
    stage2 = stage2_record(
        fit, mode=str(finish.get("mode", options.get("stage2"))), sites=len(sites), over="flower"
    )
    model.info = {
        "clinfuse_version": __version__,
        "torch_version": torch.__version__,
        "trained_on": "sites",
        "federated": True,
        "rounds": len(history.rounds),
    }
    out = Path(out)
    partial = _prepare_folders(out, resume=False, overwrite=overwrite, resumable=False)
    model.save_pretrained(partial)
    _write_json(
        partial / "data_report.json",
        {
            "manifest": None,
            "site_manifests": True,
            "target": config.data.target,
            "modalities": list(model.modalities),
            "frozen_encoders": model.frozen_modalities,
            "sites": plan["sites"],
            "availability_by_site": plan.get("availability", {}),
            "tabular_features": None if tabular is None else tabular.feature_names_,
        },
    )
    fed = {
        "clinfuse_version": __version__,
        "backend": "flower",
        "deployment": "site-local manifests",
        "assembled_from": str(flower_dir.resolve()),
        "settings": {
            k: options.get(k) for k in ("partition", "seed", "optimizer", "rounds", "stage2")
        }
        | {"strategy": strategy},
        **history.to_dict(),
        "dp": None if dp is None else dp_summary(dp, spent),
        "evaluation": [],
        "plan_sites": plan["sites"],
        "stage2": stage2.get("note"),
        "stage2_fit": stage2,
    }
    _write_json(partial / "federated.json", json.loads(json.dumps(fed, default=_json_default)))
    train_log(history).to_csv(partial / "train_log.csv", index=False)
    _write_json(partial / "run.json", run_record(t_start, evaluated=False))
    publish(partial, out)
    say(
        f"assembled {out} from {len(sites)} sites' Flower run ({len(history.rounds)} rounds, "
        f"stage 2 {stage2['mode']}); evaluate it at each site with clinfuse evaluate {out} "
        "MANIFEST --split test"
    )
    return out
