"""Shared Streamlit pieces of the review dashboard: cached resources, login state, errors.

UI only: the logic lives in :mod:`clinfuse.review`.
"""

from __future__ import annotations

import threading
from typing import Any

import streamlit as st

from clinfuse.errors import ClinFuseError
from clinfuse.review.runview import RunView, import_model_stack, open_run_view
from clinfuse.review.settings import AppSettings
from clinfuse.review.store import ReviewStore

PAGES = {
    "login": "pages/login.py",
    "worklist": "pages/worklist.py",
    "case": "pages/case_review.py",
    "cohort": "pages/cohort.py",
    "export": "pages/export.py",
}


@st.cache_resource(show_spinner="Opening the run…")
def _run_view(settings: AppSettings) -> RunView:
    # PyTorch and MONAI load in the background while the reviewer logs in and reads the
    # worklist; the case page waits for them (import_model_stack holds one lock)
    threading.Thread(target=import_model_stack, name="clinfuse-imports", daemon=True).start()
    return open_run_view(
        settings.run,
        cohort=settings.cohort,
        evaluation=settings.evaluation,
        threshold=settings.threshold,
        predictions=settings.predictions,
        explanations=settings.explanations,
        monitoring=settings.monitoring,
    )


@st.cache_resource
def _store(path: str) -> ReviewStore:
    return ReviewStore(path)


def settings() -> AppSettings:
    """The app settings (from the environment ``clinfuse app`` sets)."""
    return AppSettings.from_env()


def open_context() -> tuple[RunView, ReviewStore] | str:
    """The run and review store, or the message to show when they cannot be opened."""
    try:
        s = settings()
        return _run_view(s), _store(str(s.db))
    except ClinFuseError as e:
        return str(e)


def context() -> tuple[RunView, ReviewStore]:
    """The run and store for a page (the entry script has checked that they open)."""
    ctx = open_context()
    if isinstance(ctx, str):
        st.error(ctx)
        st.stop()
    assert not isinstance(ctx, str)
    return ctx


def reviewer() -> str:
    """The logged-in reviewer (pages other than login are shown only after login).

    An account deactivated while its session is open (``clinfuse app RUN
    --deactivate-reviewer NAME``) is logged out on its next interaction.
    """
    name = st.session_state.get("reviewer")
    if name:
        _, store = context()
        account = store.reviewer(str(name))
        if account is None or not account["active"]:
            st.session_state.pop("reviewer", None)
            st.session_state["logged_out_because"] = f"the account {name!r} is deactivated"
            name = None
    if not name:
        st.switch_page(PAGES["login"])
    return str(name)


def oidc_configured() -> bool:
    """Whether ``st.login`` (OIDC) is configured in the app's secrets (``[auth]``)."""
    try:
        return "auth" in st.secrets
    except (FileNotFoundError, KeyError, ValueError):  # no secrets.toml, or an unreadable one
        return False


def oidc_identity() -> tuple[dict[str, str] | None, str | None]:
    """``(identity, problem)`` of a single sign-on through ``st.login``.

    ``identity`` (``email``, ``name``) when Streamlit holds a login with a usable e-mail;
    ``problem`` says why a login Streamlit accepted gives no reviewer (an e-mail the provider
    marks unverified, or none); ``(None, None)`` when nobody logged in through OIDC.
    """
    try:
        user = st.user
        if not bool(user.get("is_logged_in")):
            return None, None
        if user.get("email_verified") is False:  # an unverified e-mail is not an identity
            return None, "the identity provider says this e-mail address is not verified"
        email = user.get("email")
        if not email:
            return None, (
                "the identity provider sent no e-mail address (ask for the 'email' scope, or "
                "add an e-mail claim at the provider)"
            )
        return {"email": str(email), "name": str(user.get("name") or email)}, None
    except (AttributeError, KeyError):
        return None, None


def deid_banner(view: RunView) -> None:
    """A warning when the cohort was not produced by ``clinfuse deid``."""
    if view.deidentified is False:
        st.warning(
            "This cohort has no `deid_report.json`: it was not de-identified with "
            "`clinfuse deid`. Identifiers found automatically in notes are masked, but "
            "automatic detection can miss some. DICOM header identifiers are never shown.",
            icon="⚠️",
        )


def fmt(x: Any, digits: int = 3) -> str:
    """A number for display ("–" for missing)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if v != v else f"{v:.{digits}f}"
