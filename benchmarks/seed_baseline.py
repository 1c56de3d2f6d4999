"""Seed baseline side by side: the reference design vs clinfuse's training step, from real files.

Both sides train on the same synthetic cohort written in real formats (DICOM CT slices,
UTF-8 notes, WFDB ECGs; :mod:`clinfuse.synth`), the same batch size and number of epochs.

Seed baseline (the design this field starts from): a BERT-base text encoder
(``transformers.BertModel(BertConfig())``, random weights, no download; the bert-base-uncased
vocabulary from the shipped MiniLM tokenizer) and a MONAI ResNet-50, [CLS] and pooled image
features concatenated into one linear layer, fp32, Adam. Its data pipeline is the naive one:
every step reads its DICOMs with pydicom, resizes and normalises them and tokenizes its notes
(padded to the window) inside the loop; ``loss.item()`` is logged every step.

clinfuse: the same BERT-base (fine-tuned) and ResNet-50 (MONAI, through clinfuse's encoder
registry) plus the 1-D ResNet signal encoder and late fusion, fed by its own pipeline: cases
decoded once (in worker processes, decoded images persisted on disk), notes tokenized once,
batches collated by DataLoader workers into pinned memory, bf16 autocast, channels-last
ResNet, fused AdamW, no host read-back inside the step (all automatic on CUDA, from
``TrainingConfig``'s defaults). A second clinfuse figure uses its default design for notes:
the frozen BERT embeds every note once into the embedding cache (fill time included) and the
step trains the rest.

Figures: samples/s end to end (loading included) for each, the ratio clinfuse / seed, and
the loader's share of the wall time (time the step loop waited for data).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._common import Context, log, sync, synth_cohort, tokenizer_folder


def sizes(ctx: Context) -> dict[str, Any]:
    if ctx.quick:  # CPU smoke sizes: same models (ResNet-50, BERT architecture), tiny inputs
        return {
            "n_cases": 16,
            "image_size": 32,
            "tokens": 64,
            "signal_fs": 100,
            "n_leads": 2,
            "batch_size": 4,
            "epochs": 2,
            "bert": {
                "hidden_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 512,
            },
        }
    return {
        "n_cases": 512,
        "image_size": 224,
        "tokens": 256,
        "signal_fs": 500,
        "n_leads": 12,
        "batch_size": 32,
        "epochs": 3,
        "bert": {},  # BertConfig() = BERT-base: 12 layers, hidden 768, 110M parameters
    }


# ----------------------------------------------------------------------------- fixtures
def text_model_folder(ctx: Context, bert: dict[str, Any]) -> Path:
    """A random-weight BERT (BertConfig(**bert)) with the bert-base-uncased vocabulary."""

    def make() -> Path:
        from transformers import AutoTokenizer, BertConfig, BertModel

        folder = ctx.workdir / ("bert-" + ("-".join(f"{v}" for v in bert.values()) or "base"))
        torch.manual_seed(0)
        BertModel(BertConfig(**bert)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(tokenizer_folder()).save_pretrained(folder)
        return folder

    return Path(ctx.shared(f"bert-{sorted(bert.items())}", make))


def lengthen_notes(manifest: Path, tokens: int) -> None:
    """Repeat each note's text so that it fills about ``tokens`` tokens (BERT-size notes)."""
    import pandas as pd
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_folder())
    frame = pd.read_csv(manifest)
    for rel in frame["note"].dropna():
        path = manifest.parent / rel
        text = path.read_text(encoding="utf-8")
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        if n < tokens - 2:
            words = (" ".join([text] * (1 + (tokens - 2) // max(n, 1)))).split()
            while len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) > tokens - 2:
                words = words[: int(len(words) * 0.95)]
            path.write_text(" ".join(words), encoding="utf-8")


def cohort(ctx: Context, s: dict[str, Any]) -> Path:
    manifest = synth_cohort(
        ctx,
        s["n_cases"],
        image_size=s["image_size"],
        signal_fs=s["signal_fs"],
        n_leads=s["n_leads"],
        complete=True,
    )

    def lengthen() -> bool:
        lengthen_notes(manifest, s["tokens"])
        return True

    ctx.shared(f"long-notes-{manifest}-{s['tokens']}", lengthen)
    return manifest


# ------------------------------------------------------------------------- seed side
class SeedModel(nn.Module):
    """BERT [CLS] + ResNet-50 pooled features → concatenation → one linear layer."""

    def __init__(self, bert_folder: Path) -> None:
        super().__init__()
        from monai.networks.nets import resnet50
        from transformers import BertModel

        self.text = BertModel.from_pretrained(bert_folder)
        self.image = resnet50(
            spatial_dims=2, n_input_channels=1, conv1_t_stride=2, feed_forward=False
        )
        self.head = nn.Linear(self.text.config.hidden_size + 2048, 1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        cls = self.text(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return self.head(torch.cat([cls, self.image(image)], dim=1)).squeeze(1)


def _naive_image(path: Path, size: int) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0)
    )
    x = torch.from_numpy(np.clip((hu - 40 + 200) / 400, 0, 1))[None, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]
    return ((x - x.mean()) / (x.std() + 1e-6)).numpy()


def run_seed(ctx: Context, s: dict[str, Any], manifest: Path, bert: Path) -> dict[str, float]:
    import pandas as pd
    from transformers import AutoTokenizer

    device = torch.device(ctx.device)
    frame = pd.read_csv(manifest)
    root = manifest.parent
    tokenizer = AutoTokenizer.from_pretrained(bert)
    torch.manual_seed(0)
    model = SeedModel(bert).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n, b = len(frame), s["batch_size"]
    rng = np.random.default_rng(0)
    load_s = 0.0
    sync(ctx.device)
    t0 = time.perf_counter()
    for _ in range(s["epochs"]):
        order = rng.permutation(n)
        for start in range(0, n, b):
            t_load = time.perf_counter()
            rows = frame.iloc[order[start : start + b]]
            images = np.stack([_naive_image(root / p, s["image_size"]) for p in rows["image"]])
            texts = [(root / p).read_text(encoding="utf-8") for p in rows["note"]]
            tok = tokenizer(
                texts,
                padding="max_length",
                truncation=True,
                max_length=s["tokens"],
                return_tensors="pt",
            )
            ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
            x = torch.from_numpy(images).to(device)
            y = torch.tensor(rows["label"].to_numpy(), dtype=torch.float32, device=device)
            load_s += time.perf_counter() - t_load
            loss = F.binary_cross_entropy_with_logits(model(ids, mask, x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # the naive loop logs the loss every step (a host sync)
    sync(ctx.device)
    wall = time.perf_counter() - t0
    return {"samples_per_s": s["epochs"] * n / wall, "wall_s": wall, "loader_share": load_s / wall}


# --------------------------------------------------------------------- clinfuse side
def clinfuse_config(s: dict[str, Any], bert: Path, device: str, *, frozen_note: bool) -> Any:
    from clinfuse.config import RunConfig

    return RunConfig.model_validate(
        {
            "data": {
                "modalities": ["image", "note", "signal"],
                "image": {
                    "spatial_size": [s["image_size"], s["image_size"]],
                    "window": "ct_soft_tissue",
                    "normalize": "zscore",
                },
                "signal": {"target_fs": float(s["signal_fs"]), "duration_s": 10.0},
            },
            "encoders": {
                "image": {"name": "resnet50", "embed_dim": 128},
                "note": {
                    "name": "transformer",
                    "freeze": frozen_note,
                    "model_name_or_path": str(bert),
                    "max_length": s["tokens"],
                    "pooling": "cls",
                },
                "signal": {"name": "resnet1d", "embed_dim": 64},
            },
            "training": {
                "batch_size": s["batch_size"],
                "device": device,
                "lr": 1e-4,
                "persist_decoded": True,
            },
        }
    )


def run_clinfuse(
    ctx: Context, s: dict[str, Any], manifest: Path, bert: Path, *, frozen_note: bool
) -> dict[str, float]:
    from clinfuse.cohort.manifest import Cohort
    from clinfuse.data import CaseLoader
    from clinfuse.model import Collator, FusionModel, move_batch
    from clinfuse.training.embed import attach_embeddings
    from clinfuse.training.trainer import (
        _unimodal_loss,
        augment_batch,
        batch_loader,
        make_optimizer,
        pretokenize_notes,
        resolve_load_workers,
        resolve_speed,
        speed_up_encoders,
    )

    device = torch.device(ctx.device)
    cfg = clinfuse_config(s, bert, ctx.device, frozen_note=frozen_note)
    tcfg = cfg.training
    speed = resolve_speed(tcfg, ctx.device)
    modalities = ["image", "note", "signal"]
    persist = ctx.workdir / f"decoded-{'frozen' if frozen_note else 'tuned'}"
    sync(ctx.device)
    t0 = time.perf_counter()
    rows = Cohort.from_manifest(manifest, target="label").rows
    loader = CaseLoader(cfg.data, modalities, persist_dir=persist)
    cases = loader.load_many(rows, workers=resolve_load_workers(tcfg, len(rows))).cases
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = FusionModel.build(
        cfg,
        modalities,
        in_shapes={"image_channels": 1, "signal_leads": int(cases[0]["signal"].shape[0])},
    )
    frozen = model.frozen_modalities
    network = model.network.to(device)
    t_prep = time.perf_counter()
    if frozen:
        cases = attach_embeddings(model, cases, frozen)
    else:
        cases = pretokenize_notes(cases, network.encoders["note"])
    prep_s = time.perf_counter() - t_prep
    params = [p for n, p in network.named_parameters() if p.requires_grad and "weight_raw" not in n]
    optimizer = make_optimizer(
        [{"params": params, "lr": tcfg.lr}], tcfg, fused=speed.fused_optimizer
    )
    restore = speed_up_encoders(network, frozen, speed)
    collate = Collator(modalities, dict(network.encoders), frozen)
    batches, close = batch_loader(cases, collate, speed)
    y_all = np.array([c["label"] for c in cases], dtype=float)
    pos_weight = torch.tensor(float((y_all == 0).sum() / max((y_all == 1).sum(), 1)), device=device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if ctx.device == "cuda"
        else contextlib.nullcontext()
    )
    n, b = len(cases), s["batch_size"]
    wait_s = 0.0
    network.train()
    try:
        for epoch in range(s["epochs"]):
            gen = torch.Generator().manual_seed(epoch)
            order = torch.randperm(n, generator=gen).tolist()
            index_lists = [order[i : i + b] for i in range(0, n, b)]
            it = iter(batches(index_lists))
            total = torch.zeros((), dtype=torch.float64, device=device)
            for _ in index_lists:
                t_wait = time.perf_counter()
                cpu_batch = next(it)
                wait_s += time.perf_counter() - t_wait
                batch = augment_batch(move_batch(cpu_batch, device), gen)
                with autocast:
                    out = network(batch)
                loss = _unimodal_loss(out.unimodal, batch["present"], batch["label"], pos_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach().double()
            float(total)  # one read-back per epoch
    finally:
        close()
        restore()
    sync(ctx.device)
    wall = time.perf_counter() - t0
    return {
        "samples_per_s": s["epochs"] * n / wall,
        "wall_s": wall,
        "load_s": load_s,
        "prep_s": prep_s,
        "loader_share": (load_s + wait_s) / wall,
        "step_loop_wait_share": wait_s / max(wall - load_s - prep_s, 1e-9),
        "workers": speed.num_workers,
        "pin_memory": speed.pin_memory,
        "channels_last": speed.channels_last,
        "fused_adamw": speed.fused_optimizer,
    }


def run(ctx: Context) -> None:
    s = sizes(ctx)
    manifest = cohort(ctx, s)
    bert = text_model_folder(ctx, s["bert"])
    config = {k: v for k, v in s.items() if k != "bert"} | {
        "bert": s["bert"] or "bert-base (BertConfig())",
        "precision_clinfuse": "bf16-mixed" if ctx.device == "cuda" else "fp32",
    }
    log("seed baseline: naive loading, fp32, Adam")
    seed = run_seed(ctx, s, manifest, bert)
    ctx.emit(
        "seed_baseline",
        "seed_samples_per_s",
        seed["samples_per_s"],
        "samples/s",
        config=config,
        loader_share=round(seed["loader_share"], 3),
        wall_s=seed["wall_s"],
    )
    for frozen in (False, True):
        variant = "note frozen, embedding cache" if frozen else "note fine-tuned (same BERT work)"
        log(f"clinfuse: {variant}")
        cf = run_clinfuse(ctx, s, manifest, bert, frozen_note=frozen)
        details: dict[str, Any] = {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in cf.items()
            if k not in ("samples_per_s", "loader_share")
        }
        ctx.emit(
            "seed_baseline",
            "clinfuse_samples_per_s" + ("_frozen_note" if frozen else ""),
            cf["samples_per_s"],
            "samples/s",
            config={**config, "clinfuse_variant": variant},
            baseline=seed["samples_per_s"],
            loader_share=round(cf["loader_share"], 3),
            **details,
        )
