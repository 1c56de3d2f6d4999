"""`pip install clinfuse[app]` is enough for `clinfuse app`: the wheel ships the dashboard as the
package `clinfuse_app`, `app_script()` finds it there, and the installed copy runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_the_dashboard_and_it_runs_from_site_packages(
    tmp_path: Path, app_env: dict[str, str], password: str
) -> None:
    pytest.importorskip("setuptools", reason="setuptools builds the wheel")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("clinfuse", "privacy", "app"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("clinfuse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    app_files = {
        "clinfuse_app/" + p.relative_to(ROOT / "app").as_posix()
        for p in (ROOT / "app").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert app_files and app_files <= names
    assert {
        "clinfuse/py.typed",
        "privacy/flower/app/pyproject.toml",
        "clinfuse_app/README.md",
    } <= names

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a wheel is a zip of the site-packages tree
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import clinfuse; from clinfuse.review.cli import app_script; print(clinfuse.__file__); print(app_script())",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    package_file, script = (Path(line) for line in probe.stdout.split())
    assert package_file.is_relative_to(target)  # the installed copy, not the checkout
    assert script == (target / "clinfuse_app" / "streamlit_app.py").resolve()

    # the installed dashboard runs: the login page of the tiny run, then the worklist
    app_test = f"""
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(script)!r}, default_timeout=120).run()
assert not at.exception, [e.value for e in at.exception]
at.text_input(key="login_username").input("alice")
at.text_input(key="login_password").input({password!r})
at.button(key="login_submit").click().run()
assert not at.exception, [e.value for e in at.exception]
print(at.session_state["reviewer"], len(at.dataframe))
"""
    shown = subprocess.run(
        [sys.executable, "-c", app_test],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **app_env, "PYTHONPATH": str(target)},
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    reviewer, tables = shown.stdout.split()[-2:]
    assert reviewer == "alice" and int(tables) >= 1
