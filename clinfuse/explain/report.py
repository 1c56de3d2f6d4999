"""``clinfuse explain``: explanations of a run on a cohort, written to a folder and cached in the run.

Output folder (every file written atomically; when the cohort is the one the run was
trained on, also copied to ``RUN/explanations/`` so the review app shows them instantly;
another cohort's explanations stay in the output folder, which the app reads with
``--predictions P.csv --explanations OUT``)::

    modality_shapley.csv         case_id, base_value, phi_<modality>…, logit_fusion (DESIGN contract)
    modality_importance.json     mean |φ| per modality (bootstrap CI) + performance Shapley (AUROC)
    modality_importance.png
    cases/<case_id>/explanation.json   all values of one case (with --case)
    cases/<case_id>/*.png, note.html   waterfall, image heat map, signal overlay, highlighted note
    index.json                   what was explained: model version, cohort, when
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clinfuse._files import write_text_atomic
from clinfuse.errors import ClinFuseError, ConfigError
from clinfuse.explain._common import (
    NoModalityWarning,
    safe_name,
    unknown_case_error,
    write_json_atomic,
)
from clinfuse.scored import model_version, run_fingerprint

if TYPE_CHECKING:
    from privacy.text import PatientContext

__all__ = [
    "RUN_SUBDIR",
    "explain_case",
    "explain_ensemble",
    "explain_ensemble_case",
    "explain_run",
    "image_background",
    "load_cached_case",
    "load_cached_modality_shapley",
]

RUN_SUBDIR = "explanations"

IMAGE_BACKGROUND = 16
"""Other cases' images the image explainer compares a case against (the first ones loaded)."""
"""Folder inside a run where explanations are cached."""

BASE_RATE_MESSAGE = (
    "no modality is present for this case: the prediction is the base rate "
    "(the fused logit with nothing observed) and every modality's Shapley value is 0"
)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _risk(model: Any, logit: float) -> float:
    cal = model.calibrators.get("fusion")
    if cal is None:
        return _sigmoid(logit)
    return float(np.asarray(cal.predict_proba(np.array([logit], dtype=float))).reshape(-1)[0])


def _round(a: Any, digits: int = 6) -> Any:
    arr = np.asarray(a, dtype=float)
    return np.round(arr, digits).tolist()


def explain_case(
    model: Any,
    case: dict[str, Any],
    *,
    base_value: float,
    phi: dict[str, float],
    out_dir: Path | None = None,
    image_background: np.ndarray | None = None,
    note_max_evals: int = 64,
    signal_segment_seconds: float = 0.5,
    mask_note_identifiers: bool = True,
    note_context: PatientContext | None = None,
) -> dict[str, Any]:
    """Within-modality explanations of one case (+ figures when ``out_dir`` is given).

    Args:
        model: the FusionModel.
        case: a loaded case dict.
        base_value, phi: the case's modality Shapley values (from
            :func:`~clinfuse.explain.modality_shapley`).
        out_dir: where to write ``explanation.json`` and the figures.
        mask_note_identifiers: mask the identifiers found in the note's tokens as ``[TYPE]``
            (:mod:`clinfuse.redact`) before they are stored or drawn; the masked tokens carry
            the summed attributions. False for a cohort already de-identified.
        note_context: the patient's known identifiers for that masking (e.g. from
            :func:`clinfuse.redact.note_masking`), masked wherever they appear.

    Returns:
        The JSON-ready dict (also written to ``out_dir/explanation.json``).
        Explainer fallbacks are listed under ``"warnings"`` and re-emitted as
        warnings.
    """
    return _explain_members(
        [(model, case, float(base_value), dict(phi))],
        out_dir=out_dir,
        image_background=image_background,
        note_max_evals=note_max_evals,
        signal_segment_seconds=signal_segment_seconds,
        mask_note_identifiers=mask_note_identifiers,
        note_context=note_context,
    )


