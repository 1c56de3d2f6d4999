"""A trained run as the review app sees it: worklist, uncertainty band, one case's view.

:func:`open_run_view` checks the run folder and reads only light files
(``config.yaml``, ``predictions.csv``, ``data_report.json``, ``model/model.json``);
the model itself is loaded (once) only when an explanation has to be computed.

Case ids come from the run's ``predictions.csv``. A case id given by a user (a
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
small, and it does not cover encoder training variability (that would need an
ensemble of runs). With ``calibration.method: none`` there is nothing to refit
and the band collapses to the point.

A run written by ``clinfuse recalibrate`` shows the band of the site's update
instead: its fitting cases (``recalibration_cases.csv``: outcome and the logit of
the source run's risk) are resampled and the update (intercept, logistic or
isotonic) refitted on each resample.
"""

from __future__ import annotations

import hashlib
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
from clinfuse.errors import ClinFuseError, ConfigError

__all__ = [
    "DEFAULT_THRESHOLD",
    "CaseView",
    "RunView",
    "UnknownCaseError",
    "calibration_band",
    "open_run_view",
    "recalibration_summary",
    "run_fingerprint",
]

DEFAULT_THRESHOLD = 0.5
"""Decision threshold on the calibrated fused risk when none is given (``--threshold``)."""

_REQUIRED = ("config.yaml", "model/model.json", "predictions.csv")


class UnknownCaseError(ConfigError):
    """A case id that is not in the run's predictions table."""


