"""The Flower ServerApp: rounds, strategies, client-level DP, SecAgg+, and the saved result.

It runs on the SuperLink host (``flwr run`` starts it there) and drives the sites through
Flower's legacy workflow API (``LegacyContext`` + ``DefaultWorkflow``), which is what
Flower's SecAgg+ needs:

* strategies: Flower's ``FedAvg``, ``FedProx`` (sends ``proximal_mu``; the site adds the
  proximal term), ``FedAdam``, ``FedYogi``; what each site must do in a round travels as a
  :class:`~privacy.federated.task.FitConfig` (:func:`~privacy.flower.config.fit_config_to_flower`);
* client-level DP: Flower's ``DifferentialPrivacyServerSideFixedClipping`` around FedAvg or
  FedProx (with SecAgg+, which hides single updates from the server, the sites clip instead:
  ``DifferentialPrivacyClientSideFixedClipping`` here and ``fixedclipping_mod`` in the
  ClientApp, which also reports one example so the masked sum is unweighted). Each site's
  update is clipped to ``dp-clipping-norm``; sites are weighted equally
  (weighting by example counts would raise a large site's sensitivity above the clip);
  Gaussian noise of standard deviation ``σ·C/n`` is added to the mean. The spent ε at
  ``dp-delta`` is computed with Opacus' RDP accountant with sampling rate 1 (every sampled
  site is in every release: no amplification by sampling is claimed). A round in which only
  ``m < n`` sites answered is accounted at the smaller effective noise multiplier ``σ·m/n``;
* SecAgg+: Flower's ``SecAggPlusWorkflow`` (the server sees only the masked sum);
* dropouts: a site that fails or does not answer within ``round-timeout`` drops out of the
  round (a SuperNode that vanished is reported unavailable by the SuperLink once its
  heartbeats stop, about 60 s, which ends the wait sooner); the round completes if
  ``min-fit-clients`` answered, otherwise the run stops with
  :class:`~privacy.errors.FederatedError` and the last global model is kept.

Outputs, in ``output-dir`` on the SuperLink host, rewritten atomically after every round:
``parameters.safetensors`` (the current global model, keys ``param_0000``… in the task's
order) and ``federation.json`` (settings, per-round records, status, DP ε, error).

Before round 1, a run whose config names a ``start`` function calls it with
:class:`SiteQueries` and the ``task-options``; its JSON result is written to ``start.json``,
and its ``task_options`` entry is sent to every site (the query
:data:`~privacy.flower.config.OPTIONS_QUERY`), which merges it into the run's task options for
every later message (e.g. a feature scaling computed from the sites' sums before any site
builds its model).

After the last round, a run whose config names a ``finish`` function calls it with
:class:`SiteQueries` (``query`` messages to every connected site, answered by the run's
``query-handler``), the final global model and the ``task-options``; its JSON result is
written to ``finish.json`` and the run completes only when it returns.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.app.message_type import MessageType
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    Strategy,
)
from flwr.server.workflow import (
    DefaultWorkflow,
    SecAggPlusWorkflow,
)
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.serverapp import Grid, ServerApp

from privacy.errors import FederatedError
from privacy.federated.task import FitConfig
from privacy.flower.config import (
    OPTIONS_QUERY,
    FlowerRunConfig,
    fit_config_to_flower,
    load_callable,
    merge_options,
)
from privacy.flower.results import RunRecorder, load_parameters

__all__ = ["GuardedStrategy", "SiteQueries", "app", "build_strategy", "client_dp_epsilon"]

log = logging.getLogger(__name__)

Workflow = Callable[[Any, Context], None]


def client_dp_epsilon(noise_multipliers: Iterable[float], delta: float) -> float:
    """ε spent by releases with these noise multipliers, each over all sampled sites.

    Opacus' RDP accountant with sampling rate 1 (no amplification by sampling).
    """
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for sigma in noise_multipliers:
        acc.history.append((float(sigma), 1.0, 1))
    if not acc.history:
        return 0.0
    return float(acc.get_epsilon(delta=delta))


def _weighted_metrics(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, m in metrics:
        for k, v in m.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                sums[k] = sums.get(k, 0.0) + float(v) * n
                weights[k] = weights.get(k, 0.0) + n
    return {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


def build_strategy(cfg: FlowerRunConfig, initial: list[np.ndarray]) -> Strategy:
    """Flower's strategy for ``cfg`` (wrapped for client-level DP when ``cfg.dp``)."""
    template = FitConfig(
        server_round=0,
        local_epochs=cfg.local_epochs,
        local_steps=cfg.local_steps if cfg.local_steps > 0 else None,
        lr=cfg.lr,
        batch_size=cfg.batch_size if cfg.batch_size > 0 else None,
        proximal_mu=0.0,
        seed=cfg.seed,
    )

    def fit_config(server_round: int) -> dict[str, Scalar]:
        return cast(
            dict[str, Scalar], fit_config_to_flower(replace(template, server_round=server_round))
        )

    common: dict[str, Any] = {
        "fraction_fit": cfg.fraction_fit,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_fit_clients": cfg.min_fit_clients,
        "min_evaluate_clients": 1,
        "min_available_clients": cfg.min_available_clients,
        "on_fit_config_fn": fit_config,
        "on_evaluate_config_fn": fit_config,
        "accept_failures": True,
        "initial_parameters": ndarrays_to_parameters(initial),
        "fit_metrics_aggregation_fn": _weighted_metrics,
        "evaluate_metrics_aggregation_fn": _weighted_metrics,
    }
    optimiser: dict[str, Any] = {"eta": cfg.server_lr, "eta_l": cfg.lr, "beta_1": cfg.beta_1}
    optimiser |= {"beta_2": cfg.beta_2, "tau": cfg.tau}
    strategy: Strategy
    if cfg.strategy == "fedavg":
        strategy = FedAvg(**common)
    elif cfg.strategy == "fedprox":
        strategy = FedProx(proximal_mu=cfg.proximal_mu, **common)
    elif cfg.strategy == "fedadam":
        strategy = FedAdam(**common, **optimiser)
    else:
        strategy = FedYogi(**common, **optimiser)
    if cfg.dp:
        if cfg.strategy not in ("fedavg", "fedprox"):
            raise FederatedError(
                f"client-level DP is supported with fedavg or fedprox, not {cfg.strategy}: "
                "the noise is calibrated to the mean of the clipped updates"
            )
        wrapper = (
            DifferentialPrivacyClientSideFixedClipping
            if cfg.secagg
            else DifferentialPrivacyServerSideFixedClipping
        )
        strategy = wrapper(
            strategy,
            noise_multiplier=cfg.dp_noise_multiplier,
            clipping_norm=cfg.dp_clipping_norm,
            num_sampled_clients=_sampled_per_round(cfg),
        )
    return strategy


