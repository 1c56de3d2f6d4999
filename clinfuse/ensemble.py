"""The fold models of a cross-validation folder used together (a fold ensemble).

``clinfuse crossval`` trains one complete model per fold. Besides validating the
training procedure, those K models can score new cases together: each case's risk is
the **mean of the K models' calibrated risks** (each model calibrated on its own
validation split), and the spread between them (SD, min, max) says how much the
prediction depends on which patients a model was trained on — a per-case measure of
model uncertainty that one model cannot give.

What the cross-validation report measured is the performance of *single* fold models on
patients they never saw; the ensemble's own performance on new patients is that of
``clinfuse evaluate CV_FOLDER NEW_COHORT`` (external or temporal validation), not the
cross-validation figure. On the cross-validation's own manifest every case was seen by
K − 1 of the models, so that evaluation is optimistic and is flagged as such.

Cases are loaded once: the fold models share the data configuration, so images,
signals and notes are read and preprocessed one time, and only the tabular values go
through each fold's own fitted encoder (scaling learnt on that fold's training cases).

An ensemble recalibrated for a site (``clinfuse recalibrate CV SITE --out CV_SITE``)
carries ``ensemble_calibration.json``: an update of each output's ensemble risk
(:class:`clinfuse.calibration.Updated` on the logit of the mean of the fold models'
risks). The fused risk is then ``g(mean of the K risks)``, and the band
``g(min)``–``g(max)`` (``g`` is non-decreasing, so the ensemble risk stays inside); the
fold models themselves are not changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinfuse.errors import ConfigError

__all__ = [
    "ENSEMBLE_CALIBRATION",
    "EnsembleScores",
    "FoldEnsemble",
    "is_crossval_folder",
    "load_ensemble",
    "merge_fold_warnings",
]


ENSEMBLE_CALIBRATION = "ensemble_calibration.json"
"""The file of a recalibrated fold ensemble's updates, in its cross-validation folder."""


def ensemble_calibration_digest(path: str | Path) -> str | None:
    """SHA-256 of a cross-validation folder's ``ensemble_calibration.json`` (None without)."""
    import hashlib

    file = Path(path) / ENSEMBLE_CALIBRATION
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None


def read_ensemble_calibration(path: str | Path) -> dict[str, Any]:
    """The updates in a cross-validation folder's ``ensemble_calibration.json``, by output
    (``fusion`` and modalities; empty without the file).

    Raises:
        ConfigError: the file exists but cannot be read.
    """
    from clinfuse.calibration import calibrator_from_dict

    file = Path(path) / ENSEMBLE_CALIBRATION
    if not file.is_file():
        return {}
    try:
        state = json.loads(file.read_text(encoding="utf-8"))["calibrators"]
        return {str(k): calibrator_from_dict(v) for k, v in state.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"cannot read the ensemble's calibration: {e}",
            path=file,
            hint="restore the folder `clinfuse recalibrate` wrote, or recalibrate again",
        ) from e


def apply_recalibration(cal: Any, risk: Any) -> np.ndarray:
    """Risks through an ensemble's update ``cal`` of one output (a
    :class:`~clinfuse.calibration.Calibrator` on their logit; None: unchanged); NaN stays NaN."""
    from clinfuse.calibration import UPDATE_EPS

    risk = np.asarray(risk, dtype=float)
    if cal is None:
        return risk
    out = risk.copy()
    has = ~np.isnan(risk)
    q = np.clip(risk[has], UPDATE_EPS, 1 - UPDATE_EPS)
    out[has] = cal.predict_proba(np.log(q) - np.log1p(-q))
    return out


def is_crossval_folder(path: str | Path) -> bool:
    """True when ``path`` is a finished ``clinfuse crossval`` folder."""
    return (Path(path) / "crossval.json").is_file()


@dataclass
class EnsembleScores:
    """What :meth:`FoldEnsemble.score` returns.

    Attributes:
        frame: one row per scored case (see :meth:`FoldEnsemble.predict`).
        present: (N, M) modality availability of the frame's cases.
        excluded: the cases that could not be scored (issues).
        scorer: an :data:`~clinfuse.evaluation.ablation.Scorer` — the mean over the fold
            models of the fused risk with modalities masked out (None for one modality).
        per_model: each fold model's own outputs (before any ensemble recalibration), one
            row per case and model: ``case_id``, ``model`` (1 to K), ``label``,
            ``p_fusion``, ``logit_fusion``, ``p_<m>``, ``present_<m>`` (what the case-mix
            comparison needs: the cross-validation's out-of-fold predictions are single
            models' outputs too).
    """

    frame: pd.DataFrame
    present: np.ndarray
    excluded: list[Any]
    scorer: Callable[[Sequence[str]], np.ndarray] | None
    per_model: pd.DataFrame | None = None