def explain_ensemble_case(
    ensemble: Any,
    cases: Sequence[dict[str, Any]],
    *,
    base_values: Sequence[float],
    phis: Sequence[dict[str, float]],
    **options: Any,
) -> dict[str, Any]:
    """:func:`explain_case` for a fold ensemble: every fold model explains the case and the
    attributions are averaged.

    The modality Shapley values are the means of the fold models' (the Shapley values of
    the mean fused logit; ``ensemble.phi_sd`` their SD over the models); the risk is the
    mean of the fold models' calibrated risks, as :meth:`~clinfuse.ensemble.FoldEnsemble.predict`
    gives it. Each within-modality attribution is the mean of the fold models' attributions
    of their own unimodal logits — token, voxel, segment and lab values of the mean unimodal
    logit for the linear methods (expected gradients with one seed, integrated gradients,
    occlusion, exact SHAP); for the note's capped Partition explainer, whose coalitions depend
    on the model, the mean of each model's approximation.

    Args:
        ensemble: the :class:`~clinfuse.ensemble.FoldEnsemble`.
        cases: the case as each fold model sees it
            (:meth:`~clinfuse.ensemble.FoldEnsemble.fold_cases`).
        base_values, phis: each fold model's modality Shapley values of the case.
        options: :func:`explain_case`'s keywords (``out_dir``, ``image_background``,
            ``note_max_evals``, ``signal_segment_seconds``, ``mask_note_identifiers``,
            ``note_context``).
    """
    members = [
        (model, case, float(b), dict(p))
        for model, case, b, p in zip(ensemble.models, cases, base_values, phis, strict=True)
    ]

    def risk_map(risk: float) -> float:  # a recalibrated ensemble's update (identity if none)
        return float(ensemble.recalibrated("fusion", np.array([risk]))[0])

    return _explain_members(members, risk_map=risk_map, **options)


def _mean_explanation(exps: Sequence[Any], modality: str) -> Any:
    """The fold models' explanations of one modality averaged, into the first one (made for
    this average; one explanation is returned as it is)."""
    first = exps[0]
    if len(exps) == 1:
        return first
    if modality == "note" and any(list(e.data) != list(first.data) for e in exps[1:]):
        raise ConfigError(
            "the fold models split the note into different tokens: their token attributions "
            "cannot be averaged",
            field="note",
            hint="explain one fold's run (CV/folds/fold_k) instead",
        )
    values = np.mean([np.asarray(e.values, dtype=float) for e in exps], axis=0)
    base = np.mean([np.asarray(e.base_values, dtype=float) for e in exps], axis=0)
    method = " / ".join(dict.fromkeys(str(e.method) for e in exps))
    first.values, first.base_values, first.method = values, base, method
    for attr in ("heatmap", "segment_values"):
        if getattr(first, attr, None) is not None:
            setattr(first, attr, np.mean([np.asarray(getattr(e, attr)) for e in exps], axis=0))
    if getattr(first, "slice_mass", None) is not None:
        mass = np.abs(first.heatmap).sum(axis=(0, 1))
        first.slice_mass = mass / max(float(mass.sum()), 1e-12)
    return first


