"""A cohort scored by ``clinfuse predict``: the predictions table and where it came from.

``clinfuse predict MODEL MANIFEST --out P.csv`` writes, beside ``P.csv``, a small JSON
``P.provenance.json``: the model folder that scored the cases and its version
(:func:`model_version`), the manifest, when, and how many cases were scored and excluded.
The review app reads it to open a worklist of those cases (``clinfuse app MODEL
--predictions P.csv``): it finds the manifest there and refuses a table that another
version of the model scored. For a fold ensemble, ``P.fold_models.csv`` holds each fold
model's own outputs (one row per case and model), which the case-mix comparison with the
cross-validation's out-of-fold predictions needs (:mod:`clinfuse.evaluation.casemix`).

>>> write_scored(Path("new/predictions.csv"), frame, model="runs/demo",
...              manifest="new/manifest.csv", n_excluded=0)  # doctest: +SKIP
>>> read_provenance("new/predictions.csv")["model_version"]  # doctest: +SKIP
'3f2a9c01d4e5b677'
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from clinfuse._context import EXTERNAL_PATHS
from clinfuse._files import read_json_object
from clinfuse.errors import ConfigError

__all__ = [
    "FOLD_MODELS_SUFFIX",
    "PROVENANCE_SUFFIX",
    "evaluates_model",
    "fold_models_path",
    "model_sha256",
    "model_version",
    "provenance_path",
    "read_provenance",
    "run_fingerprint",
    "write_scored",
]

PROVENANCE_SUFFIX = ".provenance.json"
"""Suffix of the provenance file beside a predictions table (``P.csv`` → ``P.provenance.json``)."""

FOLD_MODELS_SUFFIX = ".fold_models.csv"
"""Suffix of a fold ensemble's per-model outputs (``P.csv`` → ``P.fold_models.csv``)."""


def run_fingerprint(run: str | Path) -> str:
    """The version of one trained run: SHA-256 (first 16 hex) of its ``model/model.json``
    (every encoder's weight fingerprint and the calibrators), ``model/fusion.safetensors``
    and ``config.yaml``. Stored with each review and with each scored table."""
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


def model_version(path: str | Path) -> str:
    """The version of a run folder (:func:`run_fingerprint`) or of a ``clinfuse crossval``
    folder's fold ensemble (SHA-256, first 16 hex, of its fold runs' fingerprints in order,
    and of its ``ensemble_calibration.json`` when recalibrated for a site).

    Raises:
        ConfigError: a cross-validation folder whose ``crossval.json`` cannot be read.
    """
    path = Path(path)
    summary_path = path / "crossval.json"
    if not summary_path.is_file():
        return run_fingerprint(path)
    try:
        folds = json.loads(summary_path.read_text(encoding="utf-8"))["fold_models"]
        fold_paths = [path / str(f["path"]) for f in folds]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read crossval.json: {e}", path=summary_path) from e
    h = hashlib.sha256(b"fold-ensemble")
    for run in fold_paths:
        h.update(run_fingerprint(run).encode())
    from clinfuse.ensemble import ensemble_calibration_digest

    calibration = ensemble_calibration_digest(path)
    if calibration is not None:
        h.update(f"recalibrated {calibration}".encode())
    return h.hexdigest()[:16]


def evaluates_model(path: str | Path, recorded: dict[str, Any]) -> bool:
    """Whether an evaluation's ``metrics.json`` → ``run`` names the model version of ``path``
    (a run's ``model_sha256``, a fold ensemble's fold models' digests and its
    ``ensemble_calibration``); True when it names none (a model evaluated from Python).

    Raises:
        ConfigError: a cross-validation folder whose ``crossval.json`` cannot be read.
    """
    path = Path(path)
    summary_path = path / "crossval.json"
    if summary_path.is_file():
        from clinfuse.ensemble import ensemble_calibration_digest

        try:
            folds = json.loads(summary_path.read_text(encoding="utf-8"))["fold_models"]
            ours = [f["model_sha256"] for f in folds]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"cannot read crossval.json: {e}", path=summary_path) from e
        theirs = recorded.get("fold_ensemble")
        if theirs is None:
            return True
        # the same fold models, recalibrated for a site or not, are other model versions
        return theirs == ours and recorded.get("ensemble_calibration") == (
            ensemble_calibration_digest(path)
        )
    theirs = recorded.get("model_sha256")
    return theirs is None or (
        (path / "model" / "model.json").exists() and theirs == model_sha256(path)
    )


