"""Fusion strategies behind one interface: late (default), early and intermediate."""

from clinfuse.fusion.base import (
    FUSION_STRATEGIES,
    FusionConfig,
    FusionHead,
    FusionOutput,
    build_fusion,
    modality_dropout,
)
from clinfuse.fusion.early import EarlyFusion
from clinfuse.fusion.intermediate import IntermediateFusion
from clinfuse.fusion.late import LateFusion

__all__ = [
    "FUSION_STRATEGIES",
    "EarlyFusion",
    "FusionConfig",
    "FusionHead",
    "FusionOutput",
    "IntermediateFusion",
    "LateFusion",
    "build_fusion",
    "modality_dropout",
]
