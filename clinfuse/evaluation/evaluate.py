"""Offline cohort evaluation of a trained run: ``clinfuse evaluate`` and its Python API.

>>> result = evaluate_run("runs/demo", "site_d/manifest.csv", "eval_site_d",
...                       subgroups=["sex", "age_band"], thresholds=[0.1, 0.2])  # doctest: +SKIP
>>> result.metrics["models"]["fusion"]["auroc"]  # doctest: +SKIP
{'value': 0.83, 'ci_low': 0.79, 'ci_high': 0.86, ...}

The output folder holds ``metrics.json`` (DESIGN.md contract plus one key per
section), ``report.html`` (self-contained: figures embedded as PNG),
``figures/*.png|svg``, ``predictions.csv``, ``excluded.csv`` and
``subgroups.csv``. It is written to a temporary sibling folder and renamed into
place, so an interrupted evaluation never leaves a half-written report.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from clinfuse.errors import CohortError, ConfigError
from clinfuse.scored import model_sha256

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EvaluationResult",
    "Evaluator",
    "ScoredCohort",
    "check_split",
    "evaluate_run",
    "labelled_cohort",
    "model_sha256",
    "parse_thresholds",
    "score_cohort",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3)
"""Risk thresholds of the threshold table when none are given."""


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` wrote.

    Attributes:
        out: the output folder.
        metrics: the content of ``metrics.json``.
        predictions: per-case risks (``case_id``, ``label``, ``p_fusion``, ``p_<m>``, …).
        excluded: cases left out, with reasons (``case_id``, ``field``, ``message``).
        figures: {name: PNG path}.
    """

    out: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    excluded: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def parse_thresholds(value: str | Sequence[float] | None) -> list[float]:
    """Risk thresholds from ``"0.1,0.2"`` or a sequence; each must lie in (0, 1).

    Raises:
        ConfigError: a value is not a number or is outside (0, 1).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return list(DEFAULT_THRESHOLDS)
    items: Sequence[Any] = value.split(",") if isinstance(value, str) else value
    out = []
    for raw in items:
        try:
            t = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"threshold {raw!r} is not a number",
                field="thresholds",
                hint="give risks in (0, 1), e.g. --thresholds 0.1,0.2",
            ) from None
        if not (0.0 < t < 1.0) or math.isnan(t):
            raise ConfigError(
                f"threshold {t} is outside (0, 1)",
                field="thresholds",
                hint="thresholds are predicted risks, e.g. 0.1 for 10 %",
            )
        out.append(t)
    return sorted(set(out))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _availability(present: np.ndarray, modalities: Sequence[str]) -> dict[str, Any]:
    """Per-modality counts and the subsets of modalities cases have (TRIPOD+AI 11/20b)."""
    patterns = Counter(
        "+".join(m for m, on in zip(modalities, row, strict=True) if on) or "none"
        for row in present
    )
    return {
        "per_modality": {m: int(present[:, i].sum()) for i, m in enumerate(modalities)},
        "patterns": [
            {"modalities": k, "n_cases": v}
            for k, v in sorted(patterns.items(), key=lambda kv: -kv[1])
        ],
    }


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(
            "output folder exists and is not empty",
            path=out,
            hint="choose another --out or pass --overwrite",
        )


def _sample_size_needed(y: np.ndarray, p: np.ndarray) -> dict[str, Any] | None:
    """Riley et al.'s minimum validation sample size at this evaluation's prevalence,
    C-statistic and risk distribution (default precision targets); None when undefined."""
    from sklearn.metrics import roc_auc_score

    from clinfuse.evaluation.samplesize import validation_sample_size

    if len(np.unique(y)) < 2 or len(y) < 10:
        return None
    c = float(roc_auc_score(y, p))
    if c <= 0.5:
        return None
    q = np.clip(p, 1e-12, 1 - 1e-12)
    try:
        res = validation_sample_size(
            prevalence=float(y.mean()), c_statistic=c, lp_values=np.log(q / (1 - q))
        )
    except ConfigError:  # e.g. every case has the same risk
        return None
    out = res.as_dict()
    out["n_available"] = len(y)
    return out


def check_split(split: str | None) -> None:
    """``split`` is None or one of train, val, test."""
    if split is not None and split not in ("train", "val", "test"):
        raise ConfigError(f"split is {split!r}; use train, val or test", field="split")


def labelled_cohort(
    model: Any,
    cohort: Any,
    *,
    split: str | None = None,
    subgroups: Sequence[str] = (),
    allow_missing_modalities: bool = False,
    recorded_splits: Mapping[str, str] | None = None,
) -> Any:
    """The cohort a run is evaluated (or recalibrated) on, checked against the run.

    Args:
        model: the loaded :class:`~clinfuse.model.FusionModel`.
        cohort: manifest path or :class:`~clinfuse.cohort.Cohort`; needs the run's outcome.
        split: keep one split. A case keeps the manifest's split; without one it takes the
            split the run recorded for its id (``recorded_splits``), and failing that the
            seeded split training would make of these rows.
        recorded_splits: case id → split of the run's cases (its ``predictions.csv``), so
            a trimmed or reordered copy of the development manifest is split as training
            split it.
        subgroups: manifest columns that must exist.
        allow_missing_modalities: accept a cohort without a column for a run modality.

    Raises:
        CohortError: no outcome column, an unknown subgroup column, columns not
            matching the run, or no case in ``split``.
    """
    from clinfuse.cohort.manifest import Cohort

    check_split(split)
    cfg = model.config.data
    if not isinstance(cohort, Cohort):
        cohort = Cohort.from_manifest(
            cohort,
            target=cfg.target,
            require_label=True,
            allow_external_paths=cfg.allow_external_paths,
        )
    if cohort.target not in cohort.columns:
        raise CohortError(
            f"outcome column {cohort.target!r} is missing; evaluation and recalibration "
            "need a 0/1 outcome for every case",
            field=cohort.target,
            path=cohort.manifest_path,
            hint="add the outcome column, or use `clinfuse predict` for unlabelled cases",
        )
    for col in subgroups:
        if col not in cohort.columns:
            raise CohortError(
                f"subgroup column {col!r} is not in the manifest "
                f"(columns: {', '.join(cohort.columns)})",
                field=col,
                path=cohort.manifest_path,
                hint="check --subgroups against the manifest's header",
            )
    model.check_cohort(cohort, allow_missing_modalities=allow_missing_modalities)
    if split is not None:
        from clinfuse.cohort.split import split_cohort

        if recorded_splits:
            cohort = cohort.with_rows(
                [
                    r
                    if r.split is not None or r.case_id not in recorded_splits
                    else r.model_copy(update={"split": recorded_splits[r.case_id]})
                    for r in cohort.rows
                ]
            )
        # any case still without a split gets the seeded split training would make
        data = model.config.data
        cohort = split_cohort(
            cohort, fractions=data.split_fractions, seed=data.split_seed, by_date=data.split_by_date
        )
        keep = [r.case_id for r in cohort.rows if r.split == split]
        if not keep:
            raise CohortError(
                f"no case in split {split!r}",
                field="split",
                path=cohort.manifest_path,
                hint="use train, val or test",
            )
        cohort = cohort.subset(keep)
    return cohort


class ScoredCohort(NamedTuple):
    """What :func:`score_cohort` returns."""

    raw: dict[str, np.ndarray]
    """:meth:`~clinfuse.model.FusionModel.forward_cases` outputs."""
    frame: pd.DataFrame
    """The predictions, one row per loaded case."""
    excluded: list[Any]
    """The manifest's exclusions, then the cases that failed to load."""
    cache: Any
    """Every case's embeddings (:class:`~clinfuse.explain.modality.ModalityCache`): the
    ablation re-runs only the fusion head on it."""


