"""Tabular encoder: an MLP over ``concat(values, mask)``.

Registered name (modality ``"tabular"``): ``mlp``. Missing values are explicit: the
mask (1 = observed) is an input of its own, and unobserved values (NaN allowed)
are zeroed, so "missing" never looks like a measured 0.

>>> enc = build_encoder("tabular", {"name": "mlp", "n_features": 5})  # doctest: +SKIP
>>> batch = enc.collate([(values, mask), ...])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from clinfuse.encoders.base import Encoder, EncoderConfig, register_encoder
from clinfuse.errors import ConfigError

__all__ = ["TabularEncoderConfig", "TabularMLPEncoder"]


class TabularEncoderConfig(EncoderConfig):
    """``mlp``: Linear-ReLU-Dropout per hidden layer, then Linear to ``embed_dim``.

    Attributes:
        name: ``"mlp"``.
        n_features: number of tabular features F (the input is ``2F`` wide). Default 1.
        hidden: widths of the hidden layers. Default ``[64, 64]``.
        dropout: dropout after each hidden layer. Default 0.1.
    """

    name: str = "mlp"
    n_features: int = Field(1, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


@register_encoder("tabular", "mlp")
class TabularMLPEncoder(Encoder):
    """MLP over ``concat(values * mask, mask)``."""

    modality = "tabular"
    config_class = TabularEncoderConfig
    config: TabularEncoderConfig

    def __init__(self, config: TabularEncoderConfig | dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.config
        layers: list[nn.Module] = []
        width = 2 * cfg.n_features
        for h in cfg.hidden:
            if h < 1:
                raise ConfigError(f"hidden widths must be >= 1, got {cfg.hidden}", field="hidden")
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = h
        layers.append(nn.Linear(width, cfg.embed_dim))
        self.net = nn.Sequential(*layers)
        self._finish_init()

    def forward(self, inputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """Embed tabular rows.

        Args:
            inputs: ``{"values": (B, F), "mask": (B, F)}`` or a pair
                ``(values, mask)``; ``mask`` is 1 where observed. Values where the
                mask is 0 are ignored (may be NaN).

        Returns:
            ``(B, embed_dim)``.

        Raises:
            ConfigError: wrong layout or F, or a NaN/inf in an observed value.
        """
        if isinstance(inputs, Mapping):
            if "values" not in inputs or "mask" not in inputs:
                raise ConfigError(
                    f"tabular batch dict needs 'values' and 'mask', got {sorted(inputs)}",
                    field="tabular",
                )
            values, mask = inputs["values"], inputs["mask"]
        elif isinstance(inputs, Sequence) and len(inputs) == 2:
            values, mask = inputs
        else:
            raise ConfigError(
                f"expected {{'values', 'mask'}} or (values, mask), got {type(inputs).__name__}",
                field="tabular",
                hint="build the batch with encoder.collate(items)",
            )
        values, mask = torch.as_tensor(values), torch.as_tensor(mask)
        f = self.config.n_features
        for label, t in (("values", values), ("mask", mask)):
            if t.ndim != 2 or t.shape[1] != f:
                raise ConfigError(
                    f"expected {label} of shape (B, {f}), got {tuple(t.shape)}",
                    field="n_features",
                    hint="set n_features to the number of tabular columns",
                )
        if values.shape != mask.shape:
            raise ConfigError(
                f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ",
                field="tabular",
            )
        if values.device.type == "cpu":  # on a GPU this read-back would stall the step;
            _check_finite(values.detach().numpy(), mask.detach().numpy())  # collate checked
        device = self.device
        mask_f = mask.to(device=device, dtype=torch.float32)
        values = values.to(device=device, dtype=torch.float32)
        observed = mask_f > 0
        values = torch.where(observed, values, torch.zeros_like(values))
        return self.net(torch.cat([values, mask_f], dim=1))

    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """Stack per-case ``(values (F,), mask (F,))`` pairs.

        Returns:
            ``{"values": (B, F) float32, "mask": (B, F) float32}``.
        """
        if not items:
            raise ConfigError("cannot collate an empty list of rows", field="tabular")
        values, masks = [], []
        for k, item in enumerate(items):
            if isinstance(item, Mapping):
                v, m = item.get("values"), item.get("mask")
            elif isinstance(item, tuple | list) and len(item) == 2:
                v, m = item
            else:
                raise ConfigError(
                    f"item {k}: expected a (values, mask) pair, got {type(item).__name__}",
                    field="tabular",
                )
            v = np.asarray(v, dtype=np.float32).reshape(-1)
            m = np.asarray(m, dtype=np.float32).reshape(-1)
            if v.shape != (self.config.n_features,) or m.shape != v.shape:
                raise ConfigError(
                    f"item {k}: expected values and mask of length {self.config.n_features}, "
                    f"got {v.shape} and {m.shape}",
                    field="n_features",
                )
            _check_finite(v, m, item=k)
            values.append(v)
            masks.append(m)
        return {
            "values": torch.from_numpy(np.stack(values)),
            "mask": torch.from_numpy(np.stack(masks)),
        }


def _check_finite(values: np.ndarray, mask: np.ndarray, item: int | None = None) -> None:
    """Raise if an observed (mask > 0) value is NaN or infinite."""
    if not np.isfinite(np.asarray(values, dtype=np.float64)[np.asarray(mask) > 0]).all():
        where = "" if item is None else f"item {item}: "
        raise ConfigError(
            f"{where}non-finite value where the mask says observed",
            field="tabular",
            hint="set mask=0 for missing values",
        )