def _explain_members(
    members: Sequence[tuple[Any, dict[str, Any], float, dict[str, float]]],
    *,
    out_dir: Path | None = None,
    image_background: np.ndarray | None = None,
    note_max_evals: int = 64,
    signal_segment_seconds: float = 0.5,
    mask_note_identifiers: bool = True,
    note_context: PatientContext | None = None,
    risk_map: Callable[[float], float] | None = None,
) -> dict[str, Any]:
    """One model's explanation of a case, or several models' averaged: ``members`` holds
    ``(model, case as that model sees it, base value, phi)`` for each; ``risk_map`` turns
    the mean of the models' risks into the ensemble's (its recalibration)."""
    from clinfuse.explain import plots
    from clinfuse.explain.within import (
        explain_image,
        explain_note,
        explain_signal,
        explain_tabular,
    )

    model, case = members[0][0], members[0][1]
    cid = str(case["case_id"])
    present = {m: bool(p) for m, p in zip(model.modalities, case["present"], strict=True)}
    base_value = float(np.mean([b for _, _, b, _ in members]))
    phi = {m: float(np.mean([p[m] for _, _, _, p in members])) for m in members[0][3]}
    logit = base_value + sum(phi.values())
    to_risk = risk_map or float
    risks = [_risk(mk, b + sum(p.values())) for mk, _, b, p in members]
    result: dict[str, Any] = {
        "case_id": cid,
        "label": case.get("label"),
        "split": case.get("split"),
        "present": present,
        "modality_shapley": {
            "base_value": base_value,
            "phi": phi,
            "logit_fusion": logit,
            "risk_fusion": to_risk(float(np.mean(risks))),
            "base_risk": to_risk(float(np.mean([_risk(mk, b) for mk, _, b, _ in members]))),
        },
        "within": {},
        "figures": {},
        "warnings": [],
    }
    if len(members) > 1:
        result["ensemble"] = {
            "n_models": len(members),
            "phi_sd": {m: float(np.std([p[m] for _, _, _, p in members], ddof=1)) for m in phi},
            "risk_fusion_min": to_risk(float(np.min(risks))),
            "risk_fusion_max": to_risk(float(np.max(risks))),
        }

    def each(explain: Callable[..., Any], modality: str, **kwargs: Any) -> Any:
        return _mean_explanation([explain(mk, ck, **kwargs) for mk, ck, _, _ in members], modality)

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        p = plots.modality_waterfall_png(
            out_dir / "modality_waterfall.png",
            case_id=cid,
            base_value=base_value,
            phi=phi,
            present=present,
            risk=result["modality_shapley"]["risk_fusion"],
        )
        result["figures"]["modality_waterfall"] = p.name
    if not any(present.values()):
        result["message"] = BASE_RATE_MESSAGE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        within = result["within"]
        if present.get("note"):
            e = each(explain_note, "note", max_evals=note_max_evals)
            tokens = [str(t) for t in e.data]
            values = [float(v) for v in np.asarray(e.values, dtype=float).reshape(-1)]
            masked: dict[str, int] | None = None
            if mask_note_identifiers:
                from clinfuse.redact import mask_note_tokens

                r = mask_note_tokens(tokens, values, note_context)
                tokens, values, masked = r.tokens, r.values, dict(r.counts)
            within["note"] = {
                "method": e.method,
                "target": e.target,
                "base_value": float(np.asarray(e.base_values).reshape(-1)[0]),
                "tokens": tokens,
                "values": _round(values),
                "identifiers_masked": masked,
            }
            if out_dir is not None:
                write_text_atomic(
                    out_dir / "note.html", plots.note_html(tokens, values, title=f"case {cid}")
                )
                plots.note_tokens_png(out_dir / "note_tokens.png", tokens, values)
                result["figures"]["note_html"] = "note.html"
                result["figures"]["note_tokens"] = "note_tokens.png"
        if present.get("image"):
            e = each(explain_image, "image", background=image_background)
            within["image"] = {
                "method": e.method,
                "target": e.target,
                "base_value": float(e.base_values),
                "axes": "X (DICOM column), Y (DICOM row)"
                + (", Z (slice)" if e.heatmap.ndim == 3 else ""),
                "heatmap": _round(e.heatmap),
                "slice_mass": _round(getattr(e, "slice_mass", [])) or None,
            }
            if out_dir is not None:
                plots.image_heatmap_png(
                    out_dir / "image_heatmap.png", case["image"], e.heatmap, method=e.method
                )
                result["figures"]["image_heatmap"] = "image_heatmap.png"
        if present.get("signal"):
            e = each(explain_signal, "signal", segment_seconds=signal_segment_seconds)
            within["signal"] = {
                "method": e.method,
                "target": e.target,
                "base_value": float(e.base_values),
                "fs": e.fs,
                "lead_names": e.lead_names,
                "segments_s": _round(np.asarray(e.segments) / e.fs, 4),
                "segment_values": _round(e.segment_values),
            }
            if out_dir is not None:
                plots.signal_overlay_png(
                    out_dir / "signal_overlay.png",
                    case["signal"],
                    e.segment_values,
                    e.segments,
                    fs=e.fs,
                    lead_names=e.lead_names,
                    method=e.method,
                )
                result["figures"]["signal_overlay"] = "signal_overlay.png"
        if present.get("tabular"):
            e = each(explain_tabular, "tabular")
            within["tabular"] = {
                "method": e.method,
                "target": e.target,
                "base_value": float(e.base_values),
                "features": [
                    {"name": n, "value": v, "phi": float(s)}
                    for n, v, s in zip(e.feature_names, e.data.tolist(), e.values, strict=True)
                ],
            }
    for w in caught:
        result["warnings"].append(str(w.message))
        warnings.warn(w.message, w.category, stacklevel=2)
    if out_dir is not None:
        write_json_atomic(out_dir / "explanation.json", result)
    return result


