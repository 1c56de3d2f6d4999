"""``clinfuse federated --backend flower``: the same run, trained by a real Flower federation.

A SuperLink and one SuperNode per site start on loopback
(:func:`privacy.flower.local.run_local_federation`); each SuperNode's ClientApp builds its
site's task with :func:`clinfuse.federated.flower_task.make_site_task` from that site's
manifest rows. The ServerApp starts from this process's seeded initial model, so with every
site in every round the aggregated model equals the in-process simulator's up to float
rounding (Flower aggregates in float32 in the order answers arrive; the simulator in a
fixed order). After the rounds the ServerApp fits the combiner and the calibration over
Flower messages (:mod:`clinfuse.federated.flower_stage2`): from the pooled validation logits
the sites send, or with ``stage2="aggregates"`` from their sums only; this process puts the
result (``finish.json``) into the run folder. Flower's own outputs (``federation.json``,
``parameters.safetensors``, ``finish.json``, logs) are kept in ``RUN/flower``.

Differences from ``--backend sim``: client sampling is Flower's (random, not the simulator's
seeded ``sample_sites``) when ``--clients-per-round`` is below the number of sites; the
FedAdam/FedYogi server optimizers are Flower's implementations.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clinfuse
from clinfuse.config import RunConfig
from clinfuse.errors import ConfigError
from clinfuse.federated.flower_stage2 import FINISH, QUERY_HANDLER
from clinfuse.federated.flower_task import TASK_FACTORY, task_options
from clinfuse.federated.run import FederatedSettings, Prepared, federated_run
from clinfuse.federated.stage2 import Stage2Fit
from privacy.dp.engine import DPConfig
from privacy.federated.simulation import History, RoundRecord

__all__ = ["flower_config", "flower_run", "history_from_record"]

_SERVER_KEYS = {"eta": "server_lr", "beta_1": "beta_1", "beta_2": "beta_2", "tau": "tau"}


def flower_config(
    manifest: Path | None,
    config: RunConfig,
    settings: FederatedSettings,
    dp: DPConfig | None,
    n_sites: int,
    initial: Path | None,
    modalities: list[str],
    *,
    output_dir: str = "",
    round_timeout: float = 600.0,
    connect_timeout: float = 120.0,
) -> Any:
    """The Flower run config of a clinfuse run.

    Args:
        manifest: the manifest every site reads its rows from; None: each site reads its own
            (node config ``manifest``) and the run's ``start`` makes the plan
            (:mod:`clinfuse.federated.flower_sites`).
        initial: the initial global model (None: one site's freshly built model).
        modalities: the model's modalities (empty with site-local manifests: the plan's).
    """
    from clinfuse.federated.flower_sites import START
    from privacy.flower.config import FlowerRunConfig

    k = min(settings.clients_per_round or n_sites, n_sites)
    server: dict[str, Any] = {
        _SERVER_KEYS[key]: float(v) for key, v in settings.server.items() if key in _SERVER_KEYS
    }
    options = task_options(
        "" if manifest is None else str(manifest), config, settings, dp, modalities
    )
    if manifest is None:
        options["site_local"] = True
    return FlowerRunConfig(
        task_factory=TASK_FACTORY,
        task_options=options,
        query_handler=QUERY_HANDLER,
        start="" if manifest is not None else START,
        finish=FINISH,
        strategy=settings.strategy,
        num_rounds=settings.rounds,
        local_epochs=settings.local_epochs,
        lr=float(settings.lr if settings.lr is not None else config.training.lr),
        batch_size=int(config.training.batch_size or 0),
        proximal_mu=float(settings.proximal_mu),
        seed=settings.seed,
        fraction_fit=k / n_sites,
        fraction_evaluate=1.0,
        min_fit_clients=max(1, min(settings.min_fit_clients, k)),
        min_available_clients=n_sites,
        initial_parameters="" if initial is None else str(initial),
        output_dir=output_dir,
        round_timeout=round_timeout,
        connect_timeout=connect_timeout,
        **server,
    )


def history_from_record(
    record: dict[str, Any], parameters: list[Any], strategy: str, sites: list[str]
) -> History:
    """The simulator's :class:`History` from a Flower run's ``federation.json``."""
    rounds = []
    for r in record.get("rounds", []):
        fit = {s: dict(v) for s, v in (r.get("fit") or {}).items()}
        evaluate = {s: dict(v) for s, v in (r.get("evaluate") or {}).items()}
        if r.get("evaluate_loss") is not None:
            agg_eval = {"loss": float(r["evaluate_loss"]), **(r.get("evaluate_aggregated") or {})}
        else:
            agg_eval = dict(r.get("evaluate_aggregated") or {})
        end = r.get("evaluate_done_s", r.get("fit_done_s", r.get("started_s", 0.0)))
        rounds.append(
            RoundRecord(
                server_round=int(r["round"]),
                sampled=sorted(fit),
                completed=sorted(fit),
                failed={f"failure_{i}": str(f) for i, f in enumerate(r.get("failures") or [])},
                fit=fit,
                evaluate=evaluate,
                fit_aggregated=dict(r.get("fit_aggregated") or {}),
                evaluate_aggregated=agg_eval,
                seconds=float(end or 0.0) - float(r.get("started_s") or 0.0),
            )
        )
    desc = {"name": strategy, "backend": "flower", "flower": record.get("config", {})}
    desc["flower"] = {k: v for k, v in desc["flower"].items() if k != "task_options"}
    return History(list(parameters), rounds, desc, list(sites))


def _spent(history: History, dp: DPConfig | None) -> dict[str, Any]:
    """Per-site DP-SGD (ε, δ) as the sites reported it in their last round."""
    if dp is None:
        return {}
    out: dict[str, Any] = {}
    for site in history.sites:
        rounds = [r.fit[site] for r in history.rounds if site in r.fit]
        if not rounds or "epsilon" not in rounds[-1]:
            out[site] = None
            continue
        last = rounds[-1]
        out[site] = {
            "epsilon": float(last["epsilon"]),
            "delta": float(last.get("delta", dp.target_delta)),
            "accountant": dp.accountant,
            "noise_multiplier": float(last.get("noise_multiplier", float("nan"))),
            "steps": int(sum(float(m.get("steps", 0)) for m in rounds)),
            "max_grad_norm": dp.max_grad_norm,
        }
    return out


def _trainer(
    manifest: Path,
    config: RunConfig,
    settings: FederatedSettings,
    dp: DPConfig | None,
    timeout: float,
    say: Callable[[str], None],
) -> Callable[..., tuple[History, dict[str, Any], Stage2Fit]]:
    def train(
        prep: Prepared, site_cases: dict[str, Any], folder: Path
    ) -> tuple[History, Any, Stage2Fit]:
        from privacy.errors import FederatedError
        from privacy.flower.local import run_local_federation
        from privacy.flower.results import save_parameters

        sites = list(site_cases)
        work = folder / "flower"
        work.mkdir(parents=True, exist_ok=True)
        initial = work / "initial.safetensors"
        save_parameters(initial, prep.init)
        cfg = flower_config(
            manifest, config, settings, dp, len(sites), initial, list(prep.modalities)
        )
        say(f"starting a Flower federation on loopback: 1 SuperLink, {len(sites)} SuperNodes")
        repo = str(Path(clinfuse.__file__).resolve().parent.parent)
        env = {"PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
        try:
            result = run_local_federation(
                [{"site": s} for s in sites], cfg, work, timeout=timeout, env=env
            )
        except FederatedError as e:
            raise ConfigError(
                f"the Flower federation failed: {str(e).splitlines()[0]} (logs and the last "
                f"global model are in {work}; the run folder was not written)",
                field="backend",
                hint="rerun with --backend sim to check the data and settings in one process",
            ) from e
        if result.parameters is None:
            raise ConfigError(f"the Flower run in {work} saved no global model", field="backend")
        if result.finish is None:
            raise ConfigError(
                f"the Flower run in {work} did not fit stage 2 (no finish.json)", field="backend"
            )
        history = history_from_record(result.record, result.parameters, settings.strategy, sites)
        return history, _spent(history, dp), Stage2Fit.from_dict(result.finish["stage2"])

    return train


def flower_run(
    cohort: str | Path,
    out: str | Path,
    config: RunConfig | None = None,
    settings: FederatedSettings | None = None,
    *,
    dp: DPConfig | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    n_boot: int = 1000,
    timeout: float = 1800.0,
) -> Path:
    """Like :func:`clinfuse.federated.federated_run`, trained by a loopback Flower federation.

    Raises:
        ConfigError: the federation failed (a process, a site, too few answers, a timeout);
            the message names the folder with Flower's logs.
    """
    config = config or RunConfig()
    settings = settings or FederatedSettings()
    manifest = Path(cohort).resolve()
    say = log or (lambda _m: None)
    trainer = _trainer(manifest, config, settings, dp, timeout, say)
    return federated_run(
        manifest,
        out,
        config,
        settings,
        dp=dp,
        n_boot=n_boot,
        overwrite=overwrite,
        log=log,
        trainer=trainer,
        backend="flower",
    )