def _sampled_per_round(cfg: FlowerRunConfig) -> int:
    # Flower's FedAvg: max(int(fraction * available), min_fit_clients) of the available.
    return max(int(cfg.fraction_fit * cfg.min_available_clients), cfg.min_fit_clients)


class GuardedStrategy(Strategy):
    """Delegates to the Flower strategy and records, checks and saves every round.

    * The inner strategy is built once the initial global model is known (Flower's FedAdam
      needs it up front): from ``initial-parameters`` or from one site's task.
    * ``aggregate_fit`` with fewer than ``min-fit-clients`` results raises
      :class:`FederatedError`; failed sites are recorded, then dropped so the rest of the
      round goes on (Flower's DP wrapper would otherwise discard the round).
    * Under DP, example counts are replaced by 1 (equal weights) and the effective noise
      multiplier of each release is recorded for the accountant.
    """

    def __init__(self, cfg: FlowerRunConfig, recorder: RunRecorder) -> None:
        super().__init__()
        self.cfg = cfg
        self.recorder = recorder
        self.inner: Strategy | None = None
        self.parameters: list[np.ndarray] | None = None
        self.aggregated_round = 0
        self.noise_multipliers: list[float] = []

    def _ensure_inner(self, parameters: list[np.ndarray]) -> Strategy:
        if self.inner is None:
            self.inner = build_strategy(self.cfg, parameters)
        return self.inner

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The configured initial model, or None (then Flower asks one site)."""
        if not self.cfg.initial_parameters:
            return None
        params = load_parameters(Path(self.cfg.initial_parameters))
        self._ensure_inner(params)
        self.parameters = params
        return ndarrays_to_parameters(params)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Remember the current global model, then let the strategy sample sites."""
        self.parameters = parameters_to_ndarrays(parameters)
        if server_round == 1:
            self.recorder.save_parameters(self.parameters)
        inner = self._ensure_inner(self.parameters)
        instructions = inner.configure_fit(server_round, parameters, client_manager)
        self.recorder.start_round(server_round, len(instructions))
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Check the minimum, record the sites, aggregate, save the new global model."""
        reasons = [_failure_reason(f) for f in failures]
        sites = {
            str(res.metrics.get("site", proxy.node_id)): {
                **{k: v for k, v in res.metrics.items() if k != "site"},
                "num_examples": res.num_examples,
            }
            for proxy, res in results
        }
        self.recorder.record_fit(server_round, sites, reasons)
        if len(results) < self.cfg.min_fit_clients:
            raise FederatedError(
                f"round {server_round}: only {len(results)} site(s) returned results "
                f"(failures: {reasons or 'none'}); min-fit-clients={self.cfg.min_fit_clients}. "
                "The last global model (before this round) is kept in parameters.safetensors; "
                "check the failed sites and rerun, or lower min-fit-clients"
            )
        if self.cfg.dp:
            for _, res in results:
                res.num_examples = 1
        assert self.inner is not None  # configure_fit built it
        aggregated, metrics = self.inner.aggregate_fit(server_round, results, [])
        if aggregated is None:
            raise FederatedError(
                f"round {server_round}: the strategy returned no aggregate from "
                f"{len(results)} result(s); the last global model is kept"
            )
        self.parameters = parameters_to_ndarrays(aggregated)
        self.aggregated_round = server_round
        epsilon = None
        if self.cfg.dp:
            n = _sampled_per_round(self.cfg)
            self.noise_multipliers.append(self.cfg.dp_noise_multiplier * len(results) / n)
            epsilon = client_dp_epsilon(self.noise_multipliers, self.cfg.dp_delta)
        self.recorder.finish_round(server_round, self.parameters, dict(metrics), epsilon)
        return aggregated, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Let the strategy pick the sites that evaluate the new global model."""
        inner = self._ensure_inner(parameters_to_ndarrays(parameters))
        return inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Record each site's evaluation and the example-weighted means."""
        sites = {
            str(res.metrics.get("site", proxy.node_id)): {
                **{k: v for k, v in res.metrics.items() if k != "site"},
                "loss": res.loss,
                "num_examples": res.num_examples,
            }
            for proxy, res in results
        }
        assert self.inner is not None
        loss, metrics = self.inner.aggregate_evaluate(server_round, results, failures)
        self.recorder.record_evaluate(server_round, sites, loss, dict(metrics))
        return loss, metrics

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """No centralized evaluation: the server holds no data."""
        return None


