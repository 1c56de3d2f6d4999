"""Signal encoder: a 1-D residual CNN for multi-lead waveforms (ECG, PPG, vitals).

Registered name (modality ``"signal"``): ``resnet1d``. Plain ``torch.nn`` (1-D only, so
no dimension factory is needed and the encoder works without the imaging extra).

Input: ``(B, in_leads, T)`` float, ``T >= 2**(depth + 1)``; optionally a per-sample
validity mask (``valid_mask`` from :mod:`clinfuse.transforms.signal`, False where
zeros were padded) so padding does not enter the global average pool.

>>> enc = build_encoder("signal", {"name": "resnet1d", "in_leads": 12})  # doctest: +SKIP
>>> enc(torch.zeros(4, 12, 5000)).shape  # doctest: +SKIP
torch.Size([4, 128])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from clinfuse.encoders.base import Encoder, EncoderConfig, register_encoder
from clinfuse.errors import ConfigError

__all__ = ["SignalEncoderConfig", "SignalResNet1dEncoder"]


class SignalEncoderConfig(EncoderConfig):
    """``resnet1d``: stem conv, ``depth`` residual blocks (each stride 2), GAP, Linear.

    Attributes:
        name: ``"resnet1d"``.
        in_leads: number of leads (channels) of the waveform. Default 1.
        depth: number of residual blocks, each halving the time axis. Default 4.
        width: channels of the stem and first blocks, doubled every 2 blocks. Default 32.
        kernel_size: odd convolution kernel length. Default 7.
        norm: ``"batch"`` (BatchNorm1d) or ``"group"`` (GroupNorm; needed for Opacus
            DP-SGD, which rejects BatchNorm). Default ``"batch"``.
        groups: GroupNorm groups (reduced to a divisor of the channel count). Default 8.
        dropout: dropout before the final Linear. Default 0.0.
    """

    name: str = "resnet1d"
    in_leads: int = Field(1, ge=1)
    depth: int = Field(4, ge=1, le=12)
    width: int = Field(32, ge=1)
    kernel_size: int = Field(7, ge=1)
    norm: Literal["batch", "group"] = "batch"
    groups: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


def _norm1d(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
        return nn.GroupNorm(g, channels)
    return nn.BatchNorm1d(channels)


class _ResBlock1d(nn.Module):
    """Conv(k, stride 2)-Norm-ReLU-Conv(k)-Norm + projected shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int, norm: str, groups: int) -> None:
        super().__init__()
        pad = k // 2
        self.conv1 = nn.Conv1d(c_in, c_out, k, stride=2, padding=pad, bias=False)
        self.norm1 = _norm1d(norm, c_out, groups)
        self.conv2 = nn.Conv1d(c_out, c_out, k, stride=1, padding=pad, bias=False)
        self.norm2 = _norm1d(norm, c_out, groups)
        self.shortcut = nn.Sequential(
            nn.Conv1d(c_in, c_out, 1, stride=2, bias=False), _norm1d(norm, c_out, groups)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


@register_encoder("signal", "resnet1d")
class SignalResNet1dEncoder(Encoder):
    """1-D residual CNN over ``(B, leads, T)`` waveforms."""

    modality = "signal"
    config_class = SignalEncoderConfig
    config: SignalEncoderConfig

    def __init__(self, config: SignalEncoderConfig | dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.kernel_size % 2 == 0:
            raise ConfigError(
                f"kernel_size must be odd, got {cfg.kernel_size}", field="kernel_size"
            )
        k = cfg.kernel_size
        stem = nn.Sequential(
            nn.Conv1d(cfg.in_leads, cfg.width, k, stride=2, padding=k // 2, bias=False),
            _norm1d(cfg.norm, cfg.width, cfg.groups),
            nn.ReLU(),
        )
        blocks = []
        c = cfg.width
        for i in range(cfg.depth):
            c_out = cfg.width * 2 ** (i // 2)
            blocks.append(_ResBlock1d(c, c_out, k, cfg.norm, cfg.groups))
            c = c_out
        self.net = nn.ModuleDict(
            {
                "stem": stem,
                "blocks": nn.Sequential(*blocks),
                "head": nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(c, cfg.embed_dim)),
            }
        )
        self._finish_init()

    @property
    def min_length(self) -> int:
        """Shortest accepted signal (samples): one sample per stride-2 stage."""
        return 2 ** (self.config.depth + 1)

    def _split(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(inputs, Mapping):
            if "signal" not in inputs:
                raise ConfigError(
                    "signal batch dict needs a 'signal' key",
                    field="signal",
                    hint="build the batch with encoder.collate(items)",
                )
            return inputs["signal"], inputs.get("valid_mask")
        return inputs, None

    def forward(self, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Embed waveforms.

        Args:
            inputs: ``(B, in_leads, T)`` float tensor, or a dict with ``signal``
                ``(B, in_leads, T)`` and optional ``valid_mask`` ``(B, T)`` bool
                (False where the signal was padded; pooled positions exclude it).

        Returns:
            ``(B, embed_dim)``.
        """
        x, valid = self._split(inputs)
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(
                f"expected a signal batch (B, leads, T), got {shape}",
                field="signal",
                hint="build the batch with encoder.collate(items)",
            )
        if x.shape[1] != cfg.in_leads:
            raise ConfigError(
                f"expected {cfg.in_leads} lead(s), got {x.shape[1]} (shape {tuple(x.shape)})",
                field="in_leads",
                hint=f"set in_leads={x.shape[1]} or select leads in the transforms",
            )
        if x.shape[2] < self.min_length:
            raise ConfigError(
                f"signal of {x.shape[2]} samples is shorter than the {self.min_length} "
                f"that depth={cfg.depth} needs",
                field="signal",
                hint="pad/crop to a longer fixed duration or reduce depth",
            )
        x = x.to(device=self.device, dtype=torch.float32)
        h = self.net["blocks"](self.net["stem"](x))  # (B, C, T')
        if valid is None:
            pooled = h.mean(dim=-1)
        else:
            m = valid.to(device=h.device, dtype=torch.float32)[:, None, :]
            m = (F.adaptive_max_pool1d(m, h.shape[-1]) > 0).to(h.dtype)  # (B, 1, T')
            pooled = (h * m).sum(-1) / m.sum(-1).clamp_min(1.0)
        return self.net["head"](pooled)

    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """Stack per-case signals.

        Args:
            items: arrays ``(leads, T)`` of one length, or ``(signal, valid_mask)``
                pairs with ``valid_mask`` ``(T,)`` bool.

        Returns:
            ``{"signal": (B, leads, T) float32, "valid_mask": (B, T) bool}``.
        """
        if not items:
            raise ConfigError("cannot collate an empty list of signals", field="signal")
        signals, masks = [], []
        for k, item in enumerate(items):
            if isinstance(item, tuple | list) and len(item) == 2:
                sig, mask = np.asarray(item[0], dtype=np.float32), np.asarray(item[1], dtype=bool)
            else:
                sig = np.asarray(item, dtype=np.float32)
                mask = np.ones(sig.shape[-1] if sig.ndim else 0, dtype=bool)
            if sig.ndim != 2:
                raise ConfigError(
                    f"item {k}: expected a (leads, T) signal, got shape {sig.shape}",
                    field="signal",
                )
            if mask.shape != (sig.shape[1],):
                raise ConfigError(
                    f"item {k}: valid_mask shape {mask.shape} does not match T={sig.shape[1]}",
                    field="signal",
                )
            signals.append(sig)
            masks.append(mask)
        shapes = {s.shape for s in signals}
        if len(shapes) > 1:
            raise ConfigError(
                f"signals in a batch must share one (leads, T) shape, got {sorted(shapes)}",
                field="signal",
                hint="crop or pad to a fixed duration (clinfuse.transforms.signal.CropOrPadd)",
            )
        return {
            "signal": torch.from_numpy(np.stack(signals)),
            "valid_mask": torch.from_numpy(np.stack(masks)),
        }
