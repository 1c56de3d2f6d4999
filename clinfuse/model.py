"""The fusion model: encoders + fusion head + calibration + the preprocessing that feeds them.

:class:`FusionNetwork` is the ``torch.nn.Module`` that training optimises;
:class:`FusionModel` is what users hold: it also carries the run's data
settings, the fitted tabular encoder and the calibrators, and it saves to and
reloads from a run folder (safetensors + JSON, no pickle)::

    model = clinfuse.load_run("runs/demo")
    predictions = model.predict("new_site/manifest.csv")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from scipy.special import expit
from torch import nn

from clinfuse.calibration import Calibrator, calibrator_from_dict
from clinfuse.config import RunConfig, load_config
from clinfuse.errors import CohortError, ConfigError
from clinfuse.fusion.base import FusionHead, FusionOutput, build_fusion

__all__ = ["Collator", "FusionModel", "FusionNetwork", "load_run"]

MODEL_DIR = "model"
MODEL_FORMAT = "clinfuse.fusion_model.v1"


class FusionNetwork(nn.Module):
    """Encoders and the fusion head as one module.

    ``forward(batch)`` takes a batch made by :class:`Collator`:

    - ``present``: (B, M) bool presence mask;
    - ``embeddings``: {modality: (B, D)} precomputed embeddings of frozen
      encoders (zeros where absent);
    - ``inputs``: {modality: (rows, encoder inputs)} for trainable encoders,
      where ``rows`` (K,) are the batch rows where the modality is present.
    """

    def __init__(
        self, modalities: Sequence[str], encoders: dict[str, nn.Module], fusion: FusionHead
    ) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion

    def embed(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        present: torch.Tensor = batch["present"]
        out: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            if m in batch["embeddings"]:
                out[m] = batch["embeddings"][m]
                continue
            dim = self.fusion.embed_dims[m]
            rows, inputs = batch["inputs"][m]
            full = torch.zeros(present.shape[0], dim, device=present.device)
            if rows.numel():
                emb = self.encoders[m](inputs)
                full = full.to(emb.dtype).index_copy(0, rows, emb)
            out[m] = full
        return out

    def forward(self, batch: dict[str, Any], present: torch.Tensor | None = None) -> FusionOutput:
        emb = self.embed(batch)
        dtype = next((e.dtype for e in emb.values() if e.is_floating_point()), torch.float32)
        emb = {m: e.to(dtype) for m, e in emb.items()}
        return self.fusion(emb, batch["present"] if present is None else present)


class Collator:
    """Turns a list of loaded case dicts into a batch for :class:`FusionNetwork`.

    Args:
        modalities: the run's modalities (mask order).
        encoders: the encoders (their ``collate`` prepares trainable inputs).
        frozen: modalities whose embeddings are precomputed (``case[f"{m}_embedding"]``).
    """

    def __init__(
        self, modalities: Sequence[str], encoders: dict[str, Any], frozen: Sequence[str]
    ) -> None:
        self.modalities = list(modalities)
        self.encoders = encoders
        self.frozen = set(frozen)

    @staticmethod
    def item(case: dict[str, Any], modality: str) -> Any:
        """What a case gives an encoder's ``collate``: the tabular values and mask, a note's
        tokens when they were computed once (``note_tokens``), else the loaded value."""
        if modality == "tabular":
            return (case["tabular"], case["tabular_mask"])
        if modality == "note" and case.get("note_tokens") is not None:
            return case["note_tokens"]
        return case[modality]

    def __call__(self, cases: list[dict[str, Any]]) -> dict[str, Any]:
        present = torch.as_tensor(np.stack([c["present"] for c in cases]), dtype=torch.bool)
        labels = torch.tensor(
            [np.nan if c.get("label") is None else float(c["label"]) for c in cases],
            dtype=torch.float32,
        )
        batch: dict[str, Any] = {
            "case_id": [c["case_id"] for c in cases],
            "present": present,
            "label": labels,
            "embeddings": {},
            "inputs": {},
        }
        for i, m in enumerate(self.modalities):
            rows = torch.nonzero(present[:, i], as_tuple=False).flatten()
            if m in self.frozen:
                dim = None
                emb_rows = [c.get(f"{m}_embedding") for c in cases]
                for e in emb_rows:
                    if e is not None:
                        dim = len(e)
                        break
                dim = dim or int(getattr(self.encoders[m], "out_dim", 1))
                full = np.zeros((len(cases), dim), dtype=np.float32)
                for r in rows.tolist():
                    full[r] = emb_rows[r]
                batch["embeddings"][m] = torch.from_numpy(full)
            else:
                items = [self.item(cases[r], m) for r in rows.tolist()]
                inputs = self.encoders[m].collate(items) if items else None
                batch["inputs"][m] = (rows, inputs)
        return batch


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch (nested in dicts, lists and tuples) to ``device``."""

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return tuple(move(v) for v in x)
        if isinstance(x, list):
            return [move(v) for v in x]
        return x

    return move(batch)


