"""A trained model as the review app sees it: worklist, uncertainty band, one case's view.

:func:`open_run_view` checks the model folder and reads only light files
(``config.yaml``, ``predictions.csv``, ``data_report.json``, ``model/model.json``);
the model itself is loaded (once) only when an explanation has to be computed.

What is reviewed
----------------
By default the worklist is the run's own cases (its ``predictions.csv``: the training,
validation and test splits of the cohort it was developed on). With ``predictions`` it
is a cohort scored later by ``clinfuse predict`` (new patients, another site): the table
and its provenance (:mod:`clinfuse.scored`) name the manifest and the model version,
and a table scored by another version of the model is refused. Its explanations live
beside it (``P.explanations/``, or a ``clinfuse explain`` folder of that cohort), never
in the run folder, so the same case id in two cohorts cannot pick up the other's
explanation. A ``clinfuse crossval`` folder is reviewed this way only: its fold
ensemble scores the cases (``clinfuse predict CV MANIFEST --out P.csv``).

Case ids come from that table. A case id given by a user (a
query parameter, a widget) is looked up by exact match in that table
(:meth:`RunView.resolve_case`); it is never turned into a path. File paths come
from the cohort manifest (resolved and checked by :class:`clinfuse.cohort.Cohort`),
explanation folders from :func:`clinfuse.explain._common.safe_name`, and the
cached explanation must name the same case id.

Uncertainty band
----------------
The band around a case's calibrated risk is a 95 % percentile interval over
bootstrap refits of the run's calibrator: the validation cases' fused logits and
outcomes (``predictions.csv``, split ``val``; the data the calibrator was fitted
on) are resampled with replacement ``n_boot`` times, the calibrator is refitted on
each resample with the run's method, and each refit maps the case's fused logit to
a risk. The band shows how much the *calibrated* risk depends on which
validation cases happened to be drawn: it is wide when the validation split is
small, and it does not cover encoder training variability (a fold ensemble shows
that). With ``calibration.method: none`` there is nothing to refit and the band
collapses to the point.

A run written by ``clinfuse recalibrate`` shows the band of the site's update
instead: its fitting cases (``recalibration_cases.csv``: outcome and the logit of
the source run's risk) are resampled and the update (intercept, logistic or
isotonic) refitted on each resample. A dynamic update's band comes from its final
state: ``(a, b)`` drawn from their normal posterior.

A fold ensemble's band is the range of its fold models' calibrated risks
(``p_fusion_min`` to ``p_fusion_max``): "above" the threshold means every model put the
case above it. It covers what the single-run band leaves out — models trained on other
patients disagreeing — and the mean risk lies inside it.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinfuse import MODALITIES
from clinfuse._files import assembled_from_sites, read_json_object
from clinfuse.errors import ClinFuseError, ConfigError
from clinfuse.scored import evaluates_model, run_fingerprint

__all__ = [
    "DEFAULT_THRESHOLD",
    "CaseView",
    "RunView",
    "UnknownCaseError",
    "calibration_band",
    "import_model_stack",
    "open_run_view",
    "recalibration_summary",
    "run_fingerprint",
]

_STACK_LOCK = threading.Lock()


def import_model_stack() -> None:
    """Import PyTorch and MONAI (with everything MONAI loads) once, one thread at a time.

    Opening a run needs neither, so the worklist shows at once; the case page, the signal
    window and explanations need them. MONAI's subpackages import each other in a cycle:
    two threads importing it for the first time together — Streamlit runs a page's old and
    new script runs side by side on a fast rerun — can meet a partially initialised module
    (``ImportError: cannot import name 'Convolution' from partially initialized module``).
    Every path to them goes through this lock first; after the first call it costs a lock.
    """
    with _STACK_LOCK:
        import monai  # noqa: F401 - loads all of MONAI's subpackages
        import torch  # noqa: F401


DEFAULT_THRESHOLD = 0.5
"""Decision threshold on the calibrated fused risk when none is given (``--threshold``)."""

_REQUIRED = ("config.yaml", "model/model.json", "predictions.csv")


class UnknownCaseError(ConfigError):
    """A case id that is not in the run's predictions table."""