def _failure_reason(failure: tuple[ClientProxy, FitRes] | BaseException) -> str:
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}"
    proxy, res = failure
    return f"node {proxy.node_id}: {res.status.message}"


PULL_PAUSE_S = (0.05, 1.0)
"""The first and the longest pause between two pulls of the sites' replies (seconds)."""


def send_and_receive(
    grid: Grid, messages: Iterable[Message], timeout: float | None
) -> list[Message]:
    """Push ``messages`` and pull their replies until all came or ``timeout`` passed.

    Flower 1.42's ``Grid.send_and_receive`` waits 3 s between two pulls, so each message
    exchange (a round's fit, its evaluation, a query) takes at least 3 s even when every
    site answered at once. Here the pause starts at 50 ms and doubles up to 1 s.
    """
    ids = set(grid.push_messages(messages))
    end = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    pause, longest = PULL_PAUSE_S
    while ids:
        got = list(grid.pull_messages(ids))
        replies.extend(got)
        ids.difference_update(m.metadata.reply_to_message_id for m in got)
        if not ids or (end is not None and time.monotonic() >= end):
            break
        time.sleep(pause if end is None else max(0.0, min(pause, end - time.monotonic())))
        pause = min(2 * pause, longest)
    return replies


class TimeoutGrid:
    """A Grid whose ``send_and_receive`` waits at most ``timeout`` seconds by default and
    pulls the replies often (:func:`send_and_receive`).

    Flower's default workflows wait for every reply without a limit; a site that vanished
    would block the round forever.
    """

    def __init__(self, grid: Grid, timeout: float) -> None:
        self._grid = grid
        self._timeout = timeout

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send and collect replies, giving up on missing ones after the timeout."""
        return send_and_receive(self._grid, messages, self._timeout if timeout is None else timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _checked_fit(fit_workflow: Workflow, guard: GuardedStrategy) -> Workflow:
    """A fit workflow that fails loudly when a round ends without a new global model."""

    def run(grid: Any, context: Context) -> None:
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        server_round = int(cast(int, cfg[Key.CURRENT_ROUND]))
        fit_workflow(grid, context)
        if guard.aggregated_round != server_round:
            reasons = guard.recorder.round_failures(server_round)
            raise FederatedError(
                f"round {server_round} ended without an aggregate (failures: "
                f"{reasons or 'sites did not answer within round-timeout'}); fewer sites than "
                "needed took part. The last global model is kept in parameters.safetensors"
            )

    return run


def _wait_for_sites(grid: Grid, cfg: FlowerRunConfig) -> int:
    deadline = time.monotonic() + cfg.connect_timeout
    n = 0
    while True:
        n = len(list(grid.get_node_ids()))
        if n >= cfg.min_available_clients:
            return n
        if time.monotonic() > deadline:
            raise FederatedError(
                f"only {n} SuperNode(s) connected to the SuperLink within "
                f"{cfg.connect_timeout:.0f} s; min-available-clients="
                f"{cfg.min_available_clients}. Start a SuperNode per site (flower-supernode "
                "--superlink HOST:PORT) or lower min-available-clients"
            )
        time.sleep(0.5)


def _secagg_number(value: int | float) -> int | float:
    """SecAgg+ reads an int as a count and a float as a fraction of the sites."""
    if isinstance(value, float) and value > 1 and value.is_integer():
        return int(value)
    return value


class SiteQueries:
    """Queries to every connected site after the rounds (what a ``finish`` function gets).

    Each :meth:`ask` sends one ``query`` message to every site and waits for all of them:
    a finish step (e.g. fitting a model's second stage from the sites' sums) needs every
    site's answer, so a site that fails or does not answer within ``timeout`` is an error.

    Attributes:
        queries: how many queries were sent (each one message per site).
    """

    def __init__(self, grid: Grid, node_ids: list[int], timeout: float) -> None:
        self._grid = grid
        self._nodes = list(node_ids)
        self._timeout = timeout
        self.queries = 0

    @property
    def n_sites(self) -> int:
        """The sites asked."""
        return len(self._nodes)

    def ask(
        self,
        name: str,
        arrays: dict[str, np.ndarray] | None = None,
        config: dict[str, bool | int | float | str] | None = None,
    ) -> dict[str, dict[str, np.ndarray]]:
        """Send the query ``name`` to every site; returns each site's reply arrays by site.

        Raises:
            FederatedError: a site answered with an error or not within the timeout.
        """
        content: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
            "arrays": ArrayRecord(
                {k: Array(np.ascontiguousarray(np.asarray(v))) for k, v in (arrays or {}).items()}
            ),
            "query": ConfigRecord({"name": name, **(config or {})}),
        }
        messages = [
            Message(RecordDict(content), dst_node_id=node, message_type=MessageType.QUERY)
            for node in self._nodes
        ]
        self.queries += 1
        replies = send_and_receive(self._grid, messages, self._timeout)
        out: dict[str, dict[str, np.ndarray]] = {}
        errors = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                errors.append(f"node {node}: {reply.error.reason}")
                continue
            site = str(reply.content.config_records["query"].get("site", node))
            record = reply.content.array_records["arrays"]
            out[site] = {k: record[k].numpy() for k in record}
        missing = len(self._nodes) - len(replies)
        if errors or missing:
            raise FederatedError(
                f"query {name!r} (query {self.queries}): "
                + "; ".join(errors + ([f"{missing} site(s) did not answer"] if missing else []))
                + f". Every site must answer (timeout {self._timeout:.0f} s, round-timeout)"
            )
        return out


def _run_start(grid: Grid, cfg: FlowerRunConfig, recorder: RunRecorder) -> FlowerRunConfig:
    """Call the run's ``start`` function before round 1; give its task-options to the sites.

    Returns:
        ``cfg`` with the merged ``task_options`` (what ``finish`` receives).

    Raises:
        FederatedError: ``start`` returned no dict, or a ``task_options`` that is not one.
    """
    start = load_callable(cfg.start, "start")
    queries = SiteQueries(grid, list(grid.get_node_ids()), cfg.round_timeout)
    began = time.monotonic()
    result = start(queries, dict(cfg.task_options or {}))
    if not isinstance(result, dict):
        raise FederatedError(
            f"start {cfg.start!r} returned {type(result).__name__}; it must return a dict "
            "(saved as start.json)"
        )
    update = result.get("task_options") or {}
    if not isinstance(update, dict):
        raise FederatedError(
            f"start {cfg.start!r} returned task_options of type {type(update).__name__}; it "
            "must be a JSON object (merged into the run's task-options)"
        )
    if update:
        queries.ask(OPTIONS_QUERY, config={"task_options": json.dumps(update, sort_keys=True)})
    recorder.save_start(
        result,
        {
            "function": cfg.start,
            "sites": queries.n_sites,
            "queries": queries.queries,
            "task_options": sorted(update),
            "seconds": round(time.monotonic() - began, 3),
        },
    )
    return replace(cfg, task_options=merge_options(cfg.task_options, update))


def _run_finish(grid: Grid, cfg: FlowerRunConfig, recorder: RunRecorder, guard: Any) -> None:
    """Call the run's ``finish`` function with the final model; save what it returns."""
    finish = load_callable(cfg.finish, "finish")
    if guard.parameters is None:
        raise FederatedError("no global model to finish: no round completed")
    queries = SiteQueries(grid, list(grid.get_node_ids()), cfg.round_timeout)
    start = time.monotonic()
    result = finish(queries, list(guard.parameters), dict(cfg.task_options or {}))
    if not isinstance(result, dict):
        raise FederatedError(
            f"finish {cfg.finish!r} returned {type(result).__name__}; it must return a dict "
            "(saved as finish.json)"
        )
    recorder.save_finish(
        result,
        {
            "function": cfg.finish,
            "sites": queries.n_sites,
            "queries": queries.queries,
            "seconds": round(time.monotonic() - start, 3),
        },
    )


