"""The Flower ClientApp: one site's :class:`~privacy.federated.task.SiteTask` behind Flower.

Each SuperNode (one per hospital) runs this app. It is generic: the run config's
``task-factory`` names a ``package.module:function`` that builds the site's task from the
SuperNode's node config and the run's ``task-options``
(:data:`privacy.flower.config.TaskFactory`), so :mod:`privacy` never imports the model code
(clinfuse plugs its fusion-model task in this way).

Only parameters, example counts and aggregate metrics leave the site, and what the run's
``query-handler`` answers to the server's queries (below). With SecAgg+ the
``secaggplus_mod`` masks the parameters before they leave (the server sees only the sum);
it acts only on runs whose server uses the SecAgg+ workflow, plain runs pass through. With
client-level DP under SecAgg+ the site clips its own update first (``fixedclipping_mod``,
when the server's round config carries ``clipping_norm``) and reports one example, so the
masked sum is the unweighted sum the DP noise is calibrated to.

Flower 1.42 runs every message in a fresh ClientApp process, so a task's in-memory state
(a DP-SGD accountant, an optimizer's moments, step counters) would be lost between rounds.
A task that has ``state_dict() -> dict[str, np.ndarray]`` and ``load_state_dict(state)``
keeps it: after every ``fit``/``evaluate`` the ClientApp stores ``state_dict()`` in Flower's
per-node :class:`~flwr.app.Context` state (an ``ArrayRecord`` under :data:`TASK_STATE_KEY`,
which the SuperNode keeps for the run and never sends to the server), and hands it to
``load_state_dict`` when the next message's process builds the task again.

The built task is also cached per (run, factory, node config) in the ClientApp process, so
a long-lived process does not reload the site's data every round.

Before round 1 and after the rounds the server may query the sites (``query`` messages, sent
by the run's ``start`` and ``finish`` functions through
:class:`privacy.flower.server_app.SiteQueries`). The task options a ``start`` function
returns arrive as the query :data:`~privacy.flower.config.OPTIONS_QUERY`, which this app
answers itself: the site keeps them in its node state (:data:`OPTIONS_STATE_KEY`) and builds
its task, and answers later queries, with them merged into the run's ``task-options``
(:func:`run_task_options`). The run
config's ``query-handler`` answers them at each site (:func:`query_mod`): it receives a
:class:`SiteQuery` (the query's name and arrays, and a ``state`` of arrays the SuperNode keeps
for the run, like the task state, and never sends) and returns the arrays of the reply. A
handler builds the site's task only when it needs it (:meth:`SiteQuery.build_task`), so a
query that only reads its state costs a process start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Scalar
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from privacy.errors import FederatedError
from privacy.federated.task import FitConfig, SiteTask
from privacy.flower.config import (
    OPTIONS_QUERY,
    FlowerRunConfig,
    fit_config_from_flower,
    load_callable,
    load_task_factory,
    merge_options,
)

__all__ = [
    "OPTIONS_STATE_KEY",
    "QUERY_STATE_KEY",
    "TASK_STATE_KEY",
    "SiteClient",
    "SiteQuery",
    "app",
    "build_site_task",
    "load_task_state",
    "optional_clipping_mod",
    "optional_secaggplus_mod",
    "query_mod",
    "run_task_options",
    "save_task_state",
]

TASK_STATE_KEY = "privacy.flower.task_state"
"""Key of the task's state (an ``ArrayRecord``) in the node's ``Context.state``."""

QUERY_STATE_KEY = "privacy.flower.query_state"
"""Key of the query handler's state (an ``ArrayRecord``) in the node's ``Context.state``."""

OPTIONS_STATE_KEY = "privacy.flower.task_options"
"""Key of the run's ``start`` update of the task options (a ``ConfigRecord`` holding JSON)
in the node's ``Context.state``."""

log = logging.getLogger(__name__)

_TASKS: dict[tuple[int, str, str], SiteTask] = {}


def _scalar_metrics(metrics: dict[str, Any], site_id: str) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {"site": str(site_id)}
    for k, v in metrics.items():
        if isinstance(v, (bool, int, float, str)):
            out[str(k)] = v
        elif isinstance(v, np.generic):
            out[str(k)] = v.item()
    return out


def _record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: record[name].numpy() for name in record}


def _to_record(arrays: Mapping[str, Any], what: str) -> ArrayRecord:
    """Named numeric arrays as an ``ArrayRecord`` (what a node keeps or a message carries).

    Raises:
        FederatedError: an array that is not numeric (``WHAT[name] has dtype ...``).
    """
    out: dict[str, Array] = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise FederatedError(
                f"{what}[{name!r}] has dtype {arr.dtype}; only numeric NumPy arrays (bool, "
                "int or float) can be kept or sent"
            )
        out[str(name)] = Array(np.ascontiguousarray(arr))
    return ArrayRecord(out)


