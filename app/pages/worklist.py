"""Worklist: cases sorted by risk or uncertainty, filters, review progress."""

from __future__ import annotations

import streamlit as st
import ui_common as ui

from clinfuse.review.worklist import STATUS_FILTERS, filter_worklist, sort_worklist

view, store = ui.context()
me = ui.reviewer()
st.title("Worklist")
ui.deid_banner(view)
if view.recalibration:
    st.info(view.recalibration)
if view.source_note:
    st.info(view.source_note)

table = view.worklist(store.review_status(), reviewer=me)
n_total = len(table)
n_any = int((table["n_reviewers"] > 0).sum())
n_mine = int((table["my_decision"] != "").sum())
c1, c2, c3 = st.columns(3)
c1.metric("cases", n_total)
c2.metric("reviewed by anyone", f"{n_any} / {n_total}")
c3.metric("reviewed by you", f"{n_mine} / {n_total}")
st.progress(n_mine / n_total if n_total else 0.0, text=f"your progress: {n_mine} of {n_total}")

with st.expander("Filters and sorting", expanded=True):
    f1, f2, f3 = st.columns(3)
    sort_by = f1.selectbox(
        "Sort by",
        ["risk (highest first)", "uncertainty (widest band first)", "case id"],
        key="sort_by",
    )
    status = f2.selectbox("Review status", list(STATUS_FILTERS), key="filter_status")
    bands = f3.multiselect(
        f"Risk vs threshold {view.threshold:g}",
        ["above", "straddles", "below"],
        default=["above", "straddles", "below"],
        key="filter_band",
        help="'straddles': the uncertainty band contains the threshold",
    )
    g1, g2 = st.columns(2)
    sites = sorted({s for s in table["site"] if s})
    chosen_sites = g1.multiselect("Sites", sites, default=sites, key="filter_site")
    need = g2.multiselect(
        "Must have modalities", view.modalities, default=[], key="filter_modalities"
    )
    conformal_sets = None
    if view.conformal is not None:
        kinds = ["positive", "uncertain", "negative", "empty"]
        conformal_sets = st.multiselect(
            view.conformal.title,
            kinds,
            default=kinds,
            key="filter_conformal",
            help=view.conformal.describe(),
        )

shown = filter_worklist(
    table,
    sites=chosen_sites if sites else None,
    status=status,
    bands=bands,
    modalities=need,
    conformal_sets=conformal_sets,
)
shown = sort_worklist(shown, sort_by.split(" ")[0])
st.session_state["worklist_order"] = list(shown["case_id"])
st.caption(f"{len(shown)} of {n_total} cases shown")

event = st.dataframe(
    shown,
    hide_index=True,
    width="stretch",
    on_select="rerun",
    selection_mode="single-row",
    key="worklist_table",
    column_config={
        "risk": st.column_config.ProgressColumn(
            "risk", min_value=0.0, max_value=1.0, format="%.3f"
        ),
        "risk_low": st.column_config.NumberColumn("band low", format="%.3f"),
        "risk_high": st.column_config.NumberColumn("band high", format="%.3f"),
        "uncertainty": st.column_config.NumberColumn("band width", format="%.3f"),
        "conformal_set": st.column_config.TextColumn(
            "conformal set",
            help="the outcomes the risk does not rule out (positive, negative, uncertain: "
            "both, empty: neither)",
        ),
        "input_warnings": st.column_config.NumberColumn(
            "out of range",
            help="inputs outside the training data (details on the case page)",
        ),
        # new patients scored later have no split: the column would be empty
        **({"split": None} if table["split"].isna().all() else {}),
    },
)
rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
if rows:
    st.session_state["case_id"] = str(shown.iloc[rows[0]]["case_id"])
    st.switch_page(ui.PAGES["case"])

if len(shown):
    o1, o2 = st.columns([3, 1])
    pick = o1.selectbox("Open case", list(shown["case_id"]), key="open_case_select")
    if o2.button("Open this case", key="open_case", type="primary"):
        st.session_state["case_id"] = pick
        st.switch_page(ui.PAGES["case"])
else:
    st.info("No case matches the filters.")
