"""Internal validation by k-fold cross-validation (TRIPOD+AI 12a, 12c).

A single train/val/test split of a few hundred cases gives a performance figure
that depends on which patients landed in test. Cross-validation holds every
patient out once: the cohort's patients are dealt to ``k`` folds (stratified by
outcome and site, :func:`~clinfuse.cohort.assign_folds`), or grouped by a column
such as the site, one fold per group (internal–external cross-validation, with a
random-effects meta-analysis over the groups: :mod:`clinfuse.evaluation.meta`); for each fold a
complete run is trained on the other folds (their own patient-level train/val
split inside, as ``clinfuse train`` does) and predicts the held-out fold. The
out-of-fold predictions of all fold models are pooled and evaluated with the
same report as ``clinfuse evaluate``; the fold-by-fold figures (mean, SD,
range) are reported next to the pooled ones.

The figures describe the *training procedure* on new patients of the same
population. The model to use is trained on all cases with ``clinfuse train``;
the fold models stay in ``folds/`` for inspection.

The cross-validation folder::

    CV/
      crossval.json        plan and per-fold summary (written last: marks it finished)
      config.yaml          the run config every fold was trained with
      assignment.csv       case_id, patient_id, fold
      per_fold.csv         one row per fold: cases, events, AUROC, calibration, Brier
      folds/fold_1/ ...    a complete run folder per fold (loadable with clinfuse.load_run)
      evaluation/          report.html, metrics.json (with "crossval"), predictions.csv
                           (out-of-fold, with a fold column), figures/, excluded.csv

It is written as ``CV.partial`` and renamed when complete; an interrupted
cross-validation continues with ``resume=True`` (finished folds are kept, the
interrupted fold continues from its checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from clinfuse import __version__
from clinfuse._files import publish, write_text_atomic
from clinfuse.errors import CohortError, ConfigError

__all__ = ["SCHEMA", "CrossValResult", "cross_validate", "fold_splits"]

SCHEMA = "clinfuse.crossval.v1"

Progress = Callable[[str, int, int], None]


@dataclass
class CrossValResult:
    """What :func:`cross_validate` wrote.

    Attributes:
        out: the cross-validation folder.
        summary: ``crossval.json`` (plan, fold models, per-fold and across-fold figures).
        metrics: the pooled evaluation (``evaluation/metrics.json``).
        per_fold: one row per fold (``per_fold.csv``).
        predictions: the out-of-fold predictions (``evaluation/predictions.csv``).
    """

    out: Path
    summary: dict[str, Any]
    metrics: dict[str, Any]
    per_fold: pd.DataFrame
    predictions: pd.DataFrame

    @property
    def report(self) -> Path:
        return self.out / "evaluation" / "report.html"


def fold_splits(
    cohort: Any, folds: Sequence[int], k: int, *, fractions: Sequence[float], seed: int
) -> dict[str, str]:
    """Case id → ``train``/``val``/``test`` for fold ``k``: its cases are ``test``; the other
    folds' patients are split into train and val in the config's train:val proportion
    (patient-level, stratified by outcome and site). A patient with cases in fold ``k`` and
    in others (possible when folds are groups: a patient seen at two sites, in two years)
    keeps only the held-out ones: the others are in no part, so no model is scored on a
    patient it trained on."""
    from clinfuse.cohort.split import assign_splits

    rows = cohort.rows
    held = {r.patient_id for r, f in zip(rows, folds, strict=True) if f == k}
    rest = [r for r, f in zip(rows, folds, strict=True) if f != k and r.patient_id not in held]
    train_share, val_share = fractions[0], fractions[1]
    val = val_share / (train_share + val_share)
    inner = assign_splits(
        [r.patient_id for r in rest],
        [r.label for r in rest],
        fractions=(1.0 - val, val, 0.0),
        seed=seed,
        strata=[r.site for r in rest],
    )
    splits = {r.case_id: s for r, s in zip(rest, inner, strict=True)}
    splits.update({r.case_id: "test" for r, f in zip(rows, folds, strict=True) if f == k})
    return splits


def _group_folds(cohort: Any, column: str) -> tuple[list[str], list[int]]:
    """One fold per value of ``column`` (sorted); every case needs a value."""
    if column != "site" and column not in cohort.columns:
        raise CohortError(
            f"group column {column!r} is not in the manifest (columns: {', '.join(cohort.columns)})",
            field=column,
            path=cohort.manifest_path,
            hint="check --group-by against the manifest's header",
        )
    values = [r.site if column == "site" else r.extra.get(column) for r in cohort.rows]
    missing = [r.case_id for r, v in zip(cohort.rows, values, strict=True) if v is None or v != v]
    if missing:
        raise CohortError(
            f"{len(missing)} case(s) have no {column!r}, e.g. {missing[0]!r}",
            field=column,
            path=cohort.manifest_path,
            hint=f"fill in {column} for every case, or leave those cases out of the manifest",
        )
    labels = [str(v) for v in values]
    groups = sorted(set(labels))
    if len(groups) < 2:
        raise CohortError(
            f"{column!r} has {len(groups)} value(s); leaving one group out needs at least two",
            field=column,
            path=cohort.manifest_path,
            hint="group by a column with several values, or use --folds",
        )
    index = {g: i + 1 for i, g in enumerate(groups)}
    return groups, [index[v] for v in labels]


def _config_sha(config: Any) -> str:
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_single_process(config: Any) -> None:
    import torch

    t = config.training
    several = (isinstance(t.devices, int) and t.devices > 1) or (
        t.devices == "auto" and torch.cuda.device_count() > 1
    )
    if t.strategy != "auto" or several or t.num_nodes > 1:
        raise ConfigError(
            "cross-validation trains its folds one after another in one process; "
            f"training.strategy is {t.strategy!r}, devices {t.devices!r}, nodes {t.num_nodes}",
            field="training.strategy",
            hint="set training.strategy: auto and training.devices: 1, or train each fold "
            "with `clinfuse train` on several GPUs",
        )


def _spread(values: Sequence[float | None], count: str = "n_folds") -> dict[str, Any]:
    """Mean, SD, min and max of the values that are there (None and NaN left out), and
    their number under the key ``count``."""
    v = np.array([x for x in values if x is not None and x == x], dtype=float)
    if not len(v):
        return {"mean": None, "sd": None, "min": None, "max": None, count: 0}
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
        "min": float(v.min()),
        "max": float(v.max()),
        count: len(v),
    }


def _fold_row(
    fold: int, frame: pd.DataFrame, level: float, *, group: str | None = None
) -> dict[str, Any]:
    from clinfuse.evaluation.calibration import calibration_summary
    from clinfuse.evaluation.delong import delong_ci

    y = frame["label"].to_numpy(dtype=float)
    p = frame["p_fusion"].to_numpy(dtype=float)
    auc = (
        delong_ci(y, p, level=level)
        if len(np.unique(y)) == 2
        else {"value": None, "se": None, "ci_low": None, "ci_high": None}
    )
    cal = calibration_summary(y, p, level=level)
    slope = cal["slope"]
    z = float(norm.ppf(1 - (1 - level) / 2))
    return {
        "fold": fold,
        **({} if group is None else {"group": group}),
        "n_cases": len(y),
        "n_events": int(y.sum()),
        "auroc": auc["value"],
        "auroc_ci_low": auc["ci_low"],
        "auroc_ci_high": auc["ci_high"],
        "auroc_se": auc["se"],
        "calibration_intercept": cal["intercept"]["value"],
        "calibration_slope": slope["value"],
        "calibration_slope_se": None
        if slope["ci_low"] is None
        else (slope["ci_high"] - slope["ci_low"]) / (2 * z),
        "oe_ratio": cal["oe_ratio"]["value"],
        "expected_events": cal["oe_ratio"]["expected"],
        "brier": cal["brier"],
    }


def cross_validate(
    cohort_path: str | Path,
    out: str | Path,
    config: Any = None,
    *,
    folds: int | None = None,
    fold_seed: int | None = None,
    group_by: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    subgroups: Sequence[str] = (),
    thresholds: Sequence[float] | str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_group_size: int = 30,
    progress: Progress | None = None,
    on_epoch: Callable[[Any, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    time_column: str | None = None,
    period: str = "quarter",
    cusum_false_alarm: float = 0.05,
    case_ids: Sequence[str] | None = None,
    fold_config: Callable[[int, list[str]], Any] | None = None,
    keep_fold_models: bool = True,
) -> CrossValResult:
    """Cross-validate the training procedure on a labelled cohort.

    Args:
        cohort_path: the manifest (every labelled case is held out once; a ``split``
            column is ignored).
        out: the cross-validation folder to create.
        config: run configuration for every fold (defaults when None; with ``resume``
            the stored one is used and a different one is an error).
        folds: number of folds (2 to the number of patients; 5 or 10 are usual; default 5).
        fold_seed: seed of the fold assignment (default 0; the inner train/val split uses
            ``data.split_seed``, training ``training.seed``).
        group_by: a manifest column (``site``, a period, ...): one fold per value, each
            group held out in turn — internal–external cross-validation; the report
            adds a random-effects meta-analysis of the groups' AUROC, O/E ratio and
            calibration slope with a prediction interval for a new group. Excludes ``folds``.
        resume: continue an interrupted cross-validation (``folds``, ``fold_seed`` and
            ``group_by`` left unset take the interrupted one's).
        overwrite: replace an existing folder.
        subgroups, thresholds, n_boot, seed, level, min_group_size, time_column, period,
        cusum_false_alarm: as for :func:`~clinfuse.evaluation.evaluate.evaluate_run`, on the pooled
            out-of-fold predictions (the dates are checked before any training).
        progress: ``progress(stage, done, total)`` while cases load.
        on_epoch: called after every epoch of every fold.
        log: one-line messages (counts and ids only).
        case_ids: cross-validate on these cases of the manifest only (a nested
            cross-validation's inner loop, :func:`clinfuse.evaluation.tune.tune`).
        fold_config: ``fold_config(k, training_case_ids)`` → the run config of fold ``k``
            (``config`` is then the default and what ``resume`` checks): a nested
            cross-validation chooses each fold's config on that fold's training cases only.
        keep_fold_models: keep ``folds/`` (the fold runs); without it they are deleted once
            scored, and ``crossval.json`` keeps their checksums.

    Returns:
        :class:`CrossValResult`.

    Raises:
        ConfigError: bad ``folds``, a multi-process training config, a busy ``out``,
            or a resumed run whose config, folds or manifest changed.
        CohortError: an unknown subgroup column, or a fold whose training part lacks
            an outcome class.
    """
    from clinfuse.cohort.split import assign_folds
    from clinfuse.config import RunConfig, load_config
    from clinfuse.data import shared_decoding
    from clinfuse.encoders.base import check_encoder_configs
    from clinfuse.evaluation.ablation import masked_fusion_probabilities
    from clinfuse.evaluation.evaluate import Evaluator, model_sha256, score_cohort
    from clinfuse.model import load_run
    from clinfuse.training.run import (
        _prepare_folders,
        load_labelled_cohort,
        resolve_modalities,
        train_run,
    )

    say = log or (lambda _msg: None)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    if resume and (partial / "plan.json").exists():
        stored_plan = json.loads((partial / "plan.json").read_text(encoding="utf-8"))
        if folds is None and group_by is None:
            group_by = stored_plan.get("group_by")
            folds = None if group_by else stored_plan.get("folds")
        if fold_seed is None:
            fold_seed = stored_plan.get("fold_seed", 0)
    fold_seed = 0 if fold_seed is None else fold_seed
    if group_by is not None and folds is not None:
        raise ConfigError(
            "give folds or group_by, not both: with group_by every group is one fold",
            field="folds",
        )
    if group_by is None:
        folds = 5 if folds is None else folds
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ConfigError(
                f"folds is {folds!r}; use 2 or more (5 or 10 are usual)", field="folds"
            )
    evaluator_args: dict[str, Any] = dict(
        subgroups=subgroups,
        thresholds=thresholds,
        n_boot=n_boot,
        seed=seed,
        level=level,
        min_group_size=min_group_size,
        time_column=time_column,
        period=period,
        cusum_false_alarm=cusum_false_alarm,
    )
    checker = Evaluator(None, **evaluator_args)  # bad settings fail before any training
    given = config
    if resume:  # the stored config decides how the cohort is read
        partial = _prepare_folders(out, resume=True, overwrite=overwrite, finished="crossval.json")
        config = load_config(partial / "config.yaml")
    config = config or RunConfig()
    _check_single_process(config)
    check_encoder_configs(config.encoders)  # a typo in an encoder option fails before fold 1
    data_cfg = config.data
    if data_cfg.split_by_date:
        raise ConfigError(
            f"data.split_by_date ({data_cfg.split_by_date}) asks for one temporal split; "
            "cross-validation deals patients to folds at random",
            field="split_by_date",
            hint="for a temporal validation train with `clinfuse train`; to cross-validate, "
            "remove data.split_by_date from the config",
        )

    cohort = load_labelled_cohort(cohort_path, data_cfg)
    if case_ids is not None:
        known = {r.case_id for r in cohort.rows}
        unknown = [c for c in case_ids if c not in known]
        if unknown:
            raise CohortError(
                f"{len(unknown)} case(s) to cross-validate are not labelled cases of the "
                f"manifest, e.g. {unknown[0]!r}",
                case_id=unknown[0],
                path=cohort.manifest_path,
            )
        cohort = cohort.subset(list(case_ids))
    checker._dates(cohort, [r.case_id for r in cohort.rows])  # the column, each date: by case
    for col in subgroups:
        if col.strip() and col.strip() not in cohort.columns:
            raise CohortError(
                f"subgroup column {col.strip()!r} is not in the manifest "
                f"(columns: {', '.join(cohort.columns)})",
                field=col.strip(),
                path=cohort.manifest_path,
                hint="check --subgroups against the manifest's header",
            )

    def resolved(cfg: Any) -> Any:
        mods = resolve_modalities(cohort, cfg)
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"modalities": mods})})

    config = resolved(config)
    modalities = list(config.data.modalities)
    if resume and given is not None and _config_sha(resolved(given)) != _config_sha(config):
        raise ConfigError(
            "the config differs from the one the interrupted cross-validation started with",
            path=partial / "config.yaml",
            hint="resume without --config, or start afresh with --overwrite",
        )
    if any(r.split is not None for r in cohort.rows):
        say("the manifest's split column is ignored: every case is held out once")
    sites = [r.site for r in cohort.rows]
    groups: list[str] = []
    if group_by is not None:
        groups, assignment = _group_folds(cohort, group_by)
        folds = len(groups)
    else:
        assert folds is not None
        assignment = assign_folds(
            [r.patient_id for r in cohort.rows],
            [r.label for r in cohort.rows],
            k=folds,
            seed=fold_seed,
            strata=sites if any(s is not None for s in sites) else None,
        )
    table = pd.DataFrame(
        {
            "case_id": [r.case_id for r in cohort.rows],
            "patient_id": [r.patient_id for r in cohort.rows],
            "fold": assignment,
        }
    )
    fold_plans = {
        k: fold_splits(
            cohort, assignment, k, fractions=data_cfg.split_fractions, seed=data_cfg.split_seed
        )
        for k in range(1, folds + 1)
    }
    label_of = {r.case_id: r.label for r in cohort.rows}
    left_out = {k: len(table) - len(plan) for k, plan in fold_plans.items()}
    for k, n in left_out.items():
        if n:
            say(
                f"fold {k}: {n} case(s) of patients who also have cases in the held-out group "
                "are left out of its training"
            )
    for k, splits in fold_plans.items():  # every fold must train: checked before any does
        for part in ("train", "val"):
            ys = [int(label_of[c] or 0) for c, s in splits.items() if s == part]
            if len(set(ys)) < 2:
                raise CohortError(
                    f"fold {k} of {folds}: its {part} part has {len(ys)} case(s) with outcomes "
                    f"{sorted(set(ys))}; it needs both 0 and 1",
                    field="folds",
                    path=cohort.manifest_path,
                    hint="use fewer folds, a larger cohort, or change data.split_fractions",
                )
    plan = {"folds": folds, "fold_seed": fold_seed, "group_by": group_by}
    if resume:
        old_plan = json.loads((partial / "plan.json").read_text(encoding="utf-8"))
        old_table = pd.read_csv(
            partial / "assignment.csv", dtype={"case_id": str, "patient_id": str}
        )
        if old_plan != plan:
            raise ConfigError(
                f"the interrupted cross-validation used {old_plan}; this call asks for {plan}",
                path=partial / "plan.json",
                hint="resume with the same --folds, --fold-seed and --group-by, or use --overwrite",
            )
        if not old_table.equals(table):
            raise ConfigError(
                "the manifest's cases changed since the cross-validation started "
                "(the fold assignment differs)",
                path=partial / "assignment.csv",
                hint="start afresh with --overwrite",
            )
    else:  # everything checked: only now is the folder made
        partial = _prepare_folders(out, resume=False, overwrite=overwrite, finished="crossval.json")
        config.save(partial / "config.yaml")
        write_text_atomic(partial / "plan.json", json.dumps(plan))
        write_text_atomic(partial / "assignment.csv", table.to_csv(index=False))

    # one complete run per fold; finished folds stay in the .partial folder if anything
    # below fails (--resume goes on from there)
    (partial / "folds").mkdir(exist_ok=True)
    with shared_decoding():  # each file is read and preprocessed once for all folds
        for k in range(1, folds + 1):
            fold_out = partial / "folds" / f"fold_{k}"
            if (fold_out / "model" / "model.json").exists():
                say(f"fold {k}/{folds}: finished earlier, kept")
                continue
            unfinished = (fold_out.with_name(fold_out.name + ".partial") / "config.yaml").exists()
            n_test = int((table["fold"] == k).sum())
            say(f"fold {k}/{folds}: training on {len(table) - n_test} cases, holding out {n_test}")

            def fold_log(msg: str, k: int = k) -> None:
                say(f"fold {k}/{folds}: {msg}")

            fold_cfg = config
            if fold_config is not None:
                fold_cfg = resolved(
                    fold_config(k, table.loc[table["fold"] != k, "case_id"].tolist())
                )
                _check_single_process(fold_cfg)
            train_run(
                cohort_path,
                fold_out,
                fold_cfg,
                resume=unfinished,
                overwrite=not unfinished,  # a fold stopped before it saved its config starts over
                progress=progress,
                on_epoch=on_epoch,
                log=fold_log,
                splits=fold_plans[k],
                case_ids=None
                if case_ids is None and not left_out[k]
                else [c for c in table["case_id"] if c in fold_plans[k]],
            )

        # pooled out-of-fold predictions
        frames, presents, scorers, fold_models, rows = [], [], [], [], []
        excluded = list(cohort.excluded)
        seen = {tuple(sorted(i.as_dict().items())) for i in excluded}
        model = None
        for k in range(1, folds + 1):
            fold_out = partial / "folds" / f"fold_{k}"
            model = load_run(fold_out)
            held = cohort.subset(table.loc[table["fold"] == k, "case_id"].tolist())
            held = held.with_rows([r.model_copy(update={"split": "test"}) for r in held.rows])
            scored = score_cohort(
                model,
                held,
                progress=None if progress is None else (lambda d, t: progress("scoring", d, t)),
            )
            frame, issues = scored.frame, scored.excluded
            for issue in issues:
                key = tuple(sorted(issue.as_dict().items()))
                if key not in seen:
                    seen.add(key)
                    excluded.append(issue)
            frame.insert(1, "fold", k)
            frames.append(frame)
            presents.append(scored.raw["present"])
            if len(modalities) > 1:
                scorers.append(masked_fusion_probabilities(model, scored.cache))
            rows.append(_fold_row(k, frame, level, group=groups[k - 1] if groups else None))
            fold_models.append(
                {
                    "fold": k,
                    "path": f"folds/fold_{k}" if keep_fold_models else None,
                    "model_sha256": model_sha256(fold_out),
                    "config_sha256": _config_sha(model.config),
                    "epochs_run": model.info.get("epochs_run"),
                    "stopped_early": model.info.get("stopped_early"),
                    "trained_on": model.info.get("trained_on"),
                }
            )
        assert model is not None
    pooled = pd.concat(frames, ignore_index=True)
    present = np.concatenate(presents)

    def scorer(keep: Sequence[str]) -> np.ndarray:
        return np.concatenate([s(keep) for s in scorers])

    per_fold = pd.DataFrame(rows)
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "clinfuse_version": __version__,
        "manifest": str(cohort.manifest_path),
        "folds": folds,
        "fold_seed": fold_seed,
        "design": "leave-one-group-out" if group_by else "k-fold",
        "group_by": group_by,
        "stratified_by": []
        if group_by
        else ["outcome"] + (["site"] if any(s is not None for s in sites) else []),
        "patient_level": True,
        "inner_validation_share": data_cfg.split_fractions[1]
        / (data_cfg.split_fractions[0] + data_cfg.split_fractions[1]),
        "config_sha256": _config_sha(config),
        "fold_configs": "chosen per fold" if fold_config is not None else "one for all folds",
        "fold_models_kept": keep_fold_models,
        "n_cases": len(table),
        "n_patients": int(table["patient_id"].nunique()),
        "n_scored": len(pooled),
        "fold_models": fold_models,
        "per_fold": rows,
        "across_folds": {
            key: _spread(per_fold[key].tolist())
            for key in ("auroc", "calibration_intercept", "calibration_slope", "brier")
        },
    }
    if group_by:
        from clinfuse.evaluation.meta import group_meta_analysis

        summary["meta_analysis"] = group_meta_analysis(rows, level)
    summary = json.loads(json.dumps(summary, default=_json_default))
    evaluator = Evaluator(model, **evaluator_args)
    result = evaluator.evaluate_scored(
        cohort,
        pooled,
        present,
        excluded,
        partial / "evaluation",
        scorer=scorer if scorers else None,
        overwrite=True,
        crossval=summary,
    )
    summary["pooled"] = {
        "auroc": result.metrics["models"]["fusion"]["auroc"],
        "calibration_intercept": result.metrics["calibration"]["fusion"]["intercept"],
        "calibration_slope": result.metrics["calibration"]["fusion"]["slope"],
        "brier": result.metrics["models"]["fusion"]["brier"],
    }
    write_text_atomic(partial / "per_fold.csv", per_fold.to_csv(index=False))
    (partial / "plan.json").unlink()
    write_text_atomic(partial / "crossval.json", json.dumps(summary, indent=2))
    publish(partial, out)
    if not keep_fold_models:  # only once the folder is complete: the models were scored
        shutil.rmtree(out / "folds")
    return CrossValResult(
        out=out,
        summary=summary,
        metrics=result.metrics,
        per_fold=per_fold,
        predictions=pd.read_csv(out / "evaluation" / "predictions.csv", dtype={"case_id": str}),
    )


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
