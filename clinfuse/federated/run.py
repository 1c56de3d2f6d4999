"""``clinfuse federated``: train the fusion model across sites and write a run folder.

The run folder is what ``clinfuse train`` writes (``clinfuse.load_run`` restores it,
``clinfuse evaluate`` evaluates it; built in ``RUN.partial`` and renamed when complete) plus:

    federated.json        strategy, rounds, sites, per-round per-site metrics, DP (ε, δ) spent
    federated_eval.csv    AUROC with 95 % bootstrap CIs of the federated, centralized and
                          site-alone models on each site's test split and pooled

Pipeline: load and split the cohort as ``train`` does (patient-level split, then every case
keeps its split inside its site); compute frozen encoders' embeddings; simulate federated
training of the trainable encoders and heads (:func:`privacy.federated.simulation.simulate`,
one :func:`~clinfuse.federated.task.fusion_site_task` per site); then fit the late-fusion
combiner and the calibration on the *pooled validation logits*: each site sends, per
validation case, only its unimodal logits, presence mask and outcome (never inputs), the
same held-out data the centralized trainer uses for stage 2 (see docs/federated.md). With
``stage2="aggregates"`` no per-case value leaves a site: the combiner and the calibration
are fitted from the sites' sums (counts, sums of logits, and the log loss, its gradient and
its Hessian summed at the parameters the coordinator tries; :mod:`clinfuse.federated.stage2`),
which gives the same fit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clinfuse import __version__
from clinfuse._files import publish
from clinfuse.cohort.manifest import Cohort, Issue
from clinfuse.config import RunConfig
from clinfuse.data import CaseLoader, check_signal_shapes, input_shapes
from clinfuse.encoders.base import check_encoder_configs
from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.metrics import metric_with_ci
from clinfuse.evaluation.summary import summarize_predictions
from clinfuse.federated.sites import PLAN_FORMAT, site_cohort, train_frame
from clinfuse.federated.stage2 import (
    SiteLogits,
    Stage2Fit,
    fit_from_sites,
    fit_pooled,
    site_summary,
    site_sums,
)
from clinfuse.federated.task import fusion_site_task, trainable_view
from clinfuse.fusion.late import LateFusion
from clinfuse.io.tabular import TabularEncoder
from clinfuse.model import FusionModel
from clinfuse.training.embed import attach_embeddings
from clinfuse.training.run import (
    _availability,
    _json_default,
    _prepare_folders,
    _write_json,
    split_labelled_cohort,
)
from privacy.dp.engine import DPConfig
from privacy.errors import FederatedError, PrivacyError
from privacy.federated.partition import make_partition
from privacy.federated.simulation import History, RoundRecord, simulate
from privacy.federated.strategies import build_strategy
from privacy.federated.torch_task import get_parameters, parameter_keys, set_parameters

__all__ = [
    "FederatedSettings",
    "Prepared",
    "Trainer",
    "dp_summary",
    "federated_run",
    "prepare",
    "prepare_site",
    "privacy_utility",
    "run_record",
    "set_stage2",
    "stage2_record",
    "train_log",
]

Log = Callable[[str], None]


@dataclass
class FederatedSettings:
    """How to federate (the CLI options; recorded in ``federated.json``).

    Attributes:
        strategy: fedavg, fedprox, fedadam or fedyogi.
        rounds: server rounds.
        local_epochs: local passes over each site's training cases per round.
        proximal_mu: FedProx μ.
        clients_per_round: sites sampled per round (None: all).
        min_fit_clients: fewest sites a round needs.
        partition: site (the manifest's column), iid, label-skew or quantity-skew.
        n_sites: sites of a synthetic partition.
        lr: local learning rate (None: the config's ``training.lr``; FedAdam/FedYogi: eta_l).
        optimizer: local optimizer (adam, sgd, adamw).
        server: extra server-optimizer settings (eta, beta_1, ...).
        seed: seed of sampling, partition and local shuffling.
        baselines: also train the centralized and the site-alone models for the table.
        stage2: how the federated model's combiner and calibration are fitted: ``pooled``
            (each site sends its validation cases' unimodal logits, presence and outcome)
            or ``aggregates`` (each site sends sums only; isotonic calibration refused).
    """

    strategy: str = "fedavg"
    rounds: int = 10
    local_epochs: int = 1
    proximal_mu: float = 0.0
    clients_per_round: int | None = None
    min_fit_clients: int = 1
    partition: str = "site"
    n_sites: int = 3
    lr: float | None = None
    optimizer: str = "adam"
    server: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    baselines: bool = True
    stage2: str = "pooled"

    def strategy_kwargs(self, config: RunConfig) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "local_epochs": self.local_epochs,
            "batch_size": config.training.batch_size,
            "seed": self.seed,
            **self.server,
        }
        if self.strategy in ("fedadam", "fedyogi"):
            if self.lr is not None:
                kw["lr"] = self.lr
        else:
            kw["lr"] = self.lr if self.lr is not None else config.training.lr
        if self.strategy == "fedprox":
            kw["proximal_mu"] = self.proximal_mu
        elif self.proximal_mu:
            raise ConfigError(
                f"--proximal-mu is a FedProx setting; strategy {self.strategy!r} does not use it",
                field="proximal_mu",
                hint="use --strategy fedprox",
            )
        return kw


@dataclass
class Prepared:
    """A cohort loaded once: cases (with frozen embeddings), sites, a fresh model."""

    cohort: Cohort
    config: RunConfig
    modalities: list[str]
    model: FusionModel
    cases: list[dict[str, Any]]
    sites: dict[str, list[int]]
    excluded: list[Issue]
    tabular: TabularEncoder | None
    init: list[np.ndarray]
    keys: list[str]
    stage2: dict[str, Any] = field(default_factory=dict)  # how stage 2 was last fitted

    def split(self, split: str, site: str | None = None) -> list[dict[str, Any]]:
        idx = range(len(self.cases)) if site is None else self.sites[site]
        return [self.cases[i] for i in idx if self.cases[i]["split"] == split]


def prepare(
    cohort_path: str | Path,
    config: RunConfig,
    settings: FederatedSettings,
    *,
    dp: DPConfig | None = None,
    log: Log | None = None,
    only_site: str | None = None,
) -> Prepared:
    """Load, split and embed the cohort; assign sites; build the model (seeded).

    Args:
        cohort_path: the manifest.
        config: run configuration.
        settings: federation settings (partition, seed).
        dp: DP-SGD settings (None: no DP; else BatchNorm becomes GroupNorm).
        log: progress messages.
        only_site: load the cases of this site only (one site's process in a real
            federation). With ``partition="site"`` only that site's manifest rows are
            loaded; a synthetic partition needs every case's label, so all rows are loaded
            and the others dropped. The split, the tabular encoder and the initial model
            are the same as with every site loaded.

    Raises:
        CohortError: one outcome class only, or a split without both classes, or
            ``only_site`` names no site of the partition.
    """
    say = log or (lambda _m: None)
    data_cfg = config.data
    cohort, modalities = split_labelled_cohort(cohort_path, config)
    tabular = None
    if "tabular" in modalities:
        tabular = TabularEncoder(data_cfg.tabular_columns).fit(train_frame(cohort))
    rows = cohort.rows
    if only_site is not None and settings.partition == "site":
        rows = [r for r in rows if str(_row_site(r)) == only_site]
    return _build(cohort, rows, config, modalities, tabular, settings, dp, say, only_site)


def prepare_site(
    manifest: str | Path,
    config: RunConfig,
    settings: FederatedSettings,
    site: str,
    plan: dict[str, Any],
    *,
    dp: DPConfig | None = None,
    log: Log | None = None,
) -> Prepared:
    """One site's cases from its own manifest, for the coordinator's plan (site-local
    manifests, :mod:`clinfuse.federated.sites`).

    The site splits its own patients (:func:`~clinfuse.federated.sites.site_cohort`); the
    modalities, the tabular encoder and the input shapes come from ``plan``
    (:func:`~clinfuse.federated.sites.plan_from_sites`), so every site builds the same
    seeded model.

    Raises:
        CohortError: an unusable manifest, rows of other sites, or no usable case.
        ConfigError: a plan of another format.
    """
    if int(plan.get("format", 0)) != PLAN_FORMAT:
        raise ConfigError(
            f"the run's plan has format {plan.get('format')!r}; this clinfuse reads format "
            f"{PLAN_FORMAT} (is every site on the coordinator's clinfuse version?)",
            field="plan",
        )
    cohort = site_cohort(manifest, config, site)
    tabular = None if plan.get("tabular") is None else TabularEncoder.from_dict(plan["tabular"])
    return _build(
        cohort,
        cohort.rows,
        config,
        list(plan["modalities"]),
        tabular,
        settings,
        dp,
        log or (lambda _m: None),
        site,
        in_shapes=dict(plan.get("in_shapes") or {}),
    )


def _build(
    cohort: Cohort,
    rows: Sequence[Any],
    config: RunConfig,
    modalities: list[str],
    tabular: TabularEncoder | None,
    settings: FederatedSettings,
    dp: DPConfig | None,
    say: Log,
    only_site: str | None,
    *,
    in_shapes: dict[str, int] | None = None,
) -> Prepared:
    """Load ``rows``, build the seeded model, attach frozen embeddings, assign sites.

    With ``in_shapes`` (site-local manifests) every row belongs to ``only_site`` and the
    model's input facts are the plan's, not this site's first cases'.
    """
    if dp is not None:
        config = _dp_friendly(config, modalities, say)
    config = config.model_copy(
        update={"data": config.data.model_copy(update={"modalities": modalities})}
    )
    loaded = CaseLoader(config.data, modalities, tabular).load_many(rows)
    check_signal_shapes(loaded.cases)
    excluded = list(cohort.excluded) + loaded.excluded
    shapes = input_shapes(loaded.cases, tabular) if in_shapes is None else in_shapes
    torch.manual_seed(config.training.seed)
    model = FusionModel.build(config, modalities, tabular=tabular, in_shapes=shapes)
    cases = loaded.cases
    if model.frozen_modalities:
        cases = attach_embeddings(model, cases, model.frozen_modalities)
    if in_shapes is not None:
        assert only_site is not None
        if not cases:
            raise CohortError(
                f"site {only_site!r} has no usable cases ({len(excluded)} excluded)",
                field="site",
                path=cohort.manifest_path,
                hint="run clinfuse validate on the site's manifest",
            )
        for case in cases:
            case["site"] = only_site
        sites = {only_site: list(range(len(cases)))}
    else:
        sites = _assign_sites(cases, settings, cohort)
    if only_site is not None:
        if only_site not in sites:
            raise CohortError(
                f"site {only_site!r} has no usable cases in this cohort; sites: {sorted(sites)}",
                field="site",
                path=cohort.manifest_path,
                hint="start one site process per site name of the manifest's site column",
            )
        keep = sites[only_site]
        cases = [cases[i] for i in keep]
        sites = {only_site: list(range(len(keep)))}
    say(
        f"loaded {len(cases)} cases at {len(sites)} sites "
        f"({', '.join(f'{k}: {len(v)}' for k, v in sites.items())}); excluded {len(excluded)}"
    )
    view = trainable_view(model)
    keys = parameter_keys(view)
    return Prepared(
        cohort,
        config,
        modalities,
        model,
        cases,
        sites,
        excluded,
        tabular,
        get_parameters(view, keys),
        keys,
    )


def _row_site(row: Any) -> Any:
    """A manifest row's site (a column of the row or of its extra columns)."""
    site = getattr(row, "site", None)
    return site if site is not None else row.extra.get("site")


def _dp_friendly(config: RunConfig, modalities: Sequence[str], say: Log) -> RunConfig:
    """GroupNorm instead of BatchNorm in the trainable image/signal encoders (Opacus)."""
    encoders = {m: dict(s) for m, s in config.encoders.items()}
    changed = []
    for m in ("image", "signal"):
        spec = encoders.get(m, {})
        if m in modalities and not spec.get("freeze") and spec.get("norm", "batch") == "batch":
            spec["norm"] = "group"
            changed.append(m)
    if changed:
        say(
            f"DP-SGD: BatchNorm is not compatible with per-sample clipping; the {', '.join(changed)} "
            "encoder(s) use GroupNorm (encoders.<m>.norm = group, saved in config.yaml)"
        )
    return config.model_copy(update={"encoders": encoders})


def _assign_sites(
    cases: list[dict[str, Any]], settings: FederatedSettings, cohort: Cohort
) -> dict[str, list[int]]:
    if settings.partition == "site":
        values = [c.get("site") for c in cases]
        if any(v is None or str(v).strip() == "" for v in values):
            raise CohortError(
                "partition 'site' needs the manifest's site column filled for every case",
                field="site",
                path=cohort.manifest_path,
                hint="fill it, or use --partition iid|label-skew|quantity-skew",
            )
    parts = make_partition(
        settings.partition,
        column=[c.get("site") for c in cases] if settings.partition == "site" else None,
        labels=np.array([c["label"] for c in cases]),
        n_sites=settings.n_sites,
        seed=settings.seed,
    )
    return {k: v.tolist() for k, v in parts.items()}


# -- training ----------------------------------------------------------------------
def _train(
    prep: Prepared,
    site_cases: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    settings: FederatedSettings,
    *,
    dp: DPConfig | None,
    on_round: Callable[[RoundRecord, list[np.ndarray]], None] | None = None,
) -> tuple[History, dict[str, Any]]:
    """Reset the trainable part to its initial weights and federate over ``site_cases``."""
    view = trainable_view(prep.model, private=dp is not None)
    set_parameters(view, prep.keys, prep.init)
    tasks = [
        fusion_site_task(
            sid,
            prep.model,
            train,
            val,
            dp=dp,
            dp_rounds=settings.rounds,
            optimizer=settings.optimizer,
            keys=prep.keys,
        )
        for sid, (train, val) in site_cases.items()
    ]
    strategy = build_strategy(settings.strategy, **settings.strategy_kwargs(prep.config))
    history = simulate(
        tasks,
        strategy,
        settings.rounds,
        initial_parameters=prep.init,
        clients_per_round=(
            min(settings.clients_per_round, len(tasks)) if settings.clients_per_round else None
        ),
        min_fit_clients=min(settings.min_fit_clients, len(tasks)),
        seed=settings.seed,
        on_round=on_round,
    )
    set_parameters(view, prep.keys, history.parameters)
    spent = {t.site_id: t.privacy_spent() for t in tasks} if dp is not None else {}
    if dp is not None:
        fusion = prep.model.network.fusion
        if isinstance(fusion, LateFusion):  # trainable_view froze them for Opacus
            fusion.weight_raw.requires_grad_(True)
            fusion.bias.requires_grad_(True)
    return history, spent


STAGE2 = ("pooled", "aggregates")
"""How a federated model's combiner and calibration are fitted (``--stage2``)."""


def check_stage2(settings: FederatedSettings, config: RunConfig) -> None:
    """Refuse an unknown ``stage2`` and isotonic calibration from aggregates, before training.

    Raises:
        ConfigError: either.
    """
    if settings.stage2 not in STAGE2:
        raise ConfigError(
            f"unknown stage2 {settings.stage2!r}; use one of {', '.join(STAGE2)}", field="stage2"
        )
    if settings.stage2 == "aggregates" and config.calibration.method == "isotonic":
        raise ConfigError(
            "isotonic calibration needs every validation logit in one place; it cannot be "
            "fitted from per-site aggregates",
            field="calibration.method",
            hint="set calibration.method to platt or temperature in the config, or use "
            "--stage2 pooled",
        )


def _fit_stage2(
    prep: Prepared,
    val_cases: list[dict[str, Any]],
    *,
    sites: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """Combiner (late fusion) and calibrators on the pooled validation logits, or with
    ``sites`` (each site's validation cases) from the sites' aggregates only."""
    if sites is not None:
        _fit_stage2_aggregates(prep, sites)
        return
    model = prep.model
    fit = fit_pooled(
        site_logits(model, val_cases),
        modalities=model.modalities,
        method=model.config.calibration.method,
        combiner=isinstance(model.network.fusion, LateFusion),
    )
    apply_stage2(prep, fit, mode="pooled", sites=len(prep.sites), over="in process")


def _fit_stage2_aggregates(prep: Prepared, sites: dict[str, list[dict[str, Any]]]) -> None:
    """Stage 2 without per-case values leaving a site (:attr:`FederatedSettings.stage2`).

    Every site computes its validation cases' logits with the broadcast model and answers
    the coordinator's requests with sums only (:mod:`clinfuse.federated.stage2`): here the
    sites are this process's case lists, kept apart.
    """
    held = [site_logits(prep.model, cases) for cases in sites.values() if cases]
    fit = fit_from_sites(
        [site_summary(s) for s in held],
        lambda request: [site_sums(s, request) for s in held],
        modalities=prep.model.modalities,
        method=prep.model.config.calibration.method,
        combiner=isinstance(prep.model.network.fusion, LateFusion),
    )
    apply_stage2(prep, fit, mode="aggregates", sites=len(held), over="in process")


def site_logits(model: FusionModel, cases: list[dict[str, Any]]) -> SiteLogits:
    """A site's validation cases as stage 2 needs them (computed at the site)."""
    raw = model.forward_cases(cases)
    labels = np.array([c["label"] for c in cases], dtype=float)
    return SiteLogits(raw["unimodal"], raw["present"], labels, raw["logit"])


def apply_stage2(prep: Prepared, fit: Stage2Fit, *, mode: str, sites: int, over: str) -> None:
    """Put a fitted stage 2 into ``prep.model`` and record how it was fitted.

    Args:
        prep: the federated run's model and cases.
        fit: the fitted combiner and calibrators.
        mode: ``pooled`` or ``aggregates`` (:data:`STAGE2`).
        sites: how many sites took part.
        over: where it was fitted: ``in process`` or ``flower`` (over Flower messages).
    """
    set_stage2(prep.model, fit)
    prep.stage2 = stage2_record(fit, mode=mode, sites=sites, over=over)


def set_stage2(model: FusionModel, fit: Stage2Fit) -> None:
    """Put a fitted combiner and calibrators into ``model``.

    Raises:
        ConfigError: the fit is for other modalities, or has a combiner the model lacks.
    """
    if list(fit.modalities) != list(model.modalities):
        raise ConfigError(
            f"stage 2 was fitted for modalities {fit.modalities}, the model has {model.modalities}",
            field="stage2",
        )
    fusion = model.network.fusion
    if fit.combiner is not None:
        if not isinstance(fusion, LateFusion):
            raise ConfigError("stage 2 fitted a combiner for a model without one", field="stage2")
        with torch.no_grad():
            if "weight_raw" in fit.combiner:
                raw = torch.tensor(fit.combiner["weight_raw"], dtype=torch.float64)
            else:  # softplus⁻¹ of the weights (a weight held at 0 becomes 1e-12)
                w = torch.tensor(fit.combiner["weights"], dtype=torch.float64).clamp(min=1e-12)
                raw = w + torch.log(-torch.expm1(-w))
            fusion.weight_raw.copy_(raw.to(fusion.weight_raw))
            fusion.bias.fill_(float(fit.combiner["bias"]))
            fusion.center.copy_(torch.tensor(fit.combiner["center"]).to(fusion.center))
    model.calibrators = dict(fit.calibrators)


def stage2_record(fit: Stage2Fit, *, mode: str, sites: int, over: str) -> dict[str, Any]:
    """How stage 2 was fitted (``federated.json → stage2_fit``)."""
    if mode == "pooled":
        return {
            "mode": "pooled",
            "over": over,
            "sites": sites,
            "note": "combiner and calibration fitted on pooled validation logits (unimodal "
            "logits, presence and outcome per validation case; no inputs leave a site)",
        }
    return {
        "mode": "aggregates",
        "over": over,
        "sites": sites,
        "requests": fit.requests,
        "messages_per_site": fit.requests + 1,
        "newton_iterations": fit.iterations,
        "note": "combiner and calibration fitted from per-site aggregates: case and event "
        "counts, per-modality sums and counts of present logits, then the log loss, its "
        "gradient and its Hessian summed over each site's cases at each parameter value the "
        "coordinator tried; no per-case value left a site (the sums are not differentially "
        "private)",
    }


def _describe_stage2(stage2: dict[str, Any]) -> str:
    """One line on how stage 2 was fitted (the command's output)."""
    where = "over Flower messages" if stage2.get("over") == "flower" else "in this process"
    if stage2.get("mode") == "aggregates":
        return (
            f"stage 2: combiner and calibration from the {stage2['sites']} sites' sums, {where} "
            f"({stage2['messages_per_site']} messages per site)"
        )
    return f"stage 2: combiner and calibration on the pooled validation logits, {where}"


def _snapshot(prep: Prepared) -> dict[str, Any]:
    """Everything a trained variant needs to predict: trainable weights, combiner, calibrators."""
    net = prep.model.network
    return {
        "params": get_parameters(trainable_view(prep.model), prep.keys),
        "fusion": {k: v.detach().clone() for k, v in net.fusion.state_dict().items()},
        "calibrators": dict(prep.model.calibrators),
    }


def _restore(prep: Prepared, snap: dict[str, Any]) -> None:
    set_parameters(trainable_view(prep.model), prep.keys, snap["params"])
    prep.model.network.fusion.load_state_dict(snap["fusion"])
    prep.model.calibrators = dict(snap["calibrators"])


def _variant(
    prep: Prepared,
    site_cases: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    val_cases: list[dict[str, Any]],
    settings: FederatedSettings,
    *,
    dp: DPConfig | None = None,
    on_round: Callable[[RoundRecord, list[np.ndarray]], None] | None = None,
    stage2_sites: dict[str, list[dict[str, Any]]] | None = None,
) -> tuple[dict[str, Any], History, dict[str, Any]]:
    history, spent = _train(prep, site_cases, settings, dp=dp, on_round=on_round)
    _fit_stage2(prep, val_cases, sites=stage2_sites)
    return _snapshot(prep), history, spent


def _stage2_sites(
    prep: Prepared, settings: FederatedSettings
) -> dict[str, list[dict[str, Any]]] | None:
    """Each site's validation cases when the federated model's stage 2 uses aggregates."""
    if settings.stage2 != "aggregates":
        return None
    return {s: prep.split("val", s) for s in prep.sites}


Trainer = Callable[
    [Prepared, dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]], Path],
    tuple[History, dict[str, Any], Stage2Fit],
]
"""``trainer(prep, site_cases, run_folder) -> (history, dp spent per site, stage 2)``:
federated training by another backend, which also fits stage 2 (as ``settings.stage2``
says) with the final global parameters in ``history.parameters``."""


def _external_variant(
    prep: Prepared,
    trainer: Trainer,
    folder: Path,
    settings: FederatedSettings,
) -> tuple[dict[str, Any], History, dict[str, Any]]:
    history, spent, stage2 = trainer(prep, _site_cases(prep), folder)
    set_parameters(trainable_view(prep.model), prep.keys, history.parameters)
    apply_stage2(
        prep,
        stage2,
        mode=settings.stage2,
        sites=len(history.sites),
        over=history.strategy.get("backend", "external"),
    )
    return _snapshot(prep), history, spent


def _auroc_rows(prep: Prepared, name: str, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """AUROC (95 % bootstrap CI) of the current model on each site's test split and pooled."""
    rows = []
    groups = {**{s: prep.split("test", s) for s in prep.sites}, "pooled": prep.split("test")}
    for where, cases in groups.items():
        y = np.array([c["label"] for c in cases], dtype=float)
        row: dict[str, Any] = {
            "model": name,
            "evaluated_on": where,
            "n_cases": len(y),
            "n_events": int(y.sum()),
        }
        if len(y) >= 2 and len(np.unique(y)) == 2:
            p = prep.model.probabilities(prep.model.forward_cases(cases))["fusion"]
            res = metric_with_ci("auroc", y, p, n_boot=n_boot, seed=seed)
            row.update(auroc=res["value"], ci_low=res["ci_low"], ci_high=res["ci_high"])
        else:
            row.update(auroc=np.nan, ci_low=np.nan, ci_high=np.nan)
        rows.append(row)
    return rows


def _site_cases(
    prep: Prepared, sites: Sequence[str] | None = None
) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    return {s: (prep.split("train", s), prep.split("val", s)) for s in (sites or list(prep.sites))}


def federated_run(
    cohort_path: str | Path,
    out: str | Path,
    config: RunConfig | None = None,
    settings: FederatedSettings | None = None,
    *,
    dp: DPConfig | None = None,
    n_boot: int = 1000,
    overwrite: bool = False,
    log: Log | None = None,
    trainer: Trainer | None = None,
    backend: str = "sim",
) -> Path:
    """Federated training of the fusion model across sites; writes a complete run folder.

    Args:
        cohort_path: the manifest.
        out: the run folder to create.
        config: run configuration (defaults when None).
        settings: federation settings (strategy, rounds, partition, ...).
        dp: sample-level DP-SGD at every site (None: no DP).
        n_boot: bootstrap replicates of the evaluation table's CIs.
        overwrite: replace an existing run folder.
        log: one-line progress messages (counts and ids only).
        trainer: federated training by another backend (None: the in-process simulator);
            the baselines are always trained in process.
        backend: the backend's name, recorded in ``federated.json``.

    Returns:
        The run folder.

    Raises:
        ConfigError, CohortError: bad settings or data (one-line messages in the CLI).
        privacy.errors.PrivacyError: a site's data unusable, an unreachable ε, too few sites.
    """
    t_start = time.perf_counter()
    say = log or (lambda _m: None)
    settings = settings or FederatedSettings()
    config = config or RunConfig()
    check_stage2(settings, config)
    out = Path(out)
    check_encoder_configs(config.encoders)
    partial = _prepare_folders(out, resume=False, overwrite=overwrite, resumable=False)
    try:
        prep = prepare(cohort_path, config, settings, dp=dp, log=say)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # refused before anything was computed
        raise
    prep.config.save(partial / "config.yaml")
    val_all = prep.split("val")
    table: list[dict[str, Any]] = []
    seed = prep.config.training.seed
    snaps: dict[str, dict[str, Any]] = {}
    if settings.baselines:
        central = {"pooled": (prep.split("train"), val_all)}
        snaps["centralized"], _, _ = _variant(prep, central, val_all, settings, dp=dp)
        table += _auroc_rows(prep, "centralized", n_boot, seed)
        for s in prep.sites:
            alone = {s: (prep.split("train", s), prep.split("val", s))}
            try:
                _variant(prep, alone, prep.split("val", s), settings, dp=dp)
            except (PrivacyError, ValueError) as e:
                say(f"site {s} alone: not trained ({str(e).splitlines()[0]})")
                continue
            table += _auroc_rows(prep, f"site_alone:{s}", n_boot, seed)

    def on_round(record: RoundRecord, _p: list[np.ndarray]) -> None:
        agg = ", ".join(f"{k} {v:.3f}" for k, v in record.evaluate_aggregated.items())
        say(f"round {record.server_round}/{settings.rounds}: {agg}")

    by_site = _stage2_sites(prep, settings)
    if trainer is None:
        snap, history, spent = _variant(
            prep,
            _site_cases(prep),
            val_all,
            settings,
            dp=dp,
            on_round=on_round,
            stage2_sites=by_site,
        )
    else:
        snap, history, spent = _external_variant(prep, trainer, partial, settings)
    _check_every_site_contributed(history)
    _restore(prep, snap)
    say(_describe_stage2(prep.stage2))
    table = _auroc_rows(prep, "federated", n_boot, seed) + table
    _write_outputs(prep, partial, history, spent, settings, dp, table, n_boot, t_start, backend)
    publish(partial, out)
    return out


def _write_outputs(
    prep: Prepared,
    partial: Path,
    history: History,
    spent: dict[str, Any],
    settings: FederatedSettings,
    dp: DPConfig | None,
    table: list[dict[str, Any]],
    n_boot: int,
    t_start: float,
    backend: str = "sim",
) -> None:
    model = prep.model
    cases = prep.cases
    predictions = model.predictions_frame(cases, model.forward_cases(cases))
    predictions["site"] = [_site_of(prep, i) for i in range(len(cases))]
    seed = prep.config.training.seed
    split_metrics = {}
    for split in ("val", "test"):
        part = predictions[predictions["split"] == split]
        if len(part):
            split_metrics[split] = summarize_predictions(
                part, prep.modalities, n_boot=n_boot, seed=seed
            )
    primary = "test" if "test" in split_metrics else "val"
    metrics: dict[str, Any] = {
        "clinfuse_version": __version__,
        "split": primary,
        **split_metrics[primary],
        "splits": split_metrics,
        "federated": {
            "strategy": settings.strategy,
            "rounds": settings.rounds,
            "dp": None if dp is None else dp_summary(dp, spent),
        },
    }
    fusion = model.network.fusion
    if isinstance(fusion, LateFusion):
        metrics["combiner"] = {
            "bias": float(fusion.bias.detach()),
            "weights": dict(zip(prep.modalities, fusion.weights.detach().tolist(), strict=True)),
            "centers": dict(zip(prep.modalities, fusion.center.tolist(), strict=True)),
        }
    metrics["calibration"] = {"fusion": model.calibrators["fusion"].to_dict()}
    model.info = {
        "clinfuse_version": __version__,
        "torch_version": torch.__version__,
        "trained_on": "cpu",
        "federated": True,
        "rounds": settings.rounds,
    }
    model.save_pretrained(partial)
    by_split = {s: prep.split(s) for s in ("train", "val", "test")}
    report = {
        "manifest": str(prep.cohort.manifest_path),
        "target": prep.config.data.target,
        "modalities": prep.modalities,
        "frozen_encoders": model.frozen_modalities,
        "n_used": len(cases),
        "n_excluded": len({i.case_id for i in prep.excluded}),
        "excluded": [i.as_dict() for i in prep.excluded],
        "splits": {
            s: {
                "n_cases": len(v),
                "n_events": int(sum(c["label"] for c in v)),
                "n_patients": len({c["patient_id"] for c in v}),
                **_availability(v, prep.modalities),
            }
            for s, v in by_split.items()
        },
        "availability": _availability(cases, prep.modalities),
        "sites": {
            s: {sp: len(prep.split(sp, s)) for sp in ("train", "val", "test")} for s in prep.sites
        },
        "tabular_features": None if prep.tabular is None else prep.tabular.feature_names_,
    }
    _write_json(partial / "data_report.json", report)
    _write_json(partial / "metrics.json", metrics)
    fed = {
        "clinfuse_version": __version__,
        "backend": backend,
        "partition": settings.partition,
        "settings": {k: v for k, v in settings.__dict__.items()},
        **history.to_dict(),
        "dp": None if dp is None else dp_summary(dp, spent),
        "evaluation": table,
        "stage2": prep.stage2.get("note"),
        "stage2_fit": prep.stage2,  # mode, sites, combiner evaluations
    }
    _write_json(partial / "federated.json", json.loads(json.dumps(fed, default=_json_default)))
    tmp = partial / ".federated_eval.csv.tmp"
    pd.DataFrame(table).to_csv(tmp, index=False)
    os.replace(tmp, partial / "federated_eval.csv")
    tmp = partial / ".predictions.csv.tmp"
    predictions.to_csv(tmp, index=False)
    os.replace(tmp, partial / "predictions.csv")
    train_log(history).to_csv(partial / "train_log.csv", index=False)
    _write_json(partial / "run.json", run_record(t_start))


def _check_every_site_contributed(history: Any) -> None:
    """Refuse a federated model some site never trained: its rounds all failed (a data or
    code problem at that site, e.g. a batch it cannot build), so the model is not the
    federation's the user asked for.

    Raises:
        FederatedError: naming each such site and its first failure.
    """
    rounds = getattr(history, "rounds", None) or []
    sites = list(getattr(history, "sites", None) or [])
    done = {s for r in rounds for s in r.completed}
    silent = [s for s in sites if s not in done and any(s in r.failed for r in rounds)]
    if not silent:
        return
    reasons = "; ".join(
        f"{s}: {next(r.failed[s] for r in rounds if s in r.failed)}" for s in silent
    )
    raise FederatedError(
        f"{len(silent)} of {len(sites)} sites failed in every round, so the model never "
        f"learned from them ({reasons}); fix those sites (each reason is its first failure) "
        "and rerun with --overwrite"
    )


def run_record(t_start: float, **extra: Any) -> dict[str, Any]:
    """``run.json`` of a federated run folder (``extra``: e.g. ``evaluated=False``)."""
    return {
        "clinfuse_version": __version__,
        "seconds": time.perf_counter() - t_start,
        "device": "cpu",
        "complete": True,
        "federated": True,
        **extra,
    }


def train_log(history: History) -> pd.DataFrame:
    """``train_log.csv``: per round its seconds and the sites' weighted validation metrics."""
    return pd.DataFrame(
        [
            {
                "round": r.server_round,
                "seconds": r.seconds,
                **{f"val_{k}": v for k, v in r.evaluate_aggregated.items()},
            }
            for r in history.rounds
        ]
    )


def _site_of(prep: Prepared, i: int) -> str:
    for s, idx in prep.sites.items():
        if i in idx:
            return s
    return ""


def dp_summary(dp: DPConfig, spent: dict[str, Any]) -> dict[str, Any]:
    """``federated.json → dp``: the DP-SGD settings and the ε each site spent."""
    eps = [v["epsilon"] for v in spent.values() if v]
    return {
        "level": "sample (DP-SGD at each site, Opacus)",
        "config": dp.to_dict(),
        "accountant": dp.accountant,
        "epsilon_max_over_sites": max(eps) if eps else None,
        "delta": dp.target_delta,
        "per_site": spent,
    }


def privacy_utility(
    cohort_path: str | Path,
    epsilons: Sequence[float],
    config: RunConfig | None = None,
    settings: FederatedSettings | None = None,
    *,
    delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    accountant: str = "rdp",
    n_boot: int = 1000,
    log: Log | None = None,
) -> pd.DataFrame:
    """Pooled-test AUROC (95 % bootstrap CI) of federated training at several ε (and ε = ∞).

    The cohort is loaded and embedded once; each ε reruns federated training from the same
    initial weights. Returns one row per ε: ``epsilon`` (inf = no DP), ``epsilon_spent``
    (max over sites), ``delta``, ``noise_multiplier`` (max over sites), the accountant's
    inputs of the site that spent the most (``worst_site``, ``worst_site_noise_multiplier``,
    ``worst_site_sample_rate``, ``worst_site_steps``), ``auroc``, ``ci_low``, ``ci_high``
    (pooled test split) and ``n_test``.
    """
    settings = settings or FederatedSettings()
    config = config or RunConfig()
    settings = FederatedSettings(**{**settings.__dict__, "baselines": False})
    dp_probe = DPConfig(target_epsilon=1.0, target_delta=delta, max_grad_norm=max_grad_norm)
    prep = prepare(cohort_path, config, settings, dp=dp_probe, log=log)
    val_all = prep.split("val")
    rows = []
    for eps in [float("inf"), *epsilons]:
        dp = None
        if np.isfinite(eps):
            dp = DPConfig(
                target_epsilon=eps,
                target_delta=delta,
                max_grad_norm=max_grad_norm,
                accountant=accountant,
            )
        _, _, spent = _variant(prep, _site_cases(prep), val_all, settings, dp=dp)
        res = _auroc_rows(prep, "federated", n_boot, prep.config.training.seed)[-1]
        used = {k: v for k, v in spent.items() if v}
        worst = max(used, key=lambda k: used[k]["epsilon"]) if used else None
        rows.append(
            {
                "epsilon": eps,
                "epsilon_spent": used[worst]["epsilon"] if worst else np.inf,
                "delta": delta if dp else 0.0,
                "noise_multiplier": max(v["noise_multiplier"] for v in used.values())
                if used
                else 0.0,
                "worst_site": worst or "",
                "worst_site_noise_multiplier": used[worst]["noise_multiplier"] if worst else 0.0,
                "worst_site_sample_rate": used[worst]["sample_rate"] if worst else np.nan,
                "worst_site_steps": used[worst]["steps"] if worst else 0,
                "auroc": res["auroc"],
                "ci_low": res["ci_low"],
                "ci_high": res["ci_high"],
                "n_test": res["n_cases"],
            }
        )
    return pd.DataFrame(rows)
