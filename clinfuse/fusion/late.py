"""Late fusion: a mask-aware, non-negative weighted sum of unimodal logits.

    logit = b + Σ_{m present} w_m · (z_m − c_m),    w_m = softplus(θ_m) ≥ 0

``z_m`` is modality m's unimodal logit, ``c_m`` its mean on the held-out cases
the combiner was fitted on (so a missing modality counts as "average evidence",
not as a 50/50 vote) and ``b`` the fused logit when nothing is observed. A
missing modality contributes exactly nothing and needs no imputation, and
because the combiner is additive over modalities, modality Shapley values are
exact: φ_m = w_m · (z_m − c_m) for present m, with base value b.

The combiner is fitted by :meth:`LateFusion.fit_combiner` on **held-out**
unimodal logits (validation or out-of-fold), never on the training logits the
heads have overfit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clinfuse.fusion.base import FusionConfig, FusionHead, FusionOutput, register_fusion

__all__ = ["COMBINER_L2", "LateFusion", "fit_late_combiner"]


COMBINER_L2 = 1e-3
"""Ridge penalty on the combiner's weights (keeps them finite when a modality separates the
held-out cases perfectly)."""


def _softplus_inverse(x: float) -> float:
    return x + math.log(-math.expm1(-x))


@register_fusion
class LateFusion(FusionHead):
    """Learned non-negative modality weights plus a bias over the present modalities' logits."""

    strategy = "late"
    center: torch.Tensor

    def __init__(
        self, config: FusionConfig, modalities: Sequence[str], embed_dims: dict[str, int]
    ) -> None:
        super().__init__(config, modalities, embed_dims)
        m = len(self.modalities)
        self.weight_raw = nn.Parameter(torch.full((m,), _softplus_inverse(1.0)))
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("center", torch.zeros(m))

    @property
    def weights(self) -> torch.Tensor:
        """(M,) non-negative modality weights."""
        return F.softplus(self.weight_raw)

    def contributions(self, unimodal: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, M) each modality's additive contribution to the fused logit (0 where missing)."""
        c = self.weights * (unimodal - self.center)
        return torch.where(present, c, torch.zeros_like(c))

    def combine(self, unimodal: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B,) fused logit from (B, M) unimodal logits and the (B, M) presence mask."""
        return self.bias + self.contributions(unimodal, present).sum(dim=1)

    def forward(self, embeddings: dict[str, torch.Tensor], present: torch.Tensor) -> FusionOutput:
        self.check_inputs(embeddings, present)
        z = self.unimodal_logits(embeddings, present)
        return FusionOutput(logit=self.combine(z, present), unimodal=z)

    @torch.no_grad()
    def fit_combiner(
        self,
        unimodal: torch.Tensor,
        present: torch.Tensor,
        labels: torch.Tensor,
        *,
        l2: float = COMBINER_L2,
        max_iter: int = 200,
    ) -> LateFusion:
        """Fit weights, bias and centres on held-out unimodal logits (maximum likelihood).

        A federated run fits the same model from the sites' sums instead
        (:func:`clinfuse.federated.stage2.fit_from_sites`).

        Args:
            unimodal: (N, M) held-out unimodal logits.
            present: (N, M) bool presence mask.
            labels: (N,) 0/1 outcomes.
            l2: ridge penalty on the weights (keeps them finite when a
                modality separates the held-out cases perfectly).
            max_iter: L-BFGS iterations.
        """
        theta, bias, center = fit_late_combiner(unimodal, present, labels, l2=l2, max_iter=max_iter)
        self.center.copy_(center.to(self.center))
        self.weight_raw.copy_(theta.to(self.weight_raw))
        self.bias.copy_(bias.to(self.bias))
        return self


@torch.no_grad()
def fit_late_combiner(
    unimodal: torch.Tensor,
    present: torch.Tensor,
    labels: torch.Tensor,
    *,
    l2: float = COMBINER_L2,
    max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:meth:`LateFusion.fit_combiner`'s fit: ``(weight_raw, bias, center)`` in float64."""
    z = unimodal.detach().double().cpu()
    m = present.detach().bool().cpu()
    y = labels.detach().double().cpu()
    n = len(y)
    sums = torch.where(m, z, torch.zeros_like(z)).sum(dim=0)
    center = (sums / m.sum(dim=0).clamp(min=1)).float().double()  # as the model stores it
    zc = torch.where(m, z - center, torch.zeros_like(z))
    prevalence = min(max(float(y.sum()) / max(n, 1), 1e-4), 1 - 1e-4)
    theta = torch.full(
        (z.shape[1],), _softplus_inverse(1.0), dtype=torch.float64, requires_grad=True
    )
    bias = torch.tensor(
        math.log(prevalence / (1 - prevalence)), dtype=torch.float64, requires_grad=True
    )
    opt = torch.optim.LBFGS([theta, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logit = bias + (zc * F.softplus(theta)).sum(dim=1)
        loss = F.binary_cross_entropy_with_logits(logit, y, reduction="sum") / n
        loss = loss + l2 * (F.softplus(theta) ** 2).sum()
        loss.backward()
        return loss.detach()

    with torch.enable_grad():
        opt.step(closure)
    return theta.detach(), bias.detach(), center
