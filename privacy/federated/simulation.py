"""In-process federated simulation: every site runs in this process, one after another.

For notebooks, tests and small studies. It drives the same :class:`~privacy.federated.task.SiteTask`
objects and :mod:`~privacy.federated.strategies` as the Flower deployment, so a result here
is what a real federation with the same seeds and data computes::

    history = simulate(tasks, FedAvg(lr=0.05), rounds=10, clients_per_round=3, seed=0)
    history.parameters            # the final global model
    history.rounds[-1].evaluate   # {site: {"loss": ..., "auroc": ...}} on each site's eval data

Each round: sample sites (seeded, :func:`sample_sites`), send them the global parameters
and the strategy's FitConfig, aggregate the answers, then let every site evaluate the new
global model on its own held-out data.

A site that fails during ``fit`` (an exception other than a :class:`~privacy.errors.PrivacyError`,
e.g. a lost connection) drops out of that round: the round completes with the others when at
least ``min_fit_clients`` answered; otherwise :class:`~privacy.errors.FederatedError` is raised
carrying the last global model (``err.parameters``) and the history so far (``err.history``).
Bad input at a site (a :class:`~privacy.errors.PrivacyError`, e.g. a site without one class)
is not a dropout: it is raised at once, so it is fixed rather than silently skipped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from privacy.errors import FederatedError, PrivacyError
from privacy.federated.strategies import Strategy, weighted_metrics
from privacy.federated.task import FitResult, Parameters, SiteTask

__all__ = ["History", "RoundRecord", "clients_for_round", "sample_sites", "simulate"]

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    """What happened in one round.

    Attributes:
        server_round: 1-based round number.
        sampled: site ids asked to train.
        completed: site ids whose results were aggregated.
        failed: {site id: "ExceptionType: message"} for sites that dropped out.
        fit: {site id: training metrics the site reported (plus ``num_examples``)}.
        evaluate: {site id: ``loss``, ``num_examples`` and the site's metrics of the new
            global model on its evaluation data}.
        fit_aggregated: example-weighted mean of the fit metrics.
        evaluate_aggregated: example-weighted mean of the evaluation metrics.
        seconds: wall time of the round.
    """

    server_round: int
    sampled: list[str]
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    fit: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    fit_aggregated: dict[str, float] = field(default_factory=dict)
    evaluate_aggregated: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class History:
    """The result of :func:`simulate`.

    Attributes:
        parameters: the final global parameters (the last successful round's).
        rounds: one :class:`RoundRecord` per completed round.
        strategy: the strategy's description (:meth:`Strategy.to_dict`).
        sites: every site id, in task order.
    """

    parameters: Parameters
    rounds: list[RoundRecord] = field(default_factory=list)
    strategy: dict[str, Any] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (without the parameters)."""
        return {
            "strategy": self.strategy,
            "sites": self.sites,
            "rounds": [asdict(r) for r in self.rounds],
        }

    def metric(self, name: str, site: str | None = None) -> list[float]:
        """One evaluation metric per round: at ``site``, or the weighted mean over sites."""
        out = []
        for r in self.rounds:
            src = r.evaluate_aggregated if site is None else r.evaluate.get(site, {})
            out.append(float(src.get(name, math.nan)))
        return out


def sample_sites(site_ids: Sequence[str], server_round: int, k: int, seed: int = 0) -> list[str]:
    """The ``k`` sites asked to train in ``server_round``, in their original order.

    A pure function of (site ids, round, k, seed), so the simulator and a Flower server
    sample the same sites for the same seed.
    """
    n = len(site_ids)
    if k >= n:
        return list(site_ids)
    rng = np.random.default_rng([int(seed), int(server_round)])
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    return [site_ids[i] for i in chosen]


def clients_for_round(
    n_sites: int,
    *,
    fraction_fit: float = 1.0,
    clients_per_round: int | None = None,
    min_fit_clients: int = 1,
) -> int:
    """How many sites to sample per round (Flower's rule: ``max(ceil(fraction * n), min)``).

    Raises:
        FederatedError: settings out of range or more than the available sites.
    """
    if n_sites < 1:
        raise FederatedError("no sites: federated training needs at least one site task")
    if min_fit_clients < 1:
        raise FederatedError(f"min_fit_clients must be >= 1, got {min_fit_clients}")
    if clients_per_round is not None:
        if not 1 <= clients_per_round <= n_sites:
            raise FederatedError(
                f"clients_per_round={clients_per_round} but there are {n_sites} sites; "
                f"choose 1..{n_sites}"
            )
        k = clients_per_round
    else:
        if not 0 < fraction_fit <= 1:
            raise FederatedError(f"fraction_fit must be in (0, 1], got {fraction_fit}")
        k = min(n_sites, max(math.ceil(fraction_fit * n_sites), min_fit_clients))
    if min_fit_clients > k:
        raise FederatedError(
            f"min_fit_clients={min_fit_clients} is more than the {k} sites sampled per round; "
            "lower min_fit_clients or sample more sites"
        )
    return k


def _copy(params: Parameters) -> Parameters:
    return [np.array(p, copy=True) for p in params]


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def simulate(
    tasks: Sequence[SiteTask],
    strategy: Strategy,
    rounds: int,
    *,
    initial_parameters: Parameters | None = None,
    fraction_fit: float = 1.0,
    clients_per_round: int | None = None,
    min_fit_clients: int = 1,
    evaluate: bool = True,
    seed: int = 0,
    on_round: Callable[[RoundRecord, Parameters], None] | None = None,
) -> History:
    """Run ``rounds`` rounds of federated training in this process.

    Args:
        tasks: one :class:`SiteTask` per site (unique ``site_id``).
        strategy: server strategy (:mod:`privacy.federated.strategies`).
        rounds: number of rounds (>= 1).
        initial_parameters: the starting global model; default: the first task's parameters.
        fraction_fit: share of sites sampled per round (ignored with ``clients_per_round``).
        clients_per_round: exact number of sites sampled per round.
        min_fit_clients: fewest successful site results a round needs.
        evaluate: after each round, every site evaluates the new global model.
        seed: seed of the site sampling (local training takes the strategy's ``seed``).
        on_round: called after each round with its record and the new global parameters.

    Returns:
        The :class:`History` with the final global parameters.

    Raises:
        FederatedError: fewer than ``min_fit_clients`` sites answered in a round (the error
            carries the last global model and the history so far), or bad settings.
        PrivacyError: a site's data is unusable (raised as is, naming the site).
    """
    if rounds < 1:
        raise FederatedError(f"rounds must be >= 1, got {rounds}")
    site_ids = [str(t.site_id) for t in tasks]
    if len(set(site_ids)) != len(site_ids):
        raise FederatedError(f"site ids must be unique, got {site_ids}")
    k = clients_for_round(
        len(tasks),
        fraction_fit=fraction_fit,
        clients_per_round=clients_per_round,
        min_fit_clients=min_fit_clients,
    )
    by_id = dict(zip(site_ids, tasks, strict=True))
    params = _copy(
        initial_parameters if initial_parameters is not None else tasks[0].get_parameters()
    )
    strategy.initialize(params)
    history = History(parameters=params, strategy=strategy.to_dict(), sites=site_ids)
    for server_round in range(1, rounds + 1):
        t0 = time.perf_counter()
        config = strategy.configure_fit(server_round)
        record = RoundRecord(server_round, sample_sites(site_ids, server_round, k, seed))
        results: list[FitResult] = []
        for sid in record.sampled:
            try:
                res = by_id[sid].fit(_copy(params), config)
            except PrivacyError:
                raise
            except Exception as e:  # noqa: BLE001 - a site dropping out must not end the federation
                record.failed[sid] = _reason(e)
                log.warning("round %d: site %s dropped out (%s)", server_round, sid, _reason(e))
                continue
            results.append(res)
            record.completed.append(sid)
            record.fit[sid] = {**res.metrics, "num_examples": float(res.num_examples)}
        if len(results) < min_fit_clients:
            record.seconds = time.perf_counter() - t0
            raise FederatedError(
                f"round {server_round}: only {len(results)} of {len(record.sampled)} sampled "
                f"sites returned results (failed: {record.failed}); at least {min_fit_clients} "
                "needed. The last global model (before this round) is kept in err.parameters; "
                "check the failed sites and rerun, or lower min_fit_clients",
                parameters=params,
                history=history,
            )
        params = strategy.aggregate_fit(server_round, params, results)
        record.fit_aggregated = weighted_metrics(results)
        if evaluate:
            _evaluate_all(by_id, params, config, record)
        record.seconds = time.perf_counter() - t0
        history.rounds.append(record)
        history.parameters = params
        if on_round is not None:
            on_round(record, params)
    return history


def _evaluate_all(
    by_id: dict[str, SiteTask], params: Parameters, config: Any, record: RoundRecord
) -> None:
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for sid, task in by_id.items():
        try:
            ev = task.evaluate(_copy(params), config)
        except PrivacyError:
            raise
        except Exception as e:  # noqa: BLE001 - one site failing to evaluate is recorded, not fatal
            record.evaluate[sid] = {}
            log.warning(
                "round %d: site %s failed to evaluate (%s)", record.server_round, sid, _reason(e)
            )
            continue
        row = {"loss": float(ev.loss), "num_examples": float(ev.num_examples), **ev.metrics}
        record.evaluate[sid] = row
        for key, v in row.items():
            if key != "num_examples" and isinstance(v, (int, float)) and math.isfinite(v):
                sums[key] = sums.get(key, 0.0) + float(v) * ev.num_examples
                weights[key] = weights.get(key, 0.0) + ev.num_examples
    record.evaluate_aggregated = {k: sums[k] / weights[k] for k in sums if weights[k] > 0}