class FoldEnsemble:
    """K trained fold models scoring cases together (mean of their calibrated risks).

    Args:
        models: the fold models (:class:`~clinfuse.model.FusionModel`), at least two,
            with the same modalities, data configuration and tabular columns.
        path: the cross-validation folder they come from (recorded in ``info``).
        recalibration: updates of the ensemble's risks by output (``fusion``, modalities),
            each a :class:`~clinfuse.calibration.Calibrator` applied to the logit of the
            mean of the fold models' risks (``ensemble_calibration.json``; see
            :func:`clinfuse.evaluation.recalibrate.recalibrate_run`).

    Attributes mirror :class:`~clinfuse.model.FusionModel`'s where the evaluation needs
    them: ``config``, ``modalities``, ``tabular`` and ``calibrators`` are the first fold
    model's (the configuration and tabular columns are checked to be the same in all).

    Raises:
        ConfigError: fewer than two models, or models that differ in modalities, data
            configuration or tabular columns.
    """

    def __init__(
        self,
        models: Sequence[Any],
        *,
        path: str | Path | None = None,
        recalibration: dict[str, Any] | None = None,
    ) -> None:
        self.models = list(models)
        self.path = None if path is None else Path(path)
        self.recalibration: dict[str, Any] = dict(recalibration or {})
        where = self.path
        if len(self.models) < 2:
            raise ConfigError(
                f"a fold ensemble needs at least two models, got {len(self.models)}", path=where
            )
        first = self.models[0]
        for k, m in enumerate(self.models[1:], start=2):
            what = None
            if list(m.modalities) != list(first.modalities):
                what = f"modalities {m.modalities} vs {first.modalities}"
            elif m.config.data.model_dump(mode="json") != first.config.data.model_dump(mode="json"):
                what = "data configuration"
            elif (m.tabular is None) != (first.tabular is None) or (
                m.tabular is not None and list(m.tabular.columns) != list(first.tabular.columns)
            ):
                what = "tabular columns"
            if what:
                raise ConfigError(
                    f"fold model {k} differs from fold model 1 in its {what}",
                    path=where,
                    hint="the models of an ensemble must come from one cross-validation",
                )
        self.config = first.config
        self.modalities = list(first.modalities)
        self.tabular = first.tabular
        self.calibrators = first.calibrators
        self.info: dict[str, Any] = {
            "ensemble": f"mean of {len(self.models)} fold models' calibrated risks",
            **({} if self.path is None else {"crossval": str(self.path.resolve())}),
        }
        if self.recalibration:
            self.info["recalibrated"] = ", ".join(
                f"{name}: {_update_name(c)}" for name, c in self.recalibration.items()
            )

    def recalibrated(self, output: str, risk: np.ndarray) -> np.ndarray:
        """``risk`` (the mean, or any one, of the fold models' risks of ``output``) through
        the ensemble's update of that output; unchanged without one; NaN stays NaN."""
        return apply_recalibration(self.recalibration.get(output), risk)

    def __len__(self) -> int:
        return len(self.models)

    # -- loading ---------------------------------------------------------------
    @classmethod
    def from_crossval(cls, path: str | Path, *, device: str = "cpu") -> FoldEnsemble:
        """The fold models of a finished ``clinfuse crossval`` folder.

        Each fold model's ``model/model.json`` is checked against the SHA-256 that
        ``crossval.json`` recorded, so a fold replaced after the cross-validation is refused.

        Raises:
            ConfigError: not a finished cross-validation folder, or a fold model missing
                or changed.
        """
        from clinfuse.evaluation.evaluate import model_sha256
        from clinfuse.model import load_run

        path = Path(path)
        if not is_crossval_folder(path):
            hint = "give the folder written by `clinfuse crossval`"
            if Path(f"{path}.partial").exists():
                hint = "the cross-validation did not finish; rerun `clinfuse crossval ... --resume`"
            raise ConfigError("no crossval.json in this folder", path=path, hint=hint)
        summary = json.loads((path / "crossval.json").read_text(encoding="utf-8"))
        if summary.get("fold_models_kept") is False:
            raise ConfigError(
                "this cross-validation kept its out-of-fold figures but not its fold models "
                "(a `clinfuse tune` trial)",
                path=path,
                hint="train the chosen config with `clinfuse train --config best_config.yaml`, "
                "or cross-validate it with `clinfuse crossval` to keep the fold models",
            )
        models = []
        for fold in summary["fold_models"]:
            run = path / fold["path"]
            if not (run / "model" / "model.json").exists():
                raise ConfigError(
                    f"fold {fold['fold']}'s model is missing",
                    path=run,
                    hint="the cross-validation folder is incomplete; restore it or run "
                    "`clinfuse crossval` again",
                )
            if model_sha256(run) != fold["model_sha256"]:
                raise ConfigError(
                    f"fold {fold['fold']}'s model differs from the one the cross-validation "
                    "recorded",
                    path=run / "model" / "model.json",
                    hint="the folder was modified after the cross-validation; restore it",
                )
            models.append(load_run(run, device=device))
        return cls(models, path=path, recalibration=read_ensemble_calibration(path))

    # -- scoring ---------------------------------------------------------------
    @property
    def frozen_modalities(self) -> list[str]:
        return self.models[0].frozen_modalities

    def check_cohort(self, cohort: Any, *, allow_missing_modalities: bool = False) -> None:
        """See :meth:`clinfuse.model.FusionModel.check_cohort`."""
        self.models[0].check_cohort(cohort, allow_missing_modalities=allow_missing_modalities)

    def _fold_cases(
        self, k: int, cases: list[dict[str, Any]], rows: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """``cases`` (loaded for fold model 1) with fold ``k``'s tabular values."""
        from clinfuse.data import CaseLoader

        model = self.models[k]
        if k == 0 or model.tabular is None:
            return cases
        loader = CaseLoader(self.config.data, ["tabular"], model.tabular)
        i = self.modalities.index("tabular")
        out = []
        for case in cases:
            fields, present, source = loader.tabular_fields(rows[case["case_id"]])
            new = {**case, **fields}
            new["present"] = case["present"].copy()
            new["present"][i] = present
            new["sources"] = {**case["sources"], "tabular": source}
            out.append(new)
        return out

    def fold_cases(self, case: dict[str, Any], row: Any) -> list[dict[str, Any]]:
        """One case loaded by :meth:`loader` as each fold model sees it (its tabular encoder's
        values; images, signals and notes shared).

        Args:
            case: the loaded case.
            row: its manifest row (:class:`~clinfuse.cohort.manifest.CaseRow`).
        """
        rows = {row.case_id: row}
        return [self._fold_cases(k, [case], rows)[0] for k in range(len(self.models))]

    def loader(self) -> Any:
        """The :class:`~clinfuse.data.CaseLoader` that loads cases once for every fold model."""
        from clinfuse.data import CaseLoader

        return CaseLoader(self.config.data, self.modalities, self.models[0].tabular)

    def _per_fold(self, cases: list[dict[str, Any]], cohort: Any) -> list[list[dict[str, Any]]]:
        """Loaded cases prepared for each fold model: its tabular values, its frozen
        encoders' embeddings."""
        from clinfuse.training.embed import attach_embeddings

        rows = {r.case_id: r for r in cohort.rows}
        return [
            attach_embeddings(model, self._fold_cases(k, cases, rows), model.frozen_modalities)
            for k, model in enumerate(self.models)
        ]

    def score(
        self,
        cohort: Any,
        *,
        progress: Callable[[int, int], None] | None = None,
        workers: int | str = "auto",
    ) -> EnsembleScores:
        """Load a checked cohort's cases once, chunk by chunk, and run every fold model's
        encoders once on them (the memory holds one chunk of decoded inputs).

        Raises:
            CohortError: no case could be loaded.
        """
        from clinfuse.evaluation.ablation import masked_fusion_probabilities

        caches, warnings, excluded = self._stream(cohort, progress=progress, workers=workers)
        fused, logits, unimodal = [], [], []
        present: np.ndarray | None = None
        scorers = []
        for k, (model, cache) in enumerate(zip(self.models, caches, strict=True)):
            raw = model.forward_cache(cache)
            probs = model.probabilities(raw)
            if present is None:
                present = raw["present"]
            elif not np.array_equal(present, raw["present"]):  # pragma: no cover - same columns
                raise ConfigError(
                    f"fold model {k + 1} sees other modalities present than fold model 1",
                    path=self.path,
                )
            fused.append(probs["fusion"])
            logits.append(raw["logit"])
            unimodal.append(np.stack([probs[m] for m in self.modalities], axis=1))
            if len(self.modalities) > 1:
                scorers.append(masked_fusion_probabilities(model, cache))
        assert present is not None
        risks = np.stack(fused)
        # a recalibrated ensemble: its update g on the mean, and on each model's risk for
        # the spread (g is non-decreasing: g(min) <= g(mean) <= g(max))
        each = np.stack([self.recalibrated("fusion", r) for r in risks])
        first = caches[0]
        frame = pd.DataFrame(
            {
                "case_id": first.case_ids,
                "split": first.splits,
                "label": [None if np.isnan(y) else int(y) for y in first.labels],
                "p_fusion": self.recalibrated("fusion", risks.mean(axis=0)),
                "logit_fusion": np.stack(logits).mean(axis=0),
                "p_fusion_sd": each.std(axis=0, ddof=1),
                "p_fusion_min": each.min(axis=0),
                "p_fusion_max": each.max(axis=0),
            }
        )
        per_modality = np.stack(unimodal).mean(axis=0)  # NaN where the modality is missing
        for i, m in enumerate(self.modalities):
            frame[f"p_{m}"] = self.recalibrated(m, per_modality[:, i])
        for i, m in enumerate(self.modalities):
            frame[f"present_{m}"] = present[:, i].astype(int)
        columns = [] if self.tabular is None else list(self.tabular.columns)
        frame["input_warnings"] = [
            "; ".join(merge_fold_warnings(case, columns)) for case in zip(*warnings, strict=True)
        ]

        def scorer(keep: Sequence[str]) -> np.ndarray:
            return self.recalibrated("fusion", np.mean([s(keep) for s in scorers], axis=0))

        per_model = pd.concat(
            [
                _model_rows(frame, k + 1, fused[k], logits[k], unimodal[k], self.modalities)
                for k in range(len(self.models))
            ],
            ignore_index=True,
        )
        return EnsembleScores(frame, present, excluded, scorer if scorers else None, per_model)

    def modality_caches(
        self,
        cohort: Any,
        *,
        progress: Callable[[int, int], None] | None = None,
        workers: int | str = "auto",
    ) -> tuple[list[Any], list[Any]]:
        """Every fold model's embeddings of a checked cohort's cases, loaded chunk by chunk.

        Returns:
            ``(caches, excluded)``: one :class:`~clinfuse.explain.modality.ModalityCache`
            per fold model (same cases, same order) and the excluded cases.

        Raises:
            CohortError: no case could be loaded.
        """
        caches, _warnings, excluded = self._stream(cohort, progress=progress, workers=workers)
        return caches, excluded

    def _stream(
        self,
        cohort: Any,
        *,
        progress: Callable[[int, int], None] | None,
        workers: int | str,
    ) -> tuple[list[Any], list[list[list[str]]], list[Any]]:
        from clinfuse.data import iter_scorable
        from clinfuse.explain.modality import ModalityCache, build_modality_cache

        parts: list[list[Any]] = [[] for _ in self.models]
        warnings: list[list[list[str]]] = [[] for _ in self.models]
        excluded: list[Any] = []
        for chunk in iter_scorable(self.loader(), cohort, progress, workers=workers):
            excluded += chunk.excluded
            if not chunk.cases:
                continue
            for k, (model, cases) in enumerate(
                zip(self.models, self._per_fold(chunk.cases, cohort), strict=True)
            ):
                parts[k].append(build_modality_cache(model, cases))
                warnings[k] += [c.get("input_warnings") or [] for c in cases]
        return [ModalityCache.concat(p) for p in parts], warnings, excluded

    def predict(
        self,
        cohort: Any,
        *,
        allow_missing_modalities: bool = False,
        progress: Callable[[int, int], None] | None = None,
        return_excluded: bool = False,
        workers: int | str = "auto",
    ) -> Any:
        """Fused and per-modality risks for every case, averaged over the fold models.

        Args:
            cohort: a :class:`~clinfuse.cohort.Cohort` or a manifest path.
            allow_missing_modalities: accept a cohort without a column for one of the
                models' modalities (treated as missing for every case).
            return_excluded: also return the cases that could not be loaded.
            workers: processes that read the files (:func:`clinfuse.data.scoring_workers`).

        Returns:
            The columns of :meth:`clinfuse.model.FusionModel.predict` — ``p_fusion`` and
            ``p_<modality>`` being means over the fold models, ``logit_fusion`` the mean
            uncalibrated logit — plus ``p_fusion_sd`` (between-model SD of the fused risk),
            ``p_fusion_min`` and ``p_fusion_max``; with ``return_excluded`` a pair
            ``(table, excluded issues)``.
        """
        scores = self.score_manifest(
            cohort,
            allow_missing_modalities=allow_missing_modalities,
            progress=progress,
            workers=workers,
        )
        return (scores.frame, scores.excluded) if return_excluded else scores.frame

    def score_manifest(
        self,
        cohort: Any,
        *,
        allow_missing_modalities: bool = False,
        progress: Callable[[int, int], None] | None = None,
        workers: int | str = "auto",
    ) -> EnsembleScores:
        """:meth:`predict`'s table with everything else :meth:`score` returns (each fold
        model's own outputs included), for a cohort or manifest path not checked yet."""
        from clinfuse.data import scoring_workers

        scoring_workers(workers, 0)  # a bad count fails before any file is read
        cohort = self.models[0].checked_cohort(
            cohort, allow_missing_modalities=allow_missing_modalities
        )
        return self.score(cohort, progress=progress, workers=workers)


def _update_name(cal: Any) -> str:
    """``logistic update``, ``intercept update then logistic update``… of a stored update."""
    from clinfuse.calibration import Updated

    names = []
    while isinstance(cal, Updated):
        method = cal.update.method
        names.append({"platt": "logistic", "isotonic": "isotonic"}.get(method, method) + " update")
        cal = cal.base
    return " then ".join(reversed(names)) or str(cal.method)


def _model_rows(
    frame: pd.DataFrame,
    model: int,
    fused: np.ndarray,
    logit: np.ndarray,
    unimodal: np.ndarray,
    modalities: Sequence[str],
) -> pd.DataFrame:
    """One fold model's outputs for the ensemble frame's cases (``EnsembleScores.per_model``)."""
    rows = pd.DataFrame(
        {
            "case_id": frame["case_id"],
            "model": model,
            "label": frame["label"],
            "p_fusion": fused,
            "logit_fusion": logit,
        }
    )
    for i, m in enumerate(modalities):
        rows[f"p_{m}"] = unimodal[:, i]
    for m in modalities:
        rows[f"present_{m}"] = frame[f"present_{m}"]
    return rows


def merge_fold_warnings(per_fold: Sequence[Sequence[str]], columns: Sequence[str]) -> list[str]:
    """One case's inputs outside the training data, over the fold models: each column once.

    Every fold model compares a value with its own training cases' mean and SD, so the same
    extreme value gives K warnings with slightly different figures. Kept: fold model 1's
    wording for each column any model flags (the first flagging model's when model 1 did
    not), with "in n of K fold models" when not all of them flag it.

    Args:
        per_fold: each fold model's warnings for the case (``TabularEncoder.check_row``: each
            starts with the column name).
        columns: the tabular columns, in order.
    """
    k = len(per_fold)
    out: list[str] = []
    for col in columns:
        flagged = [next((w for w in fold if w.startswith(f"{col} ")), None) for fold in per_fold]
        hits = [w for w in flagged if w is not None]
        if hits:
            share = "" if len(hits) == k else f" (in {len(hits)} of {k} fold models)"
            out.append(hits[0] + share)
    other = (
        w for fold in per_fold for w in fold if not any(w.startswith(f"{c} ") for c in columns)
    )
    return out + list(dict.fromkeys(other))


def load_ensemble(path: str | Path, *, device: str = "cpu") -> FoldEnsemble:
    """The fold ensemble of a ``clinfuse crossval`` folder (see :class:`FoldEnsemble`)."""
    return FoldEnsemble.from_crossval(path, device=device)
