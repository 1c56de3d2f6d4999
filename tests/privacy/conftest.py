"""Fixtures for the privacy tests: keys, a shared text de-identifier, a tiny synth cohort."""

from __future__ import annotations

from pathlib import Path

import pytest

from privacy.pseudonym import Pseudonymizer

SECRET = b"test-secret-0123456789abcdef-0123456789"
OTHER_SECRET = b"another-secret-9876543210fedcba-98765432"


@pytest.fixture(scope="session")
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(SECRET)


@pytest.fixture(scope="session")
def text_deid(pseudonymizer: Pseudonymizer):
    """One TextDeidentifier for the session (importing presidio/spaCy takes seconds)."""
    from privacy.text import TextDeidentifier

    return TextDeidentifier(pseudonymizer)


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-case synthetic cohort with fake PHI in DICOM headers and notes (read-only)."""
    from clinfuse.synth import synthesize_cohort

    out = tmp_path_factory.mktemp("synth") / "cohort"
    synthesize_cohort(out, n_cases=16, seed=3, missing=0.0)
    return out