def save_task_state(task: SiteTask, context: Context) -> bool:
    """Store ``task.state_dict()`` in ``context.state`` (tasks without it: nothing to do).

    Returns:
        Whether the task has state to keep.

    Raises:
        FederatedError: ``state_dict()`` returned something other than a mapping of names
            to numeric arrays.
    """
    state_dict = getattr(task, "state_dict", None)
    if not callable(state_dict):
        return False
    state = state_dict()
    if not isinstance(state, Mapping):
        raise FederatedError(
            f"site {task.site_id!r}: {type(task).__name__}.state_dict() returned "
            f"{type(state).__name__}; it must return a dict of names to NumPy arrays"
        )
    context.state.array_records[TASK_STATE_KEY] = _to_record(
        state, f"site {task.site_id!r}: state_dict()"
    )
    return True


def load_task_state(task: SiteTask, context: Context) -> bool:
    """Give the state kept in ``context.state`` to ``task.load_state_dict``.

    Returns:
        Whether state was found and loaded (False on the site's first message of a run, or
        for a task without ``load_state_dict``).
    """
    load = getattr(task, "load_state_dict", None)
    if not callable(load) or TASK_STATE_KEY not in context.state.array_records:
        return False
    load(_record_arrays(context.state.array_records[TASK_STATE_KEY]))
    return True


class SiteClient(NumPyClient):
    """A Flower ``NumPyClient`` that forwards every call to a SiteTask.

    Args:
        task: the site's local training and evaluation.
        context: the node's context; when given, the task's state is stored in it after
            every ``fit`` and ``evaluate`` (see :func:`save_task_state`).
    """

    def __init__(self, task: SiteTask, context: Context | None = None) -> None:
        self.task = task
        self.node_context = context

    def _keep_state(self) -> None:
        if self.node_context is not None:
            save_task_state(self.task, self.node_context)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """The task's current parameters (used when the server has no initial model)."""
        return [np.asarray(p) for p in self.task.get_parameters()]

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        """Train locally from the global ``parameters`` as the server's ``config`` says."""
        fit_config = fit_config_from_flower(config)
        res = self.task.fit([np.asarray(p) for p in parameters], fit_config)
        self._keep_state()
        return (
            [np.asarray(p) for p in res.parameters],
            int(res.num_examples),
            _scalar_metrics(res.metrics, self.task.site_id),
        )

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Scalar]]:
        """Evaluate the global ``parameters`` on this site's held-out data."""
        eval_config = fit_config_from_flower(config) if "server_round" in config else FitConfig(0)
        res = self.task.evaluate([np.asarray(p) for p in parameters], eval_config)
        self._keep_state()
        return (
            float(res.loss),
            int(res.num_examples),
            _scalar_metrics(res.metrics, self.task.site_id),
        )


def run_task_options(context: Context) -> dict[str, Any]:
    """The run's ``task-options``, with the update its ``start`` function sent, if any."""
    cfg = FlowerRunConfig.from_run_config(context.run_config)
    record = context.state.config_records.get(OPTIONS_STATE_KEY)
    update = {} if record is None else json.loads(str(record["json"]))
    return merge_options(cfg.task_options, update)


def build_site_task(context: Context) -> SiteTask:
    """The SiteTask of this SuperNode for the run in ``context`` (cached per run).

    The task is built from :func:`run_task_options`. A freshly built task continues from
    the state an earlier message of the run left in ``context.state``
    (:func:`load_task_state`).
    """
    cfg = FlowerRunConfig.from_run_config(context.run_config)
    node_config = dict(context.node_config)
    options = run_task_options(context)
    key = (
        int(context.run_id),
        cfg.task_factory,
        json.dumps([node_config, options], sort_keys=True, default=str),
    )
    if key not in _TASKS:
        factory = load_task_factory(cfg.task_factory)
        task = factory(node_config, options)
        if not isinstance(task, SiteTask):
            raise TypeError(
                f"task-factory {cfg.task_factory!r} returned {type(task).__name__}, which "
                "lacks SiteTask's site_id/get_parameters/fit/evaluate"
            )
        restored = load_task_state(task, context)
        _TASKS.clear()  # one run at a time per process: drop the previous run's data
        _TASKS[key] = task
        log.info(
            "site %s: task built for run %s%s",
            task.site_id,
            context.run_id,
            " (state restored)" if restored else "",
        )
    return _TASKS[key]


def client_fn(context: Context) -> Client:
    """Flower's entry point: the site's client for this run."""
    return SiteClient(build_site_task(context), context).to_client()


