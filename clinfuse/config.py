"""The run configuration: data preparation, encoders, fusion, training, calibration.

A :class:`RunConfig` is what ``clinfuse train --config FILE`` reads (YAML) and
what the run folder stores, fully resolved, as ``config.yaml``: reloading it
rebuilds exactly the same preprocessing and model without guessing anything.

>>> cfg = RunConfig.model_validate({"training": {"epochs": 3}})
>>> cfg.training.epochs, cfg.fusion.strategy
(3, 'late')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clinfuse import MODALITIES
from clinfuse.errors import ConfigError
from clinfuse.fusion.base import FusionConfig
from clinfuse.transforms.image import ImageTransformConfig
from clinfuse.transforms.signal import SignalTransformConfig

__all__ = [
    "CalibrationConfig",
    "DataConfig",
    "RunConfig",
    "TrainingConfig",
    "default_encoders",
    "demo_config",
    "load_config",
]


class DataConfig(BaseModel):
    """Which cases, modalities and columns a run uses, and how inputs are prepared."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field("label", description="Outcome column of the manifest (0/1).")
    modalities: list[str] | None = Field(
        None,
        description="Modalities to use, in order; None = every modality the cohort has "
        "(tabular only when tabular_columns is set).",
    )
    tabular_columns: list[str] = Field(
        default_factory=list, description="Manifest columns used as tabular features."
    )
    split_fractions: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2),
        description="Train/val/test shares of patients when the manifest has no split.",
    )
    split_seed: int = Field(0, description="Seed of the patient-level split.")
    allow_external_paths: bool = Field(
        False, description="Accept files outside the manifest's folder."
    )
    image: ImageTransformConfig = Field(default_factory=ImageTransformConfig)  # type: ignore[arg-type]
    signal: SignalTransformConfig = Field(default_factory=SignalTransformConfig)  # type: ignore[arg-type]

    @field_validator("modalities")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = [m for m in value if m not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {list(MODALITIES)}")
        if len(set(value)) != len(value):
            raise ValueError(f"modalities listed twice: {value}")
        return value


class TrainingConfig(BaseModel):
    """How the encoders and heads are trained (Lightning Fabric underneath)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=1, description="Maximum epochs.")
    batch_size: int = Field(32, ge=1, description="Cases per batch.")
    lr: float = Field(
        1e-3, gt=0, description="AdamW learning rate of heads and trainable encoders."
    )
    encoder_lr: float | None = Field(
        None,
        gt=0,
        description="Learning rate of fine-tuned pretrained encoders (text); None = lr / 20.",
    )
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    patience: int = Field(
        5, ge=1, description="Early stopping: epochs without a better validation AUROC."
    )
    class_weight: Literal["balanced", "none"] = Field(
        "balanced",
        description="Weigh positive cases by n_neg/n_pos in the loss (calibration corrects the intercept).",
    )
    seed: int = Field(0, description="Seed of weights, shuffling and modality dropout.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when available."
    )
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto = bf16-mixed on CUDA, 32-true on CPU."
    )
    devices: int | str = Field(
        1, description="GPUs per node (Lightning `devices`), e.g. 4 or 'auto'."
    )
    num_nodes: int = Field(1, ge=1, description="Nodes for multi-node DDP.")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ...")
    augment: bool = Field(
        True,
        description="Random flips/quarter turns of images, amplitude scaling of signals (training only).",
    )
    deterministic: bool = Field(
        True, description="Deterministic algorithms on CPU (bit-for-bit reruns)."
    )
    cache_dir: str | None = Field(
        None,
        description="Embedding cache of frozen encoders; None = $CLINFUSE_CACHE or ~/.cache/clinfuse.",
    )
    embed_batch_size: int = Field(
        16, ge=1, description="Cases per batch when filling the embedding cache."
    )
    num_workers: int | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes that collate training batches; "
        "auto = 0 on CPU (the cores compute), min(8, CPUs - 1) on CUDA.",
    )
    pin_memory: bool | None = Field(
        None, description="Page-locked batches for asynchronous copies; None = on CUDA."
    )
    channels_last: bool | None = Field(
        None, description="Channels-last memory layout for 2-D image CNNs; None = on CUDA."
    )
    fused_optimizer: bool | None = Field(
        None, description="Fused AdamW kernel (one launch per step); None = on CUDA."
    )
    load_workers: int | Literal["auto"] = Field(
        "auto",
        description="Processes that read and preprocess the cohort's files; "
        "auto = one per CPU (at most 8) for cohorts of 128 cases or more, else 0.",
    )
    persist_decoded: bool = Field(
        False,
        description="Keep decoded, preprocessed images in the cache folder so later runs "
        "over the same files skip decoding (keyed by file identity and image settings).",
    )
    compile: bool = Field(
        False,
        description="torch.compile the trainable encoders' backbones (pays on long GPU runs; "
        "the first steps are slow while it compiles).",
    )

    @field_validator("num_workers", "load_workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError(f"worker counts must be >= 0 or 'auto', got {value}")
        return value


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["platt", "temperature", "isotonic", "none"] = Field(
        "platt", description="Calibration of the fused logit on the validation split."
    )


def default_encoders() -> dict[str, dict[str, Any]]:
    """CPU-friendly default encoder per modality (see docs for GPU choices)."""
    return {
        "image": {"name": "small_cnn", "embed_dim": 64},
        "note": {"name": "transformer", "freeze": True},
        "signal": {"name": "resnet1d", "embed_dim": 64},
        "tabular": {"name": "mlp", "embed_dim": 32},
    }


class RunConfig(BaseModel):
    """Everything a run needs; stored resolved in ``config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig)  # type: ignore[arg-type]
    encoders: dict[str, dict[str, Any]] = Field(default_factory=default_encoders)
    fusion: FusionConfig = Field(default_factory=FusionConfig)  # type: ignore[arg-type]
    training: TrainingConfig = Field(default_factory=TrainingConfig)  # type: ignore[arg-type]
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)  # type: ignore[arg-type]

    @field_validator("encoders")
    @classmethod
    def _merge_defaults(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = [m for m in value if m not in MODALITIES]
        if unknown:
            raise ValueError(
                f"encoders for unknown modalities {unknown}; known: {list(MODALITIES)}"
            )
        merged = default_encoders()
        for m, spec in value.items():
            if not isinstance(spec, dict):
                raise ValueError(f"encoders.{m} must be a mapping with at least `name`")
            base = merged[m] if spec.get("name", merged[m]["name"]) == merged[m]["name"] else {}
            merged[m] = {**base, **spec}
        return merged

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read a YAML config (or the defaults) and apply nested overrides.

    Raises:
        ConfigError: the file is missing or not YAML, or a field is unknown or invalid.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError("config file not found", path=path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"config is not valid YAML: {e}", path=path) from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("config must be a YAML mapping", path=path)
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ConfigError(
            f"{first['msg']} ({len(e.errors())} problem(s) in total)",
            field=loc or None,
            path=path,
            hint="see docs/configuration.md for every field and its default",
        ) from e


def demo_config() -> RunConfig:
    """The embedded default of ``clinfuse demo``: the demo cohort's columns, CPU-sized models."""
    from clinfuse.synth.generator import TABULAR_COLUMNS

    return RunConfig.model_validate(
        {
            "data": {
                "tabular_columns": list(TABULAR_COLUMNS),
                "image": {
                    "spatial_size": [64, 64],
                    "window": "ct_soft_tissue",
                    "normalize": "zscore",
                },
                "signal": {"target_fs": 100.0, "duration_s": 10.0, "bandpass": [0.5, 40.0]},
            },
            # sizes chosen on the demo cohort (CPU): a narrow CNN with global max pooling finds
            # the small lesion; a 3-block 1-D ResNet of width 16 overfits least on 240 ECGs
            "encoders": {
                "image": {"name": "small_cnn", "embed_dim": 32, "width": 8, "global_pool": "max"},
                "signal": {"name": "resnet1d", "embed_dim": 32, "width": 16, "depth": 3},
            },
            "training": {"epochs": 30, "patience": 8, "batch_size": 32, "lr": 1e-3},
        }
    )
