"""Cohort: the evaluation's key figures (ROC, calibration, decision curve, subgroups,
modality ablation), interactive."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import ui_common as ui

from clinfuse.errors import ClinFuseError
from clinfuse.review import charts
from clinfuse.review.cohort import (
    cohort_curves,
    load_cohort_results,
    monitoring_site_table,
    monitoring_table,
    scored_case_mix_table,
)

view, store = ui.context()
ui.reviewer()
st.title("Cohort")


def show_monitoring() -> None:
    table, text = monitoring_table(view)
    if table is None:
        return
    st.subheader("Monitoring by period")
    st.write(text)
    st.dataframe(table, hide_index=True, width="stretch")
    sites, sites_text = monitoring_site_table(view)
    if sites is not None:
        st.subheader("Monitoring by site")
        st.write(sites_text)
        st.dataframe(sites, hide_index=True, width="stretch")


try:
    res = load_cohort_results(view)
except ClinFuseError as e:
    st.error(str(e))
    table, text = scored_case_mix_table(view)  # new patients: compared before outcomes arrive
    if table is not None:
        st.subheader("Case mix vs development data")
        st.write(text)
        st.dataframe(table, hide_index=True, width="stretch")
    elif text:
        st.subheader("Case mix vs development data")
        st.info(text)
    show_monitoring()
    st.stop()
st.caption(res.source)
if view.recalibration:
    st.info(view.recalibration)
m1, m2, m3 = st.columns(3)
m1.metric("cases", res.n_cases)
m2.metric("events", res.n_events)
m3.metric("fused AUROC", ui.fmt(res.aurocs.get("fusion")))

models = st.multiselect(
    "Models", res.models, default=res.models[:1] + [m for m in res.models[1:2]], key="cohort_models"
)
curves = cohort_curves(res, models or ["fusion"])
t1, t2, t3 = st.tabs(["ROC", "Calibration", "Decision curve"])
with t1:
    st.vega_lite_chart(charts.roc_spec(curves["roc"], res.aurocs), width="stretch")
with t2:
    if curves["calibration"] is None:
        st.info("Calibration needs both outcomes among the cases.")
    else:
        st.vega_lite_chart(charts.calibration_spec(curves["calibration"]), width="stretch")
        st.caption("Fused risk: binned observed proportions with 95 % CIs, flexible curve in red.")
with t3:
    max_t = st.slider("Largest threshold shown", 0.1, 0.99, 0.6, key="dca_max")
    st.vega_lite_chart(charts.decision_curve_spec(curves["dca"], max_t), width="stretch")

st.subheader("Subgroups")
if res.subgroups is None:
    st.info("Run `clinfuse evaluate RUN COHORT --out DIR --subgroups sex,age_band` for subgroups.")
else:
    st.dataframe(res.subgroups, hide_index=True, width="stretch")
    if res.subgroups_text:
        st.caption(res.subgroups_text)
    if res.funnels:
        grouping = st.selectbox("Funnel plot of", list(res.funnels), key="funnel_grouping")
        st.vega_lite_chart(charts.funnel_spec(res.funnels[grouping], grouping), width="stretch")
        st.caption(
            "Each group's events against the model's expectation: outside the dashed (95 %) or "
            "dotted (99.8 %) limits, a group has more or fewer events than its risks predict."
        )
st.subheader("Modality ablation")
if res.ablation is None:
    st.info("Run `clinfuse evaluate` for the modality ablation.")
else:
    st.dataframe(res.ablation, hide_index=True, width="stretch")
if res.robustness is not None:
    st.caption("Robustness: AUROC with one modality removed")
    st.dataframe(res.robustness, hide_index=True, width="stretch")
if res.over_time is not None:
    st.subheader("Performance over time")
    st.write(res.over_time_text)
    st.dataframe(res.over_time, hide_index=True, width="stretch")
if res.conformal is not None:
    st.subheader("Conformal prediction sets")
    st.write(res.conformal_text)
    st.dataframe(res.conformal, hide_index=True, width="stretch")
st.subheader("Case mix vs development data")
if res.case_mix is None:
    st.info(
        res.case_mix_text
        or "Run `clinfuse evaluate RUN COHORT --out DIR` on the run folder for the comparison."
    )
else:
    st.write(res.case_mix_text)
    st.dataframe(res.case_mix, hide_index=True, width="stretch")
if isinstance(res.subgroups, pd.DataFrame) and res.subgroups.empty:
    st.caption("(no subgroup met the minimum size)")
show_monitoring()
