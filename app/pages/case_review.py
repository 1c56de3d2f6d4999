"""Case review: fused risk with its band, modality contributions, the case's data with
attributions, and the decision form (saved to SQLite, history kept)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import ui_common as ui

from clinfuse.errors import ClinFuseError
from clinfuse.redact import mask_note, mask_note_tokens, note_masking
from clinfuse.review import charts
from clinfuse.review.imaging import (
    WINDOW_PRESETS,
    DisplayImage,
    heatmap_for_slice,
    heatmap_overlay,
    load_display_image,
    render_slice,
)
from clinfuse.review.runview import CaseView, RunView, UnknownCaseError, import_model_stack
from clinfuse.review.store import DECISIONS

CONFORMAL_MEANING = {
    "positive": "the risk rules out the non-event at this level.",
    "negative": "the risk rules out the event at this level.",
    "uncertain": "the risk rules out neither outcome at this level.",
    "empty": "the risk is unlike the calibration cases of either outcome — an atypical case.",
}

t_start = time.perf_counter()
view, store = ui.context()
me = ui.reviewer()
import_model_stack()  # images, signals and explanations need PyTorch and MONAI


@st.cache_resource(max_entries=64, show_spinner=False)
def _image(path: str, case_id: str, mtime: float) -> DisplayImage:
    return load_display_image(path, case_id=case_id)


@st.cache_data(show_spinner=False, max_entries=256)
def _note_masking(manifest: str | None, image: str | None, mtime: float) -> tuple[bool, Any]:
    return note_masking(manifest, image)  # cached: the page reruns on every widget change


@st.cache_data(max_entries=64, show_spinner=False)
def _signal(_view: RunView, run: str, case_id: str) -> Any:
    return _view.signal_window(_view.case_view(case_id))


def _case_changed() -> None:
    st.session_state["case_id"] = st.session_state["case_select"]


def _pick_case() -> str | None:
    order = st.session_state.get("worklist_order") or view.case_ids
    wanted = st.session_state.get("case_id") or st.query_params.get("case")
    if wanted is not None:
        try:
            wanted = view.resolve_case(wanted)
        except UnknownCaseError as e:
            st.error(str(e))
            wanted = None
    if wanted is not None and wanted not in order:
        order = [wanted, *order]
    if not order:
        st.info("The run has no cases.")
        return None
    if wanted is None or wanted not in order:
        wanted = order[0]
    if st.session_state.get("case_select") != wanted:
        st.session_state["case_select"] = wanted
    cid = st.selectbox("Case", order, key="case_select", on_change=_case_changed)
    st.session_state["case_id"] = cid
    st.query_params["case"] = cid
    return str(cid)


def _number(value: object) -> float | None:
    """A band limit as a float; None where the run has no band (NaN or missing)."""
    if value is None:
        return None
    v = float(value)  # type: ignore[arg-type]
    return None if v != v else v


def _header(cv: CaseView) -> None:
    p = cv.prediction
    risk, low, high = float(p["p_fusion"]), _number(p["risk_low"]), _number(p["risk_high"])
    where = {"above": "above", "below": "below", "straddles": "straddles"}[str(p["vs_threshold"])]
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.metric("fused risk (calibrated)", ui.fmt(risk))
    c2.metric(view.band_label, f"{ui.fmt(low)} – {ui.fmt(high)}")
    c3.metric(
        f"threshold {view.threshold:g}",
        where,
        help="above/below: the whole band lies above/below the threshold; "
        "straddles: the band contains it",
    )
    st.vega_lite_chart(charts.risk_spec(risk, low, high, view.threshold), width="stretch")
    st.caption(view.band_note)
    if view.conformal is not None:
        kind = str(p["conformal_set"])
        st.markdown(
            f"**{view.conformal.title}: {kind}** — " + CONFORMAL_MEANING[kind],
            help=view.conformal.describe(),
        )
    each = view.fold_model_risks(cv.case_id)
    if each:
        st.caption("Each fold model's risk: " + " · ".join(ui.fmt(r) for r in each))
    warnings = p.get("input_warnings")
    if isinstance(warnings, str) and warnings:
        st.warning(
            "Inputs outside the training data — the model extrapolates here: "
            + warnings.replace("; ", " · ")
        )


def _contributions(cv: CaseView) -> None:
    st.subheader("Modality contributions")
    missing = [m for m, has in cv.present.items() if not has]
    if missing:
        st.markdown("**Missing for this case:** " + ", ".join(f"`{m}`" for m in missing))
    if cv.modality_shapley is None:
        st.info("No explanation cached for this case yet.")
        return
    ms = cv.modality_shapley
    st.vega_lite_chart(
        charts.modality_contribution_spec(ms["phi"], cv.present, float(ms["base_value"])),
        width="stretch",
    )
    if ms.get("phi_sd"):
        st.caption(
            "Disagreement between the fold models (SD of each contribution): "
            + " · ".join(f"{m} {ui.fmt(v, 2)}" for m, v in ms["phi_sd"].items() if cv.present[m])
        )
    per = {m: cv.prediction.get(f"p_{m}") for m in view.modalities}
    st.caption(
        "Unimodal risks: "
        + " · ".join(
            f"{m} {ui.fmt(v)}" if cv.present[m] else f"{m} missing" for m, v in per.items()
        )
    )


def _image_tab(cv: CaseView) -> None:
    row = cv.manifest
    if not cv.present.get("image") and (row is None or row.image is None):
        st.info("No image for this case (missing modality).")
        return
    if row is None or row.image is None:
        st.warning(cv.errors.get("manifest", "the image file is not known"))
        return
    try:
        mtime = row.image.stat().st_mtime if row.image.exists() else 0.0
        img = _image(str(row.image), cv.case_id, mtime)
    except ClinFuseError as e:
        st.error(f"The image cannot be shown: {e.reason}" + (f" ({e.hint})" if e.hint else ""))
        return
    heat = None
    if cv.explanation and "image" in cv.explanation.get("within", {}):
        heat = np.asarray(cv.explanation["within"]["image"]["heatmap"], dtype=float)
    c1, c2 = st.columns([1, 2])
    with c1:
        options = (["DICOM (file)"] if img.has_file_voi else []) + [
            "Auto (1-99 %)",
            *WINDOW_PRESETS,
            "Custom",
        ]
        preset = st.selectbox("Window", options, key="window_preset", disabled=img.is_color)
        window: tuple[float, float] | None
        if preset == "DICOM (file)":
            window = None
        elif preset == "Auto (1-99 %)":
            window = img.default_window if not img.has_file_voi else _auto(img)
        elif preset == "Custom":
            lo, hi = img.value_range
            span = max(hi - lo, 1.0)
            center = st.slider(
                "Level (center)", float(lo), float(hi), float(lo + span / 2), key="window_center"
            )
            width = st.slider("Width", 1.0, float(span * 2), float(span), key="window_width")
            window = (center, width)
        else:
            window = WINDOW_PRESETS[preset]
        index = 0
        if img.n_slices > 1:
            index = st.slider(
                "Slice", 0, img.n_slices - 1, img.n_slices // 2, key=f"slice_{cv.case_id}"
            )
        overlay = st.toggle(
            "Attribution heat map",
            value=heat is not None,
            key=f"overlay_{cv.case_id}",
            disabled=heat is None,
        )
        alpha = st.slider("Overlay opacity", 0.1, 1.0, 0.5, key="overlay_alpha") if overlay else 0.5
        st.caption(" · ".join(f"{k}: {v}" for k, v in img.info.items() if v not in (None, "", [])))
    with c2:
        shown = render_slice(img, index, window)
        caption = f"slice {index + 1}/{img.n_slices}" if img.n_slices > 1 else "image"
        if overlay and heat is not None:
            h = heatmap_for_slice(heat, index, img.n_slices, shown.shape[:2])
            if h is None:
                caption += f" · attributions exist for slice {img.n_slices // 2 + 1} only"
            else:
                shown = heatmap_overlay(shown, h, alpha)
                method = cv.explanation["within"]["image"]["method"] if cv.explanation else ""
                caption += f" · heat map ({method}): red raises, blue lowers the image logit"
        st.image(shown, caption=caption, width="stretch")


def _auto(img: DisplayImage) -> tuple[float, float]:
    lo, hi = np.percentile(img.slices, [1.0, 99.0])
    return float(lo + hi) / 2.0, max(float(hi - lo), 1.0)


def _masked_caption(counts: dict[str, int]) -> None:
    found = ", ".join(f"{n} × [{k}]" for k, n in sorted(counts.items())) or "none found"
    st.caption(
        "Identifiers found automatically are masked (" + found + "); automatic detection can "
        "miss names: de-identify the cohort with `clinfuse deid`."
    )


def _note_tab(cv: CaseView) -> None:
    row = cv.manifest
    image = row.image if row is not None else None
    mtime = image.stat().st_mtime if image is not None and image.exists() else 0.0
    manifest = str(view.cohort_path) if view.cohort_path is not None else None
    mask, context = _note_masking(manifest, str(image) if image else None, mtime)
    within = (cv.explanation or {}).get("within", {})
    if "note" in within:
        e = within["note"]
        tokens, values = list(e["tokens"]), list(e["values"])
        masked = e.get("identifiers_masked")
        if mask and masked is None:  # explained with the identifiers kept: mask them here
            r = mask_note_tokens(tokens, values, context)
            tokens, values, masked = r.tokens, r.values, dict(r.counts)
        st.caption(f"Token attributions ({e['method']}): red raises, blue lowers the note logit.")
        if masked is not None:
            _masked_caption(masked)
        st.html(charts.note_html(tokens, values))
        return
    try:
        text = view.note_text(cv)
    except ClinFuseError as e:
        st.error(f"The note cannot be shown: {e.reason}")
        return
    if text is None:
        st.info("No note for this case (missing modality).")
        return
    st.caption("No token attributions cached for this note yet.")
    if mask:
        text, counts = mask_note(text, context)
        _masked_caption(counts)
    st.text(text)


def _signal_tab(cv: CaseView) -> None:
    if cv.manifest is None or cv.manifest.signal is None:
        st.info("No signal for this case (missing modality).")
        return
    try:
        out = _signal(view, str(view.scored or view.run), cv.case_id)
    except ClinFuseError as err:
        st.error(f"The signal cannot be shown: {err.reason}")
        return
    if out is None:
        st.info("No signal for this case.")
        return
    sig, fs, names = out
    e = (cv.explanation or {}).get("within", {}).get("signal")
    spec = charts.signal_spec(
        sig,
        fs,
        names,
        segments_s=e["segments_s"] if e else None,
        segment_values=np.asarray(e["segment_values"]) if e else None,
    )
    st.caption(
        f"The window the model saw: {sig.shape[1] / fs:g} s at {fs:g} Hz, {len(names)} leads"
        + (
            f"; segment attributions ({e['method']}): red raises, blue lowers the signal logit"
            if e
            else "; no attributions cached"
        )
    )
    st.vega_lite_chart(spec, width="stretch")


def _tabular_tab(cv: CaseView) -> None:
    rows = view.tabular_values(cv)
    if not rows:
        st.info("The run uses no tabular values.")
        return
    frame = pd.DataFrame(rows)
    frame["shap"] = [ui.fmt(v, 4) for v in frame["shap"]]
    st.table(frame.set_index("feature"))


def _decision(cv: CaseView) -> None:
    st.subheader("Your decision")
    p = cv.prediction
    with st.form("decision_form", clear_on_submit=True):
        decision = st.radio(
            f"Do you agree with the model's risk {ui.fmt(p['p_fusion'])}?",
            DECISIONS,
            horizontal=True,
            key="decision",
        )
        corrected = st.selectbox(
            "Corrected label (optional)", ["—", "0 (no event)", "1 (event)"], key="corrected_label"
        )
        comment = st.text_area("Comment", key="comment", max_chars=10_000)
        submitted = st.form_submit_button("Save decision", key="submit_review", type="primary")
    if submitted:
        try:
            r = store.add_review(
                case_id=cv.case_id,
                reviewer=me,
                decision=str(decision),
                comment=comment,
                corrected_label=None if corrected == "—" else int(str(corrected)[0]),
                risk_shown=float(p["p_fusion"]),
                risk_low=_number(p["risk_low"]),
                risk_high=_number(p["risk_high"]),
                threshold=view.threshold,
                model_version=view.fingerprint,
                run_path=str(view.run),
            )
        except ClinFuseError as e:
            st.error(f"Not saved: {e}")
        else:
            st.success(f"Saved review #{r.review_id} ({r.decision}) for case {r.case_id}.")
    history = store.reviews(case_id=cv.case_id)
    if history:
        st.markdown("**Previous decisions** (every save is kept; newest last)")
        st.table(
            pd.DataFrame(
                [
                    {
                        "#": r.review_id,
                        "when (UTC)": r.created_at.replace("T", " ")[:19],
                        "reviewer": r.reviewer,
                        "decision": r.decision,
                        "label": "" if r.corrected_label is None else str(r.corrected_label),
                        "risk shown": ui.fmt(r.risk_shown),
                        "model": r.model_version,
                        "supersedes": "" if r.supersedes is None else f"#{r.supersedes}",
                        "comment": r.comment,
                    }
                    for r in history
                ]
            ).set_index("#")
        )


st.title("Case review")
ui.deid_banner(view)
cid = _pick_case()
if cid is not None:
    cv = view.case_view(cid)
    _header(cv)
    left, right = st.columns([3, 2])
    with right:
        _contributions(cv)
        if (
            cv.explanation is None
            and cv.manifest is not None
            and st.button("Compute the explanation now (10-60 s)", key="compute_explanation")
        ):
            with st.spinner("Explaining this case…"):
                try:
                    view.compute_explanation(cid)
                except (ClinFuseError, OSError) as err:
                    st.error(f"The explanation could not be computed: {err}")
                else:
                    st.rerun()
        if cv.explanation and cv.explanation.get("warnings"):
            st.caption("Explainer notes: " + "; ".join(cv.explanation["warnings"]))
    with left:
        tabs = st.tabs(["Image", "Note", "Signal", "Tabular"])
        with tabs[0]:
            _image_tab(cv)
        with tabs[1]:
            _note_tab(cv)
        with tabs[2]:
            _signal_tab(cv)
        with tabs[3]:
            _tabular_tab(cv)
    if "manifest" in cv.errors:
        st.warning(cv.errors["manifest"])
    _decision(cv)
    st.session_state["case_render_seconds"] = time.perf_counter() - t_start
    st.caption(f"page built in {st.session_state['case_render_seconds']:.2f} s")
