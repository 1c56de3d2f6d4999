"""Export: every review as CSV for adjudication studies; Cohen's kappa between
reviewers and between each reviewer and the model."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import ui_common as ui

from clinfuse.review.agreement import agreement_summary
from clinfuse.review.export import reviews_csv

view, store = ui.context()
me = ui.reviewer()
st.title("Export and agreement")

reviews = store.reviews()
latest = st.toggle(
    "Only each reviewer's latest decision per case", value=False, key="export_latest"
)
rows = store.reviews(latest_only=True) if latest else reviews
st.metric("reviews", len(rows))
data = reviews_csv(rows)
if st.download_button(
    "Download reviews (CSV)",
    data=data,
    file_name=f"{view.scored.stem if view.scored else view.run.name}_reviews.csv",
    mime="text/csv",
    key="download_reviews",
    on_click="ignore",
):
    store.log_event(me, "export", n_rows=len(rows))
st.dataframe(pd.DataFrame([r.as_dict() for r in rows]), hide_index=True, width="stretch")

st.subheader("Agreement (Cohen's kappa, latest decision per reviewer and case)")
summary = agreement_summary(reviews)
st.markdown("**Between reviewers** (decisions agree / disagree / uncertain)")
if summary["reviewers"]:
    st.table(pd.DataFrame(summary["reviewers"]))
else:
    st.info("Needs two reviewers with cases in common.")
st.markdown(
    "**Reviewer vs model** (reviewer's label — corrected label, or implied by agree/disagree — "
    "against risk ≥ threshold; 'uncertain' without a label left out)"
)
if summary["model"]:
    st.table(pd.DataFrame(summary["model"]))
else:
    st.info("No reviews yet.")