def calibration_band(
    val_logits: np.ndarray,
    val_y: np.ndarray,
    logits: np.ndarray,
    *,
    method: str,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap band of calibrated risks (see the module docstring).

    Args:
        val_logits, val_y: (V,) fused logits and 0/1 outcomes of the validation split.
        logits: (N,) fused logits to map.
        method: the run's calibration method (``platt``, ``temperature``, ``isotonic``, ``none``),
            or a recalibration update's (``intercept``, ``platt``, ``isotonic``).
        n_boot: resamples; resamples holding one outcome only are skipped.

    Returns:
        ``(low, high)``, each (N,).
    """
    from clinfuse.calibration import build_calibrator

    z = np.asarray(logits, dtype=float)
    vz, vy = np.asarray(val_logits, dtype=float), np.asarray(val_y, dtype=float)
    if method == "none" or len(vz) < 2 or len(np.unique(vy)) < 2:
        p = build_calibrator("none").predict_proba(z)
        return p, p
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(vz), np.full(len(vz), 1.0 / len(vz)), size=n_boot).astype(float)
    events = counts @ vy
    counts = counts[(events > 0) & (events < counts.sum(1))]  # both outcomes drawn
    if not len(counts):
        p = build_calibrator(method).fit(vz, vy).predict_proba(z)
        return p, p
    if method in ("platt", "temperature"):
        arr = _logistic_refits(vz, vy, counts, z, intercept=method == "platt")
    else:
        draws = []
        for w in counts:
            idx = np.repeat(np.arange(len(vz)), w.astype(int))
            draws.append(build_calibrator(method).fit(vz[idx], vy[idx]).predict_proba(z))
        arr = np.vstack(draws)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(arr, [tail, 100.0 - tail], axis=0)
    return low, high


def _logistic_refits(
    vz: np.ndarray,
    vy: np.ndarray,
    counts: np.ndarray,
    z: np.ndarray,
    *,
    intercept: bool,
    iterations: int = 50,
) -> np.ndarray:
    """All bootstrap refits of Platt (σ(a·z + b)) or temperature (σ(z / T)) scaling at once.

    Weighted Newton–Raphson on the unpenalised log likelihood (the same maximum the
    run's L-BFGS calibrator finds), one resample per row of ``counts`` (B, V).

    Returns:
        (B, N) risks of ``z`` under each refit.
    """
    x = np.stack([vz, np.ones_like(vz)], axis=1) if intercept else vz[:, None]
    theta = np.zeros((len(counts), x.shape[1]))
    theta[:, 0] = 1.0
    ridge = 1e-8 * np.eye(x.shape[1])
    for _ in range(iterations):
        eta = np.clip(theta @ x.T, -30.0, 30.0)
        p = 1.0 / (1.0 + np.exp(-eta))
        grad = ((p - vy) * counts) @ x
        w = counts * p * (1.0 - p)
        hess = np.einsum("bv,vi,vj->bij", w, x, x) + ridge
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        theta -= np.clip(step, -5.0, 5.0)
        if float(np.max(np.abs(step))) < 1e-10:
            break
    if not intercept:  # temperature bounded as in clinfuse.calibration: T in [e^-5, e^5]
        theta[:, 0] = np.clip(theta[:, 0], np.exp(-5.0), np.exp(5.0))
    zz = np.stack([z, np.ones_like(z)], axis=0) if intercept else z[None, :]
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(theta @ zz, -30.0, 30.0))))


@dataclass
class CaseView:
    """Everything the case page shows for one case (loaded lazily by the page).

    Attributes:
        case_id: the id as in the run.
        prediction: the case's row of ``predictions.csv`` plus ``risk_low``/``risk_high``.
        present: {modality: bool} as the model saw it.
        explanation: the cached explanation dict (None when not computed yet).
        modality_shapley: {"base_value", "phi": {m: value}, "logit_fusion"} (plus "phi_sd",
            {m: SD over the fold models}, for a fold ensemble) or None.
        errors: {modality: message} for data that could not be shown.
        manifest: the case's manifest row (None when the cohort is unavailable).
    """

    case_id: str
    prediction: dict[str, Any]
    present: dict[str, bool]
    explanation: dict[str, Any] | None
    modality_shapley: dict[str, Any] | None
    errors: dict[str, str] = field(default_factory=dict)
    manifest: Any = None


class RunView:
    """A run folder opened for review (use :func:`open_run_view`)."""

    def __init__(
        self,
        run: Path,
        *,
        cohort: Path | None,
        evaluation: Path | None,
        threshold: float,
        n_boot: int = 200,
        predictions: Path | None = None,
        explanations: Path | None = None,
        provenance: dict[str, Any] | None = None,
        monitoring: Path | None = None,
    ) -> None:
        from clinfuse.config import load_config
        from clinfuse.ensemble import is_crossval_folder
        from clinfuse.scored import model_version

        self.run = run
        self.ensemble = is_crossval_folder(run)
        self.folds = self._fold_runs() if self.ensemble else []
        first = self.folds[0] if self.ensemble else run
        self.config = load_config(first / "config.yaml")
        meta = json.loads((first / "model" / "model.json").read_text(encoding="utf-8"))
        self.modalities: list[str] = [m for m in meta.get("modalities", []) if m in MODALITIES]
        self.threshold = float(threshold)
        self.fingerprint = model_version(run) if self.ensemble else run_fingerprint(run)
        self._fusion_calibrator = (
            None if self.ensemble else meta.get("calibrators", {}).get("fusion")
        )
        self._tabular_state = meta.get("tabular")  # a fold ensemble's: fold model 1's
        self._case_mix: dict[str, Any] | None = None
        self._fold_rows: pd.DataFrame | None = None
        self._fold_risks: dict[str, list[float]] | None = None
        self.recalibration = recalibration_summary(run)  # a run's or an ensemble's
        self.assembled = not self.ensemble and assembled_from_sites(run)
        self.scored = predictions
        self.provenance = provenance
        self.cohort_path = cohort
        self.evaluation = evaluation
        self.monitoring = monitoring
        self.explanations = explanations if explanations is not None else run / "explanations"
        self.predictions = self._read_predictions(predictions or run / "predictions.csv")
        self._index = {cid: i for i, cid in enumerate(self.predictions["case_id"])}
        self._add_band(n_boot)
        self.conformal = self._add_conformal()
        self._cohort: Any = None
        self._cohort_error: str | None = None
        self._model: Any = None
        self._lock = threading.Lock()

    # -- loading -------------------------------------------------------------------
    def _fold_runs(self) -> list[Path]:
        summary = json.loads((self.run / "crossval.json").read_text(encoding="utf-8"))
        return [self.run / str(f["path"]) for f in summary["fold_models"]]

    def _read_predictions(self, path: Path) -> pd.DataFrame:
        try:
            frame = pd.read_csv(path, dtype={"case_id": str})
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {path.name}: {e}", path=path) from e
        need = {"case_id", "p_fusion", "logit_fusion"}
        if self.ensemble:
            need |= {"p_fusion_min", "p_fusion_max"}
        missing = sorted(need - set(frame.columns))
        if missing:
            hint = (
                "the run folder is incomplete or from another tool; retrain with `clinfuse train`"
                if self.scored is None
                else f"score the cohort with `clinfuse predict {self.run} MANIFEST --out {path}`"
            )
            raise ConfigError(f"{path.name} lacks columns {missing}", path=path, hint=hint)
        if frame["case_id"].duplicated().any():
            dup = frame.loc[frame["case_id"].duplicated(), "case_id"].iloc[0]
            raise ConfigError(
                f"case id {dup!r} appears twice in {path.name}",
                path=path,
                hint="case ids must be unique; rescore the cohort with `clinfuse predict`",
            )
        for m in self.modalities:
            col = f"present_{m}"
            if col not in frame.columns:
                frame[col] = (
                    frame.get(f"p_{m}", pd.Series(np.nan, index=frame.index)).notna().astype(int)
                )
        if "split" not in frame.columns:
            frame["split"] = None
        return frame.reset_index(drop=True)

    def _add_band(self, n_boot: int) -> None:
        f = self.predictions
        if self.ensemble:
            low, high = f["p_fusion_min"].to_numpy(float), f["p_fusion_max"].to_numpy(float)
        elif (recal := self._recalibration_band(n_boot)) is not None:
            low, high = recal
        elif self.assembled:  # the validation logits stayed at the sites: no band
            low = high = np.full(len(f), np.nan)
        else:
            # the run's own validation split, whichever cases are reviewed
            fitted = f if self.scored is None else self._read_run_predictions()
            val = fitted[
                (fitted["split"] == "val")
                & fitted.get("label", pd.Series(np.nan, index=fitted.index)).notna()
            ]
            low, high = calibration_band(
                val["logit_fusion"].to_numpy(float),
                val["label"].to_numpy(float) if len(val) else np.zeros(0),
                f["logit_fusion"].to_numpy(float),
                method=self.config.calibration.method,
                n_boot=n_boot,
            )
        p = f["p_fusion"].to_numpy(float)
        f["risk_low"] = np.minimum(low, p)
        f["risk_high"] = np.maximum(high, p)
        f["uncertainty"] = f["risk_high"] - f["risk_low"]
        t = self.threshold
        lo, hi = f["risk_low"].fillna(f["p_fusion"]), f["risk_high"].fillna(f["p_fusion"])
        f["vs_threshold"] = np.where(lo >= t, "above", np.where(hi < t, "below", "straddles"))

    def _add_conformal(self) -> Any:
        """The conformal sets ``clinfuse predict --conformal`` recorded in the scored table's
        provenance (None without them); each case's set recomputed from its risk."""
        record = (self.provenance or {}).get("conformal")
        if record is None:
            return None
        from clinfuse.evaluation.conformal import ConformalSets

        try:
            sets = ConformalSets.from_dict(record)
        except ConfigError as e:
            raise ConfigError(
                e.reason,
                path=self.scored,
                hint="rescore the cohort with `clinfuse predict … --conformal EVAL`",
            ) from e
        self.predictions["conformal_set"] = sets.predict(self.predictions["p_fusion"])
        return sets

    def _read_run_predictions(self) -> pd.DataFrame:
        path = self.run / "predictions.csv"
        try:
            return pd.read_csv(
                path, dtype={"case_id": str}, usecols=["split", "label", "logit_fusion"]
            )
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the run's predictions.csv: {e}", path=path) from e

    @property
    def band_label(self) -> str:
        """The band's name on the case page."""
        return "fold models' range" if self.ensemble else "95 % band"

    @property
    def band_note(self) -> str:
        """What the uncertainty band is, in one sentence for the case page."""
        if self.ensemble:
            return (
                "Band: the lowest to the highest risk among the fold models "
                "(how much the risk depends on which patients a model was trained on)."
            )
        if self.recalibration:
            return (
                "Band: bootstrap refits of the site's recalibration on the cases it was fitted on."
            )
        if self.assembled:
            return (
                "No band: the model was trained across sites and its validation cases stayed at "
                "each site (recalibrate it on this site's cases with `clinfuse recalibrate` to "
                "get one)."
            )
        return (
            "Band: bootstrap refits of the run's calibration on its validation split "
            "(how much the calibrated risk depends on the validation cases drawn)."
        )

    @property
    def source_note(self) -> str | None:
        """One line naming the scored cohort under review (None for the run's own cases)."""
        if self.scored is None:
            return None
        info = self.provenance or {}
        manifest = Path(str(info.get("manifest") or self.cohort_path or "")).name or "?"
        when = str(info.get("created", ""))[:10]
        excluded = info.get("n_excluded")
        return (
            f"Cases scored by `clinfuse predict` on {manifest}"
            + (f" on {when}" if when else "")
            + f": {len(self.predictions)} cases"
            + (f", {excluded} could not be scored" if excluded else "")
            + (f" — the mean of {len(self.folds)} fold models' risks" if self.ensemble else "")
            + f" ({self.scored.name})."
        )

    @property
    def fold_models(self) -> Path | None:
        """A scored fold ensemble's per-model outputs (``P.fold_models.csv``), when written."""
        from clinfuse.scored import fold_models_path

        if self.scored is None or not self.ensemble:
            return None
        path = fold_models_path(self.scored)
        return path if path.is_file() else None

    def fold_model_rows(self) -> pd.DataFrame | None:
        """:attr:`fold_models` read once and checked against the predictions table (None
        for a run, or without the file).

        Raises:
            ConfigError: unreadable, or not the table's cases once per fold model.
        """
        if self._fold_rows is None and self.fold_models is not None:
            self._fold_rows = _read_fold_models(self.fold_models, self.predictions)
        return self._fold_rows

    def fold_model_risks(self, case_id: str) -> list[float] | None:
        """A scored fold ensemble's case: each fold model's fused risk, in fold order (from
        :attr:`fold_models`, through the ensemble's recalibration when it has one — the
        band's ends are their lowest and highest). None for a run, or without the file."""
        rows = self.fold_model_rows()
        if rows is None:
            return None
        if self._fold_risks is None:
            from clinfuse.ensemble import apply_recalibration, read_ensemble_calibration

            rows = rows.copy()
            cal = read_ensemble_calibration(self.run).get("fusion")
            rows["risk"] = apply_recalibration(cal, rows["p_fusion"])
            self._fold_risks = {
                str(cid): [float(r) for r in part.sort_values("model")["risk"]]
                for cid, part in rows.groupby("case_id", sort=False)
            }
        return self._fold_risks.get(str(case_id))

    def scored_case_mix(self) -> dict[str, Any] | None:
        """The scored cases' case mix against the run's development cases
        (:func:`clinfuse.evaluation.casemix.case_mix`; outcomes used only when every case has
        one). None for the run's own cases (``clinfuse evaluate`` reports theirs).

        A fold ensemble's development cases are the cross-validation's pooled out-of-fold
        predictions, each one model's; its scored cases are compared through each fold
        model's own outputs (:attr:`fold_models`), not the ensemble's averages, which spread
        less. None when those were not written (a table scored before they were), and for a
        run assembled from a federation (its development cases stayed at the sites)."""
        if self.scored is None or self.assembled:
            return None
        if self.ensemble and (
            self.fold_models is None or not (self.run / "evaluation" / "predictions.csv").is_file()
        ):
            return None
        if self._case_mix is None:
            from clinfuse.evaluation.casemix import case_mix, development_cases
            from clinfuse.io.tabular import TabularEncoder

            tabular = values = None
            if self._tabular_state is not None and self.cohort is not None:
                tabular = TabularEncoder.from_dict(self._tabular_state)
                rows = {r.case_id: r for r in self.cohort.rows}
                values = pd.DataFrame(
                    [
                        {
                            c: rows[cid].extra.get(c) if cid in rows else None
                            for c in tabular.columns
                        }
                        for cid in self.predictions["case_id"]
                    ],
                    columns=tabular.columns,
                )
            per_model = None
            if self.ensemble:
                pooled = self.run / "evaluation" / "predictions.csv"
                development = pd.read_csv(pooled, dtype={"case_id": str})
                per_model = self.fold_model_rows()
            else:
                run_preds = pd.read_csv(self.run / "predictions.csv", dtype={"case_id": str})
                development = development_cases(run_preds)
            self._case_mix = case_mix(
                development,
                self.predictions,
                self.modalities,
                tabular=tabular,
                tabular_values=values,
                evaluated_models=per_model,
            )
        return self._case_mix

    @property
    def app_command(self) -> str:
        """The ``clinfuse app`` command line that opens this worklist."""
        extra = "" if self.scored is None else f" --predictions {self.scored}"
        return f"clinfuse app {self.run}{extra}"

    def _recalibration_band(self, n_boot: int) -> tuple[np.ndarray, np.ndarray] | None:
        """For a recalibrated run: the band of the site's update, refitted on bootstrap
        resamples of ``recalibration_cases.csv`` (the cases it was fitted on); for a
        dynamic update, drawn from the final state's posterior."""
        state = self._fusion_calibrator
        if state and state.get("method") == "updated" and state["update"]["method"] == "dynamic":
            from clinfuse.calibration import Dynamic, Updated, calibrator_from_dict

            cal = calibrator_from_dict(state)
            assert isinstance(cal, Updated) and isinstance(cal.update, Dynamic)
            z = cal.base_logit(self.predictions["logit_fusion"].to_numpy(float))
            draws = cal.update.draws(z, n_boot)
            low, high = np.percentile(draws, [2.5, 97.5], axis=0)
            return low, high
        path = self.run / "recalibration_cases.csv"
        if not state or state.get("method") != "updated" or not path.exists():
            return None
        from clinfuse.calibration import Updated, calibrator_from_dict

        try:
            seen = pd.read_csv(path, usecols=["label", "logit_base"])
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read recalibration_cases.csv: {e}", path=path) from e
        cal = calibrator_from_dict(state)
        assert isinstance(cal, Updated)
        z = cal.base_logit(self.predictions["logit_fusion"].to_numpy(float))
        return calibration_band(
            seen["logit_base"].to_numpy(float),
            seen["label"].to_numpy(float),
            z,
            method=state["update"]["method"],
            n_boot=n_boot,
        )

    @property
    def cohort(self) -> Any:
        """The run's cohort (:class:`clinfuse.cohort.Cohort`), or None when unavailable
        (:attr:`cohort_error` says why)."""
        if self._cohort is None and self._cohort_error is None:
            from clinfuse.cohort.manifest import Cohort

            path = self.cohort_path
            if path is None:
                self._cohort_error = (
                    "the run does not name its cohort manifest (data_report.json); pass --cohort"
                )
            elif not path.exists():
                self._cohort_error = (
                    f"the cohort manifest {path} is not found; images, notes and signals "
                    "cannot be shown (pass --cohort with its new location)"
                )
            else:
                try:
                    self._cohort = Cohort.from_manifest(
                        path,
                        target=self.config.data.target,
                        allow_external_paths=self.config.data.allow_external_paths
                        or bool((self.provenance or {}).get("allow_external_paths")),
                        strict=False,
                    )
                except ClinFuseError as e:
                    self._cohort_error = f"cannot read the cohort manifest: {e}"
        return self._cohort

    @property
    def cohort_error(self) -> str | None:
        _ = self.cohort
        return self._cohort_error

    @property
    def deidentified(self) -> bool | None:
        """Whether the cohort folder carries ``clinfuse deid``'s ``deid_report.json``."""
        from clinfuse.redact import cohort_is_deidentified

        return cohort_is_deidentified(self.cohort_path)

    def model(self) -> Any:
        """The trained model (loaded on first use, then kept)."""
        import_model_stack()
        with self._lock:
            if self._model is None:
                from clinfuse.ensemble import load_ensemble
                from clinfuse.model import load_run

                self._model = load_ensemble(self.run) if self.ensemble else load_run(self.run)
            return self._model

    # -- cases -----------------------------------------------------------------------
    @property
    def case_ids(self) -> list[str]:
        return list(self._index)

    def resolve_case(self, case_id: Any) -> str:
        """``case_id`` if it is exactly one of the run's case ids.

        Raises:
            UnknownCaseError: otherwise (the id is never used as a path).
        """
        key = case_id if isinstance(case_id, str) else None
        if key is None or key not in self._index:
            shown = repr(case_id)[:80]
            raise UnknownCaseError(
                f"no case {shown} in this run", hint="pick a case from the worklist"
            )
        return key

    def prediction(self, case_id: str) -> dict[str, Any]:
        row = self.predictions.iloc[self._index[self.resolve_case(case_id)]]
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}

    def worklist(
        self, status: dict[str, dict[str, Any]] | None = None, reviewer: str | None = None
    ) -> pd.DataFrame:
        """One row per case: risk, band, position against the threshold, modalities,
        site, the number of inputs outside the training data (``input_warnings``), review
        progress (``n_reviewers``, ``my_decision``) and, for cases scored with conformal
        sets, each case's set (``conformal_set``). No outcome labels."""
        f = self.predictions
        out = pd.DataFrame(
            {
                "case_id": f["case_id"],
                "split": f["split"],
                "risk": f["p_fusion"].astype(float),
                "risk_low": f["risk_low"],
                "risk_high": f["risk_high"],
                "uncertainty": f["uncertainty"],
                "vs_threshold": f["vs_threshold"],
            }
        )
        sites = {}
        if self.cohort is not None:
            sites = {r.case_id: r.site for r in self.cohort.rows}
        out.insert(1, "site", [sites.get(c) or "" for c in out["case_id"]])
        if self.conformal is not None:
            out["conformal_set"] = f["conformal_set"]
        for m in self.modalities:
            out[m] = f[f"present_{m}"].astype(bool)
        warnings = f.get("input_warnings", pd.Series("", index=f.index))
        out["input_warnings"] = [
            len(str(w).split("; ")) if isinstance(w, str) and w else 0 for w in warnings
        ]
        status = status or {}
        out["n_reviewers"] = [int(status.get(c, {}).get("n_reviewers", 0)) for c in out["case_id"]]
        out["my_decision"] = [
            (status.get(c, {}).get("decisions", {}).get(reviewer, "") if reviewer else "")
            for c in out["case_id"]
        ]
        return out

    def modality_shapley_row(self, case_id: str) -> dict[str, Any] | None:
        """The case's row of the cached ``explanations/modality_shapley.csv`` (or None)."""
        frame = self._shapley_frame()
        if frame is None:
            return None
        hit = frame[frame["case_id"] == case_id]
        if hit.empty:
            return None
        r = hit.iloc[0]
        out = {
            "base_value": float(r["base_value"]),
            "phi": {m: float(r.get(f"phi_{m}", 0.0)) for m in self.modalities},
            "logit_fusion": float(r["logit_fusion"]),
        }
        if all(f"phi_{m}_sd" in r for m in self.modalities):  # a fold ensemble's explanation
            out["phi_sd"] = {m: float(r[f"phi_{m}_sd"]) for m in self.modalities}
        return out

    def _shapley_frame(self) -> pd.DataFrame | None:
        path = self.explanations / "modality_shapley.csv"
        if not path.exists():
            return None
        mtime = path.stat().st_mtime_ns
        cached = getattr(self, "_shapley_cache", None)
        if cached is None or cached[0] != mtime:
            frame = pd.read_csv(path, dtype={"case_id": str})
            self._shapley_cache = (mtime, frame)
            return frame
        frame_cached: pd.DataFrame = cached[1]
        return frame_cached

    def cached_explanation(self, case_id: str) -> dict[str, Any] | None:
        """The case's cached ``explanation.json`` if it belongs to exactly this case id."""
        from clinfuse.explain._common import safe_name

        cid = self.resolve_case(case_id)
        path = self.explanations / "cases" / safe_name(cid) / "explanation.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        except (OSError, ValueError):
            return None
        if data is None or data.get("case_id") != cid:
            return None  # another id that maps to the same folder name
        return data

    def case_view(self, case_id: str) -> CaseView:
        """Prediction, presence, cached explanation and manifest row of one case."""
        cid = self.resolve_case(case_id)
        pred = self.prediction(cid)
        present = {m: bool(pred.get(f"present_{m}")) for m in self.modalities}
        explanation = self.cached_explanation(cid)
        shapley = explanation["modality_shapley"] if explanation else self.modality_shapley_row(cid)
        if explanation and "ensemble" in explanation:
            spread = {"phi_sd": explanation["ensemble"]["phi_sd"]}
            shapley = {**explanation["modality_shapley"], **spread}
        errors: dict[str, str] = {}
        row = None
        if self.cohort is not None and cid in self.cohort:
            row = self.cohort[cid]
        elif self.cohort is not None:
            errors["manifest"] = f"case {cid!r} is not in the cohort manifest {self.cohort_path}"
        else:
            errors["manifest"] = self.cohort_error or "no cohort"
        return CaseView(cid, pred, present, explanation, shapley, errors, row)

    # -- modality data for display ----------------------------------------------------
    def note_text(self, view: CaseView) -> str | None:
        """The case's note as written in the manifest's file or cell (None if missing).

        Raises:
            ClinFuseError: the note file cannot be read.
        """
        from clinfuse.io.note import load_note

        row = view.manifest
        if row is None or not row.has("note"):
            return None
        if row.note is not None:
            return load_note(row.note, case_id=view.case_id)[0]
        return load_note(text=row.note_text, case_id=view.case_id, field="note_text")[0]

    def signal_window(self, view: CaseView) -> tuple[np.ndarray, float, list[str]] | None:
        """The signal window the model saw (run's transforms): ``(leads, samples)``, fs, lead names.

        Raises:
            ClinFuseError: the signal cannot be read.
        """
        import_model_stack()
        from clinfuse.transforms.signal import build_signal_transforms

        row = view.manifest
        if row is None or row.signal is None:
            return None
        tf = build_signal_transforms(self.config.data.signal)
        out = tf({"case_id": view.case_id, "signal": str(row.signal), "signal_fs": row.signal_fs})
        meta = out.get("signal_meta") or {}
        sig = np.asarray(out["signal"], dtype=np.float64)
        names = list(meta.get("lead_names") or [f"lead_{i}" for i in range(sig.shape[0])])
        return sig, float(meta.get("fs", self.config.data.signal.target_fs)), names

    def tabular_values(self, view: CaseView) -> list[dict[str, Any]]:
        """The configured tabular columns of the case with their values (and SHAP when cached)."""
        cols = list(self.config.data.tabular_columns or [])
        row = view.manifest
        phis: dict[str, float] = {}
        if view.explanation and "tabular" in view.explanation.get("within", {}):
            phis = {f["name"]: f["phi"] for f in view.explanation["within"]["tabular"]["features"]}
        out = []
        for c in cols:
            value = None if row is None else row.extra.get(c)
            out.append(
                {"feature": c, "value": "" if value is None else str(value), "shap": phis.get(c)}
            )
        return out

    # -- on-demand explanation -----------------------------------------------------------
    def compute_explanation(self, case_id: str, *, note_max_evals: int = 32) -> dict[str, Any]:
        """Explain one case now (modality Shapley values and within-modality
        attributions) and cache it in the explanations folder (``RUN/explanations/cases/``
        for the run's own cases, ``P.explanations/cases/`` for a scored cohort) like
        ``clinfuse explain``.

        Raises:
            ClinFuseError: the cohort is unavailable or the case's data does not load.
        """
        import warnings

        from clinfuse.explain._common import NoModalityWarning, safe_name
        from clinfuse.explain.modality import build_modality_cache, modality_shapley
        from clinfuse.explain.report import explain_case, explain_ensemble_case, image_background
        from clinfuse.redact import note_masking

        cid = self.resolve_case(case_id)
        if self.cohort is None:
            raise ConfigError(self.cohort_error or "no cohort", case_id=cid)
        model = self.model()
        row = self.cohort[cid]
        case = model.loader().load(row)
        cases = model.fold_cases(case, row) if self.ensemble else [case]
        members = list(zip(model.models if self.ensemble else [model], cases, strict=True))
        bases, phis = [], []
        for member, member_case in members:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoModalityWarning)
                exp = modality_shapley(member, build_modality_cache(member, [member_case]))
            bases.append(float(exp.base_values[0]))
            phis.append({m: float(exp.values[0, j]) for j, m in enumerate(member.modalities)})
        mask, note_context = note_masking(self.cohort_path, row.image)
        background = (
            image_background(model.config.data, self.cohort.rows, exclude=cid, k=8)
            if case.get("image") is not None
            else None
        )
        self._claim_explanations()
        final = self.explanations / "cases" / safe_name(cid)
        stage = final.with_name(f".{final.name}.partial-{time.time_ns()}")
        common: dict[str, Any] = {
            "out_dir": stage,
            "image_background": background,
            "note_max_evals": note_max_evals,
            "mask_note_identifiers": mask,
            "note_context": note_context,
        }
        try:
            if self.ensemble:
                result = explain_ensemble_case(
                    model, [c for _, c in members], base_values=bases, phis=phis, **common
                )
            else:
                result = explain_case(model, case, base_value=bases[0], phi=phis[0], **common)
            old = final.with_name(f".{final.name}.old-{time.time_ns()}")
            if final.exists():
                final.rename(old)
            stage.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return result

    def _claim_explanations(self) -> None:
        """A scored cohort's explanations folder gets an ``index.json`` naming the model
        version and the manifest (what :func:`open_run_view` checks on the next start)."""
        from clinfuse._files import write_text_atomic

        index = self.explanations / "index.json"
        if self.scored is None or index.exists():
            return
        manifest = (self.provenance or {}).get("manifest") or self.cohort_path
        info = {
            "run": str(self.run.resolve()),
            "model_version": self.fingerprint,
            "cohort": None if manifest is None else str(manifest),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "written_by": "clinfuse app",
        }
        write_text_atomic(index, json.dumps(info, indent=2) + "\n")


