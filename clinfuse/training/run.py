"""``clinfuse train``: from a manifest to a complete run folder.

The run is built in ``<RUN>.partial/`` (checkpoints land there every epoch)
and renamed to ``<RUN>`` only when every file is written, so a folder named
``<RUN>`` is always complete; an interrupted run is continued with
``resume=True``.

Run folder::

    config.yaml          fully resolved configuration (reloadable)
    model/               encoders (safetensors + config), fusion.safetensors, model.json
    data_report.json     cases used / excluded (with reasons), splits, modality availability
    metrics.json         validation and test AUROC/AUPRC/Brier with 95 % bootstrap CIs
    predictions.csv      case_id, split, label, p_fusion, p_<modality>, present_<modality>
    train_log.csv        one row per epoch
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clinfuse import MODALITIES, __version__
from clinfuse._files import publish
from clinfuse.cache import default_cache_dir
from clinfuse.calibration import build_calibrator
from clinfuse.cohort.manifest import SPLITS, Cohort, Issue
from clinfuse.cohort.split import split_cohort
from clinfuse.config import DataConfig, RunConfig, load_config
from clinfuse.data import CaseLoader, check_signal_shapes, input_shapes
from clinfuse.encoders.base import check_encoder_configs
from clinfuse.errors import CohortError, ConfigError
from clinfuse.evaluation.summary import summarize_predictions
from clinfuse.fusion.late import LateFusion
from clinfuse.io.tabular import TabularEncoder
from clinfuse.model import FusionModel
from clinfuse.training.embed import attach_embeddings
from clinfuse.training.trainer import (
    EpochRecord,
    check_strategy,
    fit_network,
    resolve_device,
    resolve_load_workers,
)

__all__ = ["launched_worker", "load_labelled_cohort", "resolve_modalities", "train_run"]

Progress = Callable[[str, int, int], None]


def load_labelled_cohort(cohort_path: str | Path, data_cfg: DataConfig) -> Cohort:
    """The training manifest: every case labelled, both outcome classes present.

    Raises:
        CohortError: unreadable manifest, missing labels, or one outcome class only.
    """
    cohort = Cohort.from_manifest(
        cohort_path,
        target=data_cfg.target,
        require_label=True,
        allow_external_paths=data_cfg.allow_external_paths,
    )
    labels = cohort.labels()
    if len(np.unique(labels[~np.isnan(labels)])) < 2:
        raise CohortError(
            f"every labelled case has outcome {int(np.nanmax(labels))}; training needs both 0 and 1",
            field=data_cfg.target,
            path=cohort.manifest_path,
        )
    return cohort


def resolve_modalities(cohort: Cohort, config: RunConfig) -> list[str]:
    """The run's modalities: the configured ones, or every modality the cohort has."""
    file_mods = cohort.file_modalities()
    declared = cohort.declared_presence()
    if config.data.modalities is not None:
        wanted = list(config.data.modalities)
        for m in wanted:
            if m == "tabular":
                if not config.data.tabular_columns:
                    raise ConfigError(
                        "modality 'tabular' needs data.tabular_columns",
                        field="data.tabular_columns",
                    )
            elif m not in file_mods:
                raise CohortError(
                    f"modality {m!r} is configured but the manifest has no column for it",
                    field=m,
                    path=cohort.manifest_path,
                )
        return wanted
    mods = [m for m in MODALITIES if m in file_mods and bool(declared[m].any())]
    if config.data.tabular_columns:
        mods.append("tabular")
    if not mods:
        raise CohortError(
            "the cohort has no modality to learn from (no image, note, signal column, no tabular_columns)",
            path=cohort.manifest_path,
        )
    return mods


def _date_ranges(cohort: Any, column: str) -> dict[str, Any]:
    """The first and last ``column`` date of each split (a temporal split's periods)."""
    from clinfuse.evaluation.temporal import cohort_dates

    out: dict[str, Any] = {"column": column}
    for split in ("train", "val", "test"):
        dates = cohort_dates(cohort, column, [r.case_id for r in cohort.rows if r.split == split])
        dates = dates[~np.isnat(dates)]
        out[split] = (
            {"first": str(dates.min())[:10], "last": str(dates.max())[:10]} if len(dates) else None
        )
    return out


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default), encoding="utf-8")
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(type(x).__name__)


