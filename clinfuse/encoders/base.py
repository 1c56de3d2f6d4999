"""Encoder base class, configuration and registry.

An encoder turns one modality of a batch of cases into embeddings ``(B, out_dim)``.
Each encoder family has one pydantic config (saved next to its weights, as in
``transformers``' ``configuration_*.py``) and is chosen by name through a registry
(as MONAI's ``networks/layers/factories.py`` chooses layers):

>>> from clinfuse.encoders import build_encoder
>>> enc = build_encoder("tabular", {"name": "mlp", "n_features": 3, "embed_dim": 8})
>>> enc.collate([(np.zeros(3), np.ones(3))])["values"].shape  # doctest: +SKIP
torch.Size([1, 3])

Contract shared by every encoder (checked by one parametrized test suite):

* ``collate(items)`` turns a list of per-case preprocessed items into the batch
  ``forward`` takes (tokenization of notes happens here);
* ``forward(inputs) -> (B, out_dim)``;
* ``freeze=True``: no parameter requires grad and the module stays in eval mode;
* ``save_pretrained(dir)`` / ``Encoder.from_pretrained(dir)`` round-trip bit-identically;
* ``fingerprint()`` changes exactly when the config or the weights change, so an
  embedding cache can key on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from clinfuse.errors import ConfigError

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_ENCODERS",
    "WEIGHTS_NAME",
    "Encoder",
    "EncoderConfig",
    "available_encoders",
    "build_encoder",
    "check_encoder_configs",
    "get_encoder_class",
    "load_state_dict_file",
    "register_encoder",
]

CONFIG_NAME = "config.json"
"""File name of an encoder's config inside a ``save_pretrained`` folder."""

WEIGHTS_NAME = "model.safetensors"
"""File name of an encoder's weights inside a ``save_pretrained`` folder."""

MODALITY_NAMES: tuple[str, ...] = ("image", "note", "signal", "tabular")

DEFAULT_ENCODERS: dict[str, str] = {
    "image": "small_cnn",
    "note": "transformer",
    "signal": "resnet1d",
    "tabular": "mlp",
}
"""Encoder used for a modality when a config dict gives no ``name``."""


