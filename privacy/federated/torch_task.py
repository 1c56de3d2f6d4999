"""A generic :class:`~privacy.federated.task.SiteTask` around a PyTorch module.

One site's local training: load the global parameters, run local SGD/Adam for the epochs or
steps the server asks (with FedProx's proximal term when ``proximal_mu > 0``, and DP-SGD
through Opacus when a :class:`~privacy.dp.DPConfig` is given), return the new parameters.

Parameters travel as NumPy arrays in a fixed order: the module's trainable parameters and
floating-point buffers (e.g. normalisation statistics), in ``state_dict`` order
(:func:`parameter_keys`). Frozen parameters never leave the site.

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> x, y = torch.randn(8, 3), torch.tensor([0.0, 1.0] * 4)
>>> def bce(model, batch):
...     return torch.nn.functional.binary_cross_entropy_with_logits(
...         model(batch[0]).squeeze(-1), batch[1])
>>> task = TorchSiteTask("a", torch.nn.Linear(3, 1), TensorDataset(x, y), bce, labels=y.numpy())
>>> [p.shape for p in task.get_parameters()]
[(1, 3), (1,)]
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from privacy.dp.engine import DPConfig, PrivateTraining, make_private
from privacy.errors import FederatedError, SiteDataError
from privacy.federated.task import EvalResult, FitConfig, FitResult, Parameters

__all__ = [
    "TorchSiteTask",
    "batch_length",
    "check_batch_size",
    "check_site_labels",
    "get_parameters",
    "parameter_keys",
    "set_parameters",
    "site_seed",
]

log = logging.getLogger(__name__)

_STATE_FORMAT = 1
"""Version of :meth:`TorchSiteTask.state_dict`'s layout."""

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(module, batch) -> scalar`` mean loss over the batch's cases."""
EvalFn = Callable[[nn.Module, Iterable[Any]], tuple[float, int, dict[str, float]]]
"""``eval_fn(module, batches) -> (loss, num_examples, metrics)`` on the site's eval data."""


# -- parameters ----------------------------------------------------------------
def parameter_keys(module: nn.Module) -> list[str]:
    """Names of the entries that travel: trainable parameters and floating buffers, in order."""
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n for n, b in module.named_buffers() if b.is_floating_point()}
    return [k for k in module.state_dict() if k in trainable or k in buffers]


def get_parameters(module: nn.Module, keys: Sequence[str]) -> Parameters:
    """Copies of ``keys``' tensors as NumPy arrays (CPU)."""
    state = module.state_dict()
    return [state[k].detach().cpu().numpy().copy() for k in keys]


def set_parameters(module: nn.Module, keys: Sequence[str], params: Parameters) -> None:
    """Copy ``params`` into ``module``'s entries ``keys`` (in place, same dtype and device).

    Raises:
        FederatedError: the number of arrays or a shape does not match (names the entry).
    """
    if len(params) != len(keys):
        raise FederatedError(
            f"received {len(params)} parameter arrays but this model has {len(keys)} "
            "shared entries; every site must run the same model"
        )
    state = module.state_dict(keep_vars=True)
    with torch.no_grad():
        for k, arr in zip(keys, params, strict=True):
            target = state[k]
            if target.dim() == 0 and np.size(arr) == 1:
                arr = np.reshape(arr, ())  # a scalar that a transport sent as shape (1,)
            if tuple(target.shape) != tuple(np.shape(arr)):
                raise FederatedError(
                    f"parameter {k!r}: received shape {tuple(np.shape(arr))}, the model has "
                    f"{tuple(target.shape)}; every site must run the same model"
                )
            target.copy_(torch.as_tensor(np.asarray(arr)).to(target.device, target.dtype))


# -- input checks --------------------------------------------------------------
def check_site_labels(
    site_id: str,
    labels: Sequence[Any] | np.ndarray,
    classes: Sequence[Any] = (0, 1),
    *,
    split: str = "training",
) -> None:
    """Every class must occur in a site's ``split`` data.

    Raises:
        SiteDataError: naming the site, the missing classes and what to do.
    """
    y = np.asarray(labels)
    y = y[~np.isnan(y.astype(float))] if y.dtype.kind == "f" else y
    seen = set(np.unique(y).tolist())
    missing = [c for c in classes if c not in seen]
    if missing:
        raise SiteDataError(
            f"site {site_id!r}: its {split} data ({len(y)} cases) has no cases of class "
            f"{missing}; a site needs every outcome class to train and evaluate. Merge it "
            "with another site, leave it out of the federation, or use another partition"
        )