def model_sha256(run: str | Path) -> str:
    """SHA-256 of a run's ``model/model.json`` (every weight fingerprint and calibrator):
    the model version an evaluation or a recalibration records."""
    return hashlib.sha256((Path(run) / "model" / "model.json").read_bytes()).hexdigest()


def provenance_path(predictions: str | Path) -> Path:
    """``P.provenance.json`` beside the predictions table ``P.csv``."""
    p = Path(predictions)
    return p.with_name(p.stem + PROVENANCE_SUFFIX)


def fold_models_path(predictions: str | Path) -> Path:
    """``P.fold_models.csv`` beside the predictions table ``P.csv``."""
    p = Path(predictions)
    return p.with_name(p.stem + FOLD_MODELS_SUFFIX)


def check_table_path(out: str | Path) -> Path:
    """``out`` as a path a predictions table can be written to.

    Raises:
        ConfigError: ``out`` is an existing folder (a table is one file).
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(
            "--out names a folder; the predictions are one CSV file",
            path=out,
            hint=f"give a file path, e.g. --out {out / 'predictions.csv'}",
        )
    return out


def write_scored(
    out: str | Path,
    frame: Any,
    *,
    model: str | Path,
    manifest: str | Path,
    n_excluded: int,
    per_model: Any = None,
    conformal: dict[str, Any] | None = None,
) -> Path:
    """Write a predictions table and its provenance, each atomically (temp file, rename).

    The provenance is replaced first, then the fold models' outputs, then the table: a
    reader never pairs a new table with an old provenance (at worst, for a moment, an old
    table with the new one, whose version check then refuses the pair).

    Args:
        per_model: a fold ensemble's per-model outputs
            (:attr:`clinfuse.ensemble.EnsembleScores.per_model`), written to
            :func:`fold_models_path`; without them an earlier scoring's file there is removed.
        conformal: the conformal sets of the table's ``conformal_set`` column
            (:meth:`clinfuse.evaluation.conformal.ConformalSets.to_dict`), recorded as
            ``conformal``.

    Returns:
        The provenance file's path.
    """
    from clinfuse import __version__

    out = check_table_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "model": str(Path(model).expanduser().resolve()),
        "model_version": model_version(model),
        "manifest": str(Path(manifest).expanduser().resolve()),
        "n_cases": len(frame),
        "n_excluded": int(n_excluded),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "clinfuse_version": __version__,
    }
    if conformal is not None:
        info["conformal"] = conformal
    if EXTERNAL_PATHS.get():  # scored with --allow-external-paths: the app reads them too
        info["allow_external_paths"] = True
    meta = provenance_path(out)
    tmp_meta = meta.with_name(f".{meta.name}.tmp")
    models = fold_models_path(out)
    if per_model is not None:
        info["fold_models"] = models.name
        tmp_models = models.with_name(f".{models.name}.tmp")
        per_model.to_csv(tmp_models, index=False)
    tmp_meta.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    tmp = out.with_name(f".{out.name}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp_meta, meta)
    if per_model is not None:
        os.replace(tmp_models, models)
    elif models.exists():
        models.unlink()  # an earlier ensemble's outputs do not describe this table
    os.replace(tmp, out)
    return meta


def read_provenance(predictions: str | Path) -> dict[str, Any] | None:
    """The provenance of a predictions table (None when it has none: an older table, or
    one written by other means).

    Raises:
        ConfigError: the provenance file exists but cannot be read.
    """
    path = provenance_path(predictions)
    if not path.exists():
        return None
    info = read_json_object(path, "the provenance file")
    if not isinstance(info.get("model_version"), str):
        raise ConfigError(
            "the provenance file lacks model_version",
            path=path,
            hint="rescore the cohort with `clinfuse predict`",
        )
    return info
