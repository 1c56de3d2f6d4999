"""Early fusion (comparator): concatenated embeddings and the presence mask into an MLP.

A missing modality's embedding is replaced by zeros *and* flagged in the mask
that is part of the input, so the MLP can tell "absent" from "zero".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clinfuse.fusion.base import FusionConfig, FusionHead, FusionOutput, register_fusion

__all__ = ["EarlyFusion"]


@register_fusion
class EarlyFusion(FusionHead):
    strategy = "early"

    def __init__(
        self, config: FusionConfig, modalities: Sequence[str], embed_dims: dict[str, int]
    ) -> None:
        super().__init__(config, modalities, embed_dims)
        width = sum(self.embed_dims.values()) + len(self.modalities)
        self.mlp = nn.Sequential(
            nn.Dropout(config.head_dropout),
            nn.Linear(width, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.head_dropout),
            nn.Linear(config.hidden, 1),
        )

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> FusionOutput:
        self.check_inputs(embeddings, present)
        parts = [
            torch.where(present[:, i : i + 1], embeddings[m], torch.zeros_like(embeddings[m]))
            for i, m in enumerate(self.modalities)
        ]
        x = torch.cat([*parts, present.to(parts[0].dtype)], dim=1)
        return FusionOutput(
            logit=self.mlp(x).squeeze(-1), unimodal=self.unimodal_logits(embeddings, present)
        )
