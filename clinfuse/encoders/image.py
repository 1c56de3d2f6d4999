"""Image encoders: MONAI networks in 2D and 3D.

Registered names (modality ``"image"``): ``small_cnn`` (fast CPU default),
``densenet121``, ``resnet18``, ``resnet34``, ``resnet50``, ``efficientnet-b0``.
The dimensionality comes from ``spatial_dims`` and every layer is picked through
MONAI's factories (``Conv[Conv.CONV, dims]``, ``Pool[...]``, ``Norm[...]``), never
through ``if dims == 2`` branches. MONAI is imported when an image encoder is built,
not when :mod:`clinfuse.encoders` is imported.

Input: ``(B, C, H, W)`` for ``spatial_dims=2``, ``(B, C, H, W, D)`` for 3; ``C`` is
``in_channels`` (set it from the data: 1 for CT/MR, 3 for RGB).

>>> enc = build_encoder("image", {"name": "small_cnn", "in_channels": 1})  # doctest: +SKIP
>>> enc(torch.zeros(2, 1, 64, 64)).shape  # doctest: +SKIP
torch.Size([2, 128])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from clinfuse.encoders.base import Encoder, EncoderConfig, register_encoder
from clinfuse.errors import ConfigError

__all__ = [
    "DenseNetConfig",
    "DenseNetEncoder",
    "EfficientNetConfig",
    "EfficientNetEncoder",
    "ImageEncoder",
    "ImageEncoderConfig",
    "ResNetConfig",
    "ResNetEncoder",
    "SmallCNNConfig",
    "SmallCNNEncoder",
]


class ImageEncoderConfig(EncoderConfig):
    """Fields shared by image encoders.

    Attributes:
        spatial_dims: 2 for ``(B, C, H, W)`` images, 3 for ``(B, C, H, W, D)`` volumes. Default 2.
        in_channels: channels of the input (set from the data). Default 1.
    """

    spatial_dims: Literal[2, 3] = Field(2, description="2D images or 3D volumes")
    in_channels: int = Field(1, ge=1, description="input channels, from the data")


class SmallCNNConfig(ImageEncoderConfig):
    """``small_cnn``: ``n_blocks`` x (Conv3-Norm-ReLU, MaxPool2), global average pool, Linear.

    Attributes:
        name: ``"small_cnn"``.
        width: channels of the first block, doubled every block. Default 16.
        n_blocks: number of conv blocks; the input must be at least ``2**n_blocks``
            voxels along every spatial axis. Default 4.
        norm: ``"batch"``, ``"instance"`` or ``"group"`` (GroupNorm with up to 8
            groups; Opacus-compatible). Default ``"batch"``.
        dropout: dropout before the final Linear. Default 0.0.
    """

    name: str = "small_cnn"
    width: int = Field(16, ge=1)
    n_blocks: int = Field(4, ge=1, le=8)
    norm: Literal["batch", "instance", "group"] = "batch"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    global_pool: Literal["avg", "max"] = Field(
        "avg",
        description="pooling over the final feature map: avg, or max (finds a small lesion anywhere)",
    )


class DenseNetConfig(ImageEncoderConfig):
    """``densenet121``: :class:`monai.networks.nets.DenseNet121` with ``out_channels=embed_dim``.

    Attributes:
        name: ``"densenet121"``.
        init_features: channels after the stem. Default 64.
        growth_rate: channels added per dense layer. Default 32.
        block_config: dense layers per block. Default (6, 12, 24, 16) (DenseNet-121).
        dropout_prob: dropout inside dense layers. Default 0.0.
    """

    name: str = "densenet121"
    init_features: int = Field(64, ge=1)
    growth_rate: int = Field(32, ge=1)
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    dropout_prob: float = Field(0.0, ge=0.0, lt=1.0)


class ResNetConfig(ImageEncoderConfig):
    """``resnet18``/``resnet34``/``resnet50``: :mod:`monai.networks.nets.resnet` with
    ``num_classes=embed_dim``.

    Attributes:
        name: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        widen_factor: multiplies the block widths (64, 128, 256, 512). Default 1.0.
        conv1_t_size: kernel of the first convolution. Default 7.
        conv1_t_stride: stride of the first convolution. Default 2 (as torchvision;
            MONAI's own default is 1, which quadruples the cost of 2D inputs).
        no_max_pool: skip the max pool after the stem. Default False.
    """

    name: str = "resnet18"
    widen_factor: float = Field(1.0, gt=0.0)
    conv1_t_size: int = Field(7, ge=1)
    conv1_t_stride: int = Field(2, ge=1)
    no_max_pool: bool = False


class EfficientNetConfig(ImageEncoderConfig):
    """``efficientnet-b0``: :class:`monai.networks.nets.EfficientNetBN`, ``pretrained=False``.

    Attributes:
        name: ``"efficientnet-b0"``.
    """

    name: str = "efficientnet-b0"


class ImageEncoder(Encoder):
    """Base of the image encoders: input checks and collation.

    Subclasses set ``self.net`` (a module mapping ``(B, C, *spatial)`` to
    ``(B, embed_dim)``) and :attr:`min_size`.
    """

    modality = "image"
    config_class: ClassVar[type[EncoderConfig]] = ImageEncoderConfig
    config: ImageEncoderConfig
    net: nn.Module

    min_size: int = 16
    """Smallest spatial extent (voxels per axis) the network accepts."""

    channels_last: bool = False
    """Run a 2-D network in channels-last layout (set by :meth:`use_channels_last`)."""

    def use_channels_last(self, enabled: bool = True) -> bool:
        """Switch a 2-D encoder's weights and inputs to channels-last memory layout.

        Channels-last (NHWC) lets cuDNN pick its fastest convolution kernels, above all
        under bf16 autocast. Weights keep their values and state-dict keys; only the
        strides change. 3-D encoders are left as they are.

        Args:
            enabled: True for channels-last, False back to the default layout.

        Returns:
            Whether the encoder now runs channels-last.
        """
        if self.config.spatial_dims != 2:
            return False
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.net.to(memory_format=fmt)  # type: ignore[call-overload]
        self.channels_last = enabled
        return enabled

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        expected_ndim = cfg.spatial_dims + 2
        layout = "(B, C, H, W)" if cfg.spatial_dims == 2 else "(B, C, H, W, D)"
        if not isinstance(x, torch.Tensor):
            raise ConfigError(
                f"image encoder expects a tensor {layout}, got {type(x).__name__}",
                field="image",
                hint="build the batch with encoder.collate(items)",
            )
        if x.ndim != expected_ndim:
            raise ConfigError(
                f"expected a {expected_ndim}-D tensor {layout} for spatial_dims="
                f"{cfg.spatial_dims}, got shape {tuple(x.shape)}",
                field="spatial_dims",
                hint="set spatial_dims to match the data, or add a channel axis "
                "(EnsureChannelFirstd)",
            )
        if x.shape[1] != cfg.in_channels:
            raise ConfigError(
                f"expected {cfg.in_channels} input channel(s), got {x.shape[1]} "
                f"(shape {tuple(x.shape)})",
                field="in_channels",
                hint=f"set in_channels={x.shape[1]} in the image encoder config",
            )
        small = [s for s in x.shape[2:] if s < self.min_size]
        if small:
            raise ConfigError(
                f"{cfg.name} needs at least {self.min_size} voxels per spatial axis, "
                f"got shape {tuple(x.shape)}",
                field="image",
                hint="resize images larger in the transforms or pick a smaller network",
            )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Embed images.

        Args:
            inputs: ``(B, in_channels, H, W)`` or ``(B, in_channels, H, W, D)`` float.

        Returns:
            ``(B, embed_dim)``.
        """
        self._check_input(inputs)
        x = inputs.to(device=self.device, dtype=torch.float32)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def collate(self, items: list[Any]) -> torch.Tensor:
        """Stack per-case images into a batch.

        Args:
            items: arrays or tensors, each ``(C, H, W)`` (2D) or ``(C, H, W, D)``
                (3D), all of one shape (resize in the transforms).

        Returns:
            ``(B, C, *spatial)`` float32 tensor on CPU.
        """
        if not items:
            raise ConfigError("cannot collate an empty list of images", field="image")
        arrays = [torch.as_tensor(np.asarray(i) if not torch.is_tensor(i) else i) for i in items]
        want = self.config.spatial_dims + 1
        for k, a in enumerate(arrays):
            if a.ndim != want:
                raise ConfigError(
                    f"item {k}: expected a channel-first {want}-D image, got shape "
                    f"{tuple(a.shape)}",
                    field="image",
                    hint="add a channel axis (EnsureChannelFirstd) or fix spatial_dims",
                )
        shapes = {tuple(a.shape) for a in arrays}
        if len(shapes) > 1:
            raise ConfigError(
                f"images in a batch must share one shape, got {sorted(shapes)}",
                field="image",
                hint="resize or crop to a fixed size in the transforms",
            )
        return torch.stack([a.to(torch.float32) for a in arrays])


def _norm_spec(kind: str, channels: int) -> str | tuple[str, dict[str, Any]]:
    """MONAI ``Norm`` factory spec; GroupNorm uses the largest of 8/4/2/1 groups dividing C."""
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return ("group", {"num_groups": groups})
    if kind == "instance":
        return ("instance", {"affine": True})
    return "batch"


@register_encoder("image", "small_cnn")
class SmallCNNEncoder(ImageEncoder):
    """Fast CPU default: ``n_blocks`` x (Conv3-Norm-ReLU, MaxPool2), GAP, Linear."""

    config_class = SmallCNNConfig
    config: SmallCNNConfig

    def __init__(self, config: SmallCNNConfig | dict[str, Any]) -> None:
        super().__init__(config)
        from monai.networks.blocks import Convolution
        from monai.networks.layers.factories import Pool

        cfg = self.config
        dims = cfg.spatial_dims
        layers: list[nn.Module] = []
        channels = cfg.in_channels
        for i in range(cfg.n_blocks):
            out = cfg.width * 2**i
            layers.append(
                Convolution(
                    spatial_dims=dims,
                    in_channels=channels,
                    out_channels=out,
                    kernel_size=3,
                    act="relu",
                    norm=_norm_spec(cfg.norm, out),
                    bias=False,
                )
            )
            layers.append(Pool[Pool.MAX, dims](kernel_size=2))
            channels = out
        final_pool = Pool.ADAPTIVEMAX if cfg.global_pool == "max" else Pool.ADAPTIVEAVG
        layers += [
            Pool[final_pool, dims](1),
            nn.Flatten(1),
            nn.Dropout(cfg.dropout),
            nn.Linear(channels, cfg.embed_dim),
        ]
        self.net = nn.Sequential(*layers)
        self.min_size = 2**cfg.n_blocks
        self._finish_init()


@register_encoder("image", "densenet121")
class DenseNetEncoder(ImageEncoder):
    """MONAI DenseNet (121 by default); the classifier's output is the embedding."""

    config_class = DenseNetConfig
    config: DenseNetConfig
    min_size = 32

    def __init__(self, config: DenseNetConfig | dict[str, Any]) -> None:
        super().__init__(config)
        from monai.networks.nets import DenseNet

        cfg = self.config
        self.net = DenseNet(
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.in_channels,
            out_channels=cfg.embed_dim,
            init_features=cfg.init_features,
            growth_rate=cfg.growth_rate,
            block_config=tuple(cfg.block_config),
            dropout_prob=cfg.dropout_prob,
        )
        # stem /4, then one /2 per transition between dense blocks
        self.min_size = 4 * 2 ** (len(cfg.block_config) - 1)
        self._finish_init()


_RESNET_LAYERS: dict[str, tuple[str, Sequence[int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


@register_encoder("image", "resnet18")
@register_encoder("image", "resnet34")
@register_encoder("image", "resnet50")
class ResNetEncoder(ImageEncoder):
    """MONAI ResNet 18/34/50 (``config.name`` picks the depth); ``fc`` outputs the embedding."""

    config_class = ResNetConfig
    config: ResNetConfig
    min_size = 16

    def __init__(self, config: ResNetConfig | dict[str, Any]) -> None:
        super().__init__(config)
        from monai.networks.nets.resnet import ResNet, get_inplanes

        cfg = self.config
        block, layers = _RESNET_LAYERS[cfg.name]
        self.net = ResNet(
            block=block,
            layers=list(layers),
            block_inplanes=get_inplanes(),
            spatial_dims=cfg.spatial_dims,
            n_input_channels=cfg.in_channels,
            conv1_t_size=cfg.conv1_t_size,
            conv1_t_stride=cfg.conv1_t_stride,
            no_max_pool=cfg.no_max_pool,
            widen_factor=cfg.widen_factor,
            num_classes=cfg.embed_dim,
        )
        self._finish_init()


@register_encoder("image", "efficientnet-b0")
class EfficientNetEncoder(ImageEncoder):
    """MONAI EfficientNetBN-b0 (random init, ``pretrained=False``)."""

    config_class = EfficientNetConfig
    config: EfficientNetConfig
    min_size = 32

    def __init__(self, config: EfficientNetConfig | dict[str, Any]) -> None:
        super().__init__(config)
        from monai.networks.nets import EfficientNetBN

        cfg = self.config
        self.net = EfficientNetBN(
            model_name=cfg.name,
            pretrained=False,
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.in_channels,
            num_classes=cfg.embed_dim,
        )
        self._finish_init()
