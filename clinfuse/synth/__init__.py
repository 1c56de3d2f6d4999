"""Synthetic demo cohorts in real file formats (DICOM, WFDB, UTF-8 notes, CSV).

>>> from clinfuse.synth import synthesize_cohort
>>> manifest = synthesize_cohort("demo_cohort", n_cases=40, seed=0)  # doctest: +SKIP

See ``docs/demo_cohort.md`` for the generating process.
"""

from __future__ import annotations

from clinfuse.synth.generator import (
    BETA,
    DEFAULT_MISSING,
    MARKER_FILE,
    SITES,
    TABULAR_COLUMNS,
    simulate_latents,
    synthesize_cohort,
)

__all__ = [
    "BETA",
    "DEFAULT_MISSING",
    "MARKER_FILE",
    "SITES",
    "TABULAR_COLUMNS",
    "simulate_latents",
    "synthesize_cohort",
]