def run_federation(grid: Grid, context: Context) -> None:
    """The ServerApp's main: run the rounds, write the outputs, fail loudly."""
    cfg = FlowerRunConfig.from_run_config(context.run_config)
    if not cfg.output_dir:
        raise FederatedError(
            "run config output-dir is empty; set it to a folder on the SuperLink host "
            "(flwr run --run-config \"output-dir='/srv/fl/run1'\")"
        )
    recorder = RunRecorder(Path(cfg.output_dir), cfg, run_id=int(context.run_id))
    guard = GuardedStrategy(cfg, recorder)
    try:
        recorder.set_sites_connected(_wait_for_sites(grid, cfg))
        if cfg.start:
            cfg = _run_start(grid, cfg, recorder)
            guard.cfg = cfg
        fit: Workflow = default_fit_workflow
        if cfg.secagg:
            fit = SecAggPlusWorkflow(
                num_shares=_secagg_number(cfg.secagg_num_shares),
                reconstruction_threshold=_secagg_number(cfg.secagg_reconstruction_threshold),
                clipping_range=cfg.secagg_clipping_range,
                quantization_range=cfg.secagg_quantization_range,
                max_weight=cfg.secagg_max_weight,
                timeout=cfg.round_timeout,
            )
        legacy = LegacyContext(
            context, config=ServerConfig(num_rounds=cfg.num_rounds), strategy=guard
        )
        workflow = DefaultWorkflow(fit_workflow=_checked_fit(fit, guard))
        workflow(cast(Grid, TimeoutGrid(grid, cfg.round_timeout)), legacy)
        if cfg.finish:
            _run_finish(grid, cfg, recorder, guard)
    except BaseException as e:
        recorder.finish("failed", guard.parameters, error=f"{type(e).__name__}: {e}")
        raise
    recorder.finish("completed", guard.parameters)


app = ServerApp()
"""The ServerApp named in the Flower app's ``pyproject.toml`` (``serverapp``)."""
app.main()(run_federation)
