"""The training loop (Lightning Fabric): encoders + heads, then combiner and calibration.

Stage 1 trains every trainable encoder and the unimodal heads (late fusion: each
modality on its own loss, with its own early stopping on validation AUROC;
early/intermediate fusion: the fused loss plus auxiliary unimodal losses, with
modality dropout). Stage 2 fits the late-fusion combiner on the *validation*
unimodal logits (held out from stage 1's gradient steps), and stage 3 fits the
calibrators on the validation split.

Fabric gives bf16 autocast on CUDA, fp32 on CPU, and DDP across GPUs and nodes
without code changes (``training.devices``, ``training.num_nodes``,
``training.strategy``). Under DDP every rank holds every case; each optimiser step
takes ``batch_size x world_size`` cases in the shuffled order and rank ``r`` trains
on every ``world_size``-th of them, its loss weighted so that the averaged gradient
is the gradient of the whole step's loss (as one process with the larger batch).
Early stopping follows rank 0's validation scores on every rank.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from clinfuse.errors import ConfigError
from clinfuse.evaluation.metrics import auroc_batch
from clinfuse.fusion.base import modality_dropout
from clinfuse.model import Collator, FusionModel, move_batch

__all__ = [
    "EpochRecord",
    "SpeedSettings",
    "TrainState",
    "batch_loader",
    "check_strategy",
    "fit_network",
    "make_optimizer",
    "pretokenize_notes",
    "resolve_device",
    "resolve_load_workers",
    "resolve_speed",
    "speed_up_encoders",
]

CHECKPOINT_VERSION = 1

#: ``training.strategy`` values the loop drives: one process, or DDP with one process per
#: device started by re-running the command (``auto`` with several devices means ``ddp``).
STRATEGIES = ("auto", "ddp")


def check_strategy(cfg: Any) -> None:
    """Refuse a ``TrainingConfig.strategy`` the training loop does not drive.

    Raises:
        ConfigError: anything but ``auto`` or ``ddp`` (e.g. ``ddp_spawn``, ``fsdp``).
    """
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(
            f"strategy {cfg.strategy!r} is not supported; use 'auto' (one process) or 'ddp' "
            "(one process per device)",
            field="training.strategy",
            hint="several GPUs or nodes: strategy: ddp with training.devices / training.num_nodes",
        )


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``.

    Raises:
        ConfigError: ``cuda`` requested but no GPU is visible.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda but no CUDA GPU is visible",
            field="training.device",
            hint="use --device auto or cpu, or check the CUDA installation",
        )
    return device


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    if accelerator == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


@dataclass(frozen=True)
class SpeedSettings:
    """The throughput settings of ``TrainingConfig`` resolved for one accelerator.

    Attributes:
        num_workers: DataLoader processes that collate batches (0 = in the loop).
        pin_memory: page-locked batches, copied to the GPU asynchronously.
        channels_last: 2-D image CNNs in channels-last layout.
        fused_optimizer: the fused AdamW kernel.
        compile: ``torch.compile`` the trainable encoders' backbones.
    """

    num_workers: int = 0
    pin_memory: bool = False
    channels_last: bool = False
    fused_optimizer: bool = False
    compile: bool = False


def resolve_speed(cfg: Any, accelerator: str) -> SpeedSettings:
    """Resolve the ``auto``/``None`` speed fields of a ``TrainingConfig``.

    On CUDA: workers = min(8, CPUs - 1), pinned memory, channels-last, fused AdamW.
    On CPU: everything off (the cores compute; collation in the loop is cheaper than
    shipping batches between processes), which keeps CPU runs bit-for-bit repeatable.
    """
    gpu = accelerator == "cuda"
    workers = cfg.num_workers
    if workers == "auto":
        workers = min(8, max((os.cpu_count() or 1) - 1, 0)) if gpu else 0

    def pick(value: bool | None) -> bool:
        return gpu if value is None else bool(value)

    return SpeedSettings(
        num_workers=int(workers),
        pin_memory=pick(cfg.pin_memory) and torch.cuda.is_available(),
        channels_last=pick(cfg.channels_last),
        fused_optimizer=pick(cfg.fused_optimizer),
        compile=bool(cfg.compile),
    )


def resolve_load_workers(cfg: Any, n_rows: int) -> int:
    """``TrainingConfig.load_workers`` resolved for a cohort of ``n_rows``.

    auto = :func:`clinfuse.data.scoring_workers`: one process per CPU (at most 8) from
    128 cases on, on CPU and CUDA alike — nothing else computes while the cohort loads.
    """
    from clinfuse.data import scoring_workers

    return scoring_workers(cfg.load_workers, n_rows)


def make_optimizer(
    groups: list[dict[str, Any]], cfg: Any, *, fused: bool = False
) -> torch.optim.AdamW:
    """AdamW over parameter groups; ``fused`` uses the single-kernel implementation."""
    extra: dict[str, Any] = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def speed_up_encoders(
    network: torch.nn.Module, frozen: Sequence[str], speed: SpeedSettings
) -> Callable[[], None]:
    """Apply channels-last and ``torch.compile`` to the trainable encoders, in place.

    State-dict keys and values are unchanged (the backbone's forward is compiled in place).

    Returns:
        A function that undoes both (called when training ends, so that the saved
        model and later inference see plain modules).
    """
    undo: list[Callable[[], None]] = []
    for name, enc in cast(Any, network).encoders.items():
        if name in frozen:
            continue
        cl_ok = speed.channels_last and hasattr(enc, "use_channels_last")
        if cl_ok and enc.use_channels_last(True):
            undo.append(functools.partial(enc.use_channels_last, False))
        net = getattr(enc, "net", None)
        # notes are left eager: every batch has another token width, i.e. a recompile
        if speed.compile and name != "note" and isinstance(net, torch.nn.Module):
            parts = list(net.values()) if isinstance(net, torch.nn.ModuleDict) else [net]
            undo.extend(_compile_forward(part) for part in parts)

    def restore() -> None:
        for fn in undo:
            fn()

    return restore


def _compile_forward(net: torch.nn.Module) -> Callable[[], None]:
    """``torch.compile`` a module's forward in place; returns the undo.

    The compiled entry point is a function defined here, not ``nn.Module.compile()``:
    torch 2.13's dynamo skips a top frame inside ``torch.nn`` (``Module._call_impl``),
    which silently left ``Module.compile()`` uncompiled. Weights and their state-dict
    names are untouched.
    """
    original = net.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    net.forward = torch.compile(forward)  # type: ignore[method-assign]
    return functools.partial(net.__dict__.pop, "forward", None)


def pretokenize_notes(cases: Sequence[dict[str, Any]], encoder: Any) -> list[dict[str, Any]]:
    """Copies of ``cases`` with ``note_tokens``: each note tokenized once, not every epoch."""
    out = [dict(c) for c in cases]
    todo = [c for c in out if c.get("note") is not None and c.get("note_tokens") is None]
    for start in range(0, len(todo), 256):
        part = todo[start : start + 256]
        for c, tokens in zip(part, encoder.tokenize([c["note"] for c in part]), strict=True):
            c["note_tokens"] = tokens
    return out


class _EpochBatches:
    """A batch sampler whose batches are set before each epoch (workers stay alive)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def batch_loader(
    cases: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    speed: SpeedSettings,
) -> tuple[Callable[[list[list[int]]], Iterator[dict[str, Any]]], Callable[[], None]]:
    """Collated batches of ``cases`` for given index lists, in order.

    Without workers or pinning this collates in the loop. Otherwise a
    ``torch.utils.data.DataLoader`` with persistent workers collates ahead of the
    step (``prefetch_factor`` batches per worker) into page-locked memory, so the
    host-to-GPU copy overlaps the computation.

    Returns:
        ``(batches, close)``: ``batches(index_lists)`` yields the collated batches;
        ``close()`` stops the workers.
    """
    if speed.num_workers == 0 and not speed.pin_memory:

        def plain(index_lists: list[list[int]]) -> Iterator[dict[str, Any]]:
            for idx in index_lists:
                yield collate([cases[i] for i in idx])

        return plain, lambda: None

    from torch.utils.data import DataLoader

    sampler = _EpochBatches()
    loader = DataLoader(
        cast(Any, cases),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=speed.num_workers,
        pin_memory=speed.pin_memory,
        persistent_workers=speed.num_workers > 0,
        prefetch_factor=4 if speed.num_workers > 0 else None,
        # its own generator: seeding the workers must not draw from the global RNG, which
        # the training loop reseeds per epoch for dropout (bit-for-bit reruns and resumes)
        generator=torch.Generator().manual_seed(0),
    )

    def loaded(index_lists: list[list[int]]) -> Iterator[dict[str, Any]]:
        sampler.batches = index_lists
        yield from loader

    def close() -> None:
        it = getattr(loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    return loaded, close


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_auroc: dict[str, float]
    improved: list[str]
    seconds: float


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights."""

    epoch: int = 0
    best: dict[str, float] = field(default_factory=dict)
    stale: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False
    global_rank: int = 0
    world_size: int = 1
    #: waits for every DDP process (a no-op in one process); not part of the checkpoint
    barrier: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    ok = ~np.isnan(y)
    if ok.sum() < 2 or len(np.unique(y[ok])) < 2:
        return float("nan")
    return float(auroc_batch(y[ok][None], s[ok][None])[0])


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _trainable_state(model: FusionModel) -> dict[str, torch.Tensor]:
    """State of everything that training changes (frozen encoders left out)."""
    frozen = set(model.frozen_modalities)
    return {
        k: v.detach().cpu().clone()
        for k, v in model.network.state_dict().items()
        if not any(k.startswith(f"encoders.{m}.") for m in frozen)
    }


def _modality_state(model: FusionModel, m: str) -> dict[str, torch.Tensor]:
    """Snapshot of modality ``m``'s encoder (if trainable) and unimodal head."""
    state = {
        f"fusion.unimodal_heads.{m}.{k}": v.detach().cpu().clone()
        for k, v in model.network.fusion.unimodal_heads[m].state_dict().items()
    }
    if m not in model.frozen_modalities:
        state.update(
            {
                f"encoders.{m}.{k}": v.detach().cpu().clone()
                for k, v in model.network.encoders[m].state_dict().items()
            }
        )
    return state


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _history_to_lists(history: list[EpochRecord]) -> list[dict[str, Any]]:
    return [
        {
            "epoch": h.epoch,
            "train_loss": h.train_loss,
            "val_auroc": dict(h.val_auroc),
            "improved": list(h.improved),
            "seconds": h.seconds,
        }
        for h in history
    ]


def _history_from_lists(items: list[dict[str, Any]]) -> list[EpochRecord]:
    return [
        EpochRecord(
            int(h["epoch"]),
            float(h["train_loss"]),
            {k: float(v) for k, v in h["val_auroc"].items()},
            list(h["improved"]),
            float(h["seconds"]),
        )
        for h in items
    ]


def fit_network(
    model: FusionModel,
    train_cases: Sequence[dict[str, Any]],
    val_cases: Sequence[dict[str, Any]],
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochRecord, int], None] | None = None,
) -> TrainState:
    """Stage 1: train encoders and heads with early stopping on validation AUROC.

    Args:
        model: a freshly built model (frozen modalities' embeddings already
            attached to the cases).
        train_cases, val_cases: loaded case dicts with 0/1 labels.
        checkpoint: where to write the last complete epoch (every epoch).
        resume: continue from ``checkpoint``.
        on_epoch: called after each epoch with its record and the max epochs.

    Returns:
        The training state; the model holds the best weights found.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    cfg = model.config.training
    check_strategy(cfg)
    accelerator = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, accelerator)

    def make_fabric(strategy: Any) -> Fabric:
        return Fabric(
            accelerator=accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            precision=cast(Any, precision),
            strategy=strategy,
        )

    # unused parameters allowed: a batch can lack a modality (its encoder is not run)
    fabric = make_fabric(
        DDPStrategy(find_unused_parameters=True) if cfg.strategy == "ddp" else "auto"
    )
    if cfg.strategy == "auto" and fabric.world_size > 1:  # Lightning's own choice: plain ddp
        fabric = make_fabric(DDPStrategy(find_unused_parameters=True))
    fabric.launch()
    torch.manual_seed(cfg.seed)
    world, rank = fabric.world_size, fabric.global_rank

    modalities = model.modalities
    late = model.network.fusion.strategy == "late"
    aux_weight = model.config.fusion.aux_weight
    frozen = model.frozen_modalities
    speed = resolve_speed(cfg, accelerator)
    collate = Collator(modalities, dict(model.network.encoders), frozen)
    if "note" in modalities and "note" not in frozen:
        note_encoder = model.network.encoders["note"]
        if hasattr(note_encoder, "tokenize"):
            train_cases = pretokenize_notes(train_cases, note_encoder)
            val_cases = pretokenize_notes(val_cases, note_encoder)

    y_train = np.array([c["label"] for c in train_cases], dtype=float)
    n_pos = float(y_train.sum())
    n_neg = float(len(y_train) - n_pos)
    pos_weight = (
        torch.tensor(n_neg / max(n_pos, 1.0))
        if cfg.class_weight == "balanced"
        else torch.tensor(1.0)
    )

    # Optimiser: heads and from-scratch encoders at lr; pretrained fine-tuned text at encoder_lr.
    # Parameters the loss never reaches are switched off for stage 1 (DDP would wait for
    # their gradients): the late-fusion combiner (fitted in stage 2 on held-out logits), and
    # the unimodal heads of early/intermediate fusion without auxiliary losses.
    groups: list[dict[str, Any]] = []
    slow: list[torch.nn.Parameter] = []
    fast: list[torch.nn.Parameter] = []
    idle: list[torch.nn.Parameter] = []
    for name, p in model.network.named_parameters():
        if not p.requires_grad:
            continue
        if (late and name in ("fusion.weight_raw", "fusion.bias")) or (
            not late and aux_weight == 0 and name.startswith("fusion.unimodal_heads.")
        ):
            idle.append(p)
            continue
        (slow if name.startswith("encoders.note.") else fast).append(p)
    if fast:
        groups.append({"params": fast, "lr": cfg.lr})
    if slow:
        groups.append({"params": slow, "lr": cfg.encoder_lr or cfg.lr / 20})
    if not groups:
        raise ConfigError(
            "nothing to train: every encoder is frozen and there are no heads", field="encoders"
        )
    optimizer = make_optimizer(groups, cfg, fused=speed.fused_optimizer)
    for p in idle:
        p.requires_grad_(False)
    restore_encoders = speed_up_encoders(model.network, frozen, speed)
    network, optimizer = fabric.setup(model.network, optimizer)

    state = TrainState(global_rank=rank, world_size=world, barrier=fabric.barrier)
    best_states: dict[str, dict[str, torch.Tensor]] = {}
    if resume:
        if checkpoint is None or not checkpoint.exists():
            raise ConfigError(
                "nothing to resume: no checkpoint from an earlier run",
                path=checkpoint,
                hint="start without --resume",
            )
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ConfigError("checkpoint format not understood", path=checkpoint)
        try:
            missing, unexpected = model.network.load_state_dict(ckpt["model"], strict=False)
        except RuntimeError as e:  # shapes differ
            raise ConfigError(
                "the checkpoint does not match this model (it comes from another config)",
                path=checkpoint,
                hint="resume with the run's own config.yaml, or start afresh",
            ) from e
        bad = [k for k in missing if not any(k.startswith(f"encoders.{m}.") for m in frozen)]
        if bad or unexpected:
            raise ConfigError(
                "the checkpoint does not match this model (it comes from another config)",
                path=checkpoint,
                hint="resume with the run's own config.yaml, or start afresh",
            )
        optimizer.load_state_dict(ckpt["optimizer"])
        state.epoch = int(ckpt["epoch"])
        state.best = {k: float(v) for k, v in ckpt["best"].items()}
        state.stale = int(ckpt["stale"])
        state.history = _history_from_lists(ckpt["history"])
        best_states = {m: dict(s) for m, s in ckpt["best_states"].items()}

    keys = modalities if late else ["fusion"]
    device = fabric.device
    pos_weight = pos_weight.to(device)
    train_batches, close_train = batch_loader(train_cases, collate, speed)
    val_batches, close_val = batch_loader(val_cases, collate, speed)
    val_index = [
        list(range(start, min(start + cfg.batch_size, len(val_cases))))
        for start in range(0, len(val_cases), cfg.batch_size)
    ]
    # DDP: per-modality present cases of the training cases (each step's loss normaliser)
    train_present = np.stack([np.asarray(c["present"], dtype=np.float32) for c in train_cases])

    def evaluate() -> dict[str, float]:
        network.eval()
        logits, unimodal, present, labels = [], [], [], []
        with torch.no_grad():
            for cpu_batch in val_batches(val_index):
                batch = move_batch(cpu_batch, device)
                out = network(batch)
                logits.append(out.logit.float().cpu())
                unimodal.append(out.unimodal.float().cpu())
                present.append(batch["present"].cpu())
                labels.append(batch["label"].cpu())
        y = torch.cat(labels).numpy()
        res: dict[str, float] = {"fusion": _auroc(y, torch.cat(logits).numpy())}
        z = torch.cat(unimodal).numpy()
        pres = torch.cat(present).numpy()
        for i, m in enumerate(modalities):
            res[m] = _auroc(np.where(pres[:, i], y, np.nan), z[:, i])
        return res

    def train_epoch(epoch: int) -> float:
        """One pass over the training cases; the mean loss is read back once, at the end.

        Under DDP a step is ``batch_size x world`` cases of the shared shuffled order and
        this rank takes every ``world``-th of them (a rank left without a case repeats one
        with weight 0: every rank must take part in the gradient averaging).
        """
        network.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(train_cases), generator=gen).tolist()
        # augmentation, modality dropout and dropout draw independently on each rank
        drop_gen = torch.Generator().manual_seed((cfg.seed * 7_919 + epoch) * world + rank)
        # dropout layers draw from the global generator: seed it per epoch so that a
        # resumed run repeats exactly what an uninterrupted one would have done
        torch.manual_seed((cfg.seed * 1_000_003 + epoch) * world + rank)
        step = cfg.batch_size * world
        steps = [order[i : i + step] for i in range(0, len(order), step)]
        index_lists = [s[rank::world] or s[:1] for s in steps]
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for whole, idx, cpu_batch in zip(
            steps, index_lists, train_batches(index_lists), strict=True
        ):
            counts = None
            if world > 1:
                counts = torch.from_numpy(train_present[whole].sum(axis=0)).to(device)
            batch = move_batch(cpu_batch, device)
            if cfg.augment:
                batch = augment_batch(batch, drop_gen)
            shown = None
            if not late:  # drawn on the host mask: no device read-back inside the step
                shown = modality_dropout(
                    cpu_batch["present"], model.config.fusion.modality_dropout, drop_gen
                ).to(device, non_blocking=True)
            y = batch["label"]
            present = batch["present"]
            if late:
                out = network(batch)
                loss = _unimodal_loss(out.unimodal, present, y, pos_weight, counts)
            else:
                out = network(batch, present=shown)
                loss = F.binary_cross_entropy_with_logits(
                    out.logit.float(), y, pos_weight=pos_weight
                )
                if world > 1:
                    loss = loss * (len(idx) / len(whole))  # this shard's share of the mean
                if aux_weight > 0:
                    loss = loss + aux_weight * _unimodal_loss(
                        out.unimodal, present, y, pos_weight, counts
                    )
            if world > 1:  # DDP averages the ranks' gradients: the sum of the shares, x world
                loss = loss * (float(world) if whole[rank::world] else 0.0)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            total += loss.detach().double() * (len(whole) / world)
            count += len(whole)
        if world > 1:
            total = cast(torch.Tensor, fabric.all_reduce(total, reduce_op="sum"))
        return float(total) / max(count, 1)

    def run_epochs() -> None:
        while state.epoch < cfg.epochs and not state.stopped_early:
            epoch = state.epoch
            t0 = time.perf_counter()
            train_loss = train_epoch(epoch)
            val = evaluate()
            if world > 1:  # the same early-stopping decisions on every rank (no deadlock)
                val = fabric.broadcast(val, src=0)
            improved = []
            for k in keys:
                score = val.get(k, float("nan"))
                if not math.isnan(score) and score > state.best.get(k, -math.inf) + 1e-6:
                    state.best[k] = score
                    improved.append(k)
                    best_states[k] = _modality_state(model, k) if late else _trainable_state(model)
                elif k not in best_states:
                    best_states[k] = _modality_state(model, k) if late else _trainable_state(model)
            state.stale = 0 if improved else state.stale + 1
            state.epoch = epoch + 1
            record = EpochRecord(epoch + 1, train_loss, val, improved, time.perf_counter() - t0)
            state.history.append(record)
            if state.stale >= cfg.patience:
                state.stopped_early = True
            if checkpoint is not None and rank == 0:
                _save_checkpoint(
                    checkpoint,
                    {
                        "version": CHECKPOINT_VERSION,
                        "epoch": state.epoch,
                        "model": _trainable_state(model),
                        "optimizer": optimizer.state_dict(),
                        "best": state.best,
                        "stale": state.stale,
                        "history": _history_to_lists(state.history),
                        "best_states": best_states,
                    },
                )
            if on_epoch is not None:
                on_epoch(record, cfg.epochs)

    try:
        with _deterministic(cfg.deterministic and accelerator == "cpu"):
            run_epochs()
    finally:
        close_train()
        close_val()
        restore_encoders()
        for p in idle:
            p.requires_grad_(True)

    # Restore the best weights (per modality for late fusion).
    for k in keys:
        if k in best_states:
            model.network.load_state_dict(best_states[k], strict=False)
    model.network.to("cpu")
    model.network.eval()
    return state


def augment_batch(batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """Label-preserving training augmentation of trainable image and signal inputs.

    Images: random flips along each spatial axis, and a random quarter turn when the
    in-plane size is square. Signals: random amplitude scaling in [0.9, 1.1] per case.
    Done on the batch tensors, so it costs next to nothing.
    """
    inputs = dict(batch["inputs"])
    if "image" in inputs and isinstance(inputs["image"][1], torch.Tensor):
        rows, x = inputs["image"]
        n = x.shape[0]
        for axis in range(2, x.ndim):
            flip = torch.rand(n, generator=generator) < 0.5
            if flip.any():
                idx = flip.nonzero().flatten().to(x.device)
                x = x.index_copy(0, idx, torch.flip(x.index_select(0, idx), dims=(axis,)))
        if x.shape[2] == x.shape[3]:
            turn = torch.rand(n, generator=generator) < 0.5
            if turn.any():
                idx = turn.nonzero().flatten().to(x.device)
                x = x.index_copy(0, idx, torch.rot90(x.index_select(0, idx), k=1, dims=(2, 3)))
        inputs["image"] = (rows, x)
    if "signal" in inputs and isinstance(inputs["signal"][1], torch.Tensor):
        rows, x = inputs["signal"]
        scale = 0.9 + 0.2 * torch.rand(x.shape[0], generator=generator)
        inputs["signal"] = (rows, x * scale.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1))))
    return {**batch, "inputs": inputs}


def _unimodal_loss(
    unimodal: torch.Tensor,
    present: torch.Tensor,
    y: torch.Tensor,
    pos_weight: torch.Tensor,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over modalities of each modality's BCE on the cases where it is present.

    ``counts``: per-modality present cases of the whole step when these cases are one
    DDP rank's shard of it (default: this batch's own counts); the shards' results then
    add up to the whole step's loss.
    """
    z = unimodal.float()
    target = y[:, None].expand_as(z)
    per = F.binary_cross_entropy_with_logits(z, target, pos_weight=pos_weight, reduction="none")
    mask = present.float()
    if counts is None:
        counts = mask.sum(dim=0)
    per_modality = (per * mask).sum(dim=0) / counts.clamp(min=1.0)
    has = (counts > 0).float()
    return (per_modality * has).sum() / has.sum().clamp(min=1.0)
