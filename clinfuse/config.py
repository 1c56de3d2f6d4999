"""The run configuration: data preparation, encoders, fusion, training, calibration.

A :class:`RunConfig` is what ``clinfuse train --config FILE`` reads (YAML) and
what the run folder stores, fully resolved, as ``config.yaml``: reloading it
rebuilds exactly the same preprocessing and model without guessing anything.

>>> cfg = RunConfig.model_validate({"training": {"epochs": 3}})
>>> cfg.training.epochs, cfg.fusion.strategy
(3, 'late')

Importing this module is light: it needs neither PyTorch nor MONAI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from clinfuse import MODALITIES
from clinfuse.errors import ConfigError

__all__ = [
    "WINDOW_PRESETS",
    "CalibrationConfig",
    "DataConfig",
    "FusionConfig",
    "ImageTransformConfig",
    "RunConfig",
    "SignalTransformConfig",
    "TrainingConfig",
    "default_encoders",
    "demo_config",
    "load_config",
    "set_dotted",
]

# The models of the fusion and of image and signal preprocessing are re-exported by
# clinfuse.fusion and clinfuse.transforms; they are defined here so that reading a run's
# config.yaml imports neither PyTorch nor MONAI (the review app opens a run in about a second).

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "ct_soft_tissue": (40.0, 400.0),
    "ct_lung": (-600.0, 1500.0),
    "ct_bone": (400.0, 1800.0),
    "ct_brain": (40.0, 80.0),
}
"""Named (center, width) windows in Hounsfield units. ``"dicom"`` (the file's own
WindowCenter/WindowWidth) is accepted besides these names."""


class FusionConfig(BaseModel):
    """Settings of the fusion model (saved in the run's ``config.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["late", "early", "intermediate"] = Field(
        "late",
        description="late: weighted sum of unimodal logits (default, mask-aware, exact modality Shapley); "
        "early: concatenated embeddings + MLP; intermediate: cross-modal attention over modality tokens.",
    )
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before each unimodal head.")
    modality_dropout: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Training-time probability of hiding each present modality (at least one is kept).",
    )
    hidden: int = Field(
        128, ge=1, description="early: MLP width; intermediate: token width (d_model)."
    )
    n_layers: int = Field(2, ge=1, description="intermediate: transformer layers.")
    n_heads: int = Field(
        4, ge=1, description="intermediate: attention heads (must divide `hidden`)."
    )
    aux_weight: float = Field(
        0.5, ge=0, description="early/intermediate: weight of the unimodal auxiliary losses."
    )