def _publish(src: Path, dest: Path) -> None:
    """Move the freshly written folder ``src`` onto ``dest`` (replacing it) with renames only."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(f".{dest.name}.old-{time.time_ns()}")
    if dest.exists():
        dest.rename(old)
    src.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _copy_into(src: Path, dest: Path) -> None:
    """Copy the output folder into the run's cache folder atomically per entry."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        tmp = dest / f".{item.name}.tmp-{time.time_ns()}"
        if item.is_dir():
            shutil.copytree(item, tmp)
            if (dest / item.name).is_dir():
                # keep cached cases of other ids: merge case folders one by one
                for sub in tmp.iterdir():
                    _publish(sub, dest / item.name / sub.name)
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.rename(dest / item.name)
        else:
            shutil.copy2(item, tmp)
            tmp.replace(dest / item.name)


def _test_subset(run: Path, cache: Any) -> tuple[Any, str]:
    """The run's test cases within ``cache`` (by predictions.csv), else every labelled case."""
    import pandas as pd

    splits: dict[str, Any] = {}
    pred = run / "predictions.csv"
    if pred.exists():
        frame = pd.read_csv(pred, usecols=["case_id", "split"], dtype={"case_id": str})
        splits = dict(zip(frame["case_id"], frame["split"], strict=True))
    idx = [i for i, c in enumerate(cache.case_ids) if splits.get(c) == "test"]
    if len(idx) >= 2 and len(set(cache.labels[idx][np.isfinite(cache.labels[idx])].tolist())) == 2:
        return cache.subset(idx), "test split of the run"
    idx = [i for i in range(len(cache)) if np.isfinite(cache.labels[i])]
    return cache.subset(idx), "all labelled cases of the cohort"


