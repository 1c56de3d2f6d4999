"""The clinician review workflow behind the dashboard (``clinfuse app``).

Everything here is plain Python the Streamlit pages in ``app/`` call; nothing
imports Streamlit.

- :mod:`~clinfuse.review.store`: the SQLite review store (WAL, transactions,
  append-only audit trail, schema version);
- :mod:`~clinfuse.review.auth`: local reviewer accounts (scrypt password hashes);
- :mod:`~clinfuse.review.agreement`: Cohen's kappa between reviewers and with the model;
- :mod:`~clinfuse.review.runview`: a run as the app sees it (worklist, uncertainty
  band, one case's data and cached explanations);
- :mod:`~clinfuse.review.imaging`: de-identified image display (DICOM modality and
  VOI LUTs, window presets, slices, heat-map overlay);
- :mod:`~clinfuse.review.charts`: Vega-Lite chart specs and the highlighted note.
"""

from __future__ import annotations

from clinfuse._lazy import lazy_exports

_LAZY = {
    "ReviewStore": "clinfuse.review.store",
    "Review": "clinfuse.review.store",
    "DECISIONS": "clinfuse.review.store",
    "default_db_path": "clinfuse.review.store",
    "add_reviewer": "clinfuse.review.auth",
    "authenticate": "clinfuse.review.auth",
    "hash_password": "clinfuse.review.auth",
    "verify_password": "clinfuse.review.auth",
    "cohen_kappa": "clinfuse.review.agreement",
    "agreement_summary": "clinfuse.review.agreement",
    "RunView": "clinfuse.review.runview",
    "open_run_view": "clinfuse.review.runview",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
