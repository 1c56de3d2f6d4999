"""Privacy utilities for multi-site clinical data.

This package is generic: it works on files, PyTorch modules and data loaders, and never
imports :mod:`clinfuse` or the app. De-identification (DICOM PS3.15 Annex E, notes,
pseudonyms), federated training (Flower) and differential privacy (Opacus) land here; see
the project's issues for their status. Nothing is implemented in it yet.
"""
