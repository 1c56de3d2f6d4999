"""A real Flower federation on this machine: a SuperLink and one SuperNode per site.

Every part is a separate process talking over loopback, exactly as on real hosts (only
the addresses differ; ``docs/federated_deployment.md``). Nothing needs Ray::

    from privacy.flower.config import FlowerRunConfig
    from privacy.flower.local import run_local_federation

    cfg = FlowerRunConfig(task_factory="privacy.flower.demo:make_task", num_rounds=2,
                          min_fit_clients=3, min_available_clients=3)
    result = run_local_federation([{"partition-id": i} for i in range(3)], cfg, out_dir="run")
    result.parameters      # the final global model (list of arrays)
    result.record["rounds"]

What :class:`LocalFederation` does:

* picks free loopback ports from the OS; a temporary ``FLWR_HOME`` holds the ``flwr``
  connection (``config.toml``), Flower's state and the processes' logs;
* starts ``flower-superlink --insecure --disable-runtime-dependency-installation`` and one
  ``flower-supernode --insecure --node-config ...`` per site, each in its own process group
  (``--insecure`` is for loopback only: use TLS between hosts); with ``tls`` (a
  :class:`TLSFiles`, e.g. from :func:`loopback_tls`) the SuperLink serves TLS and the
  SuperNodes and the ``flwr`` CLI verify its certificate, as on real hosts; with
  ``supernode_auth`` as well, every SuperNode gets an ECDSA key pair whose public key is
  registered with ``flwr supernode register`` first, and the SuperLink refuses others;
* submits the app (:data:`privacy.flower.APP_DIR`) with ``flwr run``, the settings written to
  a TOML file for ``--run-config``; then waits for the ServerApp's ``federation.json``;
* stops every process group (SIGTERM, then SIGKILL) on exit, also after an error.

Errors name what failed and show the tail of the failing process's log.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from privacy.errors import FederatedError
from privacy.flower import APP_DIR
from privacy.flower.config import FlowerRunConfig, toml_value
from privacy.flower.results import RESULT_FILE, FlowerRunResult, read_result

__all__ = [
    "LocalFederation",
    "TLSFiles",
    "free_port",
    "loopback_tls",
    "run_local_federation",
    "supernode_keypair",
]

_CONNECTION = "privacy-local"

SUPEREXEC_POLL_INTERVAL = 0.2
"""Seconds between the SuperExecs' checks for a message to run (Flower's default: 1)."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a SuperLink that serves TLS.

    Args:
        ca_cert: the CA certificate the SuperNodes and the ``flwr`` CLI trust.
        server_cert: the SuperLink's certificate (signed by the CA, naming its host).
        server_key: the SuperLink's private key.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def check(self) -> None:
        """Raise :class:`FederatedError` naming the first file that does not exist."""
        for name in ("ca_cert", "server_cert", "server_key"):
            path = Path(getattr(self, name))
            if not path.is_file():
                raise FederatedError(f"TLS {name.replace('_', ' ')} file {path} does not exist")


def loopback_tls(folder: Path, days: int = 2) -> TLSFiles:
    """A throwaway CA and a SuperLink certificate for ``localhost``/``127.0.0.1``.

    For trying TLS on one machine (tests, a rehearsal of a real deployment); between real
    hosts use certificates from your PKI for the SuperLink's DNS name.
    """
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privacy-flower loopback CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files


def supernode_keypair(stem: Path) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair: ``STEM.key`` (private) and ``STEM.pub``.

    ECDSA on NIST P-384 in OpenSSH format, what ``flower-supernode
    --auth-supernode-private-key`` and ``flwr supernode register`` read (the same as
    ``ssh-keygen -t ecdsa -b 384``).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = stem.with_suffix(".key"), stem.with_suffix(".pub")
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS reports free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FederatedError(
            f"{name} not found next to {sys.executable} or on PATH; install Flower "
            "(pip install 'flwr==1.42.*') in this environment"
        )
    return found


def _node_config_arg(node_config: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in node_config.items())


def _children_map() -> dict[int, list[int]]:
    """{parent pid: child pids} of every process this user can see (psutil, else /proc)."""
    children: dict[int, list[int]] = {}
    if importlib.util.find_spec("psutil") is not None:
        import psutil

        for p in psutil.process_iter(["pid", "ppid"]):
            children.setdefault(int(p.info["ppid"] or 0), []).append(int(p.info["pid"]))
        return children
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields_ = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields_[1]), []).append(int(stat.parent.name))
    return children