def score_cohort(
    model: Any,
    cohort: Any,
    *,
    progress: Callable[[int, int], None] | None = None,
    workers: int | str = "auto",
    chunk_size: int | None = None,
) -> ScoredCohort:
    """Load a checked cohort's cases chunk by chunk and run the model on them.

    Every encoder runs once per case; only the embeddings and the predictions are kept, so
    the memory holds one chunk of decoded inputs whatever the cohort's size.

    Args:
        workers: processes that load the files (:func:`clinfuse.data.scoring_workers`).
        chunk_size: manifest rows per chunk (default :data:`clinfuse.data.SCORING_CHUNK`).

    Raises:
        CohortError: no case could be loaded.
    """
    from clinfuse.data import CaseLoader, iter_scorable
    from clinfuse.explain.modality import ModalityCache, build_modality_cache
    from clinfuse.training.embed import attach_embeddings

    loader = CaseLoader(model.config.data, list(model.modalities), model.tabular)
    frames, caches, raws, excluded = [], [], [], []
    for chunk in iter_scorable(loader, cohort, progress, workers=workers, chunk_size=chunk_size):
        excluded += chunk.excluded
        if not chunk.cases:
            continue
        cases = attach_embeddings(model, chunk.cases, model.frozen_modalities)
        caches.append(build_modality_cache(model, cases))
        raws.append(model.forward_cache(caches[-1]))
        frames.append(model.predictions_frame(cases, raws[-1]))
    raw = {key: np.concatenate([r[key] for r in raws]) for key in raws[0]}
    frame = pd.concat(frames, ignore_index=True)
    return ScoredCohort(raw, frame, excluded, ModalityCache.concat(caches))