def run_fingerprint(run: str | Path) -> str:
    """The model version stored with each review: SHA-256 (first 16 hex) of the run's
    ``model/model.json`` (holds every encoder's weight fingerprint and the calibrators),
    ``model/fusion.safetensors`` and ``config.yaml``."""
    run = Path(run)
    h = hashlib.sha256()
    for rel in ("model/model.json", "model/fusion.safetensors", "config.yaml"):
        p = run / rel
        h.update(rel.encode())
        if p.exists():
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


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
        modality_shapley: {"base_value", "phi": {m: value}, "logit_fusion"} or None.
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
    ) -> None:
        from clinfuse.config import load_config

        self.run = run
        self.config = load_config(run / "config.yaml")
        meta = json.loads((run / "model" / "model.json").read_text(encoding="utf-8"))
        self.modalities: list[str] = [m for m in meta.get("modalities", []) if m in MODALITIES]
        self.threshold = float(threshold)
        self.fingerprint = run_fingerprint(run)
        self._fusion_calibrator = meta.get("calibrators", {}).get("fusion")
        self.recalibration = recalibration_summary(run)
        self.cohort_path = cohort
        self.evaluation = evaluation
        self.predictions = self._read_predictions()
        self._index = {cid: i for i, cid in enumerate(self.predictions["case_id"])}
        self._add_band(n_boot)
        self._cohort: Any = None
        self._cohort_error: str | None = None
        self._model: Any = None
        self._lock = threading.Lock()

    # -- loading -------------------------------------------------------------------
    def _read_predictions(self) -> pd.DataFrame:
        path = self.run / "predictions.csv"
        try:
            frame = pd.read_csv(path, dtype={"case_id": str})
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read predictions.csv: {e}", path=path) from e
        need = {"case_id", "p_fusion", "logit_fusion"}
        missing = sorted(need - set(frame.columns))
        if missing:
            raise ConfigError(
                f"predictions.csv lacks columns {missing}",
                path=path,
                hint="the run folder is incomplete or from another tool; retrain with `clinfuse train`",
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
        recal = self._recalibration_band(n_boot)
        if recal is not None:
            low, high = recal
        else:
            val = f[
                (f["split"] == "val") & f.get("label", pd.Series(np.nan, index=f.index)).notna()
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
        f["vs_threshold"] = np.where(
            f["risk_low"] >= t, "above", np.where(f["risk_high"] < t, "below", "straddles")
        )

    def _recalibration_band(self, n_boot: int) -> tuple[np.ndarray, np.ndarray] | None:
        """For a recalibrated run: the band of the site's update, refitted on bootstrap
        resamples of ``recalibration_cases.csv`` (the cases it was fitted on)."""
        state = self._fusion_calibrator
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
                        allow_external_paths=self.config.data.allow_external_paths,
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
        with self._lock:
            if self._model is None:
                from clinfuse.model import load_run

                self._model = load_run(self.run)
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
        progress (``n_reviewers``, ``my_decision``). No outcome labels."""
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
        for m in self.modalities:
            out[m] = f[f"present_{m}"].astype(bool)
        warnings = f.get("input_warnings", pd.Series("", index=f.index)).fillna("").astype(str)
        out["input_warnings"] = [len(w.split("; ")) if w else 0 for w in warnings]
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
        return {
            "base_value": float(r["base_value"]),
            "phi": {m: float(r.get(f"phi_{m}", 0.0)) for m in self.modalities},
            "logit_fusion": float(r["logit_fusion"]),
        }

    def _shapley_frame(self) -> pd.DataFrame | None:
        path = self.run / "explanations" / "modality_shapley.csv"
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
        from clinfuse.explain.report import load_cached_case

        cid = self.resolve_case(case_id)
        try:
            data = load_cached_case(self.run, cid)
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
        attributions) and cache it in ``RUN/explanations/cases/`` like ``clinfuse explain``.

        Raises:
            ClinFuseError: the cohort is unavailable or the case's data does not load.
        """
        import warnings

        from clinfuse.data import CaseLoader
        from clinfuse.explain._common import NoModalityWarning, safe_name
        from clinfuse.explain.modality import build_modality_cache, modality_shapley
        from clinfuse.explain.report import RUN_SUBDIR, explain_case
        from clinfuse.redact import note_masking

        cid = self.resolve_case(case_id)
        if self.cohort is None:
            raise ConfigError(self.cohort_error or "no cohort", case_id=cid)
        model = self.model()
        loader = CaseLoader(model.config.data, model.modalities, model.tabular)
        row = self.cohort[cid]
        case = loader.load(row)
        mask, note_context = note_masking(self.cohort_path, row.image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoModalityWarning)
            exp = modality_shapley(model, build_modality_cache(model, [case]))
        phi = {m: float(exp.values[0, j]) for j, m in enumerate(model.modalities)}
        background = (
            self._image_background(model, exclude=cid) if case.get("image") is not None else None
        )
        final = self.run / RUN_SUBDIR / "cases" / safe_name(cid)
        stage = final.with_name(f".{final.name}.partial-{time.time_ns()}")
        try:
            result = explain_case(
                model,
                case,
                base_value=float(exp.base_values[0]),
                phi=phi,
                out_dir=stage,
                image_background=background,
                note_max_evals=note_max_evals,
                mask_note_identifiers=mask,
                note_context=note_context,
            )
            old = final.with_name(f".{final.name}.old-{time.time_ns()}")
            if final.exists():
                final.rename(old)
            stage.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return result

    def _image_background(self, model: Any, *, exclude: str, k: int = 8) -> np.ndarray | None:
        from clinfuse.data import CaseLoader

        if self.cohort is None:
            return None
        loader = CaseLoader(model.config.data, ["image"])
        images = []
        for row in self.cohort.rows:
            if row.case_id == exclude or row.image is None:
                continue
            try:
                images.append(loader.load(row)["image"])
            except (ClinFuseError, RuntimeError):
                continue
            if len(images) >= k:
                break
        return np.stack(images) if images else None


def _check_run_folder(run: Path) -> None:
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
    missing = [rel for rel in _REQUIRED if not (run / rel).exists()]
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
    return (
        f"Recalibrated for a site: fused risk {what}, fitted on {rep.get('n_cases')} cases "
        f"({rep.get('n_events')} events) of {Path(str(rep.get('manifest', ''))).name} on "
        f"{str(rep.get('created', ''))[:10]}; source run {Path(str(rep.get('source_run', ''))).name}."
    )


def _default_cohort(run: Path) -> Path | None:
    report = run / "data_report.json"
    try:
        manifest = json.loads(report.read_text(encoding="utf-8")).get("manifest")
    except (OSError, ValueError):
        return None
    return Path(manifest) if manifest else None


def _default_evaluation(run: Path) -> Path | None:
    """``RUN/evaluation`` or a sibling ``evaluation`` folder — unless its ``metrics.json``
    records another model version (e.g. the source of a recalibrated run)."""
    from clinfuse.evaluation.evaluate import model_sha256

    digest = model_sha256(run) if (run / "model" / "model.json").exists() else None
    for candidate in (run / "evaluation", run.parent / "evaluation"):
        path = candidate / "metrics.json"
        if not path.exists():
            continue
        try:
            recorded = json.loads(path.read_text(encoding="utf-8")).get("run", {})
        except (OSError, ValueError):
            continue
        if recorded.get("model_sha256") not in (None, digest):
            continue
        return candidate
    return None


def open_run_view(
    run: str | Path,
    *,
    cohort: str | Path | None = None,
    evaluation: str | Path | None = None,
    threshold: float | None = None,
    n_boot: int = 200,
) -> RunView:
    """Open a run folder for review.

    Args:
        run: the folder written by ``clinfuse train``.
        cohort: the cohort manifest (default: the one the run was trained on,
            from ``data_report.json``).
        evaluation: a ``clinfuse evaluate`` output folder for the cohort page
            (default: ``RUN/evaluation`` or a sibling ``evaluation`` folder, as
            ``clinfuse demo`` writes).
        threshold: decision threshold on the calibrated fused risk (default
            :data:`DEFAULT_THRESHOLD`).
        n_boot: bootstrap refits for the uncertainty band.

    Raises:
        ConfigError: the run folder is missing or incomplete, or a threshold outside (0, 1).
    """
    run = Path(run).expanduser()
    _check_run_folder(run)
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if not 0.0 < t < 1.0:
        raise ConfigError(f"threshold must be within (0, 1), got {t}", field="threshold")
    cohort_path = Path(cohort).expanduser() if cohort else _default_cohort(run)
    eval_path = Path(evaluation).expanduser() if evaluation else _default_evaluation(run)
    try:
        return RunView(run, cohort=cohort_path, evaluation=eval_path, threshold=t, n_boot=n_boot)
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, ClinFuseError):
            raise
        raise ConfigError(
            f"the run folder cannot be read: {type(e).__name__}: {e}",
            path=run,
            hint="retrain, or restore the run folder",
        ) from e