def check_batch_size(site_id: str, n: int, batch_size: int | None) -> None:
    """A site needs at least one full batch of training cases.

    Raises:
        SiteDataError: naming the site, its size and what to do.
    """
    if n == 0:
        raise SiteDataError(
            f"site {site_id!r} has no training cases; leave it out of the federation"
        )
    if batch_size is not None and n < batch_size:
        raise SiteDataError(
            f"site {site_id!r} has {n} training cases, fewer than the batch size "
            f"{batch_size}; lower the batch size to at most {n}, use full-batch training "
            "(batch_size=None), or merge the site with another"
        )


def site_seed(seed: int, server_round: int, site_id: str) -> int:
    """A stable 63-bit seed from (base seed, round, site id); the same on every machine."""
    h = zlib.crc32(str(site_id).encode("utf-8"))
    return int((int(seed) * 1_000_003 + int(server_round) * 7_919 + h) % (2**63 - 1))


def batch_length(batch: Any) -> int:
    """Cases in a batch: a tensor's first dimension, a tuple's first item, a dict's ``label``
    (0 for the :class:`privacy.dp.engine.EmptyBatch` of an empty Poisson draw)."""
    from privacy.dp.engine import EmptyBatch

    if isinstance(batch, EmptyBatch):
        return 0
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (tuple, list)) and batch:
        return batch_length(batch[0])
    if isinstance(batch, dict):
        if "label" in batch:
            return batch_length(batch["label"])
        return batch_length(next(iter(batch.values())))
    raise FederatedError(f"cannot tell the number of cases in a batch of type {type(batch)}")


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_to_device(v, device) for v in x)
    if isinstance(x, list):
        return [_to_device(v, device) for v in x]
    return x


