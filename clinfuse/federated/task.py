"""The fusion model as a federated site task.

:func:`fusion_site_task` wraps one site's loaded cases in a
:class:`privacy.federated.torch_task.TorchSiteTask` around the *trainable part* of a
:class:`~clinfuse.model.FusionNetwork`: the trainable encoders and the fusion head. Frozen
encoders (the default note BERT) stay out of it: their embeddings are computed once
(:func:`clinfuse.training.embed.attach_embeddings`) and travel with the cases as data, so
neither FedAvg nor Opacus ever sees the BERT (Opacus cannot make a Hugging Face BERT private).

Local training follows stage 1 of :mod:`clinfuse.training.trainer`: late fusion trains each
modality's encoder and head on its own masked loss (the combiner is fitted afterwards on
held-out logits); early/intermediate fusion train on the fused loss plus the auxiliary
unimodal losses. ``class_weight="balanced"`` weighs positives by the site's own
``n_neg / n_pos``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clinfuse.evaluation.metrics import auroc_batch
from clinfuse.fusion.late import LateFusion
from clinfuse.model import Collator, FusionModel, FusionNetwork
from privacy.dp.engine import DPConfig
from privacy.errors import SiteDataError
from privacy.federated.torch_task import TorchSiteTask, parameter_keys

__all__ = ["FullRowCollator", "fusion_site_task", "masked_unimodal_loss", "trainable_view"]


def trainable_view(model: FusionModel, *, private: bool = False) -> FusionNetwork:
    """A FusionNetwork sharing ``model``'s trainable encoders and fusion head (no frozen ones).

    With ``private`` the late-fusion combiner's parameters are frozen (they are fitted in a
    later stage, and Opacus needs every trainable parameter to receive per-sample gradients).
    """
    frozen = set(model.frozen_modalities)
    encoders = {m: e for m, e in model.network.encoders.items() if m not in frozen}
    fusion = model.network.fusion
    if private and isinstance(fusion, LateFusion):
        fusion.weight_raw.requires_grad_(False)
        fusion.bias.requires_grad_(False)
    return FusionNetwork(model.modalities, encoders, fusion)


def masked_unimodal_loss(
    unimodal: torch.Tensor, present: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor
) -> torch.Tensor:
    """Mean over modalities of each modality's BCE on the cases where it is present."""
    z = unimodal.float()
    per = F.binary_cross_entropy_with_logits(
        z, y[:, None].expand_as(z), pos_weight=pos_weight, reduction="none"
    )
    mask = present.float()
    per_modality = (per * mask).sum(dim=0) / mask.sum(dim=0).clamp(min=1.0)
    has = (mask.sum(dim=0) > 0).float()
    return (per_modality * has).sum() / has.sum().clamp(min=1.0)


