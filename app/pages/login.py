"""Log in: a local reviewer account (scrypt-hashed password) or single sign-on (st.login)."""

from __future__ import annotations

import streamlit as st
import ui_common as ui

from clinfuse.review.auth import authenticate, first_account_commands

view, store = ui.context()
st.title("clinfuse review: log in")
if st.session_state.get("reviewer"):
    st.success(f"Logged in as {st.session_state['reviewer']}.")
    st.page_link(ui.PAGES["worklist"], label="Go to the worklist", icon=":material/checklist:")
    st.stop()
ui.deid_banner(view)
if reason := st.session_state.pop("logged_out_because", None):
    st.error(f"Logged out: {reason}.")

if ui.oidc_configured():
    refused = st.session_state.pop("sso_refused", None)
    if refused:
        st.error(f"Single sign-on refused: {refused}")
        if st.button("Log out of single sign-on", key="logout_oidc"):
            st.logout()
    elif st.button("Log in with single sign-on", key="login_oidc", type="primary"):
        st.login()
    st.caption("or with a local reviewer account:")

if not store.reviewers():
    add, *copy = first_account_commands(view, store.path)
    st.info(
        "No reviewer account exists yet. Add one from a terminal:\n\n"
        f"`{add}`" + "".join(f"\n\nor copy the run's reviewers:\n\n`{c}`" for c in copy)
    )

with st.form("login_form"):
    username = st.text_input("Username", key="login_username")
    password = st.text_input("Password", type="password", key="login_password")
    submitted = st.form_submit_button("Log in", key="login_submit")
if submitted:
    name = authenticate(store, username, password)
    if name is None:
        st.error("Unknown username or wrong password.")
    else:
        st.session_state["reviewer"] = name
        st.switch_page(ui.PAGES["worklist"])
