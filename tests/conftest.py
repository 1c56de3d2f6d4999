"""Shared fixtures: tiny cohorts written to temporary folders."""

from __future__ import annotations

import os
import sys
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


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Put back ``sys.modules["__main__"]`` after each test.

    Streamlit's script runner (``AppTest``) installs the app script as ``__main__`` and
    leaves it there; a later test in the same worker that starts ``forkserver``/``spawn``
    processes would then re-run the app script in every child (multiprocessing
    re-imports ``__main__`` from its ``__file__``) and the children die.
    """
    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main


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


def tiny_config(**training):
    """A run config with tiny encoders for tests (seconds on CPU)."""
    from clinfuse.config import RunConfig
    from clinfuse.synth import TABULAR_COLUMNS

    encoders = {
        "image": {"name": "small_cnn", "embed_dim": 8, "width": 4},
        "signal": {"name": "resnet1d", "embed_dim": 8, "width": 4, "depth": 2},
        "tabular": {"name": "mlp", "embed_dim": 4, "hidden": [8]},
    }
    # a machine without the MiniLM wheel (the GPU box) points this at another local BERT folder
    text_model = os.environ.get("CLINFUSE_TEST_TEXT_MODEL")
    if text_model:
        encoders["note"] = {"name": "transformer", "freeze": True, "model_name_or_path": text_model}
    return RunConfig.model_validate(
        {
            "data": {
                "tabular_columns": list(TABULAR_COLUMNS),
                "image": {"spatial_size": [32, 32], "window": "ct_soft_tissue"},
                "signal": {"target_fs": 50.0, "duration_s": 4.0},
                "split_fractions": [0.5, 0.25, 0.25],
            },
            "encoders": encoders,
            "training": {"epochs": 2, "batch_size": 16, "patience": 2, **training},
        }
    )


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A 64-case synthetic cohort with 32² images and 4-s ECGs at 50 Hz (session-wide)."""
    from clinfuse.synth import synthesize_cohort

    root = tmp_path_factory.mktemp("tiny")
    return synthesize_cohort(
        root / "cohort", n_cases=64, seed=3, image_size=32, signal_fs=50, signal_seconds=4.0
    )


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort, tmp_path_factory) -> Path:
    """A late-fusion run trained on ``tiny_cohort`` with :func:`tiny_config` (session-wide)."""
    from clinfuse.training import train_run

    out = tmp_path_factory.mktemp("runs") / "r1"
    return train_run(tiny_cohort, out, tiny_config())