class FusionModel:
    """A trained clinfuse model: what ``clinfuse train`` writes and :func:`load_run` restores.

    Attributes:
        config: the resolved run configuration.
        modalities: the run's modalities, in mask order.
        network: encoders + fusion head.
        tabular: fitted tabular encoder (or None).
        calibrators: {"fusion": ..., modality: ...} fitted on the validation split.
    """

    def __init__(
        self,
        config: RunConfig,
        modalities: Sequence[str],
        network: FusionNetwork,
        *,
        tabular: Any = None,
        calibrators: dict[str, Calibrator] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.modalities = list(modalities)
        self.network = network
        self.tabular = tabular
        self.calibrators = calibrators or {}
        self.info = info or {}

    # -- building ------------------------------------------------------------
    @classmethod
    def build(
        cls,
        config: RunConfig,
        modalities: Sequence[str],
        *,
        tabular: Any = None,
        in_shapes: dict[str, Any] | None = None,
    ) -> FusionModel:
        """Fresh (untrained) encoders and fusion head for ``modalities``.

        Args:
            in_shapes: input facts taken from the data: ``image_channels``,
                ``signal_leads``, ``tabular_features``.
        """
        from clinfuse.encoders import build_encoder

        in_shapes = in_shapes or {}
        encoders: dict[str, Any] = {}
        for m in modalities:
            spec = dict(config.encoders[m])
            if m == "image":
                spec.setdefault(
                    "in_channels", in_shapes.get("image_channels", config.data.image.channels or 1)
                )
                spec.setdefault("spatial_dims", config.data.image.ndim)
            elif m == "signal":
                spec.setdefault(
                    "in_leads", in_shapes.get("signal_leads", config.data.signal.n_leads or 1)
                )
            elif m == "tabular":
                spec.setdefault("n_features", in_shapes.get("tabular_features", 1))
            encoders[m] = build_encoder(m, spec)
        dims = {m: int(encoders[m].out_dim) for m in modalities}
        fusion = build_fusion(config.fusion, modalities, dims)
        return cls(config, modalities, FusionNetwork(modalities, encoders, fusion), tabular=tabular)

    @property
    def frozen_modalities(self) -> list[str]:
        return [
            m for m in self.modalities if getattr(self.network.encoders[m].config, "freeze", False)
        ]

    # -- persistence -----------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.yaml`` and ``model/`` (safetensors weights + JSON) into ``directory``."""
        directory = Path(directory)
        mdir = directory / MODEL_DIR
        mdir.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / "config.yaml")
        for m in self.modalities:
            self.network.encoders[m].save_pretrained(mdir / "encoders" / m)  # type: ignore[operator]
        fusion_state = {
            k: v.detach().cpu().contiguous() for k, v in self.network.fusion.state_dict().items()
        }
        save_file(fusion_state, str(mdir / "fusion.safetensors"))
        meta = {
            "format": MODEL_FORMAT,
            "modalities": self.modalities,
            "embed_dims": self.network.fusion.embed_dims,
            "strategy": self.network.fusion.strategy,
            "encoder_fingerprints": {
                m: cast(Any, self.network.encoders[m]).fingerprint() for m in self.modalities
            },
            "tabular": None if self.tabular is None else self.tabular.to_dict(),
            "calibrators": {k: c.to_dict() for k, c in self.calibrators.items()},
            "info": self.info,
        }
        (mdir / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, map_location: str | torch.device = "cpu"
    ) -> FusionModel:
        """Restore a model from a run folder (or its ``model/`` parent).

        Raises:
            ConfigError: the folder is not a complete clinfuse run, or its
                weights do not match its config.
        """
        from clinfuse.encoders import Encoder
        from clinfuse.io.tabular import TabularEncoder

        directory = Path(directory)
        mdir = directory / MODEL_DIR
        meta_path = mdir / "model.json"
        if not meta_path.exists():
            hint = "is this a run folder written by `clinfuse train`?"
            if Path(str(directory) + ".partial").exists():
                hint = "training did not finish; rerun `clinfuse train ... --resume`"
            elif (directory / "crossval.json").exists():
                hint = (
                    "this is a cross-validation folder: `clinfuse predict`, `evaluate` and "
                    "`explain` use its fold models together (clinfuse.load_ensemble in "
                    "Python); other commands take one fold's run, folds/fold_k"
                )
            elif (directory / "repeats.json").exists():
                hint = (
                    "this is a repeated cross-validation: give one of its cross-validations, "
                    "repeat_1, repeat_2, ... (the model to use is trained on all cases with "
                    "`clinfuse train`)"
                )
            raise ConfigError("no model/model.json in this folder", path=directory, hint=hint)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != MODEL_FORMAT:
            raise ConfigError(f"unknown model format {meta.get('format')!r}", path=meta_path)
        config = load_config(directory / "config.yaml")
        modalities = list(meta["modalities"])
        encoders: dict[str, nn.Module] = {}
        for m in modalities:
            enc = Encoder.from_pretrained(mdir / "encoders" / m)
            expected = meta["encoder_fingerprints"].get(m)
            if expected is not None and enc.fingerprint() != expected:
                raise ConfigError(
                    f"the {m} encoder's weights differ from the ones this run was trained with",
                    path=mdir / "encoders" / m,
                    hint="the run folder was modified; retrain or restore it",
                )
            encoders[m] = enc
        fusion = build_fusion(
            config.fusion, modalities, {m: int(d) for m, d in meta["embed_dims"].items()}
        )
        state = load_file(str(mdir / "fusion.safetensors"))
        try:
            fusion.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(
                f"fusion weights do not match the config ({e})".splitlines()[0],
                path=mdir / "fusion.safetensors",
                hint="the checkpoint comes from another config",
            ) from e
        network = FusionNetwork(modalities, encoders, fusion).to(map_location)
        network.eval()
        tabular = None if meta.get("tabular") is None else TabularEncoder.from_dict(meta["tabular"])
        calibrators = {k: calibrator_from_dict(v) for k, v in meta.get("calibrators", {}).items()}
        return cls(
            config,
            modalities,
            network,
            tabular=tabular,
            calibrators=calibrators,
            info=meta.get("info", {}),
        )

    # -- inference -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        p = next(self.network.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def forward_cases(
        self, cases: Sequence[dict[str, Any]], *, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """Raw outputs for loaded cases: fused logit (N,), unimodal logits (N, M), presence (N, M).

        Frozen modalities' embeddings are taken from ``case[f"{m}_embedding"]``
        when present (the trainer fills them), else computed here.
        """
        from clinfuse.training.embed import attach_embeddings

        batch_size = batch_size or self.config.training.batch_size
        frozen = self.frozen_modalities
        cases = list(cases)
        if frozen:
            cases = attach_embeddings(self, cases, frozen)
        collate = Collator(self.modalities, dict(self.network.encoders), frozen)
        self.network.eval()
        device = self.device
        logits, unimodal, present = [], [], []
        for start in range(0, len(cases), batch_size):
            batch = move_batch(collate(cases[start : start + batch_size]), device)
            out = self.network(batch)
            logits.append(out.logit.float().cpu())
            unimodal.append(out.unimodal.float().cpu())
            present.append(batch["present"].cpu())
        if not logits:
            m = len(self.modalities)
            return {
                "logit": np.zeros(0),
                "unimodal": np.zeros((0, m)),
                "present": np.zeros((0, m), bool),
            }
        return {
            "logit": torch.cat(logits).numpy().astype(np.float64),
            "unimodal": torch.cat(unimodal).numpy().astype(np.float64),
            "present": torch.cat(present).numpy(),
        }

    @torch.no_grad()
    def forward_cache(
        self, cache: Any, *, present: np.ndarray | None = None, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """:meth:`forward_cases` outputs from embeddings already computed: only the fusion head runs.

        Args:
            cache: a :class:`~clinfuse.explain.modality.ModalityCache` of this model
                (:func:`~clinfuse.explain.modality.build_modality_cache`).
            present: (N, M) presence to use instead of the cache's; a modality set to
                False reaches the head exactly as a missing one does.
            batch_size: cases per forward pass (default 16 × the run's batch size).
        """
        present = cache.present if present is None else np.asarray(present, dtype=bool)
        fusion = self.network.fusion
        step = batch_size or max(1, int(self.config.training.batch_size) * 16)
        device = self.device
        was_training = fusion.training
        fusion.eval()
        logits, unimodal = [], []
        try:
            for start in range(0, len(present), step):
                emb = {
                    m: torch.from_numpy(cache.embeddings[m][start : start + step]).to(device)
                    for m in self.modalities
                }
                rows = torch.from_numpy(present[start : start + step]).to(device)
                out = fusion(emb, rows)
                logits.append(out.logit.float().cpu().numpy())
                unimodal.append(out.unimodal.float().cpu().numpy())
        finally:
            fusion.train(was_training)
        n_mod = len(self.modalities)
        return {
            "logit": np.concatenate(logits).astype(np.float64) if logits else np.zeros(0),
            "unimodal": np.concatenate(unimodal).astype(np.float64)
            if unimodal
            else np.zeros((0, n_mod)),
            "present": present.copy(),
        }

    def probabilities(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calibrated probabilities from :meth:`forward_cases` outputs (NaN where a modality is missing)."""
        out: dict[str, np.ndarray] = {}
        cal = self.calibrators.get("fusion")
        out["fusion"] = cal.predict_proba(raw["logit"]) if cal else expit(raw["logit"])
        for i, m in enumerate(self.modalities):
            z = raw["unimodal"][:, i]
            cal_m = self.calibrators.get(m)
            p = cal_m.predict_proba(z) if cal_m else expit(z)
            out[m] = np.where(raw["present"][:, i], p, np.nan)
        return out

    def predictions_frame(
        self, cases: Sequence[dict[str, Any]], raw: dict[str, np.ndarray]
    ) -> pd.DataFrame:
        probs = self.probabilities(raw)
        frame = pd.DataFrame(
            {
                "case_id": [c["case_id"] for c in cases],
                "split": [c.get("split") for c in cases],
                "label": [c.get("label") for c in cases],
                "p_fusion": probs["fusion"],
                "logit_fusion": raw["logit"],
            }
        )
        for m in self.modalities:
            frame[f"p_{m}"] = probs[m]
        for i, m in enumerate(self.modalities):
            frame[f"present_{m}"] = raw["present"][:, i].astype(int)
        frame["input_warnings"] = ["; ".join(c.get("input_warnings") or []) for c in cases]
        return frame

    def loader(self) -> Any:
        """The :class:`~clinfuse.data.CaseLoader` with this run's preprocessing and tabular
        encoder: ``model.loader().load(row)`` is a case as the model sees it."""
        from clinfuse.data import CaseLoader

        return CaseLoader(self.config.data, self.modalities, self.tabular)

    def check_cohort(self, cohort: Any, *, allow_missing_modalities: bool = False) -> None:
        """A cohort given to :meth:`predict` must offer the run's modalities and tabular columns.

        Raises:
            CohortError: naming what is missing and what to do.
        """
        have = set(cohort.file_modalities())
        lacking = [m for m in self.modalities if m != "tabular" and m not in have]
        if lacking and not allow_missing_modalities:
            raise CohortError(
                f"the cohort has no column for modalities {lacking} that this run uses "
                f"(run modalities: {self.modalities})",
                path=cohort.manifest_path,
                hint="add the column with empty cells if the modality is unavailable, "
                "or pass --allow-missing-modalities",
            )
        if self.tabular is not None:
            missing_cols = [c for c in self.tabular.columns if c not in cohort.columns]
            if missing_cols and not allow_missing_modalities:
                raise CohortError(
                    f"the cohort lacks tabular columns {missing_cols} that this run uses",
                    path=cohort.manifest_path,
                    hint="add them (empty cells for unknown values)",
                )

    def checked_cohort(self, cohort: Any, *, allow_missing_modalities: bool = False) -> Any:
        """``cohort`` as a :class:`~clinfuse.cohort.Cohort` (a manifest path is read with the
        run's data settings), checked by :meth:`check_cohort`."""
        from clinfuse.cohort.manifest import Cohort

        if not isinstance(cohort, Cohort | str | Path):
            raise ConfigError(
                f"expected a manifest path or a Cohort, got {type(cohort).__name__}",
                field="cohort",
                hint="for a table in memory: frame.to_csv('manifest.csv') in the folder its "
                "paths are relative to, then pass that path (or Cohort.from_manifest(path))",
            )
        if not isinstance(cohort, Cohort):
            cohort = Cohort.from_manifest(
                cohort,
                target=self.config.data.target,
                allow_external_paths=self.config.data.allow_external_paths,
            )
        self.check_cohort(cohort, allow_missing_modalities=allow_missing_modalities)
        return cohort

    def predict(
        self,
        cohort: Any,
        *,
        allow_missing_modalities: bool = False,
        progress: Any = None,
        return_excluded: bool = False,
        workers: int | str = "auto",
    ) -> Any:
        """Fused and per-modality risks for every case of a cohort.

        Args:
            cohort: a :class:`~clinfuse.cohort.Cohort` or a manifest path.
            allow_missing_modalities: accept a cohort without a column for one
                of the run's modalities (treated as missing for every case).
            return_excluded: also return the cases that could not be loaded.
            workers: processes that read the files: ``"auto"`` (one per CPU, at most 8,
                for cohorts of 128 cases or more) or a count (0 = in this process); the
                risks do not depend on it (:func:`clinfuse.data.scoring_workers`).

        Returns:
            A table with ``case_id``, ``split``, ``label``, ``p_fusion``,
            ``logit_fusion``, ``p_<modality>`` (NaN where missing),
            ``present_<modality>`` and ``input_warnings`` (tabular inputs outside
            the training data, ``; ``-separated; empty when none); with ``return_excluded`` a pair
            ``(table, excluded issues)``.
        """
        from clinfuse.data import CaseLoader, iter_scorable, scoring_workers

        scoring_workers(workers, 0)  # a bad count fails before any file is read
        cohort = self.checked_cohort(cohort, allow_missing_modalities=allow_missing_modalities)
        loader = CaseLoader(self.config.data, self.modalities, self.tabular)
        frames, excluded = [], []
        # chunk by chunk: the memory holds one chunk of decoded inputs, whatever the cohort
        for chunk in iter_scorable(loader, cohort, progress, workers=workers, require_cases=False):
            excluded += chunk.excluded
            if chunk.cases:
                frames.append(self.predictions_frame(chunk.cases, self.forward_cases(chunk.cases)))
        frame = (
            pd.concat(frames, ignore_index=True)
            if frames
            else self.predictions_frame([], self.forward_cases([]))
        )
        return (frame, excluded) if return_excluded else frame


def load_run(path: str | Path, *, device: str = "cpu") -> FusionModel:
    """Restore a trained model from a run folder written by ``clinfuse train``.

    Raises:
        ConfigError: ``path`` is not a path, or not a complete run folder.
    """
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(
            f"expected the path of a run folder, got {type(path).__name__}",
            field="run",
            hint="pass the folder `clinfuse train --out` wrote, e.g. load_run('runs/demo')",
        )
    return FusionModel.from_pretrained(path, map_location=device)
