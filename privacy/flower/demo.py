"""A tiny seeded SiteTask for smoke tests and deployment drills.

Logistic regression in NumPy on synthetic data that each site generates from its own seed,
so a federation can be checked end to end on real hosts before any patient data is
involved::

    flwr run privacy/flower/app my-link --run-config \\
        "task-factory='privacy.flower.demo:make_task' output-dir='/srv/fl/drill'"

It needs only NumPy: Flower starts a fresh ClientApp process for every message, and not
importing a deep-learning framework keeps each of those starts short.

Sites are told apart by the SuperNode's node config: ``partition-id`` (an int; ``site``
defaults to ``site-<partition-id>``) or ``site``. Options (the run's ``task-options`` JSON):

* ``n_features`` (default 4), ``n_base`` (site 0 has this many training rows, site k
  ``n_base + 10 k``), ``data_seed`` (0), ``init_seed`` (0);
* ``center``, ``scale`` (lists of ``n_features`` numbers; default none) — the features are
  standardized as ``(x - center) / scale`` (what :func:`start` sets from the sites' sums);
* ``momentum`` (0.0) — SGD momentum whose buffer is kept **across rounds** (site state that
  :meth:`LogisticSiteTask.state_dict` hands to the ClientApp, which keeps it in Flower's
  per-node context between the per-message processes);
* ``fail_site`` / ``fail_round`` — that site raises in ``fit`` at that round (a failing
  site); ``exit_site`` / ``exit_round`` — that site's process and its SuperNode are killed
  at that round (a site that disconnects mid-round). For drills and tests only.

Before round 1, :func:`start` (``start = "privacy.flower.demo:start"``) asks every site
for its training features' count, sum and sum of squares (``demo.moments``) and sets
``center`` and ``scale`` to the pooled mean and standard deviation, which every site then
applies: the path a deployment takes when a model's preprocessing must be fitted on data
that never leaves the sites.

After the rounds, :func:`finish` (``finish = "privacy.flower.demo:finish"``) queries the
sites, which answer with :func:`answer_query` (``query-handler =
"privacy.flower.demo:answer_query"``): their evaluation rows and events, then the summed log
loss of the final model on them. The pooled log loss it writes to ``finish.json`` checks
the query path of a deployment; each site counts the queries it answered in its query state.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Any

import numpy as np

from privacy.errors import FederatedError
from privacy.federated.task import EvalResult, FitConfig, FitResult, Parameters

__all__ = ["LogisticSiteTask", "answer_query", "finish", "make_task", "site_data", "start"]

_STATE_FORMAT = 1


def site_data(
    index: int, *, n_features: int = 4, n_base: int = 30, data_seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and evaluation data of site ``index``: ``(x_train, y_train, x_eval, y_eval)``.

    ``x`` is (n, n_features) float64, ``y`` (n,) float64 in {0, 1}; a shared true weight
    vector, a site-specific feature shift (non-IID), both classes present.
    """
    rng_w = np.random.default_rng([data_seed, 10_000])
    w_true = rng_w.normal(size=n_features)
    rng = np.random.default_rng([data_seed, index])
    n = n_base + 10 * index
    x = rng.normal(loc=0.3 * index, size=(n + 20, n_features))
    p = 1.0 / (1.0 + np.exp(-(x @ w_true - 0.3 * index)))
    y = (rng.random(n + 20) < p).astype(np.float64)
    y[0], y[1] = 0.0, 1.0
    return x[:n], y[:n], x[n:], y[n:]


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy on logits (numerically stable)."""
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


class LogisticSiteTask:
    """One site's logistic regression; SGD (with optional momentum) and FedProx.

    Parameters are ``[weight (1, d), bias (1,)]`` in float64, the layout of a
    ``torch.nn.Linear(d, 1)``.

    Args:
        site_id: the site's name.
        data: ``(x_train, y_train, x_eval, y_eval)`` (see :func:`site_data`).
        init_seed: seed of the initial weights (the same at every site).
        momentum: SGD momentum (PyTorch's convention: ``buf = m·buf + g``, ``w -= lr·buf``);
            the buffer carries over from round to round.
        fail_round: raise in ``fit`` at this round.
        exit_round: kill this process group in ``fit`` at this round.
    """

    def __init__(
        self,
        site_id: str,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        *,
        init_seed: int = 0,
        momentum: float = 0.0,
        fail_round: int | None = None,
        exit_round: int | None = None,
    ) -> None:
        self.site_id = site_id
        self.x, self.y, self.x_eval, self.y_eval = (np.asarray(a, np.float64) for a in data)
        rng = np.random.default_rng([init_seed, 1])
        d = self.x.shape[1]
        self.params: Parameters = [rng.normal(size=(1, d)) * 0.1, rng.normal(size=(1,)) * 0.1]
        if not 0.0 <= momentum < 1.0:
            raise FederatedError(f"site {site_id!r}: momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.buffers: Parameters | None = None
        self.rounds_fitted = 0
        self.local_steps = 0
        self.fail_round = fail_round
        self.exit_round = exit_round

    def get_parameters(self) -> Parameters:
        """Weight (1, d) and bias (1,) as copies."""
        return [p.copy() for p in self.params]

    def _load(self, parameters: Parameters) -> None:
        self.params = [
            np.asarray(v, np.float64).reshape(p.shape).copy()
            for p, v in zip(self.params, parameters, strict=True)
        ]

    def _gradients(
        self, idx: np.ndarray, anchor: Parameters, mu: float
    ) -> tuple[Parameters, float]:
        x, y = self.x[idx], self.y[idx]
        w, b = self.params
        logits = x @ w[0] + b[0]
        dz = (_sigmoid(logits) - y) / len(idx)
        grads = [(dz @ x)[None, :], np.asarray([dz.sum()])]
        loss = _log_loss(logits, y)
        if mu > 0:
            for g, p, a in zip(grads, self.params, anchor, strict=True):
                g += mu * (p - a)
            loss += (
                mu
                / 2
                * sum(float(((p - a) ** 2).sum()) for p, a in zip(self.params, anchor, strict=True))
            )
        return grads, loss

    def _step(self, grads: Parameters, lr: float) -> None:
        if self.momentum > 0:
            if self.buffers is None:
                self.buffers = [g.copy() for g in grads]
            else:
                self.buffers = [
                    self.momentum * m + g for m, g in zip(self.buffers, grads, strict=True)
                ]
            grads = self.buffers
        self.params = [p - lr * g for p, g in zip(self.params, grads, strict=True)]
        self.local_steps += 1

    def fit(self, parameters: Parameters, config: FitConfig) -> FitResult:
        """Local SGD from ``parameters``; adds ``mu/2 ||w - w_global||²`` when mu > 0."""
        if self.exit_round == config.server_round:
            # Drop off the network: kill this process group (the SuperNode that the launcher
            # started with its own group, its SuperExec and this ClientApp process).
            os.killpg(os.getpgid(0), signal.SIGKILL)
            os._exit(1)
        if self.fail_round == config.server_round:
            raise RuntimeError(
                f"site {self.site_id}: simulated failure in round {config.server_round}"
            )
        self._load(parameters)
        anchor = self.get_parameters()
        n = self.x.shape[0]
        bs = n if config.batch_size is None else min(config.batch_size, n)
        rng = np.random.default_rng([config.seed, config.server_round])
        steps_left = config.local_steps
        epochs = config.local_epochs if steps_left is None else 10**9
        loss = 0.0
        for _ in range(epochs):
            order = rng.permutation(n) if bs < n else np.arange(n)
            for start in range(0, n, bs):
                grads, loss = self._gradients(order[start : start + bs], anchor, config.proximal_mu)
                self._step(grads, config.lr)
                if steps_left is not None:
                    steps_left -= 1
                    if steps_left == 0:
                        break
            if steps_left == 0:
                break
        self.rounds_fitted += 1
        metrics = {"train_loss": loss, "rounds_fitted": float(self.rounds_fitted)}
        return FitResult(self.get_parameters(), int(n), metrics)

    def evaluate(self, parameters: Parameters, config: FitConfig) -> EvalResult:
        """Log loss and accuracy of ``parameters`` on the site's evaluation rows."""
        w, b = (np.asarray(v, np.float64) for v in parameters)
        logits = self.x_eval @ w.reshape(-1) + float(b.reshape(-1)[0])
        acc = float(np.mean((logits > 0) == (self.y_eval > 0.5)))
        return EvalResult(
            _log_loss(logits, self.y_eval), int(self.y_eval.shape[0]), {"accuracy": acc}
        )

    # -- cross-round state (kept by the ClientApp in Flower's per-node context) -------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Counters and the momentum buffers, as NumPy arrays (no model parameters)."""
        state = {
            "format": np.asarray([_STATE_FORMAT], np.int64),
            "rounds_fitted": np.asarray([self.rounds_fitted], np.int64),
            "local_steps": np.asarray([self.local_steps], np.int64),
        }
        for i, buf in enumerate(self.buffers or []):
            state[f"momentum.{i}"] = buf.copy()
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from :meth:`state_dict` of this site's task in an earlier process.

        Raises:
            FederatedError: an unknown format or momentum buffers of the wrong shape.
        """
        fmt = int(np.asarray(state.get("format", [-1])).reshape(-1)[0])
        if fmt != _STATE_FORMAT:
            raise FederatedError(
                f"site {self.site_id!r}: saved demo-task state has format {fmt}, expected "
                f"{_STATE_FORMAT}; start the run afresh"
            )
        self.rounds_fitted = int(np.asarray(state["rounds_fitted"]).reshape(-1)[0])
        self.local_steps = int(np.asarray(state["local_steps"]).reshape(-1)[0])
        buffers = [
            np.asarray(state[f"momentum.{i}"], np.float64)
            for i in range(len(self.params))
            if f"momentum.{i}" in state
        ]
        if buffers and [b.shape for b in buffers] != [p.shape for p in self.params]:
            raise FederatedError(
                f"site {self.site_id!r}: saved momentum buffers have shapes "
                f"{[b.shape for b in buffers]}, the model {[p.shape for p in self.params]}"
            )
        self.buffers = [b.copy() for b in buffers] or None


def _opt_int(options: Mapping[str, Any], key: str, site: str) -> int | None:
    if options.get(key.replace("round", "site")) != site or options.get(key) is None:
        return None
    return int(options[key])


def make_task(node_config: Mapping[str, Any], options: Mapping[str, Any]) -> LogisticSiteTask:
    """The Flower task factory: ``task-factory = "privacy.flower.demo:make_task"``."""
    index = int(node_config.get("partition-id", 0))
    site = str(node_config.get("site", f"site-{index}"))
    data = site_data(
        index,
        n_features=int(options.get("n_features", 4)),
        n_base=int(options.get("n_base", 30)),
        data_seed=int(options.get("data_seed", 0)),
    )
    if options.get("center") is not None or options.get("scale") is not None:
        d = data[0].shape[1]
        center = np.asarray(options.get("center", np.zeros(d)), np.float64)
        scale = np.asarray(options.get("scale", np.ones(d)), np.float64)
        if center.shape != (d,) or scale.shape != (d,) or np.any(scale <= 0):
            raise FederatedError(
                f"site {site!r}: task-options center and scale must be {d} numbers each (scale > 0)"
            )
        x, y, x_eval, y_eval = data
        data = ((x - center) / scale, y, (x_eval - center) / scale, y_eval)
    return LogisticSiteTask(
        site,
        data,
        init_seed=int(options.get("init_seed", 0)),
        momentum=float(options.get("momentum", 0.0)),
        fail_round=_opt_int(options, "fail_round", site),
        exit_round=_opt_int(options, "exit_round", site),
    )


def answer_query(query: Any) -> dict[str, np.ndarray]:
    """The demo's ``query-handler`` (a :class:`privacy.flower.client_app.SiteQuery`).

    ``demo.counts``: the site's evaluation rows and events; ``demo.loss``: the summed log
    loss of the model in ``arrays`` (``weight``, ``bias``) on them; ``demo.moments``: the
    count, sums and sums of squares of its training features (as built, so before
    :func:`start`'s scaling). Every reply also holds
    ``answered``, the queries this site has answered in the run (kept in its query state).

    Raises:
        FederatedError: an unknown query.
    """
    task = query.build_task()
    answered = int(np.asarray(query.state.get("answered", [0])).reshape(-1)[0]) + 1
    query.state["answered"] = np.asarray([answered], np.int64)
    out = {"answered": np.asarray([answered], np.int64)}
    if query.name == "demo.counts":
        out["n"] = np.asarray([task.y_eval.shape[0]], np.float64)
        out["events"] = np.asarray([task.y_eval.sum()], np.float64)
    elif query.name == "demo.moments":
        out["n"] = np.asarray([task.x.shape[0]], np.float64)
        out["sum"] = task.x.sum(axis=0)
        out["sum_sq"] = (task.x**2).sum(axis=0)
    elif query.name == "demo.loss":
        model = [query.arrays["weight"], query.arrays["bias"]]
        result = task.evaluate(model, FitConfig(0))
        out["loss_sum"] = np.asarray([result.loss * result.num_examples], np.float64)
    else:
        raise FederatedError(
            f"unknown demo query {query.name!r}; use demo.counts, demo.loss or demo.moments"
        )
    return out


def start(queries: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The demo's ``start``: standardize every site's features by the pooled moments.

    Returns:
        ``{"sites", "n_train", "task_options": {"center", "scale"}}`` (the ServerApp gives
        ``task_options`` to every site before round 1).
    """
    moments = queries.ask("demo.moments")
    n = sum(float(r["n"][0]) for r in moments.values())
    total = np.sum([np.asarray(r["sum"], np.float64) for r in moments.values()], axis=0)
    total_sq = np.sum([np.asarray(r["sum_sq"], np.float64) for r in moments.values()], axis=0)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return {
        "sites": sorted(moments),
        "n_train": n,
        "task_options": {"center": mean.tolist(), "scale": np.where(std > 0, std, 1.0).tolist()},
    }


def finish(queries: Any, parameters: Parameters, options: Mapping[str, Any]) -> dict[str, Any]:
    """The demo's ``finish``: the final model's pooled log loss on the sites' evaluation rows."""
    counts = queries.ask("demo.counts")
    weight, bias = (np.asarray(p, np.float64) for p in parameters)
    losses = queries.ask("demo.loss", {"weight": weight, "bias": bias})
    n = sum(float(r["n"][0]) for r in counts.values())
    return {
        "sites": sorted(counts),
        "n_eval": n,
        "events": sum(float(r["events"][0]) for r in counts.values()),
        "mean_log_loss": sum(float(r["loss_sum"][0]) for r in losses.values()) / n,
        "answered": {s: int(r["answered"][0]) for s, r in losses.items()},
    }