class TorchSiteTask:
    """A site's local training and evaluation for any ``nn.Module``.

    Args:
        site_id: the site's name (in logs, errors and the history).
        module: the model; its trainable parameters are what is federated.
        train_data: the site's training cases (map-style dataset).
        loss_fn: ``loss_fn(module, batch) -> scalar`` mean loss.
        eval_data: the site's held-out cases (None: evaluation reports nothing).
        collate_fn: builds a batch from dataset items (DataLoader's ``collate_fn``).
        eval_fn: ``eval_fn(module, batches) -> (loss, n, metrics)``; default: the mean of
            ``loss_fn`` over the eval batches.
        optimizer: ``sgd``, ``adam`` or ``adamw``; a fresh optimizer each round (with DP, one
            for the whole run whose state is cleared each round) unless
            ``keep_optimizer_state``.
        keep_optimizer_state: carry the local optimizer's state (Adam moments, momentum)
            from one round to the next instead of starting it afresh.
        weight_decay: the optimizer's weight decay.
        labels: the training cases' labels; when given, :func:`check_site_labels` runs.
        classes: the classes every site must have.
        dp: DP-SGD settings (None: no DP).
        dp_rounds: rounds the DP budget must cover (needed with ``dp.target_epsilon``).
        device: where to train.
        keys: the state entries that travel (default :func:`parameter_keys`).
        eval_batch_size: batch size of evaluation.

    Raises:
        SiteDataError: a class missing from ``labels``, or no training cases.
    """

    def __init__(
        self,
        site_id: str,
        module: nn.Module,
        train_data: Dataset[Any] | Sequence[Any],
        loss_fn: LossFn,
        *,
        eval_data: Dataset[Any] | Sequence[Any] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        eval_fn: EvalFn | None = None,
        optimizer: str = "sgd",
        weight_decay: float = 0.0,
        labels: Sequence[Any] | np.ndarray | None = None,
        classes: Sequence[Any] = (0, 1),
        dp: DPConfig | None = None,
        dp_rounds: int | None = None,
        device: str | torch.device = "cpu",
        keys: Sequence[str] | None = None,
        eval_batch_size: int = 256,
        keep_optimizer_state: bool = False,
    ) -> None:
        if optimizer not in ("sgd", "adam", "adamw"):
            raise FederatedError(f"unknown optimizer {optimizer!r}; choose sgd, adam or adamw")
        self.site_id = str(site_id)
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.train_data: Dataset[Any] = cast(Dataset[Any], train_data)
        self.eval_data: Dataset[Any] | None = cast("Dataset[Any] | None", eval_data)
        self.loss_fn = loss_fn
        self.collate_fn = collate_fn
        self.eval_fn = eval_fn
        self.optimizer_name = optimizer
        self.weight_decay = weight_decay
        self.dp = dp
        self.dp_rounds = dp_rounds
        self.eval_batch_size = eval_batch_size
        self.keys = list(keys) if keys is not None else parameter_keys(module)
        self.n_train = len(train_data)  # type: ignore[arg-type]
        check_batch_size(self.site_id, self.n_train, None)
        if labels is not None:
            check_site_labels(self.site_id, labels, classes)
        if dp is not None and dp.target_epsilon is not None and dp_rounds is None:
            raise FederatedError(
                f"site {self.site_id!r}: a DP target epsilon needs dp_rounds (the number of "
                "rounds the budget must cover)"
            )
        self.keep_optimizer_state = keep_optimizer_state
        self._private: PrivateTraining | None = None
        self._private_batch: int | None = None
        self._optimizer: torch.optim.Optimizer | None = None  # kept across rounds if asked
        self._pending: dict[str, np.ndarray] | None = None  # restored state not yet applied
        self.rounds_fitted = 0
        self.local_steps = 0

    # -- SiteTask ----------------------------------------------------------------
    def get_parameters(self) -> Parameters:
        return get_parameters(self.module, self.keys)

    def set_parameters(self, parameters: Parameters) -> None:
        set_parameters(self.module, self.keys, parameters)

    def fit(self, parameters: Parameters, config: FitConfig) -> FitResult:
        """Train locally from ``parameters`` as ``config`` says.

        Raises:
            SiteDataError: fewer training cases than the batch size.
        """
        check_batch_size(self.site_id, self.n_train, config.batch_size)
        self.set_parameters(parameters)
        anchor = [p.detach().clone() for p in self._trainable()] if config.proximal_mu > 0 else None
        seed = site_seed(config.seed, config.server_round, self.site_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.dp is None:
                losses = self._fit_plain(config, anchor, seed)
            else:
                losses = self._fit_private(config, anchor)
        self.rounds_fitted += 1
        metrics: dict[str, float] = {
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "steps": float(len(losses)),
        }
        if self._private is not None:
            spent = self._private.spent()
            metrics.update(
                {
                    "epsilon": spent.epsilon,
                    "delta": spent.delta,
                    "noise_multiplier": spent.noise_multiplier,
                }
            )
        return FitResult(self.get_parameters(), self.n_train, metrics)

    def evaluate(self, parameters: Parameters, config: FitConfig) -> EvalResult:
        """Evaluate ``parameters`` on the site's eval data (loss, n, metrics)."""
        self.set_parameters(parameters)
        if self.eval_data is None or len(self.eval_data) == 0:  # type: ignore[arg-type]
            return EvalResult(math.nan, 0, {})
        loader = DataLoader(
            self.eval_data,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collate_fn,
        )
        batches = (_to_device(b, self.device) for b in loader)
        self.module.eval()
        with torch.no_grad():
            if self.eval_fn is not None:
                loss, n, metrics = self.eval_fn(self.module, batches)
                return EvalResult(float(loss), int(n), dict(metrics))
            total, count = 0.0, 0
            for b in batches:
                k = batch_length(b)
                total += float(self.loss_fn(self.module, b)) * k
                count += k
        return EvalResult(total / max(count, 1), count, {})

    # -- privacy -----------------------------------------------------------------
    def privacy_spent(self) -> dict[str, Any] | None:
        """The (ε, δ) this site's DP-SGD has spent so far (None without DP)."""
        return None if self._private is None else self._private.spent().to_dict()

    # -- cross-round state -------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The site's state that must survive between rounds, as NumPy arrays only.

        A site task rebuilt in a fresh process (Flower starts a ClientApp process per
        message) continues exactly where it was after :meth:`load_state_dict` of this dict:
        the same accountant ε, the same noise multiplier and sampling rate, the same local
        optimizer state (with ``keep_optimizer_state``) and the same step counters. The
        model's parameters are not in it: the server sends them every round.

        Keys: ``format`` (version), ``rounds_fitted``, ``local_steps``; with DP
        ``dp.history`` (one row ``(sigma, q, steps)`` per accountant entry),
        ``dp.noise_multiplier``, ``dp.sample_rate``, ``dp.batch_size`` (-1: full batch);
        with ``keep_optimizer_state`` one ``optimizer.<param index>.<name>`` per optimizer
        state tensor (e.g. Adam's ``exp_avg``).
        """
        if self._pending is not None:  # restored but not yet applied: hand it on unchanged
            kept = {k: v.copy() for k, v in self._pending.items()}
            kept["rounds_fitted"] = np.asarray([self.rounds_fitted], dtype=np.int64)
            kept["local_steps"] = np.asarray([self.local_steps], dtype=np.int64)
            return kept
        state: dict[str, np.ndarray] = {
            "format": np.asarray([_STATE_FORMAT], dtype=np.int64),
            "rounds_fitted": np.asarray([self.rounds_fitted], dtype=np.int64),
            "local_steps": np.asarray([self.local_steps], dtype=np.int64),
        }
        if self._private is not None:
            history = [tuple(map(float, h)) for h in self._private.engine.accountant.history]
            state["dp.history"] = np.asarray(history, dtype=np.float64).reshape(-1, 3)
            state["dp.noise_multiplier"] = np.asarray([self._private.noise_multiplier])
            state["dp.sample_rate"] = np.asarray([self._private.sample_rate])
            batch = -1 if self._private_batch is None else int(self._private_batch)
            state["dp.batch_size"] = np.asarray([batch], dtype=np.int64)
        optimizer = self._base_optimizer()
        if self.keep_optimizer_state and optimizer is not None:
            for idx, entries in optimizer.state_dict()["state"].items():
                for name, value in entries.items():
                    arr = value.detach().cpu().numpy() if torch.is_tensor(value) else value
                    state[f"optimizer.{idx}.{name}"] = np.array(arr, copy=True)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of this site's task).

        Call it on a freshly built task before its first :meth:`fit`. DP and optimizer
        state are applied when the private training or the optimizer is set up.

        Raises:
            FederatedError: an unknown format, DP state for a task without DP (or the
                reverse after rounds were fitted), or malformed arrays.
        """
        fmt = int(np.asarray(state.get("format", [-1])).reshape(-1)[0])
        if fmt != _STATE_FORMAT:
            raise FederatedError(
                f"site {self.site_id!r}: saved task state has format {fmt}, this version "
                f"reads format {_STATE_FORMAT}; start the run afresh"
            )
        has_dp = "dp.history" in state
        if has_dp and self.dp is None:
            raise FederatedError(
                f"site {self.site_id!r}: the saved state holds a DP accountant but this task "
                "trains without DP; rebuild the task with the same DP settings"
            )
        rounds = int(np.asarray(state["rounds_fitted"]).reshape(-1)[0])
        if self.dp is not None and rounds > 0 and not has_dp:
            raise FederatedError(
                f"site {self.site_id!r}: the saved state has {rounds} fitted rounds but no DP "
                "accountant; rebuild the task with the settings of the saved run"
            )
        if has_dp and np.asarray(state["dp.history"]).reshape(-1).size % 3:
            raise FederatedError(
                f"site {self.site_id!r}: saved dp.history must have rows (sigma, q, steps)"
            )
        self.rounds_fitted = rounds
        self.local_steps = int(np.asarray(state["local_steps"]).reshape(-1)[0])
        self._pending = {k: np.asarray(v).copy() for k, v in state.items()}
        self._apply_pending()

    def _base_optimizer(self) -> torch.optim.Optimizer | None:
        if self._private is not None:
            return cast(torch.optim.Optimizer, self._private.optimizer.original_optimizer)
        return self._optimizer

    def _apply_pending(self) -> None:
        """Apply restored state to the private training / optimizer once they exist."""
        state = self._pending
        if state is None:
            return
        if "dp.history" in state:
            if self._private is None:
                return
            private = self._private
            sigma = float(state["dp.noise_multiplier"].reshape(-1)[0])
            private.noise_multiplier = sigma
            private.optimizer.noise_multiplier = sigma
            private.sample_rate = float(state["dp.sample_rate"].reshape(-1)[0])
            rows = state["dp.history"].reshape(-1, 3)
            private.engine.accountant.history = [
                (float(s), float(q), int(np.rint(n))) for s, q, n in rows
            ]
            batch = int(state["dp.batch_size"].reshape(-1)[0])
            self._private_batch = None if batch < 0 else batch
        optim_keys = [k for k in state if k.startswith("optimizer.")]
        if optim_keys and self.keep_optimizer_state:
            optimizer = self._base_optimizer()
            if optimizer is None:
                return
            entries: dict[int, dict[str, Any]] = {}
            for k in optim_keys:
                _, idx, name = k.split(".", 2)
                entries.setdefault(int(idx), {})[name] = torch.as_tensor(state[k].copy())
            current = optimizer.state_dict()
            optimizer.load_state_dict({"state": entries, "param_groups": current["param_groups"]})
        self._pending = None

    # -- internals ---------------------------------------------------------------
    def _round_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """This round's optimizer: fresh, or the kept one with its state (lr updated)."""
        if self.keep_optimizer_state and self._optimizer is not None:
            for group in self._optimizer.param_groups:
                group["lr"] = lr
            return self._optimizer
        optimizer = self._make_optimizer(lr)
        if self.keep_optimizer_state:
            self._optimizer = optimizer
            self._apply_pending()
        return optimizer

    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def _make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        params = self._trainable()
        if not params:
            raise FederatedError(f"site {self.site_id!r}: the module has no trainable parameters")
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=self.weight_decay)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)

    def _steps_per_round(self, config: FitConfig, per_epoch: int) -> int:
        if config.local_steps is not None:
            return int(config.local_steps)
        return int(config.local_epochs) * per_epoch

    def _batches(self, loader: Iterable[Any], steps: int) -> Iterator[Any]:
        done = 0
        while done < steps:
            empty = True
            for b in loader:
                empty = False
                yield _to_device(b, self.device)
                done += 1
                if done >= steps:
                    return
            if empty:
                return

    def _fit_plain(
        self, config: FitConfig, anchor: list[torch.Tensor] | None, seed: int
    ) -> list[float]:
        batch = config.batch_size or self.n_train
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(
            self.train_data,
            batch_size=batch,
            shuffle=config.batch_size is not None,
            generator=gen,
            collate_fn=self.collate_fn,
        )
        optimizer = self._round_optimizer(config.lr)
        steps = self._steps_per_round(config, len(loader))
        params = self._trainable()
        self.module.train()
        losses: list[float] = []
        for b in self._batches(loader, steps):
            loss = self.loss_fn(self.module, b)
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                loss = loss + 0.5 * config.proximal_mu * prox
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        self.local_steps += len(losses)
        return losses

    def _setup_private(self, config: FitConfig) -> PrivateTraining:
        assert self.dp is not None
        batch = config.batch_size or self.n_train
        loader = DataLoader(
            self.train_data, batch_size=batch, shuffle=False, collate_fn=self.collate_fn
        )
        optimizer = self._make_optimizer(config.lr)
        steps = None
        if self.dp.target_epsilon is not None:
            steps = self._steps_per_round(config, len(loader)) * int(self.dp_rounds or 1)
        private = make_private(self.module, optimizer, loader, self.dp, steps=steps)
        log.info(
            "site %s: DP-SGD with sigma=%.3f, C=%.3g, q=%.4g, accountant %s",
            self.site_id,
            private.noise_multiplier,
            self.dp.max_grad_norm,
            private.sample_rate,
            self.dp.accountant,
        )
        self._private_batch = config.batch_size
        return private

    def _fit_private(self, config: FitConfig, anchor: list[torch.Tensor] | None) -> list[float]:
        if self._private is None:
            self._private = self._setup_private(config)
            self._apply_pending()
        if config.batch_size != self._private_batch:
            raise FederatedError(
                f"site {self.site_id!r}: the batch size changed from {self._private_batch} to "
                f"{config.batch_size} during a DP run; the accountant's sampling rate is fixed"
            )
        private = self._private
        opt = private.optimizer
        if not self.keep_optimizer_state:
            opt.original_optimizer.state.clear()  # local optimizer state is per round
        for group in opt.param_groups:
            group["lr"] = config.lr
        steps = self._steps_per_round(config, len(private.data_loader))
        params = self._trainable()
        private.module.train()
        losses: list[float] = []
        for b in self._batches(private.data_loader, steps):
            if batch_length(b) == 0:  # Poisson sampling can draw an empty batch
                opt.zero_grad(set_to_none=True)
                for p in params:
                    empty = torch.zeros(0, *p.shape, device=p.device, dtype=p.dtype)
                    p.grad_sample = empty  # type: ignore[attr-defined]
                opt.step()
                losses.append(math.nan)
                continue
            loss = self.loss_fn(private.module, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if anchor is not None:
                # FedProx under DP: the proximal term involves no data, so it is applied as
                # its own (privacy-free) gradient step after the noisy one
                with torch.no_grad():
                    for p, a in zip(params, anchor, strict=True):
                        p.sub_(config.lr * config.proximal_mu * (p - a))
            losses.append(float(loss.detach()))
        self.local_steps += len(losses)
        return [x for x in losses if not math.isnan(x)]
