"""pyproject.toml lists every package by hand (the dashboard ships as `clinfuse_app`): keep it complete.

The wheel itself is built and run in tests/app/test_app_wheel.py."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _listed_packages() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["tool"]["setuptools"]["packages"])


def test_the_package_list_names_every_package_in_the_source_tree() -> None:
    setuptools = pytest.importorskip("setuptools", reason="setuptools builds the wheel")
    found = set(
        setuptools.find_namespace_packages(where=str(ROOT), include=["clinfuse*", "privacy*"])
    )
    app = {
        "clinfuse_app"
        + ("" if d == ROOT / "app" else "." + ".".join(d.relative_to(ROOT / "app").parts))
        for d in [ROOT / "app", *(p for p in (ROOT / "app").rglob("*") if p.is_dir())]
        if d.name != "__pycache__" and any(d.glob("*.py"))
    }
    listed = _listed_packages()
    assert len(listed) == len(set(listed))
    assert set(listed) == found | app, "update [tool.setuptools] packages in pyproject.toml"
