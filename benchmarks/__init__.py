"""clinfuse benchmarks: speed and memory, one JSON line per figure (not part of the test suite).

    python -m benchmarks --list
    python -m benchmarks --quick                       # every benchmark, CPU sizes
    python -m benchmarks seed_baseline --device cuda   # one benchmark, full GPU sizes
    python -m benchmarks --device cuda --out benchmarks/results.jsonl

Each line holds the benchmark, the figure, its value and unit, the configuration,
the machine (host, CPU count, device, torch version) and, where a baseline applies,
the baseline value measured in the same process and ``ratio_to_baseline`` (> 1 =
clinfuse faster or leaner).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

_MODULES: dict[str, str] = {
    "seed_baseline": "benchmarks.seed_baseline",
    "cache_fill": "benchmarks.cache_fill",
    "inference": "benchmarks.inference",
    "explain": "benchmarks.explain",
    "bootstrap": "benchmarks.bootstrap",
    "monitoring": "benchmarks.monitoring",
    "demo": "benchmarks.demo",
    "scaling": "benchmarks.scaling",
    "train_step": "benchmarks.train_step",
    "deid": "benchmarks.deid",
}


class _Lazy:
    """Imports a benchmark module when it is run (so ``--list`` stays instant)."""

    def __init__(self, module: str) -> None:
        self.module = module

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def run(self, ctx: Any) -> None:
        self.load().run(ctx)


BENCHMARKS: dict[str, _Lazy] = {name: _Lazy(mod) for name, mod in _MODULES.items()}

_SUMMARIES: dict[str, str] = {
    "seed_baseline": "seed design (BERT-base + ResNet-50, concat, fp32 Adam, naive loading) "
    "vs clinfuse's training step, both from real files: samples/s, ratio, loader share",
    "cache_fill": "frozen-encoder cache fill (notes/s, images/s, signals/s) and cached "
    "fusion-head training (cases/s)",
    "inference": "one case files -> fused risk (latency), cohort predict (cases/s)",
    "explain": "modality Shapley from the cache (ms/case), one full case explanation (s)",
    "bootstrap": "2,000 bootstrap replicates on 100,000 cases vs per-replicate resampling",
    "monitoring": "100,000 cases: dates, metrics per month and calibration drift, conformal "
    "sets and their coverage per site, heterogeneity tests",
    "demo": "`clinfuse demo`: wall time and peak memory (incl. children)",
    "scaling": "cached path (pack + stream-train heads + Shapley) vs cohort size: time, memory",
    "train_step": "fusion-network training step on synthetic tensors, fp32 vs bf16 (GPU)",
    "deid": "DICOM profile (files/s) vs dicom-anonymizer, whole-cohort deid (cases/s), "
    "burned-in text removal (s/image, parallel vs sequential OCR)",
}


def describe() -> str:
    """One line per benchmark."""
    width = max(map(len, _SUMMARIES))
    return "benchmarks:\n" + "\n".join(
        f"  {name.ljust(width)}  {_SUMMARIES[name]}" for name in BENCHMARKS
    )


__all__ = ["BENCHMARKS", "describe"]