class EncoderConfig(BaseModel):
    """Hyperparameters shared by every encoder. Subclasses add their own fields.

    Unknown fields are rejected (a typo must not silently fall back to a default).

    Attributes:
        name: registered encoder name within its modality, e.g. ``"small_cnn"``.
        embed_dim: width of the output embedding. Default 128.
        freeze: if True no parameter is trained and the module stays in eval mode
            (BatchNorm statistics and dropout frozen). Default False.
        weights: optional user-supplied weights loaded after construction: a
            ``.safetensors`` file, or a ``.pt``/``.pth`` state dict read with
            ``torch.load(weights_only=True)`` (never plain pickle). The keys may be
            those of the whole encoder or of its backbone ``net``. Default None.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    name: str = Field(description="registered encoder name within its modality")
    embed_dim: int = Field(128, ge=1, description="output embedding width")
    freeze: bool = Field(False, description="freeze all parameters and keep eval mode")
    weights: str | None = Field(
        None, description="user weights: .safetensors or a .pt/.pth state dict (weights_only)"
    )


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pt``/``.pth`` without unpickling code.

    Args:
        path: the weights file.

    Returns:
        name -> tensor mapping (on CPU).

    Raises:
        ConfigError: the file is missing, has another suffix, or is not a plain
            state dict of tensors (``torch.load(weights_only=True)`` refuses it).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"weights file not found: {p}", field="weights", path=p)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError
            raise ConfigError(f"cannot read safetensors: {e}", field="weights", path=p) from e
    if suffix in {".pt", ".pth", ".bin"}:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError, ...
            raise ConfigError(
                f"cannot read as a weights-only state dict: {e}",
                field="weights",
                path=p,
                hint="save a state dict with torch.save(model.state_dict(), path) "
                "or safetensors.torch.save_file",
            ) from e
        if (
            isinstance(obj, Mapping)
            and "state_dict" in obj
            and isinstance(obj["state_dict"], Mapping)
        ):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in obj.values()
        ):
            raise ConfigError(
                f"expected a mapping of parameter names to tensors, got {type(obj).__name__}",
                field="weights",
                path=p,
            )
        return dict(obj)
    raise ConfigError(
        f"unsupported weights file type {suffix!r}; expected .safetensors, .pt or .pth",
        field="weights",
        path=p,
    )


class Encoder(nn.Module):
    """Base class of all clinfuse encoders.

    Subclasses set the class attributes, build their layers in ``__init__`` (the
    backbone preferably as ``self.net``), call :meth:`_finish_init` at the end, and
    implement :meth:`forward` and :meth:`collate`.

    Attributes:
        modality: ``"image"``, ``"note"``, ``"signal"`` or ``"tabular"``.
        config_class: the pydantic config class of this encoder family.
        config: the validated config of this instance.
    """

    modality: ClassVar[str] = ""
    config_class: ClassVar[type[EncoderConfig]] = EncoderConfig
    registered_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: EncoderConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.config = _validate_config(self.config_class, config)
        if self.registered_names and self.config.name not in self.registered_names:
            raise ConfigError(
                f"{type(self).__name__} implements {list(self.registered_names)}, "
                f"got name {self.config.name!r}",
                field="name",
            )

    # ------------------------------------------------------------------ contract
    @property
    def out_dim(self) -> int:
        """Width of the embedding ``forward`` returns."""
        return int(self.config.embed_dim)

    def forward(self, inputs: Any) -> torch.Tensor:  # pragma: no cover - abstract
        """Embed a collated batch; returns ``(B, out_dim)`` float."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:  # pragma: no cover - abstract
        """Turn a list of per-case preprocessed items into the input of ``forward``."""
        raise NotImplementedError

    def embed(self, items: list[Any]) -> torch.Tensor:
        """``forward(collate(items))`` without gradients, in the current mode.

        Args:
            items: per-case preprocessed items, as for :meth:`collate`.

        Returns:
            ``(len(items), out_dim)`` embeddings (on the module's device).
        """
        with torch.no_grad():
            return self(self.collate(items))

    # ------------------------------------------------------------- freeze/train
    def _finish_init(self) -> None:
        """Load user weights and apply ``freeze``; subclasses call it last in ``__init__``."""
        if self.config.weights is not None:
            self.load_weights(self.config.weights)
        self._apply_freeze()

    def _apply_freeze(self) -> None:
        if self.config.freeze:
            for p in self.parameters():
                p.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> Encoder:
        """Set training mode; a frozen encoder always stays in eval mode."""
        if getattr(self, "config", None) is not None and self.config.freeze:
            mode = False
        return super().train(mode)

    @property
    def device(self) -> torch.device:
        """Device of the first parameter or buffer (CPU when there is none)."""
        for t in self.parameters():
            return t.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    # ----------------------------------------------------------------- weights
    def load_weights(self, path: str | Path) -> None:
        """Load a user state dict into the encoder, or into its backbone ``self.net``.

        Args:
            path: ``.safetensors`` or ``.pt``/``.pth`` state-dict file.

        Raises:
            ConfigError: the file cannot be read or its keys/shapes fit neither the
                encoder nor its backbone.
        """
        state = load_state_dict_file(path)
        targets: list[tuple[str, nn.Module]] = [("encoder", self)]
        net = getattr(self, "net", None)
        if isinstance(net, nn.Module):
            targets.append(("backbone", net))
        problems = []
        for label, module in targets:
            own = module.state_dict()
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            shape_bad = sorted(
                k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)
            )
            if not missing and not unexpected and not shape_bad:
                module.load_state_dict(state, strict=True)
                return
            problems.append(
                f"{label}: {len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
                f"{len(shape_bad)} with another shape (e.g. {shape_bad[:3]})"
            )
        raise ConfigError(
            "weights do not match this encoder's architecture: " + "; ".join(problems),
            field="weights",
            path=path,
            hint="check the encoder name and its size fields against the checkpoint",
        )

    # ------------------------------------------------------------- fingerprint
    def _fingerprint_config(self) -> dict[str, Any]:
        """Config fields that define the computation (file locations excluded)."""
        return self.config.model_dump(mode="json", exclude={"weights"})

    def _fingerprint_extra(self, digest: Any) -> None:
        """Hook for subclasses to hash state outside ``state_dict`` (e.g. a tokenizer)."""

    def fingerprint(self) -> str:
        """SHA-256 over the encoder class, its config and every tensor of its state.

        Stable across processes and across ``save_pretrained``/``from_pretrained``;
        changes when any weight, buffer (e.g. BatchNorm statistics) or config field
        that affects the output changes. Use it to key an embedding cache.

        Hashing every weight costs a noticeable fraction of a second for a BERT, so the
        result is remembered until a tensor of the state changes: any in-place write
        (an optimizer step, ``load_state_dict``) bumps the tensor's version counter, a
        reassignment changes its storage, and either one invalidates the memo.

        Returns:
            64 hex characters.
        """
        head = {
            "modality": self.modality,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": self._fingerprint_config(),
        }
        state = self.state_dict()
        token = (
            json.dumps(head, sort_keys=True),
            id(getattr(self, "tokenizer", None)),
            tuple(
                (k, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype), str(t.device))
                for k, t in state.items()
            ),
        )
        memo = self.__dict__.get("_fingerprint_memo")
        if memo is not None and memo[0] == token:
            return str(memo[1])
        value = self._compute_fingerprint(head, state)
        self.__dict__["_fingerprint_memo"] = (token, value)
        return value

    def _compute_fingerprint(self, head: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps(head, sort_keys=True).encode())
        for key, tensor in sorted(state.items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        self._fingerprint_extra(digest)
        return digest.hexdigest()

    # ---------------------------------------------------------- save / load
    def _config_dict_for_save(self) -> dict[str, Any]:
        data = self.config.model_dump(mode="json")
        return {"modality": self.modality, **data}

    def _state_for_save(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``.

        Args:
            directory: folder to create or overwrite files in.

        Returns:
            The folder.
        """
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(
            json.dumps(self._config_dict_for_save(), indent=2, sort_keys=True) + "\n"
        )
        state = {k: v.detach().to("cpu").contiguous() for k, v in self._state_for_save().items()}
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        return out

    @classmethod
    def _from_saved(cls, directory: Path, config: EncoderConfig) -> Encoder:
        """Build an instance from a saved folder; subclasses may override."""
        from safetensors.torch import load_file

        saved_weights = config.weights
        encoder = cls(config.model_copy(update={"weights": None}))
        encoder.load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=True)
        encoder.config.weights = saved_weights  # provenance only; not reloaded
        return encoder

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Encoder:
        """Restore an encoder written by :meth:`save_pretrained`.

        Called on :class:`Encoder` itself it dispatches on the saved modality and
        name; called on a subclass it checks that the folder holds that class.

        Args:
            directory: folder holding ``config.json`` and ``model.safetensors``.

        Returns:
            The encoder, in eval mode.

        Raises:
            ConfigError: the folder is incomplete or holds another encoder.
        """
        folder = Path(directory)
        cfg_path = folder / CONFIG_NAME
        if not cfg_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise ConfigError(
                f"not an encoder folder: expected {CONFIG_NAME} and {WEIGHTS_NAME}",
                path=folder,
                hint="write one with encoder.save_pretrained(folder)",
            )
        try:
            data = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"invalid JSON: {e}", path=cfg_path) from e
        modality = data.pop("modality", cls.modality or None)
        if modality is None or "name" not in data:
            raise ConfigError("config.json lacks 'modality' or 'name'", path=cfg_path)
        klass = get_encoder_class(modality, data["name"])
        if cls is not Encoder and not issubclass(klass, cls):
            raise ConfigError(
                f"folder holds a {klass.__name__} ({modality}/{data['name']}), "
                f"not a {cls.__name__}",
                path=folder,
            )
        config = _validate_config(klass.config_class, data)
        encoder = klass._from_saved(folder, config)
        encoder.eval()
        return encoder

    def extra_repr(self) -> str:
        return f"modality={self.modality!r}, name={self.config.name!r}, out_dim={self.out_dim}"


# --------------------------------------------------------------------- registry
_REGISTRY: dict[str, dict[str, type[Encoder]]] = {m: {} for m in MODALITY_NAMES}

E = TypeVar("E", bound=type[Encoder])


def register_encoder(modality: str, name: str) -> Callable[[E], E]:
    """Class decorator: make an encoder class buildable as ``(modality, name)``.

    One class may be registered under several names (e.g. resnet18/34/50); it then
    reads ``config.name`` to pick the variant.

    Args:
        modality: one of ``image``, ``note``, ``signal``, ``tabular``.
        name: the encoder's name within the modality.
    """
    if modality not in _REGISTRY:
        raise ConfigError(f"unknown modality {modality!r}; expected one of {list(_REGISTRY)}")

    def decorator(klass: E) -> E:
        if klass.modality != modality:
            raise ConfigError(
                f"{klass.__name__}.modality is {klass.modality!r}, registered as {modality!r}"
            )
        existing = _REGISTRY[modality].get(name)
        if existing is not None and existing is not klass:
            raise ConfigError(f"encoder {modality}/{name} already registered by {existing}")
        _REGISTRY[modality][name] = klass
        klass.registered_names = (*klass.registered_names, name)
        return klass

    return decorator


def available_encoders() -> dict[str, list[str]]:
    """Registered encoder names per modality, sorted."""
    return {m: sorted(names) for m, names in _REGISTRY.items()}


def get_encoder_class(modality: str, name: str) -> type[Encoder]:
    """Look up a registered encoder class.

    Raises:
        ConfigError: unknown modality or name; the message lists what exists.
    """
    if modality not in _REGISTRY:
        raise ConfigError(
            f"unknown modality {modality!r}; available: {sorted(_REGISTRY)}", field="modality"
        )
    try:
        return _REGISTRY[modality][name]
    except KeyError:
        raise ConfigError(
            f"unknown {modality} encoder {name!r}; available: {sorted(_REGISTRY[modality])}",
            field="name",
        ) from None


def _validate_config(
    klass: type[EncoderConfig], config: EncoderConfig | Mapping[str, Any]
) -> EncoderConfig:
    if isinstance(config, klass):
        return config.model_copy(deep=True)
    data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
    try:
        return klass.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<config>'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid {klass.__name__}: {problems}") from e


def check_encoder_configs(encoders: Mapping[str, Mapping[str, Any]]) -> None:
    """Check a run config's ``encoders`` section without building anything: every name is
    registered and every option is one its encoder has, with a valid value.

    Raises:
        ConfigError: naming ``encoders.<modality>`` and what is wrong.
    """
    for modality, spec in encoders.items():
        name = spec.get("name") or DEFAULT_ENCODERS.get(modality, "")
        try:
            klass = get_encoder_class(modality, name)
            _validate_config(klass.config_class, {**spec, "name": name})
        except ConfigError as e:
            raise ConfigError(
                f"encoders.{modality}: {e.reason}",
                field=f"encoders.{modality}",
                hint="see docs/configuration.md for each encoder's options",
            ) from e


def build_encoder(modality: str, config: EncoderConfig | Mapping[str, Any]) -> Encoder:
    """Build an encoder by modality and ``config.name``.

    Args:
        modality: ``image``, ``note``, ``signal`` or ``tabular``.
        config: a config object or a plain dict (e.g. from YAML). A dict without
            ``name`` gets the modality's default (:data:`DEFAULT_ENCODERS`).

    Returns:
        The encoder (in training mode unless frozen).

    Raises:
        ConfigError: unknown modality/name (the message lists the available names)
            or invalid config fields.

    >>> enc = build_encoder("signal", {"name": "resnet1d", "in_leads": 12})  # doctest: +SKIP
    """
    if modality not in _REGISTRY:
        raise ConfigError(
            f"unknown modality {modality!r}; available: {sorted(_REGISTRY)}", field="modality"
        )
    if isinstance(config, BaseModel):
        name = config.name  # type: ignore[attr-defined]
    else:
        config = dict(config)
        name = config.setdefault("name", DEFAULT_ENCODERS[modality])
    klass = get_encoder_class(modality, str(name))
    return klass(config)
