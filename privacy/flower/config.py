"""Run settings of the Flower app and the wire format of a :class:`FitConfig`.

A Flower run is configured by a flat table of TOML scalars (``[tool.flwr.app.config]`` in
the app's ``pyproject.toml``, overridden with ``flwr run --run-config``). This module is the
one place that maps it to and from Python:

* :class:`FlowerRunConfig` — every setting of a run with its default, and
  :meth:`FlowerRunConfig.to_run_config` / :meth:`FlowerRunConfig.from_run_config` for the
  kebab-case keys Flower carries;
* :func:`fit_config_to_flower` / :func:`fit_config_from_flower` — a
  :class:`~privacy.federated.task.FitConfig` as the ``config`` dict a Flower ``FitIns``
  carries (``proximal_mu`` is the key Flower's ``FedProx`` adds itself);
* :func:`load_task_factory` — the ``package.module:function`` that builds a site's
  :class:`~privacy.federated.task.SiteTask` from its SuperNode's node config;
  :func:`load_callable` — the same for the optional ``query-handler`` (a site's answers to
  the server's queries), ``start`` (the server's work before round 1) and ``finish`` (the
  server's work after the rounds).

Nothing here imports Flower, so the launcher and the docs tooling stay light.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from privacy.errors import FederatedError
from privacy.federated.task import FitConfig, SiteTask

__all__ = [
    "OPTIONS_QUERY",
    "STRATEGY_NAMES",
    "FlowerRunConfig",
    "TaskFactory",
    "fit_config_from_flower",
    "fit_config_to_flower",
    "load_callable",
    "load_task_factory",
    "merge_options",
    "toml_value",
]

STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "fedyogi")
"""Server strategies the ServerApp builds (Flower's own implementations)."""

TaskFactory = Callable[[dict[str, Any], dict[str, Any]], SiteTask]
"""``factory(node_config, options) -> SiteTask``: builds one site's task.

``node_config`` is the SuperNode's ``--node-config`` (e.g. ``site="A"`` or
``partition-id=0 num-partitions=3``); ``options`` is the JSON object of the run's
``task-options`` (settings shared by every site: model size, data paths on the hosts...).
"""

_EXTRA = "extra."


@dataclass(frozen=True)
class FlowerRunConfig:
    """Every setting of one Flower run (defaults match the app's ``pyproject.toml``).

    Attributes:
        task_factory: ``package.module:function`` building each site's SiteTask
            (:data:`TaskFactory`); required.
        task_options: settings passed to the factory at every site (JSON-serialisable).
        strategy: ``fedavg``, ``fedprox``, ``fedadam`` or ``fedyogi``.
        num_rounds: federated rounds.
        local_epochs: local passes per round (ignored when ``local_steps`` > 0).
        local_steps: exact local optimizer steps per round; 0 means use ``local_epochs``.
        lr: the sites' learning rate (FedAdam/FedYogi: Flower's ``eta_l``).
        batch_size: local batch size; 0 means full batch.
        proximal_mu: FedProx coefficient (sent to the sites; they add the proximal term).
        seed: base seed sent to the sites (local shuffling, DP-SGD noise).
        fraction_fit: share of connected sites sampled per round.
        fraction_evaluate: share of sites that evaluate each new global model (0: none).
        min_fit_clients: fewest sites whose results a round needs; fewer is an error that
            keeps the last global model.
        min_available_clients: SuperNodes that must be connected before round 1.
        server_lr: FedAdam/FedYogi server learning rate (Flower's ``eta``).
        beta_1: FedAdam/FedYogi first-moment decay.
        beta_2: FedAdam/FedYogi second-moment decay.
        tau: FedAdam/FedYogi adaptivity.
        dp: client-level differential privacy: each site's update is clipped to
            ``dp_clipping_norm`` and Gaussian noise is added to the unweighted mean. The
            server clips (Flower's ``DifferentialPrivacyServerSideFixedClipping``), or, with
            ``secagg`` (the server never sees one site's update), each site clips its own
            before masking (``DifferentialPrivacyClientSideFixedClipping`` and
            ``fixedclipping_mod``; the server then trusts the sites' ClientApp to clip).
        dp_noise_multiplier: noise standard deviation in units of the clipping norm.
        dp_clipping_norm: L2 bound of one site's update.
        dp_delta: the δ at which ε is reported.
        secagg: secure aggregation with Flower's SecAgg+ workflow.
        secagg_num_shares: SecAgg+ shares per secret (int > 2, or a fraction of the sites).
        secagg_reconstruction_threshold: shares needed to reconstruct a secret (int or
            fraction); the round survives dropouts while this many sites remain.
        secagg_clipping_range: SecAgg+ clips each weighted parameter to ± this before
            quantizing (keep parameters inside it).
        secagg_quantization_range: SecAgg+ quantization levels.
        secagg_max_weight: largest ``num_examples`` a site may report under SecAgg+.
        round_timeout: seconds the server waits for the sites' answers in one round
            (one SecAgg+ stage); sites that do not answer in time count as dropped out.
        connect_timeout: seconds the server waits for ``min_available_clients`` SuperNodes.
        output_dir: folder on the SuperLink host where the ServerApp writes the final
            global model (``parameters.safetensors``) and ``federation.json``; required.
        initial_parameters: optional ``.safetensors`` file with the starting global model
            (default: the parameters of one site's freshly built task).
        query_handler: optional ``package.module:function`` that answers the server's
            queries at each site (:class:`privacy.flower.client_app.SiteQuery`); empty: the
            sites refuse queries.
        start: optional ``package.module:function`` the ServerApp calls before round 1 with
            :class:`privacy.flower.server_app.SiteQueries` and ``task_options``; it returns
            a JSON object, saved as ``start.json`` in ``output_dir``. Its ``task_options``
            entry (a JSON object), if any, is merged into the run's ``task_options`` for the
            rest of the run: every site keeps it and builds its task with it (e.g. feature
            scaling computed from the sites' sums).
        finish: optional ``package.module:function`` the ServerApp calls after the last
            round with :class:`privacy.flower.server_app.SiteQueries`, the final global model
            and ``task_options``; it returns a JSON object, saved as ``finish.json`` in
            ``output_dir`` (e.g. a model's second stage fitted from the sites' sums).
    """

    task_factory: str = ""
    task_options: Mapping[str, Any] | None = None
    strategy: str = "fedavg"
    num_rounds: int = 3
    local_epochs: int = 1
    local_steps: int = 0
    lr: float = 0.01
    batch_size: int = 32
    proximal_mu: float = 0.0
    seed: int = 0
    fraction_fit: float = 1.0
    fraction_evaluate: float = 1.0
    min_fit_clients: int = 2
    min_available_clients: int = 2
    server_lr: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-9
    dp: bool = False
    dp_noise_multiplier: float = 1.0
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    secagg: bool = False
    secagg_num_shares: int | float = 3
    secagg_reconstruction_threshold: int | float = 2
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 4194304
    secagg_max_weight: float = 1000.0
    round_timeout: float = 600.0
    connect_timeout: float = 120.0
    output_dir: str = ""
    initial_parameters: str = ""
    query_handler: str = ""
    start: str = ""
    finish: str = ""

    def __post_init__(self) -> None:
        """Check ranges so a bad setting fails before any process starts."""
        if self.strategy not in STRATEGY_NAMES:
            raise FederatedError(
                f"strategy={self.strategy!r} is not supported by the Flower app; "
                f"choose one of {list(STRATEGY_NAMES)}"
            )
        if self.num_rounds < 1:
            raise FederatedError(f"num_rounds must be >= 1, got {self.num_rounds}")
        if self.min_fit_clients < 1 or self.min_available_clients < self.min_fit_clients:
            raise FederatedError(
                f"need 1 <= min_fit_clients <= min_available_clients, got "
                f"{self.min_fit_clients} and {self.min_available_clients}"
            )
        if not 0 < self.fraction_fit <= 1 or not 0 <= self.fraction_evaluate <= 1:
            raise FederatedError(
                f"fraction_fit must be in (0, 1] and fraction_evaluate in [0, 1], got "
                f"{self.fraction_fit} and {self.fraction_evaluate}"
            )
        if self.dp and (self.dp_noise_multiplier <= 0 or self.dp_clipping_norm <= 0):
            raise FederatedError(
                "client-level DP needs dp_noise_multiplier > 0 and dp_clipping_norm > 0, got "
                f"{self.dp_noise_multiplier} and {self.dp_clipping_norm}"
            )
        if self.dp and not 0 < self.dp_delta < 1:
            raise FederatedError(f"dp_delta must be in (0, 1), got {self.dp_delta}")
        if self.secagg and self.min_available_clients < 2:
            raise FederatedError("SecAgg+ needs at least 2 sites (min_available_clients >= 2)")
        if self.round_timeout <= 0 or self.connect_timeout <= 0:
            raise FederatedError("round_timeout and connect_timeout must be > 0 seconds")

    def to_run_config(self) -> dict[str, str | int | float | bool]:
        """The flat kebab-case table ``flwr run --run-config`` takes."""
        out: dict[str, str | int | float | bool] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "task_options":
                value = json.dumps(dict(value or {}), sort_keys=True)
            out[f.name.replace("_", "-")] = value
        return out

    def to_toml(self) -> str:
        """The run config as a TOML file for ``flwr run --run-config FILE``."""
        return "".join(f"{k} = {toml_value(v)}\n" for k, v in self.to_run_config().items())

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FlowerRunConfig:
        """Parse the run config a ServerApp/ClientApp receives (unknown keys are ignored)."""
        kwargs: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name in types:
            key = name.replace("_", "-")
            if key not in run_config:
                continue
            value = run_config[key]
            if name == "task_options":
                kwargs[name] = _parse_options(value)
            else:
                kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the settings (stored in ``federation.json``)."""
        d = asdict(self)
        d["task_options"] = dict(self.task_options or {})
        return d


def toml_value(value: Any) -> str:
    """A scalar as a TOML value (strings as basic strings, JSON escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


OPTIONS_QUERY = "privacy.flower.task_options"
"""The query by which the ServerApp gives every site the ``task_options`` its ``start``
returned (config ``task_options``: a JSON object); the ClientApp answers it itself."""


def merge_options(
    base: Mapping[str, Any] | None, update: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The run's ``task_options`` with a ``start`` function's update on top (key by key)."""
    return {**dict(base or {}), **dict(update or {})}


def _parse_options(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    text = str(value or "").strip() or "{}"
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        raise FederatedError(
            f"run config task-options must be a JSON object, got {text[:80]!r}: {e}"
        ) from e
    if not isinstance(parsed, dict):
        raise FederatedError(f"run config task-options must be a JSON object, got {text[:80]!r}")
    return parsed


def fit_config_to_flower(config: FitConfig) -> dict[str, bool | int | float | str]:
    """A FitConfig as Flower's ``FitIns.config`` (scalars only; None is encoded as -1)."""
    out: dict[str, bool | int | float | str] = {
        "server_round": int(config.server_round),
        "local_epochs": int(config.local_epochs),
        "local_steps": -1 if config.local_steps is None else int(config.local_steps),
        "lr": float(config.lr),
        "batch_size": -1 if config.batch_size is None else int(config.batch_size),
        "proximal_mu": float(config.proximal_mu),
        "seed": int(config.seed),
    }
    for k, v in config.extra.items():
        out[_EXTRA + k] = v
    return out


def fit_config_from_flower(config: Mapping[str, Any]) -> FitConfig:
    """The FitConfig a site receives (inverse of :func:`fit_config_to_flower`)."""
    if "server_round" not in config:
        raise FederatedError(
            f"the server's fit config has no 'server_round' (keys: {sorted(config)}); "
            "the ServerApp and ClientApp must come from the same privacy.flower version"
        )
    steps = int(config.get("local_steps", -1))
    batch = int(config.get("batch_size", -1))
    mu = float(config.get("proximal_mu", 0.0))
    if not math.isfinite(mu) or mu < 0:
        raise FederatedError(f"proximal_mu must be a finite number >= 0, got {mu}")
    return FitConfig(
        server_round=int(config["server_round"]),
        local_epochs=int(config.get("local_epochs", 1)),
        local_steps=None if steps < 1 else steps,
        lr=float(config.get("lr", 1e-3)),
        batch_size=None if batch < 1 else batch,
        proximal_mu=mu,
        seed=int(config.get("seed", 0)),
        extra={k[len(_EXTRA) :]: v for k, v in config.items() if k.startswith(_EXTRA)},
    )


def load_task_factory(ref: str) -> TaskFactory:
    """Import the ``package.module:function`` named in the run config's ``task-factory``.

    Raises:
        FederatedError: empty, malformed, not importable or not callable.
    """
    return load_callable(ref, "task-factory")  # type: ignore[return-value]


def load_callable(ref: str, key: str) -> Callable[..., Any]:
    """Import the ``package.module:function`` named in the run config's ``key``.

    Raises:
        FederatedError: empty, malformed, not importable or not callable.
    """
    module_name, sep, attr = ref.partition(":")
    if not ref or not sep or not module_name or not attr:
        raise FederatedError(
            f"{key} must look like 'package.module:function', got {ref!r}; set it "
            f"with flwr run --run-config \"{key}='my_pkg.module:function'\""
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FederatedError(
            f"{key} {ref!r}: cannot import {module_name!r} ({e}); install the package "
            "that provides it in the environment of every SuperNode and the SuperLink"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise FederatedError(f"{key} {ref!r}: {module_name!r} has no {attr!r}")
    if not callable(obj):
        raise FederatedError(f"{key} {ref!r} is not callable")
    return obj  # type: ignore[no-any-return]
