"""The real Flower federation: SuperLink + SuperNodes on loopback, checked against references.

Process-based tests share one 2-site federation (module fixture) and submit runs to it;
tests that kill a site or run SecAgg+ (4 message exchanges per round) are marked slow.
Every Flower ClientApp message runs in a fresh process (Flower 1.42's design), so each
message costs a process start (several seconds on a loaded machine) even for this tiny
NumPy model; round timeouts below leave room for that.
"""

from __future__ import annotations

import math
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privacy.errors import FederatedError
from privacy.federated.simulation import simulate
from privacy.federated.strategies import FedAdam, FedAvg, FedYogi
from privacy.federated.task import FitConfig
from privacy.flower import APP_DIR
from privacy.flower.client_app import (
    _TASKS,
    TASK_STATE_KEY,
    SiteClient,
    build_site_task,
    load_task_state,
    save_task_state,
)
from privacy.flower.config import (
    FlowerRunConfig,
    fit_config_from_flower,
    fit_config_to_flower,
)
from privacy.flower.demo import make_task
from privacy.flower.local import LocalFederation, _descendants, loopback_tls
from privacy.flower.results import load_parameters, read_result, save_parameters

N_SITES = 2  # default-suite runs; the slow SecAgg+/dropout tests use 3
LR = 0.2
OPTIONS = {"n_features": 4, "n_base": 30, "data_seed": 3, "init_seed": 1}
MOMENTUM = {**OPTIONS, "momentum": 0.9}  # a momentum buffer that must survive between rounds


def _tasks(options: dict | None = None, n: int = N_SITES) -> list:
    return [make_task({"partition-id": i}, options or OPTIONS) for i in range(n)]


def _cfg(tmp: Path, n: int = N_SITES, **kw) -> FlowerRunConfig:
    init = tmp / "init.safetensors"
    if not init.exists():
        save_parameters(init, _tasks()[0].get_parameters())
    base: dict[str, Any] = dict(
        task_factory="privacy.flower.demo:make_task",
        task_options=OPTIONS,
        num_rounds=2,
        lr=LR,
        batch_size=0,  # full batch: local training is deterministic
        fraction_evaluate=0.0,  # one message per site per round keeps the test short
        min_fit_clients=n,
        min_available_clients=n,
        round_timeout=120.0,
        connect_timeout=60.0,
        initial_parameters=str(init),
    )
    base.update(kw)
    return FlowerRunConfig(**base)