def explain_run(
    run: str | Path,
    cohort: str | Path,
    out: str | Path,
    *,
    case: str | None = None,
    note_max_evals: int = 64,
    n_boot: int = 1000,
    cache_in_run: bool = True,
    keep_note_identifiers: bool = False,
    log: Callable[[str], None] | None = None,
    workers: int | str = "auto",
) -> dict[str, Any]:
    """Explain a run on a cohort: modality Shapley values for every case, cohort-level
    importance, and (for ``case``) within-modality attributions with figures.

    Args:
        run: run folder (``clinfuse train``).
        cohort: manifest of the cases to explain.
        out: output folder.
        case: a case id to explain in depth.
        note_max_evals: cap on note-model calls for token SHAP.
        n_boot: bootstrap replicates for the cohort-level CIs.
        cache_in_run: also copy the results into ``RUN/explanations/``.
        keep_note_identifiers: store the note's tokens as written. By default the identifiers
            found in them are masked unless the cohort was de-identified with ``clinfuse deid``
            (:mod:`clinfuse.redact`).
        log: one-line progress messages.
        workers: processes that read the cohort's files (:func:`clinfuse.data.scoring_workers`).

    Returns:
        A summary: ``n_cases``, ``importance``, ``performance`` and ``case``
        (the case's explanation dict) when ``case`` is given.

    Raises:
        CohortError: ``case`` is not in the cohort.
    """
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader, iter_scorable, scoring_workers
    from clinfuse.explain import plots
    from clinfuse.explain.modality import (
        ModalityCache,
        build_modality_cache,
        coalition_values,
        modality_importance,
        modality_shapley,
        modality_shapley_frame,
        performance_shapley,
    )
    from clinfuse.model import load_run
    from clinfuse.redact import note_masking

    say = log or (lambda _msg: None)
    run, out = Path(run), Path(out)
    scoring_workers(workers, 0)  # a bad count fails before any file is read
    model = load_run(run)
    co = Cohort.from_manifest(
        cohort,
        target=model.config.data.target,
        allow_external_paths=model.config.data.allow_external_paths,
    )
    known = [r.case_id for r in co.rows] + [str(i.case_id) for i in co.excluded if i.case_id]
    if case is not None and case not in known:
        raise unknown_case_error(case, list(dict.fromkeys(known)), path=co.manifest_path)
    model.check_cohort(co, allow_missing_modalities=True)
    # chunk by chunk (memory: one chunk of decoded inputs); kept: the embeddings, the case
    # to explain and the first few other images (the image explainer's background)
    loader = CaseLoader(model.config.data, model.modalities, model.tabular)
    caches: list[Any] = []
    issues: list[Any] = []
    background: list[np.ndarray] = []
    case_dict: dict[str, Any] | None = None
    for chunk in iter_scorable(loader, co, workers=workers, require_cases=False):
        issues += chunk.excluded
        if not chunk.cases:
            continue
        caches.append(build_modality_cache(model, chunk.cases))
        for c in chunk.cases:
            if c["case_id"] == case:
                case_dict = c
            elif c.get("image") is not None and len(background) < IMAGE_BACKGROUND:
                background.append(c["image"])
    failed = issues[len(co.excluded) :]  # the first chunk lists the manifest's exclusions first
    n_loaded = sum(len(c) for c in caches)
    say(f"loaded {n_loaded} cases ({len(failed)} excluded)")
    if not n_loaded:
        raise ConfigError(
            "no case of the cohort could be loaded: nothing to explain", path=co.manifest_path
        )

    cache = ModalityCache.concat(caches)
    table = coalition_values(model, cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoModalityWarning)  # loaded cases always have one
        exp = modality_shapley(model, cache, values=table)
    frame = modality_shapley_frame(exp, cache)
    importance = modality_importance(exp, n_boot=n_boot)
    perf: dict[str, Any] | None
    subset, which = _test_subset(run, cache)
    try:
        perf = performance_shapley(model, subset, n_boot=n_boot)
        perf["cases"] = which
    except ClinFuseError as e:
        perf = {"error": str(e)}
    say(f"modality Shapley values of {len(cache)} cases")

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.partial-{time.time_ns()}")
    stage.mkdir()
    try:
        tmp = stage / "modality_shapley.csv"
        frame.to_csv(tmp, index=False)
        write_json_atomic(
            stage / "modality_importance.json",
            {"mean_abs_phi": importance, "performance_shapley": perf, "n_cases": len(cache)},
        )
        plots.modality_importance_png(stage / "modality_importance.png", importance)
        summary: dict[str, Any] = {
            "n_cases": len(cache),
            "n_excluded": len(failed),
            "importance": importance,
            "performance": perf,
        }
        if case is not None:
            case_dir = stage / "cases" / safe_name(case)
            if case_dict is not None:
                i = cache.index_of(case)
                row = next(r for r in co.rows if r.case_id == case)
                mask, note_context = (
                    (False, None)
                    if keep_note_identifiers
                    else note_masking(co.manifest_path, row.image)
                )
                phi = {m: float(exp.values[i, j]) for j, m in enumerate(cache.modalities)}
                summary["case"] = explain_case(
                    model,
                    case_dict,
                    base_value=float(exp.base_values[i]),
                    phi=phi,
                    out_dir=case_dir,
                    image_background=np.stack(background) if background else None,
                    note_max_evals=note_max_evals,
                    mask_note_identifiers=mask,
                    note_context=note_context,
                )
            else:
                summary["case"] = _unexplainable_case(model, case, co, failed, table, case_dir)
        write_json_atomic(
            stage / "index.json",
            {
                "run": str(run),
                "model_version": run_fingerprint(run),
                "cohort": str(co.manifest_path),
                "case": case,
                "n_cases": len(cache),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        if out.exists():
            # keep an earlier run's per-case folders; replace everything else
            _copy_into(stage, out)
            shutil.rmtree(stage, ignore_errors=True)
        else:
            stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if cache_in_run and _is_training_cohort(run, co.manifest_path):
        try:
            _copy_into(out, run / RUN_SUBDIR)
        except OSError as e:
            warnings.warn(f"could not cache explanations in {run / RUN_SUBDIR}: {e}", stacklevel=2)
    elif cache_in_run:
        say(
            f"not cached in {run / RUN_SUBDIR}: the run caches its own cohort's explanations "
            "only (another cohort's case ids may name other patients); review these cases with "
            f"`clinfuse predict {run} {co.manifest_path} --out P.csv` and "
            f"`clinfuse app {run} --predictions P.csv --explanations {out}`"
        )
    return summary


def _is_training_cohort(run: Path, manifest: Path | None) -> bool:
    """Whether ``manifest`` is the one the run was trained on (its ``data_report.json``)."""
    try:
        recorded = json.loads((run / "data_report.json").read_text(encoding="utf-8"))["manifest"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not recorded or manifest is None:
        return False
    return Path(recorded).expanduser().resolve() == manifest.resolve()


def explain_ensemble(
    crossval: str | Path,
    cohort: str | Path,
    out: str | Path,
    *,
    case: str | None = None,
    note_max_evals: int = 64,
    n_boot: int = 1000,
    keep_note_identifiers: bool = False,
    log: Callable[[str], None] | None = None,
    workers: int | str = "auto",
) -> dict[str, Any]:
    """Modality Shapley values of a fold ensemble (``clinfuse explain CV COHORT``).

    Each fold model's exact modality Shapley values on its fused logit are averaged over
    the models (Shapley values are linear in the model, so the means are the Shapley
    values of the mean fused logit — the ensemble's ``logit_fusion`` — and stay additive:
    ``base_value + Σ φ = logit_fusion``). ``phi_<m>_sd`` is the SD over the models: how
    much the models disagree on what a modality contributes to a case.

    Writes ``modality_shapley.csv`` (the DESIGN columns plus ``phi_<m>_sd``),
    ``modality_importance.json`` (mean |φ| with bootstrap CIs), ``modality_importance.png``
    and ``index.json``; the folder appears complete or not at all. With ``case``, that
    case's within-modality attributions averaged over the fold models
    (:func:`explain_ensemble_case`) go to ``cases/<case_id>/``. ``workers`` processes read
    the cohort's files (:func:`clinfuse.data.scoring_workers`); ``note_max_evals`` and
    ``keep_note_identifiers`` are :func:`explain_run`'s.

    Raises:
        ConfigError: not a finished cross-validation folder, ``out`` not empty, no case
            could be loaded, or ``case`` is not in the cohort or could not be loaded.
    """
    import shap

    from clinfuse._files import atomic_folder
    from clinfuse.ensemble import load_ensemble
    from clinfuse.explain import plots
    from clinfuse.explain.modality import (
        modality_importance,
        modality_shapley,
        modality_shapley_frame,
    )
    from clinfuse.redact import note_masking

    say = log or (lambda _msg: None)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            "the output folder exists and is not empty", path=out, hint="give a new --out folder"
        )
    ensemble = load_ensemble(crossval)
    co = ensemble.models[0].checked_cohort(cohort, allow_missing_modalities=True)
    known = [r.case_id for r in co.rows] + [str(i.case_id) for i in co.excluded if i.case_id]
    if case is not None and case not in known:
        raise unknown_case_error(case, list(dict.fromkeys(known)), path=co.manifest_path)
    caches, excluded = ensemble.modality_caches(co, workers=workers)
    say(f"loaded {len(caches[0])} cases ({len(excluded)} excluded)")
    values, bases = [], []
    cache = None
    for model, cache in zip(ensemble.models, caches, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoModalityWarning)  # loaded cases always have one
            exp = modality_shapley(model, cache)
        values.append(np.asarray(exp.values, dtype=float))
        bases.append(np.asarray(exp.base_values, dtype=float))
    assert cache is not None
    stack = np.stack(values)  # (K, N, M)
    mean = shap.Explanation(
        values=stack.mean(axis=0),
        base_values=np.stack(bases).mean(axis=0),
        data=cache.present.astype(float),
        feature_names=list(cache.modalities),
    )
    frame = modality_shapley_frame(mean, cache)
    for j, m in enumerate(cache.modalities):
        frame[f"phi_{m}_sd"] = stack[:, :, j].std(axis=0, ddof=1)
    importance = modality_importance(mean, n_boot=n_boot)
    say(f"modality Shapley values of {len(cache)} cases, averaged over {len(ensemble)} models")
    summary = {
        "n_cases": len(cache),
        "n_excluded": len(excluded),
        "n_models": len(ensemble),
        "importance": importance,
    }
    with atomic_folder(out) as stage:
        if case is not None:
            if case not in cache.case_ids:
                raise _case_load_error(case, co, excluded)
            i = cache.index_of(case)
            row = next(r for r in co.rows if r.case_id == case)
            mask, note_context = (
                (False, None)
                if keep_note_identifiers
                else note_masking(co.manifest_path, row.image)
            )
            loaded = ensemble.loader().load(row)
            summary["case"] = explain_ensemble_case(
                ensemble,
                ensemble.fold_cases(loaded, row),
                base_values=[float(b[i]) for b in bases],
                phis=[{m: float(v[i, j]) for j, m in enumerate(cache.modalities)} for v in values],
                out_dir=stage / "cases" / safe_name(case),
                image_background=(
                    image_background(ensemble.config.data, co.rows, exclude=case)
                    if loaded.get("image") is not None
                    else None
                ),
                note_max_evals=note_max_evals,
                mask_note_identifiers=mask,
                note_context=note_context,
            )
        frame.to_csv(stage / "modality_shapley.csv", index=False)
        write_json_atomic(
            stage / "modality_importance.json",
            {
                "mean_abs_phi": importance,
                "performance_shapley": None,
                "n_cases": len(cache),
                "ensemble": ensemble.info,
            },
        )
        plots.modality_importance_png(stage / "modality_importance.png", importance)
        write_json_atomic(
            stage / "index.json",
            {
                "crossval": str(Path(crossval)),
                "model_version": model_version(crossval),
                "cohort": str(co.manifest_path),
                "case": case,
                "n_cases": len(cache),
                "n_models": len(ensemble),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    return summary


def _unexplainable_case(
    model: Any, case: str, cohort: Any, failed: Sequence[Any], table: np.ndarray, case_dir: Path
) -> dict[str, Any]:
    """A case in the manifest that did not load: base rate if it has no modality, else an error."""
    issues = [i for i in [*cohort.excluded, *failed] if i.case_id == case]
    if issues and all(i.field == "modalities" for i in issues):
        base = float(table[0, 0])
        warnings.warn(f"case {case!r}: {BASE_RATE_MESSAGE}", NoModalityWarning, stacklevel=3)
        fake = {
            "case_id": case,
            "present": np.zeros(len(model.modalities), bool),
            "label": None,
            "split": None,
        }
        return explain_case(
            model,
            fake,
            base_value=base,
            phi=dict.fromkeys(model.modalities, 0.0),
            out_dir=case_dir,
        )
    raise _case_load_error(case, cohort, failed)


def _case_load_error(case: str, cohort: Any, failed: Sequence[Any]) -> ConfigError:
    """Why a case of the manifest cannot be explained: the reasons it did not load."""
    issues = [i for i in [*cohort.excluded, *failed] if i.case_id == case]
    reasons = "; ".join(f"{i.field}: {i.message}" for i in dict.fromkeys(issues)) or "not loaded"
    return ConfigError(
        f"the case could not be loaded, so it cannot be explained ({reasons})",
        case_id=case,
        path=cohort.manifest_path,
        hint="run `clinfuse validate` on the cohort",
    )


def image_background(
    data: Any, rows: Sequence[Any], *, exclude: str, k: int = IMAGE_BACKGROUND
) -> np.ndarray | None:
    """Up to ``k`` other cases' preprocessed images, in manifest order: the reference images
    of a case's image attributions (None when no other case has a loadable image).

    Args:
        data: the model's data configuration (its image preprocessing).
        rows: the cohort's manifest rows.
        exclude: the explained case's id.
    """
    from clinfuse.data import CaseLoader

    loader = CaseLoader(data, ["image"])
    images: list[np.ndarray] = []
    for row in rows:
        if len(images) >= k:
            break
        if row.case_id == exclude or row.image is None:
            continue
        try:
            images.append(loader.load(row)["image"])
        except (ClinFuseError, RuntimeError):
            continue  # an unreadable image is not a reference; the case itself is unaffected
    return np.stack(images) if images else None


def load_cached_modality_shapley(run: str | Path) -> Any:
    """The cached ``modality_shapley.csv`` of a run as a DataFrame (None if not explained yet)."""
    import pandas as pd

    path = Path(run) / RUN_SUBDIR / "modality_shapley.csv"
    return pd.read_csv(path, dtype={"case_id": str}) if path.exists() else None


def load_cached_case(run: str | Path, case_id: str) -> dict[str, Any] | None:
    """The cached per-case explanation dict of a run (None if that case was not explained)."""

    path = Path(run) / RUN_SUBDIR / "cases" / safe_name(case_id) / "explanation.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    stored = data.get("case_id")
    return data if stored is None or str(stored) == str(case_id) else None