class Evaluator:
    """Evaluates one trained model on cohorts (settings held here; maths in the sibling modules).

    Args:
        model: a :class:`~clinfuse.model.FusionModel` (see :func:`clinfuse.load_run`).
        subgroups: manifest columns to break results down by (``site`` is always added
            when the cohort has sites).
        thresholds: risk thresholds for the threshold table, each in (0, 1).
        n_boot: bootstrap replicates for percentile intervals (0 = none).
        seed: bootstrap seed.
        level: confidence level.
        min_group_size: smallest subgroup/site reported (smaller ones are suppressed).
        min_group_events: fewest events and non-events of a reported group.
        split: evaluate only the cases of this split (``train``/``val``/``test``).
        allow_missing_modalities: accept a cohort lacking a column for a run modality.
        development: the run's development cases (``predictions.csv`` rows of the
            train and val splits) for the case-mix comparison; None skips it.
        development_manifest: the manifest the run was trained on (``data_report.json``);
            evaluating on it, a case id in both samples is the same case.
        recorded_splits: case id → split of the run's cases, for ``split`` (see
            :func:`labelled_cohort`).
        run_info: recorded as ``metrics["run"]`` (the run folder and the SHA-256 of its
            ``model/model.json``: which model version the report describes).
        workers: processes that load the cohort's files
            (:func:`clinfuse.data.scoring_workers`; the figures do not depend on it).
        conformal: conformal prediction sets of this model, calibrated on another
            evaluation (:func:`clinfuse.evaluation.conformal.conformal_from_evaluation`):
            their coverage on this cohort is reported (``metrics["conformal"]``) and each
            case's set added to ``predictions.csv``.
        time_column: a manifest column of dates (e.g. the encounter's): metrics per
            calendar ``period``, the drifts of calibration and discrimination
            (``metrics["over_time"]``,
            :func:`clinfuse.evaluation.temporal.performance_over_time`) and risk-adjusted
            CUSUM charts (``metrics["over_time"]["cusum"]``,
            :func:`clinfuse.evaluation.cusum.risk_adjusted_cusum`).
        period: ``month``, ``quarter`` or ``year``.
        cusum_false_alarm: each CUSUM chart's chance of a false signal in the evaluated
            cases were the model calibrated throughout.
    """

    def __init__(
        self,
        model: Any,
        *,
        subgroups: Sequence[str] = (),
        thresholds: Sequence[float] | str | None = None,
        n_boot: int = 2000,
        seed: int = 0,
        level: float = 0.95,
        min_group_size: int = 30,
        min_group_events: int = 5,
        split: str | None = None,
        allow_missing_modalities: bool = False,
        development: pd.DataFrame | None = None,
        development_manifest: str | Path | None = None,
        recorded_splits: Mapping[str, str] | None = None,
        run_info: dict[str, Any] | None = None,
        workers: int | str = "auto",
        conformal: Any = None,
        time_column: str | None = None,
        period: str = "quarter",
        cusum_false_alarm: float = 0.05,
    ) -> None:
        from clinfuse.evaluation.temporal import check_period

        self.model = model
        self.conformal = conformal
        self.time_column = time_column.strip() if time_column and time_column.strip() else None
        self.period = check_period(period)
        from clinfuse.evaluation.cusum import check_false_alarm

        self.cusum_false_alarm = check_false_alarm(cusum_false_alarm)
        self.run_info = run_info
        self.development = development
        self.development_manifest = development_manifest
        self.recorded_splits = recorded_splits
        if isinstance(subgroups, str):  # "sex,age_band", as on the command line
            subgroups = subgroups.split(",")
        self.subgroups = [s.strip() for s in subgroups if s.strip()]
        self.thresholds = parse_thresholds(thresholds)
        if n_boot < 0:
            raise ConfigError(f"n_boot is {n_boot}; use 0 (no bootstrap) or more", field="n_boot")
        if not 0.5 <= level < 1.0:
            raise ConfigError(
                f"level is {level}; use a confidence level in [0.5, 1)", field="level"
            )
        if min_group_size < 1:
            raise ConfigError("min_group_size must be at least 1", field="min_group_size")
        from clinfuse.data import scoring_workers

        check_split(split)
        self.n_boot = n_boot
        self.seed = seed
        self.level = level
        self.min_group_size = min_group_size
        self.min_group_events = min_group_events
        self.split = split
        self.allow_missing_modalities = allow_missing_modalities
        scoring_workers(workers, 0)  # a bad count fails before any file is read
        self.workers = workers

    # -- input -------------------------------------------------------------------
    def _cohort(self, cohort: Any) -> Any:
        cohort = labelled_cohort(
            self.model,
            cohort,
            split=self.split,
            subgroups=self.subgroups,
            allow_missing_modalities=self.allow_missing_modalities,
            recorded_splits=self.recorded_splits,
        )
        self._dates(cohort, [r.case_id for r in cohort.rows])  # a bad date fails before scoring
        return cohort

    def _dates(self, cohort: Any, case_ids: Sequence[str]) -> np.ndarray | None:
        """The :attr:`time_column` dates of ``case_ids`` (None without a time column)."""
        if self.time_column is None:
            return None
        from clinfuse.evaluation.temporal import cohort_dates

        return cohort_dates(cohort, self.time_column, case_ids)

    @staticmethod
    def _group_value(row: Any, column: str) -> Any:
        if column in ("site", "split", "patient_id"):
            return getattr(row, column)
        return row.extra.get(column)

    # -- evaluation ----------------------------------------------------------------
    def evaluate(
        self,
        cohort: Any,
        out: str | Path,
        *,
        overwrite: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> EvaluationResult:
        """Evaluate on ``cohort`` (manifest path or :class:`~clinfuse.cohort.Cohort`) into ``out``.

        Raises:
            CohortError: no labels, columns not matching the run, unknown subgroup
                column, no usable case.
            ConfigError: ``out`` exists and is not empty (without ``overwrite``).
        """
        from clinfuse.ensemble import FoldEnsemble
        from clinfuse.evaluation import ablation

        out = Path(out)
        _check_out(out, overwrite)
        cohort = self._cohort(cohort)
        if isinstance(self.model, FoldEnsemble):
            scores = self.model.score(cohort, progress=progress, workers=self.workers)
            return self.evaluate_scored(
                cohort,
                scores.frame,
                scores.present,
                scores.excluded,
                out,
                scorer=scores.scorer,
                overwrite=overwrite,
                per_model=scores.per_model,
            )
        scored = score_cohort(self.model, cohort, progress=progress, workers=self.workers)
        scorer = (
            ablation.masked_fusion_probabilities(self.model, scored.cache)
            if len(self.model.modalities) > 1
            else None
        )
        return self.evaluate_scored(
            cohort,
            scored.frame,
            scored.raw["present"],
            scored.excluded,
            out,
            scorer=scorer,
            overwrite=overwrite,
        )

    def evaluate_scored(
        self,
        cohort: Any,
        frame: pd.DataFrame,
        present: np.ndarray,
        excluded: Sequence[Any],
        out: str | Path,
        *,
        scorer: Any = None,
        overwrite: bool = False,
        crossval: dict[str, Any] | None = None,
        per_model: pd.DataFrame | None = None,
    ) -> EvaluationResult:
        """Evaluate predictions already made (``frame`` as from :func:`score_cohort`).

        Args:
            cohort: the checked cohort the predictions are for (subgroup values, sites).
            frame: predictions, one row per scored case.
            present: (N, M) modality availability of the frame's cases.
            excluded: the cases that could not be scored (issues).
            out: the output folder.
            scorer: an :data:`~clinfuse.evaluation.ablation.Scorer` over the frame's
                cases for the ablation and robustness tables (None skips them).
            crossval: the cross-validation summary when the frame pools the
                out-of-fold predictions of several fold models (see
                :func:`clinfuse.evaluation.crossval.cross_validate`).
            per_model: for a fold ensemble's frame, each fold model's own outputs
                (:attr:`clinfuse.ensemble.EnsembleScores.per_model`), for the case-mix
                comparison with the out-of-fold development predictions.
        """
        from clinfuse.evaluation import ablation, calibration, delong, subgroups, utility
        from clinfuse.evaluation.summary import summarize_predictions

        out = Path(out)
        _check_out(out, overwrite)
        model = self.model
        mods = list(model.modalities)
        frame = frame.copy()
        rows_by_id = {r.case_id: r for r in cohort.rows}
        for col in self.subgroups:
            frame[col] = [self._group_value(rows_by_id[c], col) for c in frame["case_id"]]
        frame["site"] = [rows_by_id[c].site for c in frame["case_id"]]
        y = frame["label"].to_numpy(dtype=float)
        p = frame["p_fusion"].to_numpy(dtype=float)
        present = np.asarray(present).astype(bool)
        single_class = len(np.unique(y)) < 2
        notes: list[str] = []
        if single_class:
            notes.append(
                f"The cohort has only {'events' if y.mean() == 1 else 'non-events'}: AUROC, AUPRC "
                "and the DeLong tests are undefined; calibration and Brier are still reported."
            )

        metrics = summarize_predictions(frame, mods, n_boot=self.n_boot, seed=self.seed)
        metrics["schema"] = "clinfuse.evaluation.v1"
        metrics["level"] = self.level
        metrics["n_boot"] = self.n_boot
        metrics["seed"] = self.seed
        if self.run_info:
            metrics["run"] = self.run_info
        if crossval:
            metrics["crossval"] = crossval
        metrics["notes"] = notes
        scored = {"fusion": (y, p)}
        for m in mods:
            pm = frame[f"p_{m}"].to_numpy(dtype=float)
            has = ~np.isnan(pm)
            scored[m] = (y[has], pm[has])

        # discrimination: DeLong next to the bootstrap, paired tests fused vs each modality
        disc: dict[str, Any] = {"models": {}, "paired_delong": {}}
        for name, (yy, pp) in scored.items():
            disc["models"][name] = {
                "n_cases": len(yy),
                "n_events": int(yy.sum()),
                "auroc_delong": delong.delong_ci(yy, pp, level=self.level),
                "auroc_bootstrap": metrics["models"][name]["auroc"],
                "auprc_bootstrap": metrics["models"][name]["auprc"],
            }
            metrics["models"][name]["auroc"]["delong_ci_low"] = disc["models"][name][
                "auroc_delong"
            ]["ci_low"]
            metrics["models"][name]["auroc"]["delong_ci_high"] = disc["models"][name][
                "auroc_delong"
            ]["ci_high"]
        for m in mods:
            pm = frame[f"p_{m}"].to_numpy(dtype=float)
            has = ~np.isnan(pm)
            res = delong.delong_test(y[has], pm[has], p[has], level=self.level)
            res["comparison"] = f"fusion − {m} (cases with {m})"
            disc["paired_delong"][m] = res
        metrics["discrimination"] = disc

        # calibration of every model on its own cases; curves for the fused risk
        metrics["calibration"] = {
            name: calibration.calibration_summary(yy, pp, level=self.level)
            for name, (yy, pp) in scored.items()
        }
        curve = calibration.calibration_curve(y, p, level=self.level)
        ece, ece_table = calibration.expected_calibration_error(y, p)
        metrics["calibration"]["fusion"]["curve"] = {
            k: curve[k] for k in ("grid", "curve", "curve_low", "curve_high", "knots")
        } | {"bins": curve["bins"]}

        # clinical utility
        dca = utility.decision_curve(y, {"fusion": p})
        metrics["decision_curve"] = dca
        metrics["thresholds"] = {
            "rule": "flagged when predicted risk ≥ threshold",
            "fusion": utility.threshold_metrics(y, p, self.thresholds, level=self.level),
        }

        # risk distributions by outcome
        dist: dict[str, Any] = {}
        for label, sel in (("events", y == 1), ("non_events", y == 0)):
            if sel.any():
                q = np.quantile(p[sel], [0.1, 0.25, 0.5, 0.75, 0.9])
                dist[label] = {
                    "n": int(sel.sum()),
                    "mean": float(p[sel].mean()),
                    **dict(zip(("p10", "q1", "median", "q3", "p90"), q.tolist(), strict=True)),
                }
            else:
                dist[label] = {"n": 0}
        if not single_class:
            dist["discrimination_slope"] = float(p[y == 1].mean() - p[y == 0].mean())
        metrics["risk_distribution"] = dist

        # subgroups and sites
        groupings = list(self.subgroups)
        if "site" not in groupings and frame["site"].notna().any():
            groupings.append("site")
        metrics["subgroups"] = {
            col: subgroups.group_metrics(
                y,
                p,
                frame[col].tolist(),
                threshold=self.thresholds[0],
                min_size=self.min_group_size,
                min_events=self.min_group_events,
                level=self.level,
            )
            for col in groupings
        }
        dates = self._dates(cohort, list(frame["case_id"]))
        if self.conformal is not None:
            by = {col: frame[col].tolist() for col in groupings}
            if dates is not None:  # does the promise still hold as time goes by?
                from clinfuse.evaluation.temporal import period_labels

                by[f"{self.period} of {self.time_column}"] = period_labels(dates, self.period)
            metrics["conformal"] = self._conformal(cohort, frame, y, p, by, dates)

        # performance over time
        chart = None
        if dates is not None:
            from clinfuse.evaluation.cusum import cusum_by_group, risk_adjusted_cusum
            from clinfuse.evaluation.temporal import performance_over_time

            metrics["over_time"] = {"column": self.time_column} | performance_over_time(
                y,
                p,
                dates,
                period=self.period,
                min_size=self.min_group_size,
                min_events=self.min_group_events,
                level=self.level,
            )
            chart = risk_adjusted_cusum(
                y,
                p,
                dates,
                false_alarm=self.cusum_false_alarm,
                seed=self.seed,
                case_ids=frame["case_id"].astype(str).tolist(),
            )
            metrics["over_time"]["cusum"] = chart.to_dict()
            by_site = cusum_by_group(  # a shift at one site is diluted in the pooled chart
                y,
                p,
                dates,
                frame["site"].tolist(),
                false_alarm=self.cusum_false_alarm,
                seed=self.seed,
                case_ids=frame["case_id"].astype(str).tolist(),
                min_size=self.min_group_size,
                min_events=self.min_group_events,
            )
            if by_site is not None:
                metrics["over_time"]["cusum_by_site"] = by_site
            from clinfuse.evaluation.segments import segment_calibration, segments_by_group

            sizes: dict[str, Any] = dict(
                min_cases=self.min_group_size, min_events=self.min_group_events, level=self.level
            )
            metrics["over_time"]["segments"] = segment_calibration(y, p, dates, **sizes)
            per_site = segments_by_group(y, p, dates, frame["site"].tolist(), **sizes)
            if per_site is not None:
                metrics["over_time"]["segments_by_site"] = per_site

        # fusion analysis
        if len(mods) > 1 and scorer is not None:
            metrics["ablation"] = ablation.ablation_table(
                y, present, mods, scorer, n_boot=self.n_boot, seed=self.seed, level=self.level
            )
            metrics["robustness"] = ablation.robustness_table(
                y, present, mods, scorer, level=self.level
            )

        # case mix against the development data (TRIPOD+AI 20c)
        if self.development is not None and len(self.development):
            from clinfuse.evaluation.casemix import case_mix

            tab_values = None
            if model.tabular is not None:
                tab_values = pd.DataFrame(
                    [
                        {c: rows_by_id[cid].extra.get(c) for c in model.tabular.columns}
                        for cid in frame["case_id"]
                    ],
                    columns=model.tabular.columns,
                )
            same = self.development_manifest is not None and (
                Path(self.development_manifest).resolve() == Path(cohort.manifest_path).resolve()
            )
            models = None
            if per_model is not None:
                models = per_model[per_model["case_id"].isin(set(frame["case_id"]))]
            metrics["case_mix"] = case_mix(
                self.development,
                frame,
                mods,
                tabular=model.tabular,
                tabular_values=tab_values,
                same_manifest=same,
                evaluated_models=models,
            )

        # participants and model card
        excluded_frame = pd.DataFrame(
            [i.as_dict() for i in excluded],
            columns=["case_id", "field", "severity", "path", "message"],
        )
        metrics["participants"] = {
            "manifest": str(cohort.manifest_path),
            "split": self.split,
            "n_evaluated": len(frame),
            "n_events": int(y.sum()),
            "prevalence": float(y.mean()),
            "n_excluded": int(excluded_frame["case_id"].nunique()),
            "exclusions_by_field": {
                str(k): int(v)
                for k, v in excluded_frame.groupby("field")["case_id"].nunique().items()
            },
            "sites": {str(k): int(v) for k, v in frame["site"].value_counts(dropna=False).items()},
            "availability": _availability(present, mods),
        }
        metrics["sample_size"] = _sample_size_needed(y, p)
        metrics["model_card"] = self._model_card(metrics)
        metrics = _jsonable(metrics)
        return self._write(
            out, metrics, frame, excluded_frame, curve, ece, ece_table, overwrite, cusum=chart
        )

    def _conformal(
        self,
        cohort: Any,
        frame: pd.DataFrame,
        y: np.ndarray,
        p: np.ndarray,
        groupings: dict[str, list[Any]],
        dates: np.ndarray | None,
    ) -> dict[str, Any]:
        """Coverage of :attr:`conformal`'s sets on this cohort, overall and within each
        group of ``groupings`` (subgroups, sites, periods: each case's group by name of
        the grouping), the alpha sweep and, with ``dates``, the adaptive replay; each case's
        set into ``frame``."""
        from clinfuse.evaluation.conformal import (
            alpha_sweep,
            calibration_overlap,
            coverage_by_group,
            coverage_table,
            labelled_calibration_cases,
        )

        sets = self.conformal.predict(p)
        frame["conformal_set"] = sets
        overlap = calibration_overlap(self.conformal, cohort.manifest_path, frame["case_id"])
        recorded = bool(self.conformal.source.get("evaluation"))
        cal = labelled_calibration_cases(self.conformal) if recorded else None  # read once
        out = {
            "fitted": self.conformal.to_dict(),
            "description": self.conformal.describe(),
            **coverage_table(y, sets, level=self.level),
            "by_group": {
                col: coverage_by_group(
                    y,
                    sets,
                    groups,
                    min_size=self.min_group_size,
                    min_events=self.min_group_events,
                    level=self.level,
                )
                for col, groups in groupings.items()
            },
            "n_in_calibration": overlap,
            "by_alpha": None
            if cal is None
            else alpha_sweep(self.conformal, y, p, level=self.level, calibration=cal),
        }
        if dates is not None and self.conformal.mondrian:
            out["adaptive"] = None if cal is None else self._adaptive(frame, y, p, dates, cal)
        return out

    def _adaptive(
        self,
        frame: pd.DataFrame,
        y: np.ndarray,
        p: np.ndarray,
        dates: np.ndarray,
        calibration: pd.DataFrame,
    ) -> dict[str, Any]:
        """Adaptive conformal sets replayed over the dated cases in date order
        (:func:`~clinfuse.evaluation.conformal.adaptive_replay`) from the ``calibration``
        cases; each dated case's set into ``frame["conformal_set_adaptive"]``."""
        from clinfuse.evaluation.conformal import adaptive_replay, coverage_by_group, coverage_table
        from clinfuse.evaluation.temporal import period_labels

        dated = np.flatnonzero(~np.isnat(dates))
        ids = frame["case_id"].astype(str).to_numpy()
        order = dated[np.lexsort((ids[dated], dates[dated]))]
        res = adaptive_replay(
            self.conformal,
            calibration["label"].to_numpy(float),
            calibration["p_fusion"].to_numpy(float),
            y[order],
            p[order],
        )
        column = np.full(len(frame), "", dtype=object)
        column[order] = res["sets"]
        frame["conformal_set_adaptive"] = column
        table = coverage_table(y[order], res["sets"], level=self.level)
        return {
            "gamma": res["gamma"],
            "n": len(order),
            "n_undated": len(frame) - len(order),
            "coverage": table["coverage"],
            "singletons": table["singletons"],
            "final_levels": res["final"],
            "bound": res["bound"],
            "by_period": coverage_by_group(
                y[order],
                res["sets"],
                period_labels(dates[order], self.period),
                min_size=self.min_group_size,
                min_events=self.min_group_events,
                level=self.level,
            ),
        }

    def _model_card(self, metrics: dict[str, Any]) -> dict[str, Any]:
        model = self.model
        cfg = model.config
        fusion = metrics["models"]["fusion"]
        cv = metrics.get("crossval")
        limitations = [
            (
                (
                    f"Internal–external validation, leaving one {cv['group_by']} out: the "
                    f"figures estimate how the training procedure performs at a new "
                    f"{cv['group_by']} like these; "
                    if cv.get("group_by")
                    else f"Internal validation by {cv['folds']}-fold cross-validation: the "
                    "figures estimate how the training procedure performs on new patients of "
                    "the same population; "
                )
                + "the model to use is trained on all cases (`clinfuse train`), and its "
                "performance in another setting (site, period, case mix) must be checked "
                "before use."
            )
            if cv
            else "Evaluated retrospectively on the cohort given; performance in another setting "
            "(site, period, case mix) must be checked before use.",
            "The ablation and robustness tables mask inputs of the trained model; they do not "
            "show what models trained on fewer modalities would achieve.",
        ]
        overlap = (metrics.get("case_mix") or {}).get("n_overlap", 0)
        if overlap and not (isinstance(model.info, dict) and "ensemble" in model.info):
            limitations.append(
                f"{overlap} evaluated cases are the run's own training or validation cases "
                "(the model or its calibration was fitted on them): these figures are "
                "optimistic; evaluate the test split (`--split test`) or cases the run never saw."
            )
        if isinstance(model.info, dict) and "ensemble" in model.info:
            limitations.append(
                f"The model is a fold ensemble ({model.info['ensemble']}); its calibration "
                "was not fitted as a whole — read the calibration section before using its risks."
                + (
                    f" {overlap} evaluated cases belong to the cross-validation that trained the "
                    "fold models (each was in the training data of all but one): these figures "
                    "are optimistic; evaluate on cases no fold model saw."
                    if overlap
                    else ""
                )
            )
        needed = metrics.get("sample_size")
        if needed and metrics["n_cases"] < needed["n"]:
            short = [
                f"{r['criterion']} {r['n']:,}"
                for r in needed["criteria"]
                if metrics["n_cases"] < r["n"]
            ]
            limitations.append(
                f"Small evaluation sample ({metrics['n_cases']} cases, {metrics['n_events']} "
                "events): for 95 % CI widths of 0.2 (O/E, calibration slope) and 0.1 "
                "(C-statistic) at this prevalence, C-statistic and risk distribution, Riley et "
                f"al.'s criteria (Stat Med 2021) ask for {needed['n']:,} cases — "
                + "; ".join(short)
                + " (`clinfuse samplesize`). The intervals here are correspondingly wide."
            )
        elif metrics["n_cases"] < 200 or metrics["n_events"] < 100:
            limitations.append(
                f"Small evaluation sample ({metrics['n_cases']} cases, {metrics['n_events']} "
                "events): intervals are wide; at least 100 events are recommended for "
                "calibration assessment (Riley et al., 2024)."
            )
        for col, res in metrics["subgroups"].items():
            het = res.get("heterogeneity") or {}
            differ = [
                f"{what} ({key} p = {het[name]['p_value']:.3g})"
                for name, what, key in (
                    ("auroc", "discrimination", "Cochran's Q"),
                    ("calibration_in_the_large", "calibration-in-the-large", "likelihood-ratio"),
                )
                if het.get(name) and het[name]["p_value"] < 0.05
            ]
            if differ:
                limitations.append(
                    f"Performance differs across {col}: " + " and ".join(differ) + " — read the "
                    f"{col} table before using the model alike in every group (a recalibration "
                    "per group, or a model with the group as input, may be needed)."
                )
            alarms = [
                f"{g['group']} (O/E {g['oe']:.2f})"
                for g in (res.get("funnel") or {}).get("groups", [])
                if g["outside_overdispersed"] == "99.8 %" and g["oe"] is not None
            ]
            if alarms:
                limitations.append(
                    f"Outside the funnel plot's 99.8 % limits by {col}: "
                    + ", ".join(alarms)
                    + " — more or fewer events than the model expects there."
                )
        suppressed = sum(
            r["suppressed"] for res in metrics["subgroups"].values() for r in res["groups"]
        )
        if suppressed:
            limitations.append(f"{suppressed} subgroup(s) were too small to report.")
        slope = metrics["calibration"]["fusion"]["slope"]["value"]
        if cv and slope is not None and not 0.8 <= slope <= 1.2:
            limitations.append(
                f"Calibration slope {slope:.2f} across the held-out folds: the fold models' "
                f"risks are {'too extreme (overfitting)' if slope < 1 else 'too moderate'}; "
                "a model trained the same way on all cases will likely behave alike."
            )
        elif slope is not None and not 0.8 <= slope <= 1.2:
            limitations.append(
                f"Calibration slope {slope:.2f}: risks are "
                f"{'too extreme' if slope < 1 else 'too moderate'}; consider recalibrating on "
                "this site's cases (`clinfuse recalibrate`)."
            )
        citl = metrics["calibration"]["fusion"]["intercept"]
        if not cv and citl["ci_low"] is not None and (citl["ci_low"] > 0 or citl["ci_high"] < 0):
            limitations.append(
                f"Calibration intercept {citl['value']:.2f} (95 % CI {citl['ci_low']:.2f} to "
                f"{citl['ci_high']:.2f}): risks are systematically too "
                f"{'low' if citl['value'] > 0 else 'high'} for this cohort; consider recalibrating "
                "on this site's cases (`clinfuse recalibrate`)."
            )
        drift = (metrics.get("over_time") or {}).get("drift", {}).get("per_year", {})
        if drift.get("p_value") is not None and drift["p_value"] < 0.05:
            over = metrics["over_time"]
            limitations.append(
                f"Calibration drifted over time ({over['column']}, {over['first']} to "
                f"{over['last']}): the log odds of the outcome "
                f"{'rose' if drift['value'] > 0 else 'fell'} by {abs(drift['value']):.2f} per year "
                f"(95 % CI {drift['ci_low']:.2f} to {drift['ci_high']:.2f}, p = "
                f"{drift['p_value']:.3g}) beyond the model's risks, which "
                f"{'fall increasingly short of' if drift['value'] > 0 else 'increasingly exceed'} "
                "the events: monitor it and recalibrate on recent cases (`clinfuse recalibrate … "
                f"--time-column {over['column']} --since DATE`)."
            )
        limitations += _time_limitations(metrics.get("over_time"))
        conformal = metrics.get("conformal")
        if conformal:
            levels = conformal["fitted"]["levels"]
            short = [
                f"{k.replace('_', '-')} {100 * conformal['coverage'][k]['value']:.1f} % "
                f"(95 % CI up to {100 * conformal['coverage'][k]['ci_high']:.1f} %, "
                f"promised {100 * levels[k]:g} %)"
                for k in levels
                if conformal["coverage"][k]["n"] and conformal["coverage"][k]["ci_high"] < levels[k]
            ]
            if conformal["fitted"]["mondrian"]:
                short += [
                    f"{k.replace('_', '-')} of {col} {r['group']} {100 * r[k]['value']:.1f} % "
                    f"(95 % CI up to {100 * r[k]['ci_high']:.1f} %)"
                    for col, rows in conformal["by_group"].items()
                    for r in rows
                    if not r["suppressed"]
                    for k in levels
                    if r[k]["n"] and r[k]["ci_high"] < levels[k]
                ]
            if short:
                limitations.append(
                    "The conformal sets covered fewer cases than promised: "
                    + "; ".join(short)
                    + ". These cases are not exchangeable with the ones that calibrated the sets "
                    "(another site, period or case mix): recalibrate the sets on this cohort's "
                    "cases before relying on them."
                )
            if conformal["n_in_calibration"]:
                limitations.append(
                    f"{conformal['n_in_calibration']} evaluated cases calibrated the conformal "
                    "sets: their coverage here is in-sample."
                )
        membership = (metrics.get("case_mix") or {}).get("membership")
        if membership and membership["c_statistic"] >= 0.8:
            limitations.append(
                f"The case mix differs strongly from the development data (membership model "
                f"c = {membership['c_statistic']:.2f}): this evaluation tests transportability."
            )
        return {
            "model": {
                "modalities": list(model.modalities),
                "fusion": cfg.fusion.strategy
                if hasattr(cfg.fusion, "strategy")
                else str(cfg.fusion),
                "target": cfg.data.target,
                "encoders": {m: dict(cfg.encoders[m]).get("name") for m in model.modalities},
                "calibrators": sorted(model.calibrators),
                "recalibrated": {
                    k: c.update.method for k, c in model.calibrators.items() if hasattr(c, "update")
                },
                "info": {"cross_validation": cv["fold_models"]} if cv else model.info,
            },
            "intended_use": (
                "Decision support: a calibrated risk of the outcome "
                f"'{cfg.data.target}' from the available modalities, reviewed by a clinician; "
                "not a stand-alone diagnosis. Cases may lack modalities; the model uses those present."
            ),
            "data": {
                "n_cases": metrics["n_cases"],
                "n_events": metrics["n_events"],
                "sites": sorted(k for k in metrics.get("participants", {}).get("sites", {}) if k),
            },
            "performance": {
                "auroc": fusion["auroc"],
                "brier": fusion["brier"],
                "calibration_slope": metrics["calibration"]["fusion"]["slope"],
                "calibration_intercept": metrics["calibration"]["fusion"]["intercept"],
            },
            "limitations": limitations,
        }

    def _write(
        self,
        out: Path,
        metrics: dict[str, Any],
        frame: pd.DataFrame,
        excluded: pd.DataFrame,
        curve: dict[str, Any],
        ece: float | None,
        ece_table: dict[str, np.ndarray],
        overwrite: bool,
        *,
        cusum: Any = None,
    ) -> EvaluationResult:
        from clinfuse._files import atomic_folder
        from clinfuse.evaluation import figures
        from clinfuse.evaluation.funnel import drawable_funnels
        from clinfuse.evaluation.report import render_report
        from clinfuse.evaluation.subgroups import subgroup_table

        with atomic_folder(out) as tmp:
            y = frame["label"].to_numpy(dtype=float)
            p = frame["p_fusion"].to_numpy(dtype=float)
            fig_dir = tmp / "figures"
            scored = {"fusion": (y, p)}
            for m in self.model.modalities:
                pm = frame[f"p_{m}"].to_numpy(dtype=float)
                has = ~np.isnan(pm)
                scored[m] = (y[has], pm[has])
            figs = {
                "roc": figures.roc_figure(y, scored),
                "calibration": figures.calibration_figure(curve, p),
                "reliability": figures.reliability_figure(ece_table, ece),
                "decision_curve": figures.decision_curve_figure(
                    metrics["decision_curve"], float(y.mean())
                ),
                "risk_distribution": figures.risk_distribution_figure(y, p),
            }
            if metrics["subgroups"]:
                figs["subgroups"] = figures.subgroup_figure(metrics["subgroups"])
                if drawable_funnels(metrics["subgroups"]):
                    figs["funnel"] = figures.funnel_figure(metrics["subgroups"])
            if metrics.get("crossval"):
                figs["folds"] = figures.forest_figure(metrics["crossval"])
            if metrics.get("over_time", {}).get("periods"):
                figs["over_time"] = figures.over_time_figure(metrics["over_time"])
            if cusum is not None and len(cusum.y):
                figs["cusum"] = figures.cusum_figure(cusum, column=self.time_column)
            png = {name: figures.save_figure(fig, fig_dir, name) for name, fig in figs.items()}
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            frame.to_csv(tmp / "predictions.csv", index=False)
            excluded.to_csv(tmp / "excluded.csv", index=False)
            tables = [
                subgroup_table(res).assign(grouping=col)
                for col, res in metrics["subgroups"].items()
            ]
            if tables:
                pd.concat(tables, ignore_index=True).to_csv(tmp / "subgroups.csv", index=False)
            (tmp / "report.html").write_text(
                render_report(metrics, png, thresholds=self.thresholds), encoding="utf-8"
            )
        return EvaluationResult(
            out=out,
            metrics=metrics,
            predictions=frame,
            excluded=excluded,
            figures={name: out / "figures" / f"{name}.png" for name in png},
        )


def _time_limitations(over: dict[str, Any] | None) -> list[str]:
    """The model card's lines on the slope drift, a falling AUROC and CUSUM signals."""
    from clinfuse.evaluation.cusum import describe_change, first_signals
    from clinfuse.evaluation.segments import describe_segments

    if not over:
        return []
    out = []
    slope = over["drift"].get("slope_per_year") or {}
    if slope.get("p_value") is not None and slope["p_value"] < 0.05:
        out.append(
            f"The calibration slope drifted over time ({over['column']}): "
            f"{slope['value']:+.2f} per year (95 % CI {slope['ci_low']:.2f} to "
            f"{slope['ci_high']:.2f}, p = {slope['p_value']:.3g}); the risks grow "
            f"{'too extreme' if slope['value'] < 0 else 'too moderate'} with time."
        )
    trend = over.get("auroc_trend") or {}
    if trend.get("p_value") is not None and trend["p_value"] < 0.05 and trend["value"] < 0:
        out.append(
            f"Discrimination fell over time ({over['column']}): the AUROC changed by "
            f"{trend['value']:+.3f} per year across {trend['k']} {over['period']}s (95 % CI "
            f"{trend['ci_low']:+.3f} to {trend['ci_high']:+.3f}, p = {trend['p_value']:.3g})."
        )
    for chart in (over.get("cusum") or {}).get("charts", []):
        if chart["n_signals"]:
            first = chart["signals"][0]
            out.append(
                f"The risk-adjusted CUSUM signalled {chart['n_signals']} time"
                f"{'s' * (chart['n_signals'] > 1)} for {chart['direction']} (odds × "
                f"{chart['odds_ratio']:g}); the first climb began {first['since']} and "
                f"signalled {first['date']} ({first['observed']} events observed, "
                f"{first['expected']:.1f} expected in its {first['n_cases']} cases)"
                + (f"; {describe_change(first)}" if "change" in first else "")
                + ": look for a change in practice, case mix or data at that time."
            )
    segments = describe_segments(over.get("segments"), over["column"])
    if segments:
        out.append(segments)
    for site, result in ((over.get("segments_by_site") or {}).get("groups") or {}).items():
        sentence = describe_segments(result, over["column"])
        if sentence:
            out.append(f"At site {site}: {sentence[0].lower()}{sentence[1:]}")
    for site, chart, first in first_signals(over.get("cusum_by_site")):
        out.append(
            f"At site {site}, the risk-adjusted CUSUM signalled {first['date']} for "
            f"{chart['direction']}"
            + (f"; {describe_change(first)}" if "change" in first else "")
            + " (limits for each site at a false-alarm rate of "
            f"{100 * over['cusum_by_site']['false_alarm_each']:.2g} %)."
        )
    return out


def evaluate_run(
    run: str | Path | Any,
    cohort: str | Path | Any,
    out: str | Path,
    *,
    subgroups: Sequence[str] = (),
    thresholds: Sequence[float] | str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_group_size: int = 30,
    min_group_events: int = 5,
    split: str | None = None,
    allow_missing_modalities: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    device: str = "cpu",
    workers: int | str = "auto",
    conformal: Any = None,
    time_column: str | None = None,
    period: str = "quarter",
    cusum_false_alarm: float = 0.05,
) -> EvaluationResult:
    """Evaluate a trained run on a labelled cohort and write the report folder.

    Args:
        run: run folder written by ``clinfuse train`` (or a loaded ``FusionModel``), or a
            ``clinfuse crossval`` folder (or a loaded
            :class:`~clinfuse.ensemble.FoldEnsemble`): its fold models scored together.
        cohort: manifest path (or :class:`~clinfuse.cohort.Cohort`) with a 0/1 outcome.
        out: output folder (created; must be new or empty unless ``overwrite``).
        subgroups: manifest columns to break results down by (e.g. ``["sex", "age_band"]``).
        thresholds: risk thresholds in (0, 1) for sensitivity/specificity/PPV/NPV
            (default 0.1, 0.2, 0.3); the first one is used for subgroup sensitivity.
        n_boot: bootstrap replicates (percentile 95 % CIs).
        seed: bootstrap seed.
        level: confidence level.
        min_group_size: subgroups/sites with fewer cases are suppressed.
        min_group_events: … or with fewer events or non-events.
        split: evaluate one split only (e.g. ``"test"`` on the development manifest).
        allow_missing_modalities: accept a cohort without a column for a run modality.
        overwrite: replace an existing output folder.
        progress: ``callback(done, total)`` while cases load.
        device: where a model loaded from a folder runs (``cpu``, ``cuda`` or ``auto``).
        workers: processes that read the cohort's files: ``"auto"`` (one per CPU, at most
            8, for cohorts of 128 cases or more) or a count (0 = in this process).
        conformal: :class:`~clinfuse.evaluation.conformal.ConformalSets` of this model,
            calibrated on another evaluation, whose coverage this one checks.
        time_column: a manifest column of dates: metrics per ``period`` (``month``,
            ``quarter``, ``year``), the drifts of calibration and discrimination over time
            and risk-adjusted CUSUM charts.
        cusum_false_alarm: each CUSUM chart's chance of a false signal in these cases were
            the model calibrated throughout.

    Returns:
        :class:`EvaluationResult`.
    """
    from clinfuse.ensemble import (
        FoldEnsemble,
        ensemble_calibration_digest,
        is_crossval_folder,
        load_ensemble,
    )
    from clinfuse.evaluation.casemix import development_cases
    from clinfuse.evaluation.casemix import development_manifest as recorded_manifest
    from clinfuse.model import FusionModel, load_run
    from clinfuse.training.trainer import resolve_device

    development, development_manifest = None, None
    run_info: dict[str, Any] | None = None
    model: Any
    if isinstance(run, FusionModel | FoldEnsemble):
        model = run
    elif is_crossval_folder(run):
        model = load_ensemble(run, device=resolve_device(device))
        summary = json.loads((Path(run) / "crossval.json").read_text(encoding="utf-8"))
        run_info = {
            "path": str(Path(run).resolve()),
            "fold_ensemble": [f["model_sha256"] for f in summary["fold_models"]],
            "ensemble_calibration": ensemble_calibration_digest(run),
        }
        pooled = Path(run) / "evaluation" / "predictions.csv"
        if pooled.exists():  # every case of the cross-validation trained K - 1 of the models
            development = pd.read_csv(pooled, dtype={"case_id": str}).assign(split="train")
        development_manifest = summary.get("manifest")
    else:
        model = load_run(run, device=resolve_device(device))
        run_info = {
            "path": str(Path(run).resolve()),
            "model_sha256": model_sha256(run),
        }
    recorded_splits = None
    if isinstance(model, FusionModel) and run_info and (Path(run) / "predictions.csv").exists():
        recorded = pd.read_csv(Path(run) / "predictions.csv", dtype={"case_id": str})
        development = development_cases(recorded)
        if "split" in recorded.columns:
            recorded_splits = dict(zip(recorded["case_id"], recorded["split"], strict=True))
        recorded = recorded_manifest(Path(run))
        development_manifest = None if recorded is None else str(recorded)
    evaluator = Evaluator(
        model,
        subgroups=subgroups,
        thresholds=thresholds,
        n_boot=n_boot,
        seed=seed,
        level=level,
        min_group_size=min_group_size,
        min_group_events=min_group_events,
        split=split,
        allow_missing_modalities=allow_missing_modalities,
        development=development,
        development_manifest=development_manifest,
        recorded_splits=recorded_splits,
        run_info=run_info,
        workers=workers,
        conformal=conformal,
        time_column=time_column,
        period=period,
        cusum_false_alarm=cusum_false_alarm,
    )
    return evaluator.evaluate(cohort, out, overwrite=overwrite, progress=progress)
