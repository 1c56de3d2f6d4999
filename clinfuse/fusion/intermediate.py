"""Intermediate fusion (comparator): cross-modal attention over modality tokens.

Each present modality becomes one token (a projection of its embedding plus a
learned modality embedding); a [CLS] token attends over them with missing
modalities masked out of attention (key padding), and the fused logit is read
from [CLS].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clinfuse.errors import ConfigError
from clinfuse.fusion.base import FusionConfig, FusionHead, FusionOutput, register_fusion

__all__ = ["IntermediateFusion"]


@register_fusion
class IntermediateFusion(FusionHead):
    strategy = "intermediate"

    def __init__(
        self, config: FusionConfig, modalities: Sequence[str], embed_dims: dict[str, int]
    ) -> None:
        super().__init__(config, modalities, embed_dims)
        d = config.hidden
        if d % config.n_heads:
            raise ConfigError(
                f"fusion.hidden ({d}) must be divisible by fusion.n_heads ({config.n_heads})",
                field="fusion.n_heads",
            )
        self.project = nn.ModuleDict({m: nn.Linear(self.embed_dims[m], d) for m in self.modalities})
        self.modality_embedding = nn.Parameter(torch.zeros(len(self.modalities), d))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.modality_embedding, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=config.n_heads,
            dim_feedforward=2 * d,
            dropout=config.head_dropout,
            batch_first=True,
            norm_first=True,
        )
        # no nested-tensor fast path: outputs must not depend on which other cases share the batch
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=config.n_layers, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, 1)

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> FusionOutput:
        self.check_inputs(embeddings, present)
        tokens = torch.stack(
            [
                self.project[m](embeddings[m]) + self.modality_embedding[i]
                for i, m in enumerate(self.modalities)
            ],
            dim=1,
        )
        batch = tokens.shape[0]
        x = torch.cat([self.cls.expand(batch, -1, -1).to(tokens.dtype), tokens], dim=1)
        pad = torch.cat(
            [torch.zeros(batch, 1, dtype=torch.bool, device=present.device), ~present], dim=1
        )
        h = self.encoder(x, src_key_padding_mask=pad)
        logit = self.out(self.norm(h[:, 0])).squeeze(-1)
        return FusionOutput(logit=logit, unimodal=self.unimodal_logits(embeddings, present))