def _check_run_folder(run: Path, scored: Path | None = None) -> None:
    if not run.exists():
        partial = run.with_name(run.name + ".partial")
        hint = (
            "training did not finish; rerun `clinfuse train ... --resume`"
            if partial.exists()
            else "pass the folder written by `clinfuse train` (or `clinfuse demo`: DEMO/run)"
        )
        raise ConfigError("the run folder does not exist", path=run, hint=hint)
    if not run.is_dir():
        raise ConfigError("the run path is not a folder", path=run, hint="pass the run folder")
    required: tuple[str, ...] = _REQUIRED
    if run.is_dir() and assembled_from_sites(run):
        if scored is None:
            raise ConfigError(
                "the run was assembled on a federation's coordinator and holds no case to review",
                path=run,
                hint=f"score this site's cohort with `clinfuse predict {run} MANIFEST --out "
                "scored.csv` and pass --predictions scored.csv",
            )
        required = tuple(rel for rel in _REQUIRED if rel != "predictions.csv")
    missing = [rel for rel in required if not (run / rel).exists()]
    if missing:
        raise ConfigError(
            f"the run folder is incomplete: missing {', '.join(missing)}",
            path=run,
            hint="is this a run folder written by `clinfuse train`? retrain if it was damaged",
        )


def recalibration_summary(run: Path) -> str | None:
    """One line for the dashboard when the run was written by ``clinfuse recalibrate``."""
    path = run / "recalibration.json"
    if not path.exists():
        return None
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
        fusion = rep["outputs"]["fusion"]
        method = fusion["method"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read recalibration.json: {e}", path=path) from e
    what = "kept unchanged" if method == "none" else f"{method} update"
    if method == "dynamic":
        state = fusion.get("dynamic") or {}
        half = state.get("half_life_days")
        what += f" (replayed day by day to {state.get('last_day')}, " + (
            "nothing forgotten)" if half is None else f"half-life {half:g} days)"
        )
    return (
        f"Recalibrated for a site: fused risk {what}, fitted on {rep.get('n_cases')} cases "
        f"({rep.get('n_events')} events) of {Path(str(rep.get('manifest', ''))).name} on "
        f"{str(rep.get('created', ''))[:10]}; source run {Path(str(rep.get('source_run', ''))).name}."
    )


def _default_evaluation(run: Path) -> Path | None:
    """``RUN/evaluation`` or a sibling ``evaluation`` folder — unless its ``metrics.json``
    records another model version (e.g. the source of a recalibrated run)."""
    for candidate in (run / "evaluation", run.parent / "evaluation"):
        path = candidate / "metrics.json"
        if not path.exists():
            continue
        try:
            recorded = json.loads(path.read_text(encoding="utf-8")).get("run") or {}
        except (OSError, ValueError):
            continue
        if evaluates_model(run, recorded):
            return candidate
    return None


def _check_crossval_folder(run: Path, predictions: Path | None) -> None:
    if predictions is None:
        raise ConfigError(
            "a cross-validation folder has no worklist of its own: its fold ensemble reviews "
            "cases it scored",
            path=run,
            hint=f"score them with `clinfuse predict {run} MANIFEST --out P.csv`, then start "
            f"`clinfuse app {run} --predictions P.csv` (or open one fold's run: "
            f"{run / 'folds' / 'fold_1'})",
        )
    try:
        summary = json.loads((run / "crossval.json").read_text(encoding="utf-8"))
        folds = [run / str(f["path"]) for f in summary["fold_models"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read crossval.json: {e}", path=run / "crossval.json") from e
    for fold in folds:
        missing = [rel for rel in ("config.yaml", "model/model.json") if not (fold / rel).exists()]
        if missing:
            raise ConfigError(
                f"fold model {fold.name} is incomplete: missing {', '.join(missing)}",
                path=fold,
                hint="restore the cross-validation folder or run `clinfuse crossval` again",
            )


def _scored_cohort(
    run: Path, predictions: Path, version: str
) -> tuple[dict[str, Any] | None, Path | None]:
    """The provenance of a scored cohort, checked against the model; and its manifest."""
    from clinfuse.scored import read_provenance

    if not predictions.is_file():
        raise ConfigError(
            "the predictions table does not exist",
            path=predictions,
            hint=f"score the cohort first: `clinfuse predict {run} MANIFEST --out {predictions}`",
        )
    info = read_provenance(predictions)
    if info is None:
        return None, None
    if info["model_version"] != version:
        raise ConfigError(
            f"these cases were scored by model version {info['model_version']} "
            f"({info.get('model', '?')}), not by this folder's version {version}",
            path=predictions,
            hint=f"rescore them with `clinfuse predict {run} MANIFEST --out {predictions}`, or "
            "start the app on the model that scored them",
        )
    manifest = info.get("manifest")
    return info, Path(manifest) if manifest else None


def _read_fold_models(path: Any, predictions: pd.DataFrame) -> pd.DataFrame:
    """A scored fold ensemble's per-model outputs, checked against its predictions table.

    Raises:
        ConfigError: unreadable, or not the table's cases once per fold model.
    """
    from clinfuse.evaluation.casemix import check_fold_models

    try:
        frame = pd.read_csv(path, dtype={"case_id": str})
        check_fold_models(predictions, frame)
    except (OSError, ValueError, KeyError) as e:  # pandas' parser errors are ValueErrors
        raise ConfigError(
            f"the fold models' outputs do not match the predictions table: {e}",
            path=path,
            hint="rescore the cohort with `clinfuse predict`, which writes both together",
        ) from e
    return frame


def _check_monitoring(folder: Path, version: str, scored: Path | None) -> None:
    """A ``--monitoring`` folder must be ``clinfuse monitor``'s of this very predictions
    table and model version."""
    if scored is None:
        raise ConfigError(
            "--monitoring watches a scored cohort: it goes with --predictions",
            field="monitoring",
            hint="add --predictions P.csv (the table `clinfuse monitor` read)",
        )
    summary = read_json_object(
        folder / "monitoring.json",
        "the monitoring.json of a monitoring folder",
        hint="pass the folder `clinfuse monitor RUN P.csv --out DIR` wrote",
    )
    if summary.get("model_version") != version:
        raise ConfigError(
            "this monitoring is of another model (or another version of it)",
            path=folder,
            hint="monitor this model's predictions: `clinfuse monitor RUN P.csv --out DIR`",
        )
    if Path(str(summary.get("predictions"))).resolve() != scored.resolve():
        raise ConfigError(
            f"this monitoring read another predictions table ({summary.get('predictions')})",
            path=folder,
            hint=f"monitor {scored}: `clinfuse monitor RUN {scored} --out DIR`",
        )


def _check_evaluation(run: Path, evaluation: Path) -> None:
    """A ``--evaluation`` folder must evaluate this model (the version its ``metrics.json``
    records: a run's ``model_sha256``, a fold ensemble's fold models' digests)."""
    path = evaluation / "metrics.json"
    if not path.exists():
        return  # the cohort page says what is missing
    recorded = read_json_object(path, "the evaluation's metrics.json").get("run") or {}
    if not evaluates_model(run, recorded):
        raise ConfigError(
            "this evaluation is of another model (or another version of it)",
            path=evaluation,
            hint=f"evaluate this model: `clinfuse evaluate {run} MANIFEST --out DIR`, and pass "
            "--evaluation DIR",
        )


def _check_explanations(folder: Path, version: str, manifest: Path | None) -> None:
    """A scored cohort's explanations folder must explain this model on that manifest
    (its ``index.json``, written by ``clinfuse explain`` or by the app)."""
    index = folder / "index.json"
    if not index.exists():
        return
    info = read_json_object(index, "the explanations' index.json")
    what = None
    recorded = info.get("model_version")
    if recorded is not None and recorded != version:
        what = f"model version {recorded}, not {version}"
    elif manifest is not None and info.get("cohort"):
        theirs = Path(str(info["cohort"])).expanduser().resolve()
        if theirs != manifest.expanduser().resolve():
            what = f"the cohort {theirs}, not {manifest}"
    if what:
        raise ConfigError(
            f"these explanations are of {what}",
            path=folder,
            hint="pass --explanations with a `clinfuse explain` folder of this model and cohort, "
            "or move this folder away (the app then explains cases afresh)",
        )


def open_run_view(
    run: str | Path,
    *,
    cohort: str | Path | None = None,
    evaluation: str | Path | None = None,
    threshold: float | None = None,
    n_boot: int = 200,
    predictions: str | Path | None = None,
    explanations: str | Path | None = None,
    monitoring: str | Path | None = None,
) -> RunView:
    """Open a model folder for review.

    Args:
        run: the folder written by ``clinfuse train`` (or ``clinfuse crossval``, with
            ``predictions``).
        cohort: the cohort manifest (default: the one the cases were scored from — the
            run's training manifest from ``data_report.json``, or the scored cohort's from
            its provenance).
        evaluation: a ``clinfuse evaluate`` output folder for the cohort page
            (default: ``RUN/evaluation`` or a sibling ``evaluation`` folder, as
            ``clinfuse demo`` writes; none for a scored cohort).
        threshold: decision threshold on the calibrated fused risk (default
            :data:`DEFAULT_THRESHOLD`).
        n_boot: bootstrap refits for the uncertainty band.
        predictions: review the cases of this ``clinfuse predict`` table instead of the
            run's own (see the module docstring).
        explanations: where the scored cohort's explanations are read and cached (default
            ``P.explanations/`` beside the table ``P.csv``; a ``clinfuse explain`` output
            folder of the same model and cohort works too).
        monitoring: a ``clinfuse monitor`` folder of the ``predictions`` table, shown on the
            cohort page (period by period against the development data).

    Raises:
        ConfigError: the folder is missing or incomplete, a threshold outside (0, 1), a
            predictions table that is missing, unreadable or scored by another model
            version, an evaluation or explanations of another model (or cohort), a
            monitoring folder without ``predictions`` or of another table or model.
    """
    from clinfuse.ensemble import is_crossval_folder
    from clinfuse.evaluation.casemix import development_manifest
    from clinfuse.scored import model_version

    run = Path(run).expanduser()
    scored = None if predictions is None else Path(predictions).expanduser()
    if is_crossval_folder(run):
        _check_crossval_folder(run, scored)
    else:
        _check_run_folder(run, scored)
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if not 0.0 < t < 1.0:
        raise ConfigError(f"threshold must be within (0, 1), got {t}", field="threshold")
    if evaluation is not None:
        _check_evaluation(run, Path(evaluation).expanduser())
    provenance: dict[str, Any] | None = None
    expl: Path | None = None
    if scored is None:
        if explanations is not None:
            raise ConfigError(
                "--explanations goes with --predictions: the run's own cases keep their "
                "explanations in RUN/explanations",
                field="explanations",
            )
        cohort_path = Path(cohort).expanduser() if cohort else development_manifest(run)
        eval_path = Path(evaluation).expanduser() if evaluation else _default_evaluation(run)
    else:
        version = model_version(run)
        provenance, scored_manifest = _scored_cohort(run, scored, version)
        cohort_path = Path(cohort).expanduser() if cohort else scored_manifest
        eval_path = Path(evaluation).expanduser() if evaluation else None
        expl = (
            Path(explanations).expanduser()
            if explanations
            else scored.with_name(scored.stem + ".explanations")
        )
        _check_explanations(expl, version, scored_manifest or cohort_path)
    watch = None if monitoring is None else Path(monitoring).expanduser()
    if watch is not None:
        _check_monitoring(watch, model_version(run), scored)
    try:
        view = RunView(
            run,
            cohort=cohort_path,
            evaluation=eval_path,
            threshold=t,
            n_boot=n_boot,
            predictions=scored,
            explanations=expl,
            provenance=provenance,
            monitoring=watch,
        )
        view.fold_model_rows()  # a mismatched file is refused now, not on the cohort page
        return view
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, ClinFuseError):
            raise
        raise ConfigError(
            f"the run folder cannot be read: {type(e).__name__}: {e}",
            path=run,
            hint="retrain, or restore the run folder",
        ) from e
