"""Fusion heads: from per-modality embeddings and a presence mask to a fused logit.

Every strategy has the same interface (STYLE 13: one contract suite tests all
of them)::

    head = build_fusion(FusionConfig(strategy="late"), modalities, embed_dims)
    out = head(embeddings, present)   # embeddings: {modality: (B, D_m)}, present: (B, M) bool
    out.logit                          # (B,) fused logit
    out.unimodal                       # (B, M) unimodal logits (0 where missing)

Rows of a missing modality's embedding are ignored (callers may leave zeros
there): ``present`` decides, never the values. Every strategy carries one
unimodal head per modality, so per-modality risks exist for every strategy; in
late fusion they are also what is fused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from clinfuse.config import FusionConfig
from clinfuse.errors import ConfigError

__all__ = [
    "FUSION_STRATEGIES",
    "FusionConfig",
    "FusionHead",
    "FusionOutput",
    "build_fusion",
    "modality_dropout",
]


@dataclass
class FusionOutput:
    """What a fusion head returns.

    Attributes:
        logit: (B,) fused logit.
        unimodal: (B, M) unimodal logits, in the head's modality order (0 where missing).
    """

    logit: torch.Tensor
    unimodal: torch.Tensor


class FusionHead(nn.Module):
    """Base class: unimodal heads shared by every strategy.

    Args:
        config: the fusion settings.
        modalities: the run's modalities, in order (defines the mask columns).
        embed_dims: embedding width per modality.
    """

    strategy: ClassVar[str]

    def __init__(
        self, config: FusionConfig, modalities: Sequence[str], embed_dims: dict[str, int]
    ) -> None:
        super().__init__()
        missing = [m for m in modalities if m not in embed_dims]
        if missing:
            raise ConfigError(f"no embedding width for modalities {missing}", field="fusion")
        if not modalities:
            raise ConfigError("a fusion model needs at least one modality", field="modalities")
        self.config = config
        self.modalities = list(modalities)
        self.embed_dims = {m: int(embed_dims[m]) for m in modalities}
        self.unimodal_heads = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Dropout(config.head_dropout), nn.Linear(self.embed_dims[m], 1))
                for m in modalities
            }
        )

    def check_inputs(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> None:
        if present.ndim != 2 or present.shape[1] != len(self.modalities):
            raise ValueError(
                f"presence mask must be (batch, {len(self.modalities)}) for modalities {self.modalities}, "
                f"got {tuple(present.shape)}"
            )
        for m in self.modalities:
            e = embeddings.get(m)
            if e is None:
                raise ValueError(
                    f"missing embeddings for modality {m!r} (pass zeros and mark it absent)"
                )
            if e.ndim != 2 or e.shape[0] != present.shape[0] or e.shape[1] != self.embed_dims[m]:
                raise ValueError(
                    f"embeddings of {m!r} must be (batch={present.shape[0]}, {self.embed_dims[m]}), "
                    f"got {tuple(e.shape)}"
                )

    def unimodal_logits(
        self, embeddings: dict[str, torch.Tensor], present: torch.Tensor
    ) -> torch.Tensor:
        """(B, M) unimodal logits, exactly 0 where a modality is missing."""
        cols = [self.unimodal_heads[m](embeddings[m]).squeeze(-1) for m in self.modalities]
        z = torch.stack(cols, dim=1)
        return torch.where(present, z, torch.zeros_like(z))

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> FusionOutput:
        raise NotImplementedError


FUSION_STRATEGIES: dict[str, type[FusionHead]] = {}


def register_fusion(cls: type[FusionHead]) -> type[FusionHead]:
    FUSION_STRATEGIES[cls.strategy] = cls
    return cls


def build_fusion(
    config: FusionConfig, modalities: Sequence[str], embed_dims: dict[str, int]
) -> FusionHead:
    """The fusion head named by ``config.strategy``."""
    from clinfuse.fusion import early, intermediate, late  # noqa: F401  (registration)

    try:
        cls = FUSION_STRATEGIES[config.strategy]
    except KeyError:
        raise ConfigError(
            f"unknown fusion strategy {config.strategy!r}; available: {sorted(FUSION_STRATEGIES)}",
            field="fusion.strategy",
        ) from None
    return cls(config, modalities, embed_dims)


def modality_dropout(
    present: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hide each present modality with probability ``p``, keeping at least one per case.

    Args:
        present: (B, M) bool presence mask.
        p: drop probability per present modality.

    Returns:
        (B, M) bool mask, a subset of ``present``; a case keeps at least one of
        its present modalities.
    """
    if p <= 0:
        return present
    drop = torch.rand(present.shape, generator=generator, device="cpu").to(present.device) < p
    kept = present & ~drop
    empty = kept.sum(dim=1) == 0
    if empty.any():
        # keep one random present modality for cases that lost all of theirs
        scores = torch.rand(present.shape, generator=generator, device="cpu").to(present.device)
        scores = torch.where(present, scores, torch.full_like(scores, -1.0))
        keep_one = torch.zeros_like(present)
        keep_one[torch.arange(present.shape[0], device=present.device), scores.argmax(dim=1)] = True
        kept = torch.where(empty[:, None], keep_one & present, kept)
    return kept
