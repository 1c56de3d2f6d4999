"""The ``clinfuse federated`` command, as a plain function the main CLI registers.

Register it in :mod:`clinfuse.cli` with::

    from clinfuse.federated.cli import FEDERATED_EPILOG, federated
    app.command(epilog=FEDERATED_EPILOG)(federated)

and likewise ``flower-config`` (:func:`flower_config`: the run config of a deployment where
every site keeps its own manifest) and ``flower-assemble`` (:func:`flower_assemble`: the
run folder from such a run's output, on the coordinator).

Backends: ``sim`` (in-process simulation) and ``flower`` (a real Flower federation on
loopback: a SuperLink and one SuperNode process per site,
:mod:`clinfuse.federated.flower_run`). :data:`BACKENDS` maps a backend name to the function
that runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "BACKENDS",
    "FEDERATED_EPILOG",
    "FLOWER_ASSEMBLE_EPILOG",
    "FLOWER_CONFIG_EPILOG",
    "federated",
    "flower_assemble",
    "flower_config",
]

FEDERATED_EPILOG = (
    "Examples:\n\n"
    "  clinfuse federated demo/manifest.csv --out runs/fed --strategy fedavg --rounds 20\n\n"
    "  clinfuse federated demo/manifest.csv --out runs/fedprox --strategy fedprox "
    "--proximal-mu 0.01 --local-epochs 2\n\n"
    "  clinfuse federated demo/manifest.csv --out runs/fed_iid --partition iid --n-sites 4 "
    "--clients-per-round 2\n\n"
    "  clinfuse federated demo/manifest.csv --out runs/fed_dp --dp-epsilon 8 --dp-delta 1e-5 "
    "--max-grad-norm 1.0\n\n"
    "  clinfuse federated demo/manifest.csv --out runs/fed_flower --backend flower --rounds 5\n\n"
    "  clinfuse federated demo/manifest.csv --out runs/fed_agg --stage2 aggregates   "
    "(combiner and calibration from per-site sums)"
)


def _flower_backend(*args: Any, **kwargs: Any) -> Path:
    """``--backend flower``: a loopback Flower federation (SuperLink + one SuperNode per site)."""
    from clinfuse.federated.flower_run import flower_run

    return flower_run(*args, **kwargs)


BACKENDS: dict[str, Callable[..., Path]] = {"flower": _flower_backend}
"""Extra backends: ``name -> fn(cohort, out, config, settings, dp=..., overwrite=..., log=...)``."""


# options that `federated` and `flower-config` share
StrategyOpt = Annotated[
    str, typer.Option("--strategy", help="fedavg, fedprox, fedadam or fedyogi.")
]
RoundsOpt = Annotated[int, typer.Option("--rounds", min=1, help="Server rounds.")]
LocalEpochsOpt = Annotated[
    int, typer.Option("--local-epochs", min=1, help="Local epochs per round.")
]
ProximalMuOpt = Annotated[
    float, typer.Option("--proximal-mu", min=0.0, help="FedProx μ (with --strategy fedprox).")
]
ClientsPerRoundOpt = Annotated[
    int | None, typer.Option("--clients-per-round", min=1, help="Sites sampled per round.")
]
DPEpsilonOpt = Annotated[
    float | None, typer.Option("--dp-epsilon", help="Target ε of DP-SGD at every site.")
]
DPDeltaOpt = Annotated[float, typer.Option("--dp-delta", help="δ of DP-SGD.")]
MaxGradNormOpt = Annotated[
    float, typer.Option("--max-grad-norm", help="DP-SGD per-sample clipping norm.")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Run config (YAML); defaults otherwise.")
]
Stage2Opt = Annotated[
    str,
    typer.Option(
        "--stage2",
        help="How the combiner and calibration are fitted after the rounds: pooled (sites "
        "send validation cases' unimodal logits and outcomes) or aggregates (sums only; "
        "same fit; not with isotonic calibration).",
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace --out.")]


def _dp_config(epsilon: float | None, delta: float, max_grad_norm: float) -> Any:
    """DP-SGD at every site for ``--dp-epsilon`` (None without it).

    Raises:
        privacy.errors.PrivacyError: a setting out of range.
    """
    from privacy.dp.engine import DPConfig

    if epsilon is None:
        return None
    return DPConfig(target_epsilon=epsilon, target_delta=delta, max_grad_norm=max_grad_norm)


def federated(
    cohort: Annotated[
        Path, typer.Argument(help="Manifest with a site column (or use --partition).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder to create.")],
    strategy: StrategyOpt = "fedavg",
    rounds: RoundsOpt = 10,
    local_epochs: LocalEpochsOpt = 1,
    proximal_mu: ProximalMuOpt = 0.0,
    clients_per_round: ClientsPerRoundOpt = None,
    partition: Annotated[
        str,
        typer.Option("--partition", help="site (manifest column), iid, label-skew, quantity-skew."),
    ] = "site",
    n_sites: Annotated[
        int, typer.Option("--n-sites", min=1, help="Sites of a synthetic partition.")
    ] = 3,
    dp_epsilon: DPEpsilonOpt = None,
    dp_delta: DPDeltaOpt = 1e-5,
    max_grad_norm: MaxGradNormOpt = 1.0,
    config: ConfigOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of sampling and partitions.")] = 0,
    backend: Annotated[
        str,
        typer.Option(
            "--backend", help="sim (in-process) or flower (SuperLink + SuperNodes on loopback)."
        ),
    ] = "sim",
    no_baselines: Annotated[
        bool,
        typer.Option("--no-baselines", help="Skip the centralized and site-alone comparators."),
    ] = False,
    stage2: Stage2Opt = "pooled",
    overwrite: OverwriteOpt = False,
) -> None:
    """Train the fusion model across sites (only model updates leave a site).

    Writes a run folder like `clinfuse train` (usable by predict/evaluate/explain/app) plus
    federated.json (rounds, per-site metrics, DP ε/δ spent) and federated_eval.csv
    (federated vs centralized vs each site alone, AUROC with 95 % CIs).
    """
    from rich.console import Console

    from clinfuse.config import load_config
    from clinfuse.errors import ConfigError
    from clinfuse.federated.run import FederatedSettings, federated_run
    from privacy.errors import PrivacyError

    console = Console(stderr=True)
    cfg = load_config(config)
    settings = FederatedSettings(
        strategy=strategy.lower(),
        rounds=rounds,
        local_epochs=local_epochs,
        proximal_mu=proximal_mu,
        clients_per_round=clients_per_round,
        partition=partition,
        n_sites=n_sites,
        seed=seed,
        baselines=not no_baselines,
        stage2=stage2,
    )
    runner: Callable[..., Path] = federated_run
    if backend != "sim":
        if backend not in BACKENDS:
            raise ConfigError(
                f"unknown backend {backend!r}; available: {['sim', *sorted(BACKENDS)]}",
                field="backend",
            )
        runner = BACKENDS[backend]
    try:
        dp = _dp_config(dp_epsilon, dp_delta, max_grad_norm)
        kwargs: dict[str, Any] = {"dp": dp, "overwrite": overwrite, "log": console.print}
        run = runner(cohort, out, cfg, settings, **kwargs)
    except PrivacyError as e:
        raise ConfigError(str(e)) from e
    Console().print(f"federated run written to {run}")


FLOWER_CONFIG_EPILOG = (
    "Example (3 hospitals, each with its own manifest):\n\n"
    "  clinfuse flower-config --sites 3 --rounds 20 --stage2 aggregates "
    "--output-dir /srv/fl/run1 --out run.toml\n\n"
    "  flwr run privacy/flower/app production --run-config run.toml --stream\n\n"
    "Each hospital: flower-supernode ... --node-config \"site='hospital-a' "
    "manifest='/data/fl/cohort.csv'\""
)


def flower_config(
    out: Annotated[Path, typer.Option("--out", help="TOML file to write (flwr run --run-config).")],
    sites: Annotated[int, typer.Option("--sites", min=1, help="SuperNodes the run waits for.")],
    output_dir: Annotated[
        str,
        typer.Option("--output-dir", help="The ServerApp's output folder, on the coordinator."),
    ],
    strategy: StrategyOpt = "fedavg",
    rounds: RoundsOpt = 10,
    local_epochs: LocalEpochsOpt = 1,
    proximal_mu: ProximalMuOpt = 0.0,
    clients_per_round: ClientsPerRoundOpt = None,
    dp_epsilon: DPEpsilonOpt = None,
    dp_delta: DPDeltaOpt = 1e-5,
    max_grad_norm: MaxGradNormOpt = 1.0,
    config: ConfigOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of sampling and local shuffling.")] = 0,
    stage2: Stage2Opt = "pooled",
    round_timeout: Annotated[
        float, typer.Option("--round-timeout", min=1.0, help="Seconds to wait for the sites.")
    ] = 600.0,
    min_fit_clients: Annotated[
        int | None,
        typer.Option(
            "--min-fit-clients",
            min=1,
            help="Fewest sites a round needs (default: every site sampled in the round).",
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the Flower run config of a deployment where every site keeps its own manifest.

    Before round 1 the sites describe their data (counts and sums only) and the coordinator
    makes the plan every site builds its model from: the modalities, the tabular scaling
    from the sites' sums, the input shapes. Each site splits its own patients. After the
    run, `clinfuse flower-assemble OUTPUT_DIR --out RUN` writes the run folder.
    """
    from rich.console import Console

    from clinfuse._files import write_text_atomic
    from clinfuse.config import load_config
    from clinfuse.errors import ConfigError
    from clinfuse.federated.flower_sites import site_run_config
    from clinfuse.federated.run import FederatedSettings
    from privacy.errors import PrivacyError

    if out.exists() and not overwrite:
        raise ConfigError("the file exists", path=out, hint="choose another --out or --overwrite")
    cfg = load_config(config)
    settings = FederatedSettings(
        strategy=strategy.lower(),
        rounds=rounds,
        local_epochs=local_epochs,
        proximal_mu=proximal_mu,
        clients_per_round=clients_per_round,
        seed=seed,
        baselines=False,
        stage2=stage2,
        min_fit_clients=min_fit_clients or min(clients_per_round or sites, sites),
    )
    try:
        settings.strategy_kwargs(cfg)  # refuses settings the strategy does not use
        dp = _dp_config(dp_epsilon, dp_delta, max_grad_norm)
        run_cfg = site_run_config(
            cfg,
            settings,
            n_sites=sites,
            output_dir=output_dir,
            dp=dp,
            round_timeout=round_timeout,
        )
    except PrivacyError as e:
        raise ConfigError(str(e)) from e
    write_text_atomic(out, run_cfg.to_toml())
    Console().print(
        f"run config written to {out}: {sites} sites, {rounds} rounds, stage 2 {stage2}; "
        f"flwr run privacy/flower/app <federation> --run-config {out}"
    )


FLOWER_ASSEMBLE_EPILOG = (
    "Example:\n\n"
    "  clinfuse flower-assemble /srv/fl/run1 --out runs/fed\n\n"
    "  clinfuse evaluate runs/fed /data/fl/cohort.csv --split test --out eval_site_a   "
    "(at each site)"
)


def flower_assemble(
    flower_dir: Annotated[
        Path, typer.Argument(help="The ServerApp's output-dir of a run with site-local manifests.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder to create.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out.")] = False,
) -> None:
    """Build the run folder of a Flower run with site-local manifests, on the coordinator.

    Reads federation.json, start.json (the plan), parameters.safetensors and finish.json
    (stage 2); writes the model, federated.json, data_report.json and train_log.csv. No
    case is needed: each site evaluates the run on its own test cases with
    `clinfuse evaluate RUN MANIFEST --split test`.
    """
    from rich.console import Console

    from clinfuse.federated.assemble import assemble_run

    console = Console(stderr=True)
    run = assemble_run(flower_dir, out, overwrite=overwrite, log=console.print)
    Console().print(f"run folder written to {run}")