def _descendants(pids: list[int]) -> list[int]:
    """Every process below ``pids`` (Flower's SuperExec starts its own process group)."""
    children = _children_map()
    out: list[int] = []
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


class LocalFederation:
    """SuperLink + one SuperNode per site on loopback; submit runs; stop cleanly.

    Args:
        node_configs: one dict per site, passed as that SuperNode's ``--node-config``
            (e.g. ``{"partition-id": 0}`` or ``{"site": "A"}``); the task factory reads it.
        work_dir: where FLWR_HOME and logs go (default: a new temporary folder, removed on
            :meth:`stop` unless ``keep_work_dir``).
        startup_timeout: seconds to wait for the SuperLink to listen.
        env: extra environment variables for every process (e.g. ``PYTHONPATH`` so the
            SuperNodes can import the task factory's package).
        keep_work_dir: keep the logs after :meth:`stop`.
        tls: serve TLS with these files (the SuperNodes and ``flwr`` verify the SuperLink's
            certificate against ``tls.ca_cert``); None: ``--insecure`` (loopback only).
        supernode_auth: start the SuperLink with ``--enable-supernode-auth``; each SuperNode
            gets a key pair (:func:`supernode_keypair`, under the work dir's ``keys/``) whose
            public key is registered before it starts (needs ``tls``).

    Use as a context manager; several runs may be submitted while it is up.
    """

    def __init__(
        self,
        node_configs: Sequence[Mapping[str, Any]],
        *,
        work_dir: Path | None = None,
        startup_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        keep_work_dir: bool = False,
        tls: TLSFiles | None = None,
        supernode_auth: bool = False,
    ) -> None:
        if not node_configs:
            raise FederatedError("a federation needs at least one site (node_configs is empty)")
        self.node_configs = [dict(c) for c in node_configs]
        self.startup_timeout = startup_timeout
        self.extra_env = dict(env or {})
        self.keep_work_dir = keep_work_dir or work_dir is not None
        self._work_dir_arg = work_dir
        self.work_dir: Path | None = None
        self.superlink_port = 0
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        if tls is not None:
            tls.check()
            tls = TLSFiles(
                *(Path(f).resolve() for f in (tls.ca_cert, tls.server_cert, tls.server_key))
            )
        self.tls = tls
        if supernode_auth and tls is None:
            raise FederatedError(
                "SuperNode authentication needs TLS (pass tls=..., e.g. loopback_tls(folder)): "
                "the keys must not travel over an unencrypted connection"
            )
        self.supernode_auth = supernode_auth

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def flwr_home(self) -> Path:
        """The temporary ``FLWR_HOME`` of every process."""
        if self.work_dir is None:
            raise FederatedError("the federation is not started; call start() first")
        return self.work_dir / "flwr_home"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["FLWR_HOME"] = str(self.flwr_home)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        # SuperExec checks for new app processes to start every second by default; on
        # loopback a shorter interval takes ~1 s off every message (of which a SecAgg+
        # round has four). Cheap: one local HTTP request per check.
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(SUPEREXEC_POLL_INTERVAL))
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        assert self.work_dir is not None
        log_path = self.work_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log_fh:
            proc = subprocess.Popen(
                args,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                cwd=str(self.work_dir),
                start_new_session=True,  # own process group: stop() kills its children too
            )
        self.procs[name] = proc
        self.logs[name] = log_path
        return proc

    def start(self) -> LocalFederation:
        """Start the SuperLink and the SuperNodes (returns once the SuperLink listens).

        Raises:
            FederatedError: a process exited at once or the SuperLink did not listen in time
                (everything started so far is stopped).
        """
        if self.procs:
            raise FederatedError("this federation is already started")
        self.work_dir = (
            Path(self._work_dir_arg)
            if self._work_dir_arg is not None
            else Path(tempfile.mkdtemp(prefix="privacy-flower-"))
        )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        try:
            self._start_superlink()
            for node_config in self.node_configs:
                self.add_supernode(node_config)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_superlink(self) -> None:
        self.superlink_port = free_port()
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{_CONNECTION}"\n\n'
            f"[superlink.{_CONNECTION}]\n"
            f'address = "127.0.0.1:{self.superlink_port}"\n'
            + (
                f'root-certificates = "{self.tls.ca_cert}"\n'
                if self.tls is not None
                else "insecure = true\n"
            ),
            encoding="utf-8",
        )
        if self.tls is not None:
            security = ["--ssl-ca-certfile", str(self.tls.ca_cert)]
            security += ["--ssl-certfile", str(self.tls.server_cert)]
            security += ["--ssl-keyfile", str(self.tls.server_key)]
        else:
            security = ["--insecure"]
        if self.supernode_auth:
            security.append("--enable-supernode-auth")
        proc = self._spawn(
            "superlink",
            [
                _tool("flower-superlink"),
                *security,
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.superlink_port),
            ],
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FederatedError(
                    f"flower-superlink exited with code {proc.returncode} at start; its log:\n"
                    f"{_tail(self.logs['superlink'])}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.superlink_port), timeout=0.5),
            ):
                return
            time.sleep(0.2)
        raise FederatedError(
            f"flower-superlink did not listen on 127.0.0.1:{self.superlink_port} within "
            f"{self.startup_timeout:.0f} s; its log:\n{_tail(self.logs['superlink'])}"
        )

    def add_supernode(self, node_config: Mapping[str, Any], *, register: bool = True) -> str:
        """Start one more SuperNode (a site joining); returns its process name.

        With ``supernode_auth`` it gets a new key pair, registered with the SuperLink unless
        ``register`` is False (then the SuperLink refuses it: for rehearsing that case).

        Raises:
            FederatedError: the federation is not started, or the registration failed.
        """
        if "superlink" not in self.procs or self.work_dir is None:
            raise FederatedError("the federation is not started; call start() first")
        name = f"supernode-{sum(k.startswith('supernode-') for k in self.procs)}"
        auth: list[str] = []
        if self.supernode_auth:
            private, public = supernode_keypair(self.work_dir / "keys" / name)
            if register:
                self._register(public)
            auth = ["--auth-supernode-private-key", str(private)]
        self._spawn(
            name,
            [
                _tool("flower-supernode"),
                *(
                    ["--root-certificates", str(self.tls.ca_cert)]
                    if self.tls is not None
                    else ["--insecure"]
                ),
                "--superlink",
                f"127.0.0.1:{self.superlink_port}",
                "--port",
                str(free_port()),
                "--node-config",
                _node_config_arg(node_config),
                *auth,
            ],
        )
        return name

    def _register(self, public_key: Path) -> None:
        done = subprocess.run(
            [_tool("flwr"), "supernode", "register", str(public_key), _CONNECTION],
            capture_output=True,
            env=self._env(),
            cwd=str(self.work_dir),
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode("utf-8", errors="replace")
            raise FederatedError(f"flwr supernode register {public_key} failed:\n{out[-2000:]}")

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process group (SIGTERM, then SIGKILL after ``grace`` seconds).

        Processes started below them in other groups (Flower's SuperExec and the apps it
        starts) are found first and killed too.
        """
        below = _descendants([p.pid for p in self.procs.values() if p.poll() is None])
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            # The group may outlive its leader (superexec, app processes): kill it anyway.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.procs.clear()
        if self.work_dir is not None and not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- runs ------------------------------------------------------------------------------
    def submit(self, cfg: FlowerRunConfig, timeout: float = 120.0) -> int:
        """Start a run with ``flwr run``; returns Flower's run id.

        Raises:
            FederatedError: ``flwr run`` failed or did not answer within ``timeout``.
        """
        if not self.procs:
            raise FederatedError("the federation is not started; call start() first")
        assert self.work_dir is not None
        cfg_path = self.work_dir / f"run-config-{time.time_ns()}.toml"
        cfg_path.write_text(cfg.to_toml(), encoding="utf-8")
        args = [_tool("flwr"), "run", str(APP_DIR), _CONNECTION]
        args += ["--run-config", str(cfg_path), "--format", "json"]
        try:
            done = subprocess.run(
                args,
                capture_output=True,
                env=self._env(),
                cwd=str(self.work_dir),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise FederatedError(f"flwr run did not answer within {timeout:.0f} s") from e
        out = done.stdout.decode("utf-8", errors="replace")
        err = done.stderr.decode("utf-8", errors="replace")
        try:
            payload = json.loads(out[out.index("{") :])
        except ValueError:
            payload = {}
        if done.returncode != 0 or not payload.get("success") or not payload.get("run-id"):
            raise FederatedError(
                f"flwr run failed (exit {done.returncode}):\n{out[-2000:]}\n{err[-2000:]}"
            )
        return int(payload["run-id"])

    def wait(self, out_dir: Path, timeout: float) -> FlowerRunResult:
        """Wait until the run writing to ``out_dir`` completes or fails.

        Raises:
            FederatedError: the SuperLink died, or no final status within ``timeout``.
        """
        path = Path(out_dir) / RESULT_FILE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            superlink = self.procs.get("superlink")
            if superlink is not None and superlink.poll() is not None:
                raise FederatedError(
                    f"flower-superlink exited with code {superlink.returncode} during the "
                    f"run; its log:\n{_tail(self.logs['superlink'])}"
                )
            if path.is_file():
                with contextlib.suppress(FederatedError):
                    result = read_result(Path(out_dir))
                    if result.status in ("completed", "failed"):
                        return result
            time.sleep(0.25)
        raise FederatedError(
            f"the Flower run did not finish within {timeout:.0f} s ({path} "
            f"{'says running' if path.is_file() else 'was never written'}). SuperLink log:\n"
            f"{_tail(self.logs.get('superlink', Path('-')))}"
        )

    def save_run_log(self, run_id: int, timeout: float = 60.0) -> Path | None:
        """Save the ServerApp's log of ``run_id`` (``flwr log``) under the work dir's logs."""
        assert self.work_dir is not None
        path = self.work_dir / "logs" / f"run-{run_id}.log"
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            done = subprocess.run(
                [_tool("flwr"), "log", str(run_id), _CONNECTION, "--show"],
                capture_output=True,
                env=self._env(),
                cwd=str(self.work_dir),
                timeout=timeout,
                check=False,
            )
            path.write_bytes(done.stdout + done.stderr)
            self.logs[f"run-{run_id}"] = path
            return path
        return None

    def keep_logs(self, folder: Path) -> Path:
        """Copy every process's log (and the saved ServerApp logs) into ``folder``, which
        outlives a temporary work dir; returns ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in self.logs.items():
            with contextlib.suppress(OSError):
                shutil.copyfile(path, folder / f"{name}.log")
        return folder

    def run(
        self, cfg: FlowerRunConfig, out_dir: Path, timeout: float = 600.0, check: bool = True
    ) -> FlowerRunResult:
        """Submit a run writing to ``out_dir`` and wait for it.

        Args:
            cfg: the run settings (``output_dir`` is replaced by ``out_dir``).
            out_dir: where the ServerApp writes ``parameters.safetensors`` and
                ``federation.json`` (must not hold a previous run's ``federation.json``).
            timeout: seconds for the whole run.
            check: raise :class:`FederatedError` when the run failed (the error carries the
                last global model in ``err.parameters``). A failed run's process logs are
                copied to ``out_dir/logs``.

        Raises:
            FederatedError: see :meth:`submit` and :meth:`wait`; a failed run when ``check``.
        """
        out_dir = Path(out_dir).resolve()
        if (out_dir / RESULT_FILE).exists():
            raise FederatedError(
                f"{out_dir} already holds {RESULT_FILE} from an earlier run; choose a new folder"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        run_id = self.submit(replace(cfg, output_dir=str(out_dir)), timeout=min(timeout, 120.0))
        result = self.wait(out_dir, timeout - (time.monotonic() - t0))
        logs = "not available"
        if result.status != "completed":
            self.save_run_log(run_id)
            logs = str(self.keep_logs(out_dir / "logs"))
        if check and result.status != "completed":
            raise FederatedError(
                f"the Flower run failed: {result.error} (the processes' logs: {logs})",
                parameters=result.parameters,
                history=result.record,
            )
        return result


def run_local_federation(
    node_configs: Sequence[Mapping[str, Any]],
    cfg: FlowerRunConfig,
    out_dir: Path,
    *,
    timeout: float = 600.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    tls: TLSFiles | None = None,
    supernode_auth: bool = False,
) -> FlowerRunResult:
    """Start a loopback federation, run ``cfg`` once, stop everything, return the result.

    Args:
        node_configs: one ``--node-config`` dict per site.
        cfg: the run settings; ``output_dir`` is set to ``out_dir``.
        out_dir: where ``parameters.safetensors`` and ``federation.json`` are written.
        timeout: seconds for the whole run (start-up excluded).
        env: extra environment variables for the Flower processes.
        check: raise when the run failed (else return the failed result).
        tls: serve TLS (see :class:`LocalFederation`).
        supernode_auth: only registered SuperNodes may join (see :class:`LocalFederation`).

    Raises:
        FederatedError: a process failed to start, the run failed (with ``check``), or a
            timeout passed.
    """
    with LocalFederation(node_configs, env=env, tls=tls, supernode_auth=supernode_auth) as fed:
        return fed.run(cfg, Path(out_dir), timeout=timeout, check=check)