def _simulated(
    rounds: int,
    options: dict | None = None,
    n: int = N_SITES,
    init: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """The in-process simulator's global model (its tasks keep their state in memory)."""
    tasks = _tasks(options, n)
    init = _tasks()[0].get_parameters() if init is None else init
    strategy = FedAvg(lr=LR, local_epochs=1, batch_size=None, seed=0)
    return simulate(tasks, strategy, rounds, initial_parameters=init, evaluate=False).parameters


def _context(node_config: dict, options: dict, run_id: int = 7):
    from flwr.app import Context, RecordDict

    run_config = _cfg_noinit(task_options=options).to_run_config()
    return Context(run_id, 1, node_config, RecordDict(), run_config)  # type: ignore[arg-type]


def _cfg_noinit(**kw) -> FlowerRunConfig:
    return FlowerRunConfig(task_factory="privacy.flower.demo:make_task", **kw)


def _pids_alive(pids: list[int], wait: float = 10.0) -> list[int]:
    """The pids still running after up to ``wait`` seconds (zombies count as gone)."""
    deadline = time.monotonic() + wait
    while True:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _nodes(n: int) -> list[dict]:
    return [{"partition-id": i} for i in range(n)]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    """One SuperLink + 2 SuperNodes for the module; every process is gone afterwards.

    The processes' logs stay in pytest's temporary folder (``flower/logs``).
    """
    fed = LocalFederation(_nodes(N_SITES), work_dir=tmp_path_factory.mktemp("flower"))
    fed.start()
    leaders = [p.pid for p in fed.procs.values()]
    yield fed
    pids = leaders + _descendants(leaders)  # SuperExec, ServerApp/ClientApp processes
    fed.stop()
    assert _pids_alive(pids) == [], "Flower processes left running after stop()"


# -- no processes ---------------------------------------------------------------------------
def test_app_pyproject_defaults_match_run_config() -> None:
    """The app's [tool.flwr.app.config] defaults are FlowerRunConfig's (same keys, values)."""
    toml = tomllib.loads((APP_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    assert toml["tool"]["flwr"]["app"]["config"] == FlowerRunConfig().to_run_config()
    components = toml["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "privacy.flower.server_app:app",
        "clientapp": "privacy.flower.client_app:app",
    }


def test_fit_config_round_trip_and_run_config_round_trip() -> None:
    cfg = FitConfig(
        3,
        local_epochs=2,
        local_steps=None,
        lr=0.5,
        batch_size=None,
        proximal_mu=0.1,
        seed=7,
        extra={"dp_noise": 1.5, "tag": "x"},
    )
    assert fit_config_from_flower(fit_config_to_flower(cfg)) == cfg
    run = FlowerRunConfig(task_factory="a.b:c", task_options={"k": [1, 2]}, dp=True)
    assert FlowerRunConfig.from_run_config(run.to_run_config()) == FlowerRunConfig(
        task_factory="a.b:c", task_options={"k": [1, 2]}, dp=True
    )


def test_bad_settings_are_refused_before_any_process_starts() -> None:
    with pytest.raises(FederatedError, match="strategy='fedsgd'"):
        FlowerRunConfig(strategy="fedsgd")
    with pytest.raises(FederatedError, match="min_fit_clients"):
        FlowerRunConfig(min_fit_clients=3, min_available_clients=2)


def test_client_side_clipping_mod_clips_and_reports_one_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Client-level DP under SecAgg+: the site's update is clipped to the server's
    ``clipping_norm`` (Flower's fixedclipping_mod) and its weight becomes 1; messages without
    ``clipping_norm`` pass through untouched."""
    from flwr.app import Context, Message, RecordDict
    from flwr.app.message_type import MessageType
    from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
    from flwr.common import parameters_to_ndarrays as to_arrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.supercore.task_identity import TaskIdentity

    from privacy.flower.client_app import optional_clipping_mod

    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)
    rng = np.random.default_rng(0)
    global_model = [
        rng.normal(size=3).astype(np.float32),
        rng.normal(size=(2, 2)).astype(np.float32),
    ]
    local = [g + 1.0 for g in global_model]  # update norm sqrt(7) > clip

    def site(msg: Message, ctxt: Context) -> Message:
        res = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(local), 40, {"auc": 0.7})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    def run(config: dict) -> FitRes:
        ins = FitIns(ndarrays_to_parameters(global_model), config)
        msg = Message(
            compat.fitins_to_recorddict(ins, keep_input=True),
            dst_node_id=1,
            message_type=MessageType.TRAIN,
        )
        out = optional_clipping_mod(msg, Context(7, 1, {}, RecordDict(), {}), site)
        return compat.recorddict_to_fitres(out.content, keep_input=True)

    clipped = run({"clipping_norm": 0.5, "lr": 0.1})
    update = [p - g for p, g in zip(to_arrays(clipped.parameters), global_model, strict=True)]
    norm = math.sqrt(sum(float((u**2).sum()) for u in update))
    assert norm == pytest.approx(0.5, rel=1e-5)
    direction = np.concatenate([u.ravel() for u in update]) / norm
    np.testing.assert_allclose(direction, np.full(7, 1 / math.sqrt(7)), rtol=1e-5)
    assert clipped.num_examples == 1 and clipped.metrics == {"auc": 0.7}
    plain = run({"lr": 0.1})
    assert plain.num_examples == 40
    for got, want in zip(to_arrays(plain.parameters), local, strict=True):
        np.testing.assert_array_equal(got, want)


def test_parameters_file_round_trip_without_pickle(tmp_path: Path) -> None:
    params: list[np.ndarray] = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([1.5], dtype=np.float64),
        np.array(0.25, dtype=np.float32),  # a 0-d buffer: safetensors alone returns (1,)
    ]
    save_parameters(tmp_path / "p.safetensors", params)
    back = load_parameters(tmp_path / "p.safetensors")
    assert [b.dtype for b in back] == [np.float32, np.float64, np.float32]
    assert [b.shape for b in back] == [(2, 3), (1,), ()]
    for a, b in zip(params, back, strict=True):
        np.testing.assert_array_equal(a, b)


def test_task_state_survives_a_fresh_clientapp_process() -> None:
    """The momentum buffer and counters go through Context.state between message processes.

    Each round's ClientApp is rebuilt from scratch (the process cache cleared, as in a fresh
    process); the result must equal one task object kept in memory, and differ from tasks
    that forget their state.
    """
    node = {"partition-id": 1}
    ctx = _context(node, MOMENTUM)
    fresh_ctx = _context(node, MOMENTUM)
    kept = make_task(node, MOMENTUM)
    params = kept.get_parameters()
    flower_params, forgetful = params, params
    config = fit_config_to_flower(FitConfig(1, lr=LR, batch_size=None))
    for rnd in (1, 2, 3):
        config["server_round"] = rnd
        want = kept.fit(params, fit_config_from_flower(config)).parameters
        _TASKS.clear()  # a new process: nothing in memory
        client = SiteClient(build_site_task(ctx), ctx)
        got, n, metrics = client.fit(flower_params, config)
        assert metrics["rounds_fitted"] == rnd and n == 40
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
        _TASKS.clear()
        forgetful = SiteClient(build_site_task(fresh_ctx)).fit(flower_params, config)[0]
        params = flower_params = want
    record = ctx.state.array_records[TASK_STATE_KEY]
    assert int(record["local_steps"].numpy()[0]) == 3
    assert kept.buffers is not None
    np.testing.assert_array_equal(record["momentum.0"].numpy(), kept.buffers[0])
    assert TASK_STATE_KEY not in fresh_ctx.state.array_records
    # without the kept state the third round starts a new buffer: a visibly different model
    assert max(np.abs(f - w).max() for f, w in zip(forgetful, want, strict=True)) > 1e-3


def test_dp_sgd_accountant_survives_fresh_clientapp_processes() -> None:
    """TorchSiteTask with DP-SGD: a task rebuilt per round continues the accountant.

    After two rounds, each in a task built afresh (as Flower's per-message process does) and
    given the state the ClientApp kept in Context.state, the spent ε and step count equal
    those of one task kept in memory; a rebuilt task without it would report one round.
    """
    import torch
    from torch.utils.data import TensorDataset

    from privacy.dp import DPConfig
    from privacy.federated.torch_task import TorchSiteTask

    def bce(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)

    def build() -> TorchSiteTask:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(16, 3, generator=gen), torch.tensor([0.0, 1.0] * 8))
        dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0)
        return TorchSiteTask(
            "s",
            torch.nn.Linear(3, 1),
            data,
            bce,
            dp=dp,
            optimizer="adam",
            keep_optimizer_state=True,
        )

    kept, ctx = build(), _context({}, OPTIONS)
    params = kept.get_parameters()
    config = fit_config_to_flower(FitConfig(1, lr=0.05, batch_size=4))
    for rnd in (1, 2):
        config["server_round"] = rnd
        kept.fit(params, fit_config_from_flower(config))
        task = build()
        assert load_task_state(task, ctx) is (rnd > 1)
        SiteClient(task, ctx).fit(params, config)
    want, got = kept.privacy_spent(), task.privacy_spent()
    assert want is not None and got is not None
    assert got["steps"] == want["steps"] == 2 * 4  # q = 4/16: 4 steps per epoch
    assert got["epsilon"] == pytest.approx(want["epsilon"], rel=1e-12)
    record = ctx.state.array_records[TASK_STATE_KEY]
    assert any(k.startswith("optimizer.") for k in record)  # Adam's moments are kept too
    lost = build().privacy_spent()
    assert lost is None or lost["steps"] == 0


def test_task_state_must_be_numeric_arrays() -> None:
    class BadTask:
        site_id = "s"

        def state_dict(self) -> dict:
            return {"history": np.asarray(["not", "numbers"])}

    with pytest.raises(FederatedError, match=r"state_dict\(\)\['history'\] has dtype"):
        save_task_state(BadTask(), _context({}, OPTIONS))  # type: ignore[arg-type]

    class Stateless:
        site_id = "s"

    ctx = _context({}, OPTIONS)
    assert save_task_state(Stateless(), ctx) is False  # type: ignore[arg-type]
    assert TASK_STATE_KEY not in ctx.state.array_records


# -- real processes -------------------------------------------------------------------------
def test_fedavg_over_flower_equals_in_process_simulator(federation, tmp_path: Path) -> None:
    """2 rounds, 2 SuperNodes: the global model equals privacy.federated.simulate's (1e-6).

    The sites train with SGD momentum whose buffer carries over between rounds, so the
    match also shows that site state survives Flower's per-message ClientApp processes.
    """
    cfg = _cfg(tmp_path, task_options=MOMENTUM)
    result = federation.run(cfg, tmp_path / "run", timeout=240)
    assert result.status == "completed"
    assert result.record["completed_rounds"] == 2
    expected = _simulated(2, MOMENTUM)
    assert result.parameters is not None
    for got, want in zip(result.parameters, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the model moved: the comparison is not between two copies of the initial weights
    init = _tasks()[0].get_parameters()
    assert max(np.abs(g - i).max() for g, i in zip(result.parameters, init, strict=True)) > 1e-3
    # sites that forgot their momentum between rounds would have ended elsewhere
    forgetful = _simulated(1, MOMENTUM, init=_simulated(1, MOMENTUM))
    assert max(np.abs(f - w).max() for f, w in zip(forgetful, expected, strict=True)) > 1e-3
    r1, r2 = result.record["rounds"]
    assert sorted(r1["fit"]) == ["site-0", "site-1"]
    assert [r1["fit"][f"site-{i}"]["num_examples"] for i in range(2)] == [30, 40]
    assert [r2["fit"][f"site-{i}"]["rounds_fitted"] for i in range(2)] == [2, 2]


def test_tls_and_supernode_auth_as_between_real_hosts(tmp_path: Path) -> None:
    """TLS + SuperNode authentication, the settings docs/federated_deployment.md gives hosts.

    The SuperNodes and `flwr` verify the SuperLink's certificate; only SuperNodes whose
    public keys were registered may join. One round equals the simulator; an unregistered
    SuperNode is refused and exits; on the SuperLink's port (Fleet, Control and Runtime APIs
    share it) a client trusting the CA completes the handshake for 127.0.0.1/localhost, one
    trusting another CA is refused, and plain HTTP gets no answer.
    """
    import socket
    import ssl

    tls = loopback_tls(tmp_path / "certs")
    other = loopback_tls(tmp_path / "other")
    nodes = _nodes(N_SITES)
    with pytest.raises(FederatedError, match="needs TLS"):
        LocalFederation(nodes, supernode_auth=True)
    with LocalFederation(nodes, work_dir=tmp_path / "fed", tls=tls, supernode_auth=True) as fed:
        rogue = fed.add_supernode({"partition-id": 0}, register=False)
        result = fed.run(_cfg(tmp_path, num_rounds=1), tmp_path / "run", timeout=240)
        port = fed.superlink_port
        assert fed.procs[rogue].wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in fed.logs[rogue].read_text(errors="replace")

        def handshake(ca: Path, host: str) -> dict:
            ctx = ssl.create_default_context(cafile=str(ca))
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname=host) as conn,
            ):
                return conn.getpeercert()

        assert handshake(tls.ca_cert, "localhost")["subject"] == ((("commonName", "localhost"),),)
        assert handshake(tls.ca_cert, "127.0.0.1")
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(other.ca_cert, "localhost")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            try:
                answer = raw.recv(64)
            except (ConnectionResetError, TimeoutError):
                answer = b""
        assert not answer.startswith(b"HTTP/1.1 2")
    assert result.status == "completed" and result.parameters is not None
    for got, want in zip(result.parameters, _simulated(1), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_finish_queries_every_site_after_the_rounds(federation, tmp_path: Path) -> None:
    """The run's finish function asks the sites twice over Flower messages; each site's
    query-handler answers in a fresh ClientApp process and keeps a counter in its query
    state. finish.json holds the final model's pooled log loss, computed here directly."""
    cfg = _cfg(
        tmp_path,
        num_rounds=1,
        query_handler="privacy.flower.demo:answer_query",
        finish="privacy.flower.demo:finish",
    )
    result = federation.run(cfg, tmp_path / "run", timeout=240)
    assert result.status == "completed", result.error
    assert result.finish is not None and result.parameters is not None
    tasks = _tasks()
    n = sum(len(t.y_eval) for t in tasks)
    loss = sum(t.evaluate(result.parameters, FitConfig(0)).loss * len(t.y_eval) for t in tasks)
    assert result.finish["n_eval"] == n
    assert result.finish["events"] == sum(float(t.y_eval.sum()) for t in tasks)
    assert result.finish["mean_log_loss"] == pytest.approx(loss / n, rel=1e-12)
    assert sorted(result.finish["answered"].values()) == [2, 2]  # state kept between messages
    assert result.record["finish"]["queries"] == 2 and result.record["finish"]["sites"] == 2
    assert (tmp_path / "run" / "finish.json").is_file()


def test_start_gives_every_site_task_options_before_round_one(federation, tmp_path: Path) -> None:
    """The run's start function asks the sites for their features' sums and returns a
    scaling; every site builds its task with it (kept in its node state across the
    per-message processes). The model equals the simulator's on tasks built with the
    scaling computed here from the raw data; start.json and federation.json record it."""
    cfg = _cfg(
        tmp_path,
        num_rounds=2,
        query_handler="privacy.flower.demo:answer_query",
        start="privacy.flower.demo:start",
        finish="privacy.flower.demo:finish",
    )
    result = federation.run(cfg, tmp_path / "run", timeout=240)
    assert result.status == "completed", result.error
    assert result.start is not None and result.parameters is not None
    x = np.concatenate([t.x for t in _tasks()])
    center, scale = x.mean(axis=0), x.std(axis=0)
    np.testing.assert_allclose(result.start["task_options"]["center"], center, rtol=1e-12)
    np.testing.assert_allclose(result.start["task_options"]["scale"], scale, rtol=1e-12)
    assert result.start["n_train"] == len(x)
    assert result.record["start"]["task_options"] == ["center", "scale"]
    assert result.record["start"]["queries"] == 2  # demo.moments, then the options
    scaled = {**OPTIONS, "center": center.tolist(), "scale": scale.tolist()}
    for got, want in zip(result.parameters, _simulated(2, scaled), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # finish saw the scaled evaluation data too: its pooled loss is the scaled tasks'
    tasks = _tasks(scaled)
    n = sum(len(t.y_eval) for t in tasks)
    loss = sum(t.evaluate(result.parameters, FitConfig(0)).loss * len(t.y_eval) for t in tasks)
    assert result.finish is not None
    assert result.finish["mean_log_loss"] == pytest.approx(loss / n, rel=1e-9)


def test_demo_scaling_options_are_checked() -> None:
    with pytest.raises(FederatedError, match="center and scale must be 4 numbers"):
        make_task({"partition-id": 0}, {**OPTIONS, "center": [0.0, 1.0]})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_server_optimizers_over_flower_equal_the_simulator(
    federation, tmp_path: Path, name: str
) -> None:
    """FedAdam/FedYogi run by Flower's strategies = the simulator's implementations (2 rounds)."""
    server = {"server_lr": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    cfg = _cfg(tmp_path, strategy=name, **server)
    result = federation.run(cfg, tmp_path / "run", timeout=240)
    assert result.status == "completed" and result.parameters is not None
    cls = FedAdam if name == "fedadam" else FedYogi
    strategy = cls(
        eta=0.05, eta_l=LR, beta_1=0.9, beta_2=0.99, tau=1e-3, lr=LR, batch_size=None, seed=0
    )
    init = _tasks()[0].get_parameters()
    expected = simulate(_tasks(), strategy, 2, initial_parameters=init, evaluate=False).parameters
    for got, want in zip(result.parameters, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    fedavg = _simulated(2)
    assert max(np.abs(f - w).max() for f, w in zip(fedavg, expected, strict=True)) > 1e-3


@pytest.mark.slow
def test_client_level_dp_records_epsilon(federation, tmp_path: Path) -> None:
    """DP wrapper: ε after 2 releases equals the closed-form RDP of the Gaussian mechanism."""
    sigma, clip, delta = 1.2, 0.05, 1e-5
    cfg = _cfg(tmp_path, dp=True, dp_noise_multiplier=sigma, dp_clipping_norm=clip, dp_delta=delta)
    result = federation.run(cfg, tmp_path / "run", timeout=240)
    assert result.status == "completed"
    # Reference: RDP of the Gaussian mechanism, alpha/(2 sigma^2) per release, composed over
    # 2 releases, converted with Opacus' formula over its default orders.
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), float)
    rdp = 2 * orders / (2 * sigma**2)
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    assert result.dp_epsilon == pytest.approx(float(np.nanmin(eps)), rel=1e-9)
    from privacy.dp.accountant import compute_epsilon

    assert result.dp_epsilon == pytest.approx(compute_epsilon(sigma, 1.0, 2, delta), rel=1e-9)
    eps_by_round = [r["dp_epsilon"] for r in result.record["rounds"]]
    assert eps_by_round[0] < eps_by_round[1] == result.dp_epsilon
    # each site's update was clipped to `clip`, so the mean update (before noise) is within
    # clip; the noise std on the mean is sigma*clip/n per coordinate: 6 sigmas is a safe bound
    init = _tasks()[0].get_parameters()
    step = np.concatenate([(g - i).ravel() for g, i in zip(result.parameters, init, strict=True)])
    assert np.all(np.isfinite(step))
    assert np.linalg.norm(step) < 2 * (clip + 6 * sigma * clip / N_SITES * math.sqrt(step.size))


@pytest.mark.slow
def test_a_query_without_a_handler_fails_the_run_and_keeps_the_model(
    federation, tmp_path: Path
) -> None:
    cfg = _cfg(tmp_path, num_rounds=1, finish="privacy.flower.demo:finish")
    with pytest.raises(FederatedError, match="run config has no query-handler") as err:
        federation.run(cfg, tmp_path / "run", timeout=240)
    assert "query 'demo.counts'" in str(err.value)
    assert (tmp_path / "run" / "logs" / "superlink.log").is_file()  # kept for the reader
    result = read_result(tmp_path / "run")
    assert result.status == "failed" and result.finish is None
    assert result.record["completed_rounds"] == 1 and result.parameters is not None


@pytest.mark.slow
def test_too_few_sites_is_a_clear_error_and_keeps_last_model(federation, tmp_path: Path) -> None:
    """A site failing in round 2 with min-fit-clients=2: error names the round; round-1 model kept."""
    options = {**OPTIONS, "fail_site": "site-1", "fail_round": 2}
    cfg = _cfg(tmp_path, task_options=options)
    with pytest.raises(FederatedError, match="round 2") as err:
        federation.run(cfg, tmp_path / "run", timeout=240)
    assert f"min-fit-clients={N_SITES}" in str(err.value)
    kept: list[np.ndarray] | None = getattr(err.value, "parameters", None)
    assert kept is not None
    for got, want in zip(kept, _simulated(1), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    record: dict[str, Any] = getattr(err.value, "history", {})
    assert record["status"] == "failed" and record["completed_rounds"] == 1
    assert any("simulated failure" in f for f in record["rounds"][1]["failures"])


@pytest.mark.slow
def test_secagg_plus_matches_fedavg_and_survives_a_dropout(tmp_path: Path) -> None:
    """SecAgg+, 3 sites: round 1 with all, site-2 killed mid-round 2 (after sharing its keys).

    The final model equals plain FedAvg (the simulator, site-2 failing in round 2) within the
    quantization error, so both the masked sum of round 1 and the unmasking of the dropped
    site's pairwise masks in round 2 are right.
    """
    # each site's weighted parameters (n / max_weight * w) are quantized on [-8, 8] with
    # 2**22 levels (stochastic rounding: < 1 step per site), then divided by the total weight
    step = 2 * 8.0 / 4194304
    quant_tol = 3 * step / ((30 + 40) / 1000.0) * 2  # 3 sites, smallest total weight, 2 rounds
    options = {**OPTIONS, "exit_site": "site-2", "exit_round": 2}
    # round-timeout bounds each of SecAgg+'s 4 stages: it must cover a ClientApp process
    # start on a loaded machine (up to a minute seen on a shared 2-core VM). The dropped
    # site is noticed sooner: the SuperLink reports it unavailable once its heartbeats stop
    # (2 x 30 s), and the round goes on without it.
    cfg = _cfg(
        tmp_path, 3, secagg=True, task_options=options, min_fit_clients=2, round_timeout=180.0
    )
    with LocalFederation(_nodes(3), work_dir=tmp_path / "flower") as fed:  # logs kept there
        leaders = [p.pid for p in fed.procs.values()]
        result = fed.run(cfg, tmp_path / "run", timeout=500, check=False)
        assert fed.procs["supernode-2"].poll() is not None  # the site is really gone
        pids = leaders + _descendants(leaders)
    assert _pids_alive(pids) == [], "Flower processes left running after stop()"
    assert result.status == "completed", result.error
    r1, r2 = result.record["rounds"]
    assert sorted(r1["fit"]) == ["site-0", "site-1", "site-2"]
    assert sorted(r2["fit"]) == ["site-0", "site-1"]
    fail_opts = {**OPTIONS, "fail_site": "site-2", "fail_round": 2}
    expected = _simulated(2, fail_opts, n=3)
    assert result.parameters is not None
    for got, want in zip(result.parameters, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=quant_tol)
    # the tolerance is far below what a wrong aggregate would give: without the dropout
    # (all 3 sites in round 2) the model differs by much more than quant_tol
    all_three = _simulated(2, OPTIONS, n=3)
    assert (
        max(np.abs(a - w).max() for a, w in zip(all_three, expected, strict=True)) > 50 * quant_tol
    )


@pytest.mark.slow
def test_site_disconnecting_mid_round_drops_out_when_minimum_is_met(tmp_path: Path) -> None:
    """Site-0's SuperNode is killed during round 2: the round completes with the other two."""
    options = {**OPTIONS, "exit_site": "site-0", "exit_round": 2}
    # round-timeout must cover a ClientApp process start (imports flwr; 20-60 s on a loaded
    # machine); the vanished site is reported unavailable by the SuperLink sooner (its
    # heartbeats stop: 2 x 30 s), whichever comes first ends the wait
    cfg = _cfg(tmp_path, 3, task_options=options, min_fit_clients=2, round_timeout=180.0)
    with LocalFederation(_nodes(3), work_dir=tmp_path / "flower") as fed:  # logs kept there
        leaders = [p.pid for p in fed.procs.values()]
        result = fed.run(cfg, tmp_path / "run", timeout=300, check=False)
        assert fed.procs["supernode-0"].poll() is not None  # the site is really gone
        pids = leaders + _descendants(leaders)
    assert _pids_alive(pids) == [], "Flower processes left running after stop()"
    assert result.status == "completed", result.error
    assert sorted(result.record["rounds"][1]["fit"]) == ["site-1", "site-2"]
    assert result.parameters is not None
    fail_opts = {**OPTIONS, "fail_site": "site-0", "fail_round": 2}
    for got, want in zip(result.parameters, _simulated(2, fail_opts, n=3), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_client_level_dp_with_secagg_plus_clips_at_the_sites(tmp_path: Path) -> None:
    """Client-level DP and SecAgg+ together: each site clips its own update before masking,
    the server adds noise to the unweighted mean it can only see as a sum. With a negligible
    noise multiplier the model equals the mean of the clipped updates, computed here from the
    sites' tasks, within SecAgg+'s quantization; ε is accounted as without SecAgg+."""
    sigma, clip, delta, n = 1e-6, 0.05, 1e-5, 3
    step = 2 * 8.0 / 4194304
    quant_tol = 3 * step / (n / 1000.0) * 2  # weights of 1 per site, 2 rounds
    cfg = _cfg(
        tmp_path,
        n,
        secagg=True,
        dp=True,
        dp_noise_multiplier=sigma,
        dp_clipping_norm=clip,
        dp_delta=delta,
        round_timeout=180.0,
    )
    with LocalFederation(_nodes(n), work_dir=tmp_path / "flower") as fed:
        result = fed.run(cfg, tmp_path / "run", timeout=500, check=False)
    assert result.status == "completed", result.error

    tasks = _tasks(OPTIONS, n)
    model = _tasks()[0].get_parameters()
    clipped_norms = []
    for rnd in (1, 2):
        fit = FitConfig(server_round=rnd, local_epochs=1, lr=LR, batch_size=None, seed=0)
        updates = []
        for task in tasks:
            local = task.fit([p.copy() for p in model], fit).parameters
            u = [lp - gp for lp, gp in zip(local, model, strict=True)]
            norm = math.sqrt(sum(float((x**2).sum()) for x in u))
            clipped_norms.append(norm)
            updates.append([x * min(1.0, clip / norm) for x in u])
        model = [gp + sum(us) / n for gp, *us in zip(model, *updates, strict=True)]
    assert min(clipped_norms) > clip  # clipping binds: the test sees it
    assert result.parameters is not None
    for got, want in zip(result.parameters, model, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=quant_tol)
    from privacy.dp.accountant import compute_epsilon

    assert result.dp_epsilon == pytest.approx(compute_epsilon(sigma, 1.0, 2, delta), rel=1e-9)


def test_replies_are_pulled_soon_and_the_timeout_is_kept(monkeypatch) -> None:
    """send_and_receive pulls after 50 ms, doubling to 1 s between pulls, returns as soon as
    every reply came, and gives up at the timeout with the replies it has."""
    from types import SimpleNamespace

    from privacy.flower import server_app

    class FakeGrid:
        def __init__(self, ready_after: dict[str, int]) -> None:
            self.ready_after = ready_after  # message id -> pulls before its reply is there
            self.pulls = 0

        def push_messages(self, messages):
            return list(messages)

        def pull_messages(self, ids):
            self.pulls += 1
            return [
                SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
                for i in sorted(ids)
                if self.ready_after[i] <= self.pulls
            ]

    slept: list[float] = []
    monkeypatch.setattr(server_app.time, "sleep", slept.append)
    grid = FakeGrid({"a": 1, "b": 5})
    replies = server_app.send_and_receive(grid, ["a", "b"], timeout=None)  # type: ignore[arg-type]
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert grid.pulls == 5 and slept == pytest.approx([0.05, 0.1, 0.2, 0.4])
    slept.clear()
    grid = FakeGrid({"a": 1, "b": 10**9})  # b never answers
    clock = iter(np.arange(0.0, 100.0, 0.5))
    monkeypatch.setattr(server_app.time, "monotonic", lambda: float(next(clock)))
    replies = server_app.send_and_receive(grid, ["a", "b"], timeout=3.0)  # type: ignore[arg-type]
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert max(slept) <= 1.0 and grid.pulls < 10