def _availability(cases: Sequence[dict[str, Any]], modalities: Sequence[str]) -> dict[str, Any]:
    patterns: Counter[str] = Counter()
    per: Counter[str] = Counter()
    for c in cases:
        names = [m for m, p in zip(modalities, c["present"], strict=True) if p]
        patterns["+".join(names)] += 1
        per.update(names)
    return {
        "per_modality": {m: per[m] for m in modalities},
        "patterns": dict(patterns.most_common()),
    }


def _relative(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def launched_worker() -> bool:
    """True in the extra processes Lightning starts for multi-GPU DDP (they rerun the command)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _embedding_device(device: str) -> str:
    """Where this process computes frozen-encoder embeddings: a DDP worker on a GPU uses its
    own device (``cuda:<LOCAL_RANK>``), not everyone on GPU 0."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return f"cuda:{local_rank}" if device == "cuda" and local_rank > 0 else device


def _with_splits(cohort: Cohort, splits: Mapping[str, str]) -> Cohort:
    missing = [r.case_id for r in cohort.rows if r.case_id not in splits]
    if missing:
        raise ValueError(f"no split given for {len(missing)} case(s), e.g. {missing[0]!r}")
    bad = sorted({v for v in splits.values()} - set(SPLITS))
    if bad:
        raise ValueError(f"unknown split(s) {bad}; use train, val or test")
    return cohort.with_rows(
        [r.model_copy(update={"split": splits[r.case_id]}) for r in cohort.rows]
    )


def split_labelled_cohort(
    cohort_path: str | Path,
    config: RunConfig,
    *,
    case_ids: Sequence[str] | None = None,
    splits: Mapping[str, str] | None = None,
) -> tuple[Cohort, list[str]]:
    """The labelled cohort a run trains on, split into train/val/test, and the modalities
    it uses.

    Args:
        case_ids: use only these cases (a backtest's window).
        splits: case id → split for every case, replacing the manifest's and the seeded
            split (a cross-validation fold's plan).
    """
    data_cfg = config.data
    cohort = load_labelled_cohort(cohort_path, data_cfg)
    if case_ids is not None:
        cohort = cohort.subset(list(case_ids))
    if splits is not None:
        cohort = _with_splits(cohort, splits)
    cohort = split_cohort(
        cohort,
        fractions=data_cfg.split_fractions,
        seed=data_cfg.split_seed,
        by_date=data_cfg.split_by_date,
    )
    return cohort, resolve_modalities(cohort, config)


def _prepare_folders(
    out: Path,
    *,
    resume: bool,
    overwrite: bool,
    finished: str = "model/model.json",
    resumable: bool = True,
) -> Path:
    """Check ``out`` and make (or, resuming, find) its ``.partial`` sibling; ``finished``:
    the file whose presence in ``out`` marks a finished run; ``resumable``: whether the
    command can continue an unfinished one (its advice names ``--resume`` then)."""
    partial = out.with_name(out.name + ".partial")
    if launched_worker():
        return partial  # rank 0 made (and owns) the folder
    if out.exists() and not overwrite:
        if (out / finished).exists():
            raise ConfigError(
                "the run folder already holds a finished run",
                path=out,
                hint="choose another --out, or pass --overwrite",
            )
        if any(out.iterdir()):
            raise ConfigError(
                "the run folder exists and is not empty", path=out, hint="choose another --out"
            )
    if resume:
        if not (partial / "config.yaml").exists():
            raise ConfigError(
                "nothing to resume: no unfinished run here",
                path=partial,
                hint="start without --resume",
            )
    elif partial.exists():
        if overwrite or not (partial / "config.yaml").exists():
            # without its config.yaml a .partial holds nothing resumable: a run that
            # failed before it started (e.g. on its manifest)
            shutil.rmtree(partial)
        else:
            raise ConfigError(
                "an unfinished run is in the way",
                path=partial,
                hint="pass --resume to continue it, or --overwrite to start over"
                if resumable
                else "pass --overwrite to start over",
            )
    partial.mkdir(parents=True, exist_ok=True)
    return partial


def train_run(
    cohort_path: str | Path,
    out: str | Path,
    config: RunConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_epoch: Callable[[EpochRecord, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    splits: Mapping[str, str] | None = None,
    case_ids: Sequence[str] | None = None,
) -> Path:
    """Train a fusion model on a cohort and write a complete run folder.

    Args:
        cohort_path: the manifest.
        out: the run folder to create.
        config: run configuration (defaults when None; with ``resume`` the
            stored one is used and a different one is an error).
        resume: continue an interrupted run from its last checkpoint.
        overwrite: replace an existing run folder.
        progress: ``progress(stage, done, total)`` while loading cases.
        on_epoch: called after every epoch.
        log: one-line messages (no PHI: counts and ids only).
        splits: case id → ``train``/``val``/``test`` for every labelled case, replacing the
            manifest's splits and the seeded split (cross-validation folds use this).
        case_ids: use only these cases of the manifest (a backtest's training window and
            test period); ``splits`` then covers them.

    Returns:
        The run folder.
    """
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    out = Path(out)
    if config is not None:  # before the run folder is made
        check_strategy(config.training)
        check_encoder_configs(config.encoders)
    if resume:  # the stored config decides how the cohort is read
        partial = _prepare_folders(out, resume=True, overwrite=overwrite)
        stored = load_config(partial / "config.yaml")
        if config is not None and config.model_dump() != stored.model_dump():
            raise ConfigError(
                "the config differs from the one the interrupted run started with",
                path=partial / "config.yaml",
                hint="resume without --config, or start afresh with --overwrite",
            )
        config = stored
    config = config or RunConfig()
    data_cfg = config.data
    cohort, modalities = split_labelled_cohort(
        cohort_path, config, case_ids=case_ids, splits=splits
    )
    if not resume:  # only a cohort that was accepted gets a folder
        partial = _prepare_folders(out, resume=False, overwrite=overwrite)
    resolved = config.model_copy(
        update={"data": data_cfg.model_copy(update={"modalities": modalities})}
    )
    if not resume and not launched_worker():
        resolved.save(partial / "config.yaml")
    config = resolved

    tabular = None
    if "tabular" in modalities:
        train_frame = pd.DataFrame([r.extra for r in cohort.rows if r.split == "train"])
        tabular = TabularEncoder(data_cfg.tabular_columns).fit(train_frame)

    train_cfg = config.training
    loader = CaseLoader(
        data_cfg,
        modalities,
        tabular,
        persist_dir=(train_cfg.cache_dir or default_cache_dir())
        if train_cfg.persist_decoded
        else None,
    )
    loaded = loader.load_many(
        cohort.rows,
        progress=None if progress is None else (lambda d, t: progress("loading cases", d, t)),
        workers=resolve_load_workers(train_cfg, len(cohort.rows)),
    )
    check_signal_shapes(loaded.cases)
    excluded: list[Issue] = list(cohort.excluded) + loaded.excluded
    say(
        f"loaded {len(loaded)} cases, excluded {len(excluded)}; modalities: {', '.join(modalities)}"
    )

    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in ("train", "val", "test")}
    for c in loaded.cases:
        by_split[c["split"]].append(c)
    for split in ("train", "val"):
        ys = {c["label"] for c in by_split[split]}
        if len(ys) < 2:
            raise CohortError(
                f"the {split} split has {len(by_split[split])} cases with outcomes {sorted(ys)}; "
                "it needs both 0 and 1",
                field="split",
                path=cohort.manifest_path,
                hint=(
                    f"give more cases `{split}` in the manifest's split column"
                    if "split" in cohort.columns
                    else "use a larger cohort or change data.split_fractions"
                ),
            )
    for i, m in enumerate(modalities):
        if not any(c["present"][i] for c in by_split["train"]):
            raise CohortError(
                f"no training case has modality {m!r}",
                field=m,
                path=cohort.manifest_path,
                hint=f"drop it from data.modalities or add {m} data to training cases",
            )

    in_shapes = input_shapes(loaded.cases, tabular)
    torch.manual_seed(config.training.seed)
    model = FusionModel.build(config, modalities, tabular=tabular, in_shapes=in_shapes)

    frozen = model.frozen_modalities
    cases = loaded.cases
    if frozen:
        device = _embedding_device(resolve_device(config.training.device))
        model.network.to(device)
        t0 = time.perf_counter()
        cases = attach_embeddings(model, cases, frozen)
        model.network.to("cpu")
        say(
            f"embeddings of frozen encoders ({', '.join(frozen)}) ready in {time.perf_counter() - t0:.1f}s"
        )
    by_split = {s: [c for c in cases if c["split"] == s] for s in ("train", "val", "test")}

    state = fit_network(
        model,
        by_split["train"],
        by_split["val"],
        checkpoint=partial / "checkpoints" / "last.ckpt",
        resume=resume,
        on_epoch=on_epoch,
    )
    if state.global_rank != 0:
        # DDP workers stop training here and return once rank 0 has fitted the combiner and
        # written the run folder: the command they rerun may go on to read it (and a worker
        # that exits with an error makes Lightning kill rank 0)
        state.barrier()
        return out

    # Stage 2: late-fusion combiner on held-out (validation) unimodal logits.
    val_raw = model.forward_cases(by_split["val"])
    y_val = np.array([c["label"] for c in by_split["val"]], dtype=float)
    fusion = model.network.fusion
    if isinstance(fusion, LateFusion):
        fusion.fit_combiner(
            torch.from_numpy(val_raw["unimodal"]),
            torch.from_numpy(val_raw["present"]),
            torch.from_numpy(y_val),
        )
        val_raw = model.forward_cases(by_split["val"])

    # Stage 3: calibration on the validation split.
    method = config.calibration.method
    calibrators = {"fusion": build_calibrator(method).fit(val_raw["logit"], y_val)}
    for i, m in enumerate(modalities):
        has = val_raw["present"][:, i]
        if has.sum() >= 2 and len(np.unique(y_val[has])) == 2:
            calibrators[m] = build_calibrator(method).fit(val_raw["unimodal"][has, i], y_val[has])
        else:
            calibrators[m] = build_calibrator("none")
    model.calibrators = calibrators
    separated = [k for k, c in calibrators.items() if getattr(c, "separated_", False)]
    if separated:
        say(
            f"calibration: the validation cases' outcomes are separated by the {', '.join(separated)} "
            "logit; Platt's smoothed targets keep the fit finite, but a larger validation split "
            "would calibrate better"
        )

    all_raw = model.forward_cases(cases)
    predictions = model.predictions_frame(cases, all_raw)

    metrics: dict[str, Any] = {"clinfuse_version": __version__}
    split_metrics = {}
    for split in ("val", "test"):
        part = predictions[predictions["split"] == split]
        if len(part):
            split_metrics[split] = summarize_predictions(
                part, modalities, seed=config.training.seed
            )
    primary = "test" if "test" in split_metrics else "val"
    metrics.update({"split": primary, **split_metrics[primary], "splits": split_metrics})
    if isinstance(fusion, LateFusion):
        metrics["combiner"] = {
            "bias": float(fusion.bias.detach()),
            "weights": dict(zip(modalities, fusion.weights.detach().tolist(), strict=True)),
            "centers": dict(zip(modalities, fusion.center.tolist(), strict=True)),
        }
    metrics["calibration"] = {k: c.to_dict() for k, c in calibrators.items() if k == "fusion"}

    device_name = (
        torch.cuda.get_device_name(0) if resolve_device(config.training.device) == "cuda" else "cpu"
    )
    model.info = {
        "clinfuse_version": __version__,
        "torch_version": torch.__version__,
        "trained_on": device_name,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "best_val_auroc": state.best,
    }
    model.save_pretrained(partial)

    report = {
        "manifest": str(cohort.manifest_path),
        "target": data_cfg.target,
        "modalities": modalities,
        "frozen_encoders": frozen,
        "n_manifest_rows": len(cohort) + len({i.case_id for i in cohort.excluded}),
        "n_used": len(cases),
        "n_excluded": len({i.case_id for i in excluded}),
        "excluded": [{**i.as_dict(), "path": _relative(i.path, cohort.root)} for i in excluded],
        "splits": {
            s: {
                "n_cases": len(v),
                "n_events": int(sum(c["label"] for c in v)),
                "n_patients": len({c["patient_id"] for c in v}),
                **_availability(v, modalities),
            }
            for s, v in by_split.items()
        },
        "availability": _availability(cases, modalities),
        "tabular_features": None if tabular is None else tabular.feature_names_,
    }
    if data_cfg.split_by_date:
        report["split_by_date"] = _date_ranges(cohort, data_cfg.split_by_date)
    _write_json(partial / "data_report.json", report)
    _write_json(partial / "metrics.json", metrics)
    tmp = partial / ".predictions.csv.tmp"
    predictions.to_csv(tmp, index=False)
    os.replace(tmp, partial / "predictions.csv")
    log_rows = [
        {
            "epoch": h.epoch,
            "train_loss": h.train_loss,
            "seconds": h.seconds,
            **{f"val_auroc_{k}": v for k, v in h.val_auroc.items()},
            "improved": "+".join(h.improved),
        }
        for h in state.history
    ]
    pd.DataFrame(log_rows).to_csv(partial / "train_log.csv", index=False)
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)
    _write_json(
        partial / "run.json",
        {
            "clinfuse_version": __version__,
            "seconds": time.perf_counter() - t_start,
            "device": device_name,
            "complete": True,
        },
    )

    publish(partial, out)
    state.barrier()  # releases the DDP workers (no-op in one process)
    return out