class ImageTransformConfig(BaseModel):
    """How an image is prepared for an image encoder. Saved with the encoder's weights.

    Attributes:
        spatial_size: output spatial size, 2 ints for ``ndim=2`` or 3 for ``ndim=3``.
            Default ``(64, 64)``.
        window: intensity window applied before resizing: ``(center, width)`` in
            modality units (HU for CT), a preset name from :data:`WINDOW_PRESETS`
            (``"ct_soft_tissue"`` (40, 400), ``"ct_lung"`` (-600, 1500),
            ``"ct_bone"`` (400, 1800), ``"ct_brain"`` (40, 80)), ``"dicom"`` to use
            the file's WindowCenter/WindowWidth (an image without one is a
            :class:`~clinfuse.errors.ModalityLoadError`), or ``None`` for no
            windowing. Values are clipped to ``[c - w/2, c + w/2]`` and mapped to
            ``[0, 1]``. Default ``None``.
        normalize: final intensity normalization: ``"zscore"`` (per channel, mean 0
            std 1), ``"minmax"`` (per channel to ``[0, 1]``) or ``"none"``.
            Default ``"zscore"``.
        channels: number of output channels. ``1`` averages colour channels to one;
            ``3`` repeats a grayscale channel three times; ``None`` keeps the
            image's channels. Default ``1``.
        ndim: spatial dimensions of the output, 2 or 3. A 3-D volume given to a
            2-D config is reduced to its middle slice along the last spatial axis
            (``Z``, index ``n_slices // 2``), recorded as ``meta["slice_index"]``; a
            2-D image given to a 3-D config is a
            :class:`~clinfuse.errors.ModalityLoadError`. Default ``2``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    spatial_size: tuple[int, ...] = Field(
        default=(64, 64), description="output spatial size: 2 ints for ndim=2, 3 for ndim=3"
    )
    window: tuple[float, float] | str | None = Field(
        default=None,
        description="(center, width) in modality units, a preset name, 'dicom', or None",
    )
    normalize: Literal["zscore", "minmax", "none"] = Field(
        default="zscore", description="final per-channel intensity normalization"
    )
    channels: int | None = Field(
        default=1, description="output channels (1 averages colour, 3 repeats gray) or None to keep"
    )
    ndim: Literal[2, 3] = Field(default=2, description="output spatial dimensions")

    @field_validator("spatial_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 1 for s in value):
            raise ValueError(f"spatial_size must be positive, got {value}")
        return value

    @field_validator("window")
    @classmethod
    def _known_window(
        cls, value: tuple[float, float] | str | None
    ) -> tuple[float, float] | str | None:
        if isinstance(value, str) and value != "dicom" and value not in WINDOW_PRESETS:
            names = ", ".join([*WINDOW_PRESETS, "dicom"])
            raise ValueError(
                f"unknown window {value!r}; expected one of {names} or (center, width)"
            )
        if isinstance(value, tuple) and value[1] <= 0:
            raise ValueError(f"window width must be > 0, got {value[1]}")
        return value

    @field_validator("channels")
    @classmethod
    def _positive_channels(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"channels must be >= 1 or None, got {value}")
        return value

    @model_validator(mode="after")
    def _size_matches_ndim(self) -> ImageTransformConfig:
        if len(self.spatial_size) != self.ndim:
            raise ValueError(
                f"spatial_size {self.spatial_size} has {len(self.spatial_size)} values "
                f"but ndim is {self.ndim}"
            )
        return self


class SignalTransformConfig(BaseModel):
    """Preprocessing of the ``signal`` modality (saved in the run's ``config.yaml``).

    Attributes:
        target_fs: sampling rate (Hz) every signal is resampled to. Default 100.0.
        duration_s: length (s) of the window fed to the encoder; shorter
            signals are zero-padded (and masked), longer ones cropped. Default 10.0.
        bandpass: ``(low, high)`` Butterworth band-pass edges in Hz applied
            after resampling, zero-phase (``sosfiltfilt``); ``high`` is clamped
            to 0.95 × Nyquist; ``low == 0`` gives a low-pass only; ``None``
            disables filtering. Default ``(0.5, 40.0)``.
        filter_order: Butterworth order of each edge. Default 4.
        crop: which window of a longer signal to keep: ``"center"``,
            ``"start"`` or ``"random"`` (augmentation; training only). Default
            ``"center"``.
        normalize: ``"zscore"`` (per lead, over the valid samples; a flat lead
            stays zeros) or ``"none"``. Default ``"zscore"``.
        n_leads: keep the first ``n_leads`` leads; a case with fewer is a
            :class:`~clinfuse.errors.ModalityLoadError`, so all cases of a run
            share one lead count. ``None`` keeps all leads. Default ``None``.
        lead_names: select these leads by name (case-insensitive), in this
            order; a case lacking one is an error. Default ``None``.
        ecg_clean: neurokit2 ``ecg_clean`` method (e.g. ``"neurokit"``)
            applied before the band-pass; ``None`` skips it. ECG only.
            Default ``None``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_fs: float = Field(100.0, gt=0, description="Resample to this rate (Hz).")
    duration_s: float = Field(10.0, gt=0, description="Window length (s) after crop/pad.")
    bandpass: tuple[float, float] | None = Field(
        (0.5, 40.0), description="Band-pass edges (Hz), None = off; high clamped below Nyquist."
    )
    filter_order: int = Field(4, ge=1, le=10, description="Butterworth order.")
    crop: Literal["center", "start", "random"] = Field("center", description="Crop position.")
    normalize: Literal["zscore", "none"] = Field("zscore", description="Per-lead normalization.")
    n_leads: int | None = Field(None, ge=1, description="Keep the first n leads; fewer = error.")
    lead_names: list[str] | None = Field(None, description="Select leads by name, in order.")
    ecg_clean: str | None = Field(None, description="neurokit2 ecg_clean method, None = off.")

    @model_validator(mode="after")
    def _check(self) -> SignalTransformConfig:
        if self.bandpass is not None:
            low, high = self.bandpass
            if not (0 <= low < high):
                raise ValueError(f"bandpass must satisfy 0 <= low < high, got {self.bandpass}")
            if low >= 0.95 * self.target_fs / 2:
                raise ValueError(
                    f"bandpass low edge {low} Hz is not below the Nyquist rate of "
                    f"target_fs={self.target_fs} Hz"
                )
        if self.lead_names is not None:
            if not self.lead_names:
                raise ValueError("lead_names must name at least one lead (or be None)")
            if self.n_leads is not None and self.n_leads != len(self.lead_names):
                raise ValueError(
                    f"n_leads={self.n_leads} contradicts {len(self.lead_names)} lead_names"
                )
        return self

    @property
    def n_samples(self) -> int:
        """Samples per lead after the pipeline: ``round(target_fs * duration_s)``."""
        return round(self.target_fs * self.duration_s)


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
    split_by_date: str | None = Field(
        None,
        description="A manifest column of dates: patients are split in time order by their "
        "first case's date — the earliest train, then val, the latest test (temporal "
        "validation) — instead of at random.",
    )
    allow_external_paths: bool = Field(
        False, description="Accept files outside the manifest's folder."
    )
    image: ImageTransformConfig = Field(default_factory=ImageTransformConfig)  # type: ignore[arg-type]
    signal: SignalTransformConfig = Field(default_factory=SignalTransformConfig)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _features_are_not_reserved(self) -> DataConfig:
        from clinfuse.cohort.manifest import RESERVED_COLUMNS

        reserved = (RESERVED_COLUMNS - {"label"}) | {self.target}
        taken = [c for c in self.tabular_columns if c in reserved]
        if taken:
            what = ", ".join(f"{c!r} (the outcome)" if c == self.target else repr(c) for c in taken)
            raise ValueError(
                f"tabular_columns holds {what}: a column with a fixed meaning in the manifest "
                "cannot be a feature; copy it to a column of another name if you mean it"
            )
        return self

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


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in ``path`` (``what`` names it in errors).

    Raises:
        ConfigError: the file is missing or not YAML.
    """
    if not path.is_file():
        raise ConfigError(f"{what} file not found", path=path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {e}", path=path) from e


def set_dotted(data: dict[str, Any], dotted: str, value: Any, *, field: str | None = None) -> None:
    """Set ``data["a"]["b"]["c"] = value`` for ``dotted = "a.b.c"``, making missing sections.

    Raises:
        ConfigError: a part of the path holds a value, not a section (named by ``field``,
            default ``dotted``).
    """
    node = data
    *parents, leaf = dotted.split(".")
    for i, key in enumerate(parents):
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(
                f"{'.'.join(parents[: i + 1])} is a value, not a section, so "
                f"{dotted} is not a config field",
                field=field or dotted,
                hint="see docs/configuration.md for the fields",
            )
        node = nxt
    node[leaf] = value


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
        loaded = read_yaml(path, "config")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("config must be a YAML mapping", path=path)
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
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