class FullRowCollator:
    """A :class:`Collator` whose trainable inputs cover every row of the batch.

    Opacus clips per-sample gradients over all parameters at once, so every layer must see
    the same batch rows. Rows where a modality is missing get zeros (the presence mask still
    hides them from the heads and the loss, so they contribute nothing).
    """

    def __init__(self, collator: Collator, examples: dict[str, Any]) -> None:
        self.collator = collator
        self.templates = {m: _zeros_like(x) for m, x in examples.items()}

    def __call__(self, cases: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(cases)
        n = len(cases)
        inputs = {}
        for m, (rows, x) in batch["inputs"].items():
            full = _expand(self.templates[m], n)
            if x is not None and rows.numel():
                full = _index_copy(full, rows, x)
            inputs[m] = (torch.arange(n), full)
        return {**batch, "inputs": inputs}


def _zeros_like(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.zeros_like(x[:1])
    if isinstance(x, dict):
        return {k: _zeros_like(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_zeros_like(v) for v in x)
    raise TypeError(f"cannot pad encoder inputs of type {type(x).__name__} for DP-SGD")


def _expand(t: Any, n: int) -> Any:
    if isinstance(t, torch.Tensor):
        return t.expand(n, *t.shape[1:]).clone()
    if isinstance(t, dict):
        return {k: _expand(v, n) for k, v in t.items()}
    return type(t)(_expand(v, n) for v in t)


def _index_copy(full: Any, rows: torch.Tensor, x: Any) -> Any:
    if isinstance(full, torch.Tensor):
        return full.index_copy(0, rows, x.to(full.dtype))
    if isinstance(full, dict):
        return {k: _index_copy(f, rows, x[k]) for k, f in full.items()}
    return type(full)(_index_copy(f, rows, v) for f, v in zip(full, x, strict=True))


def fusion_site_task(
    site_id: str,
    model: FusionModel,
    train_cases: Sequence[dict[str, Any]],
    eval_cases: Sequence[dict[str, Any]],
    *,
    dp: DPConfig | None = None,
    dp_rounds: int | None = None,
    optimizer: str = "adam",
    device: str = "cpu",
    keys: Sequence[str] | None = None,
) -> TorchSiteTask:
    """One site's task for the fusion model (cases with frozen embeddings attached).

    Raises:
        privacy.errors.SiteDataError: the site's training cases lack one outcome class, or
            (with DP-SGD) the site has no case of a trainable modality.
    """
    cfg = model.config.training
    late = model.network.fusion.strategy == "late"
    frozen = model.frozen_modalities
    if keys is None:  # computed before DP freezes the combiner: same entries either way
        keys = parameter_keys(trainable_view(model))
    module = trainable_view(model, private=dp is not None)
    collate: Any = Collator(model.modalities, dict(model.network.encoders), frozen)
    if dp is not None:
        examples = {}
        for i, m in enumerate(model.modalities):
            if m in frozen:
                continue
            first = next((c for c in [*train_cases, *eval_cases] if c["present"][i]), None)
            if first is None:
                raise SiteDataError(
                    f"site {site_id!r} has no case with modality {m!r}; DP-SGD clips each "
                    f"case's gradient over every encoder, so the {m} encoder needs at least one "
                    "input at every site to build its per-case inputs; leave the modality out "
                    "(data.modalities) or train without DP",
                )
            examples[m] = model.network.encoders[m].collate([Collator.item(first, m)])  # type: ignore[operator]
        collate = FullRowCollator(collate, examples)
    y = np.array([c["label"] for c in train_cases], dtype=float)
    n_pos = float(y.sum())
    pos_weight = torch.tensor(
        (len(y) - n_pos) / max(n_pos, 1.0) if cfg.class_weight == "balanced" else 1.0
    )
    aux = model.config.fusion.aux_weight

    def loss_fn(net: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        out = net(batch)
        target, present = batch["label"], batch["present"]
        if late:
            return masked_unimodal_loss(out.unimodal, present, target, pos_weight)
        loss = F.binary_cross_entropy_with_logits(out.logit.float(), target, pos_weight=pos_weight)
        if aux > 0:
            loss = loss + aux * masked_unimodal_loss(out.unimodal, present, target, pos_weight)
        return loss

    def eval_fn(
        net: torch.nn.Module, batches: Iterable[Any]
    ) -> tuple[float, int, dict[str, float]]:
        total, n = 0.0, 0
        ys, zs, unis, pres = [], [], [], []
        for b in batches:
            out = net(b)
            k = len(b["label"])
            total += float(loss_fn(net, b)) * k
            n += k
            ys.append(b["label"].numpy())
            zs.append(out.logit.float().numpy())
            unis.append(out.unimodal.float().numpy())
            pres.append(b["present"].numpy())
        metrics: dict[str, float] = {}
        if n:
            yv, zv = np.concatenate(ys), np.concatenate(zs)
            if not late:
                metrics["auroc"] = float(auroc_batch(yv[None], zv[None])[0])
            u, p = np.concatenate(unis), np.concatenate(pres)
            for i, m in enumerate(model.modalities):
                has = p[:, i]
                if has.sum() >= 2:
                    metrics[f"auroc_{m}"] = float(auroc_batch(yv[has][None], u[has, i][None])[0])
        return total / max(n, 1), n, metrics

    return TorchSiteTask(
        site_id,
        module,
        list(train_cases),
        loss_fn,
        eval_data=list(eval_cases),
        collate_fn=collate,
        eval_fn=eval_fn,
        optimizer=optimizer,
        weight_decay=cfg.weight_decay,
        labels=y,
        dp=dp,
        dp_rounds=dp_rounds,
        device=device,
        keys=keys,
        eval_batch_size=cfg.batch_size,
    )
