"""Entry point of the clinfuse review dashboard: ``clinfuse app RUN`` (or ``streamlit run``
this file with ``CLINFUSE_APP_RUN`` set). Routes between the pages with ``st.navigation``."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import ui_common as ui  # noqa: E402 - needs the folder on sys.path first

from clinfuse.errors import ConfigError  # noqa: E402

st.set_page_config(page_title="clinfuse review", page_icon=":material/stethoscope:", layout="wide")


def _problem_page() -> None:
    st.title("clinfuse review dashboard")
    st.error(f"The dashboard cannot open its run: {st.session_state.get('_open_error')}")
    st.markdown(
        "Start it on a finished run folder: `clinfuse app RUN` "
        "(for example `clinfuse demo --out demo` then `clinfuse app demo/run`)."
    )


ctx = ui.open_context()
if isinstance(ctx, str):
    st.session_state["_open_error"] = ctx
    st.navigation([st.Page(_problem_page, title="Problem", url_path="problem")]).run()
    st.stop()

view, store = ctx
oidc, oidc_problem = ui.oidc_identity()
if oidc_problem and not st.session_state.get("reviewer"):
    st.session_state["sso_refused"] = oidc_problem
if oidc and not st.session_state.get("reviewer"):
    try:
        store.ensure_oidc_reviewer(oidc["email"], oidc["name"])
    except ConfigError as e:  # a local or deactivated account's name: refuse, say why
        st.session_state["sso_refused"] = str(e)
    else:
        store.log_event(oidc["email"], "login", method="oidc")
        st.session_state["reviewer"] = oidc["email"]

reviewer = st.session_state.get("reviewer")
pages = {
    "login": st.Page(
        ui.PAGES["login"],
        title="Log in",
        icon=":material/login:",
        url_path="login",
        default=not reviewer,
        visibility="hidden" if reviewer else "visible",
    ),
    "worklist": st.Page(
        ui.PAGES["worklist"],
        title="Worklist",
        icon=":material/checklist:",
        url_path="worklist",
        default=bool(reviewer),
    ),
    "case": st.Page(
        ui.PAGES["case"], title="Case review", icon=":material/radiology:", url_path="case"
    ),
    "cohort": st.Page(
        ui.PAGES["cohort"], title="Cohort", icon=":material/monitoring:", url_path="cohort"
    ),
    "export": st.Page(
        ui.PAGES["export"], title="Export", icon=":material/download:", url_path="export"
    ),
}
if reviewer:
    nav = st.navigation(
        {
            "Review": [pages["worklist"], pages["case"]],
            "Research": [pages["cohort"], pages["export"]],
            "Account": [pages["login"]],
        }
    )
    with st.sidebar:
        st.caption(f"Reviewer: **{reviewer}**")
        what = "Fold ensemble" if view.ensemble else "Run"
        st.caption(f"{what}: `{view.run.name}` · model `{view.fingerprint}`")
        if view.scored is not None:
            st.caption(f"Cases: `{view.scored.name}` (scored by `clinfuse predict`)")
        if st.button("Log out", key="logout"):
            store.log_event(str(reviewer), "logout")
            st.session_state.pop("reviewer", None)
            if oidc:
                # the browser goes to the provider's end-session page and back to the login
                # page; a rerun now (switch_page) could overtake that redirect
                st.logout()
                st.stop()
            st.switch_page(ui.PAGES["login"])
else:
    # every page stays registered (so links and switch_page resolve); pages need a login
    nav = st.navigation(list(pages.values()), position="hidden")
nav.run()
