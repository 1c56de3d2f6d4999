"""Per-modality encoders, chosen by name through a registry.

===========  =====================================================================
modality     registered encoders
===========  =====================================================================
image        ``small_cnn`` (default), ``densenet121``, ``resnet18``, ``resnet34``,
             ``resnet50``, ``efficientnet-b0`` (MONAI, 2D or 3D)
note         ``transformer`` (Hugging Face; default: shipped all-MiniLM-L6-v2)
signal       ``resnet1d`` (1-D residual CNN)
tabular      ``mlp`` (default; MLP over values and missingness mask),
             ``ft_transformer`` (FT-Transformer: a token per feature)
===========  =====================================================================

>>> from clinfuse.encoders import build_encoder, available_encoders
>>> sorted(available_encoders())
['image', 'note', 'signal', 'tabular']
>>> enc = build_encoder("tabular", {"name": "mlp", "n_features": 4, "embed_dim": 16})
>>> enc.out_dim
16

Importing this package imports neither MONAI nor transformers; they load when an
image or note encoder is built.
"""

from __future__ import annotations

from clinfuse.encoders.base import (
    CONFIG_NAME,
    DEFAULT_ENCODERS,
    WEIGHTS_NAME,
    Encoder,
    EncoderConfig,
    available_encoders,
    build_encoder,
    get_encoder_class,
    load_state_dict_file,
    register_encoder,
)
from clinfuse.encoders.image import (
    DenseNetConfig,
    DenseNetEncoder,
    EfficientNetConfig,
    EfficientNetEncoder,
    ImageEncoder,
    ImageEncoderConfig,
    ResNetConfig,
    ResNetEncoder,
    SmallCNNConfig,
    SmallCNNEncoder,
)
from clinfuse.encoders.signal import SignalEncoderConfig, SignalResNet1dEncoder
from clinfuse.encoders.tabular import (
    FTTransformerConfig,
    FTTransformerEncoder,
    TabularEncoderBase,
    TabularEncoderConfig,
    TabularMLPEncoder,
)
from clinfuse.encoders.text import (
    MINILM_SHA256,
    TextEncoderConfig,
    TransformerNoteEncoder,
    default_text_model_path,
)

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_ENCODERS",
    "MINILM_SHA256",
    "WEIGHTS_NAME",
    "DenseNetConfig",
    "DenseNetEncoder",
    "EfficientNetConfig",
    "EfficientNetEncoder",
    "Encoder",
    "EncoderConfig",
    "FTTransformerConfig",
    "FTTransformerEncoder",
    "ImageEncoder",
    "ImageEncoderConfig",
    "ResNetConfig",
    "ResNetEncoder",
    "SignalEncoderConfig",
    "SignalResNet1dEncoder",
    "SmallCNNConfig",
    "SmallCNNEncoder",
    "TabularEncoderBase",
    "TabularEncoderConfig",
    "TabularMLPEncoder",
    "TextEncoderConfig",
    "TransformerNoteEncoder",
    "available_encoders",
    "build_encoder",
    "default_text_model_path",
    "get_encoder_class",
    "load_state_dict_file",
    "register_encoder",
]
