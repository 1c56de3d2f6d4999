"""Smoke test of ``python -m benchmarks``: valid JSON lines with the agreed fields.

Runs the cheapest benchmark (``bootstrap --quick``, a few seconds) in a child process, the
way users run it, and checks each line's fields, that ``ratio_to_baseline`` is the ratio
of the two values it reports, and that ``--out`` receives the same lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {
    "benchmark",
    "figure",
    "value",
    "unit",
    "baseline",
    "ratio_to_baseline",
    "config",
    "machine",
    "cpu_count",
    "device",
    "torch",
    "quick",
    "date",
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_quick_bootstrap_prints_one_valid_json_line_per_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    proc = _run("bootstrap", "--quick", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["figure"] for r in lines] == ["seconds", "ns_per_case_replicate"] * 3
    assert {r["config"]["metric"] for r in lines} == {"auroc", "auprc", "brier"}
    for r in lines:
        assert set(r) >= FIELDS, FIELDS - set(r)
        assert r["benchmark"] == "bootstrap" and r["quick"] is True
        assert r["torch"].startswith("2.") and r["cpu_count"] >= 1
        assert r["value"] > 0
        if r["baseline"] is not None:
            # time figures: ratio = baseline / value (> 1 = clinfuse faster)
            assert r["ratio_to_baseline"] == pytest.approx(r["baseline"] / r["value"], rel=1e-2)
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines


def test_unknown_benchmark_is_a_usage_error_naming_the_known_ones() -> None:
    proc = _run("no_such_bench", "--quick")
    assert proc.returncode == 2
    assert "no_such_bench" in proc.stderr and "seed_baseline" in proc.stderr
    listing = _run("--list")
    assert listing.returncode == 0
    for name in ("seed_baseline", "cache_fill", "inference", "explain", "bootstrap", "demo"):
        assert name in listing.stdout