def optional_secaggplus_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """``secaggplus_mod`` for messages of the SecAgg+ workflow; plain messages pass through.

    One ClientApp thus serves plain FedAvg/DP runs and SecAgg+ runs.
    """
    if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def optional_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Client-side clipping for client-level DP under SecAgg+ (the server's round config holds
    ``clipping_norm``): Flower's ``fixedclipping_mod`` clips the update, and the reported
    example count becomes 1 (equal weights). Other messages pass through."""
    if not (msg.has_content() and msg.metadata.message_type == MessageType.TRAIN):
        return call_next(msg, ctxt)
    config = compat.recorddict_to_fitins(msg.content, keep_input=True).config
    if KEY_CLIPPING_NORM not in config:
        return call_next(msg, ctxt)
    out = fixedclipping_mod(msg, ctxt, call_next)
    if out.has_error():
        return out
    fit_res = compat.recorddict_to_fitres(out.content, keep_input=True)
    fit_res.num_examples = 1
    out.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    return out


@dataclass
class SiteQuery:
    """One query from the server, as the run's ``query-handler`` receives it.

    Attributes:
        name: what the server asks for (the handler's own vocabulary).
        arrays: the query's arrays.
        config: the query's scalars.
        node_config: the SuperNode's node config (site name, local paths).
        task_options: the run's ``task-options``.
        state: arrays kept at this site between the run's queries (the handler may change
            them; they never leave the site).
    """

    name: str
    arrays: dict[str, np.ndarray]
    config: dict[str, Any]
    node_config: dict[str, Any]
    task_options: dict[str, Any]
    state: dict[str, np.ndarray] = field(default_factory=dict)
    context: Context | None = field(default=None, repr=False)

    def build_task(self) -> SiteTask:
        """The site's task for this run (:func:`build_site_task`)."""
        if self.context is None:
            raise FederatedError("this query has no node context to build the task from")
        return build_site_task(self.context)


def query_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Answer the server's ``query`` messages with the run's ``query-handler``.

    The reply carries the handler's arrays (``arrays``) and, in ``query``, the query's name
    and the site (``node_config["site"]``, else the node id). Other messages pass through.

    Raises:
        FederatedError: the run has no ``query-handler``, or it returned non-numeric arrays
            (Flower sends the error back to the server as the reply).
    """
    if not msg.has_content() or msg.metadata.message_type.split(".")[0] != MessageType.QUERY:
        return call_next(msg, ctxt)
    content = msg.content
    config = dict(content.config_records["query"]) if "query" in content.config_records else {}
    site = str(ctxt.node_config.get("site", ctxt.node_id))
    if config.get("name") == OPTIONS_QUERY:
        return _keep_options(msg, ctxt, str(config.get("task_options") or "{}"), site)
    cfg = FlowerRunConfig.from_run_config(ctxt.run_config)
    if not cfg.query_handler:
        raise FederatedError(
            "the server sent a query but the run config has no query-handler; set "
            "query-handler='package.module:function'"
        )
    handler = load_callable(cfg.query_handler, "query-handler")
    arrays = content.array_records.get("arrays")
    state = ctxt.state.array_records.get(QUERY_STATE_KEY)
    query = SiteQuery(
        name=str(config.pop("name", "")),
        arrays={} if arrays is None else _record_arrays(arrays),
        config=config,
        node_config=dict(ctxt.node_config),
        task_options=run_task_options(ctxt),
        state={} if state is None else _record_arrays(state),
        context=ctxt,
    )
    answer = handler(query)
    ctxt.state.array_records[QUERY_STATE_KEY] = _to_record(query.state, "query state")
    return _reply(msg, query.name, site, _to_record(answer, f"query {query.name!r} reply"))


def _reply(msg: Message, name: str, site: str, arrays: ArrayRecord) -> Message:
    content = RecordDict({"arrays": arrays, "query": ConfigRecord({"name": name, "site": site})})
    return Message(content, reply_to=msg)


def _keep_options(msg: Message, ctxt: Context, text: str, site: str) -> Message:
    """Keep the ``start`` function's task options at this site (:data:`OPTIONS_QUERY`).

    Raises:
        FederatedError: the options are not a JSON object.
    """
    try:
        update = json.loads(text)
    except json.JSONDecodeError as e:
        raise FederatedError(f"{OPTIONS_QUERY}: the task options are not JSON: {e}") from e
    if not isinstance(update, dict):
        raise FederatedError(f"{OPTIONS_QUERY}: the task options must be a JSON object")
    ctxt.state.config_records[OPTIONS_STATE_KEY] = ConfigRecord({"json": text})
    _TASKS.clear()  # a task built before the update has the old options
    return _reply(msg, OPTIONS_QUERY, site, ArrayRecord({}))


# outermost first: queries are answered before the training mods see them; SecAgg+ masks
# what the clipping mod returns
app = ClientApp(
    client_fn=client_fn, mods=[query_mod, optional_secaggplus_mod, optional_clipping_mod]
)
"""The ClientApp named in the Flower app's ``pyproject.toml`` (``clientapp``)."""
