"""Shared fixtures: tiny cohorts written to temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test touches the network: make Hugging Face libraries fail fast instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def write_manifest(tmp_path: Path):
    """Write a CSV manifest from rows (dicts) into ``tmp_path`` and return its path."""
    import pandas as pd

    def _write(rows: list[dict], name: str = "manifest.csv") -> Path:
        path = tmp_path / name
        frame = pd.DataFrame(rows)
        if name.endswith(".parquet"):
            frame.to_parquet(path)
        else:
            frame.to_csv(path, index=False)
        return path

    return _write
