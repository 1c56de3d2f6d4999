"""Tabular encoders over ``(values, mask)`` rows.

Registered names (modality ``"tabular"``):

- ``mlp`` (default): an MLP over ``concat(values, mask)``.
- ``ft_transformer``: the FT-Transformer of Gorishniy et al. (2021), "Revisiting Deep
  Learning Models for Tabular Data": every feature becomes a token, a Transformer
  attends across them, and the embedding is read from a ``[CLS]`` token.

Missing values are explicit in both: the mask (1 = observed) is an input of its own
and unobserved values (NaN allowed) never reach the network, so "missing" never looks
like a measured 0. The MLP sees the mask beside zeroed values; the FT-Transformer gives
a missing feature a learned token of its own instead of its value's.

>>> enc = build_encoder("tabular", {"name": "mlp", "n_features": 5})  # doctest: +SKIP
>>> batch = enc.collate([(values, mask), ...])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from clinfuse.encoders.base import Encoder, EncoderConfig, register_encoder
from clinfuse.errors import ConfigError

__all__ = [
    "FTTransformerConfig",
    "FTTransformerEncoder",
    "TabularEncoderBase",
    "TabularEncoderConfig",
    "TabularMLPEncoder",
]


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


class FTTransformerConfig(EncoderConfig):
    """``ft_transformer``: feature tokens, Transformer blocks, the ``[CLS]`` token read out.

    The defaults are small, for cohorts of hundreds to thousands of cases; the paper's
    default is ``d_token=192, n_blocks=3, n_heads=8``.

    Attributes:
        name: ``"ft_transformer"``.
        n_features: number of tabular features F (one token each). Default 1.
        d_token: token width; a multiple of ``n_heads``. Default 32.
        n_blocks: Transformer blocks. Default 2.
        n_heads: attention heads. Default 4.
        ffn_factor: hidden width of the ReGLU feed-forward part, as a multiple of
            ``d_token``. Default 4/3.
        attention_dropout: dropout on the attention weights. Default 0.2.
        ffn_dropout: dropout inside the feed-forward part. Default 0.1.
        residual_dropout: dropout on each block's branch before it is added. Default 0.
    """

    name: str = "ft_transformer"
    n_features: int = Field(1, ge=1)
    d_token: int = Field(32, ge=1)
    n_blocks: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    ffn_factor: float = Field(4 / 3, gt=0)
    attention_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    ffn_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    residual_dropout: float = Field(0.0, ge=0.0, lt=1.0)


class TabularEncoderBase(Encoder):
    """Shared input handling of the tabular encoders: ``(values, mask)`` batches."""

    modality = "tabular"
    config: Any

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
        return self._embed(values, mask_f)

    def _embed(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim)`` from finite values (0 where missing) and the 0/1 mask."""
        raise NotImplementedError  # pragma: no cover - abstract

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


@register_encoder("tabular", "mlp")
class TabularMLPEncoder(TabularEncoderBase):
    """MLP over ``concat(values * mask, mask)``."""

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

    def _embed(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([values, mask], dim=1))


@register_encoder("tabular", "ft_transformer")
class FTTransformerEncoder(TabularEncoderBase):
    """FT-Transformer (Gorishniy et al., 2021) with a learned token for a missing value.

    Feature ``j`` observed with value ``x`` is the token ``x * W_j + b_j``; missing, it is
    the token ``M_j``. A ``[CLS]`` token is appended, ``n_blocks`` pre-norm Transformer
    blocks follow (the first without its first LayerNorm, as in the paper; ReGLU
    feed-forward), and the ``[CLS]`` token goes through LayerNorm, ReLU and a Linear layer
    to ``embed_dim``. Every trainable layer is a ``Linear``, a ``LayerNorm`` or a
    parameter-only leaf module, so Opacus computes per-sample gradients for DP-SGD.
    """

    config_class = FTTransformerConfig
    config: FTTransformerConfig

    def __init__(self, config: FTTransformerConfig | dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg.d_token % cfg.n_heads:
            raise ConfigError(
                f"d_token={cfg.d_token} is not a multiple of n_heads={cfg.n_heads}",
                field="d_token",
                hint="choose d_token = n_heads x (width per head), e.g. 32 with 4 heads",
            )
        self.net = _FTBackbone(cfg)
        self._finish_init()

    def _embed(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.stack([values, mask], dim=-1))


class _FTBackbone(nn.Module):
    """Tokenizer, blocks and the ``[CLS]`` read-out: ``(B, F, 2)`` -> ``(B, embed_dim)``."""

    def __init__(self, cfg: FTTransformerConfig) -> None:
        super().__init__()
        hidden = max(1, round(cfg.ffn_factor * cfg.d_token))
        self.tokenizer = _FeatureTokenizer(cfg.n_features, cfg.d_token)
        self.blocks = nn.ModuleList(
            _Block(cfg, hidden, first_norm=k > 0) for k in range(cfg.n_blocks)
        )
        self.head_norm = nn.LayerNorm(cfg.d_token)
        self.head = nn.Linear(cfg.d_token, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(F.relu(self.head_norm(tokens[:, -1])))


class _FeatureTokenizer(nn.Module):
    """``(B, F, 2)`` values and mask -> ``(B, F + 1, d)`` tokens, ``[CLS]`` last.

    One input tensor: Opacus' per-sample gradients of a parameter-only module
    (``torch.func``) take the module's first input only.
    """

    def __init__(self, n_features: int, d_token: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(d_token)  # the paper's (rtdl's) initialisation
        self.weight = nn.Parameter(torch.empty(n_features, d_token).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_features, d_token).uniform_(-bound, bound))
        self.missing = nn.Parameter(torch.empty(n_features, d_token).uniform_(-bound, bound))
        self.cls = nn.Parameter(torch.empty(1, d_token).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, m = x[..., :1], x[..., 1:]
        tokens = m * (values * self.weight + self.bias) + (1 - m) * self.missing
        # [CLS] as a product with the batch, so per-sample gradients reach it row by row
        cls = torch.ones_like(values[:, :1]) * self.cls
        return torch.cat([tokens, cls], dim=1)


class _Block(nn.Module):
    """Pre-norm Transformer block: multi-head self-attention, then a ReGLU feed-forward."""

    def __init__(self, cfg: FTTransformerConfig, hidden: int, *, first_norm: bool) -> None:
        super().__init__()
        d = cfg.d_token
        self.n_heads = cfg.n_heads
        self.attention_norm = nn.LayerNorm(d) if first_norm else nn.Identity()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.attention_dropout = cfg.attention_dropout
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn_in = nn.Linear(d, 2 * hidden)
        self.ffn_out = nn.Linear(hidden, d)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout)
        self.residual_dropout = nn.Dropout(cfg.residual_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(self.attention_norm(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attention_dropout if self.training else 0.0
        )
        x = x + self.residual_dropout(self.out(a.transpose(1, 2).reshape(b, t, d)))
        gate, value = self.ffn_in(self.ffn_norm(x)).chunk(2, dim=-1)
        z = self.ffn_out(self.ffn_dropout(gate * F.relu(value)))
        return x + self.residual_dropout(z)


def _check_finite(values: np.ndarray, mask: np.ndarray, item: int | None = None) -> None:
    """Raise if an observed (mask > 0) value is NaN or infinite."""
    if not np.isfinite(np.asarray(values, dtype=np.float64)[np.asarray(mask) > 0]).all():
        where = "" if item is None else f"item {item}: "
        raise ConfigError(
            f"{where}non-finite value where the mask says observed",
            field="tabular",
            hint="set mask=0 for missing values",
        )
