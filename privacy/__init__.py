"""Privacy utilities for multi-site clinical data.

This package is generic: it works on files, folders, pydicom datasets, strings and pandas
tables, and never imports :mod:`clinfuse` or the app. Heavy dependencies (pydicom,
dicom-anonymizer, presidio-analyzer, Faker) load when a module is used, not on
``import privacy``.

Modules:

* :mod:`privacy.pseudonym` — keyed pseudonyms (HMAC-SHA256), DICOM UIDs and per-patient date
  shifts; the secret comes from a file or ``$CLINFUSE_DEID_SECRET`` and an empty or missing
  secret is refused.
* :mod:`privacy.dicom` — DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile
  with options (rule table from the ``dicom-anonymizer`` package), recursive into sequences,
  consistent UIDs, marking attributes, quarantine of burned-in annotation; structured
  content (SR text) never kept verbatim.
* :mod:`privacy.pixels` — Clean Pixel Data: burned-in text masked by OCR (Tesseract) and
  region rules, verified by reading the pixels again.
* :mod:`privacy.archive` — DICOM inside zip archives, listed and unpacked safely.
* :mod:`privacy.edf` — EDF+/BDF+ annotation texts de-identified in place.
* :mod:`privacy.text` — HIPAA Safe Harbor identifiers in free text: presidio-analyzer's
  offline recognizers, our own patterns, name dictionaries and context rules, deny-lists from
  structured data; consistent surrogates or ``[TYPE]`` tags.
* :mod:`privacy.cohort` — a whole cohort folder (manifest + files) de-identified atomically,
  with ``deid_report.json`` and a residual-risk scan.
* :mod:`privacy.suppression` — small-cell (k-threshold) suppression of count tables.
* :mod:`privacy.federated` — federated training: the ``SiteTask`` contract, server strategies
  (FedAvg, FedProx, FedAdam, FedYogi), the in-process simulator, site partitions and a
  generic PyTorch site task (:mod:`privacy.flower` runs the same tasks under Flower).
* :mod:`privacy.dp` — sample-level DP-SGD with Opacus and its (ε, δ) accounting.
* :mod:`privacy.errors` — the exception types (:class:`~privacy.errors.PrivacyError` tree).

>>> from privacy.pseudonym import Pseudonymizer, load_secret
>>> from privacy.cohort import deidentify_cohort  # doctest: +SKIP

Opacus and Flower load when :mod:`privacy.dp` / :mod:`privacy.flower` functions are called.
"""

from privacy.errors import (
    DeidError,
    DicomDeidError,
    NoteEncodingError,
    OutputFolderError,
    PrivacyError,
    ResidualRiskError,
    SecretKeyError,
)

__all__ = [
    "DeidError",
    "DicomDeidError",
    "NoteEncodingError",
    "OutputFolderError",
    "PrivacyError",
    "ResidualRiskError",
    "SecretKeyError",
]
