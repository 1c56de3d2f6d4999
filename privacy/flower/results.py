"""What a Flower run leaves on disk, and how to read it back.

``output-dir`` holds two files, each replaced atomically (temp file, then ``os.replace``)
after every round, so a crash or a failed round leaves the last good global model:

* ``parameters.safetensors`` — the global model as arrays ``param_0000``, ``param_0001``…
  in the SiteTask's order (no pickle);
* ``federation.json`` — ``status`` (``running``/``completed``/``failed``), ``error``, the
  settings, ``rounds`` (per round: sites sampled, each site's fit metrics and example count,
  failures, each site's evaluation, aggregated metrics, ``dp_epsilon``), ``dp`` (ε, δ,
  accountant) and ``completed_rounds``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privacy.errors import FederatedError

__all__ = [
    "FINISH_FILE",
    "PARAMETERS_FILE",
    "RESULT_FILE",
    "START_FILE",
    "FlowerRunResult",
    "RunRecorder",
    "load_parameters",
    "read_result",
    "save_parameters",
]

PARAMETERS_FILE = "parameters.safetensors"
RESULT_FILE = "federation.json"
FINISH_FILE = "finish.json"
START_FILE = "start.json"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_parameters(path: Path, parameters: list[np.ndarray]) -> None:
    """Write ``parameters`` (in order) to a ``.safetensors`` file atomically.

    The shapes are kept in the file's metadata as well: safetensors stores a 0-d array
    (a scalar parameter or buffer) as shape ``(1,)``, and :func:`load_parameters` gives
    each array back its own shape.
    """
    from safetensors.numpy import save

    arrays = [np.asarray(p, order="C") for p in parameters]  # (ascontiguousarray makes 0-d 1-d)
    tensors = {f"param_{i:04d}": a.reshape(a.shape or (1,)) for i, a in enumerate(arrays)}
    metadata = {"format": "privacy.flower", "shapes": json.dumps([list(a.shape) for a in arrays])}
    _atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def load_parameters(path: Path) -> list[np.ndarray]:
    """Read parameters written by :func:`save_parameters`, in their order.

    Raises:
        FederatedError: missing file or unexpected keys.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FederatedError(f"parameters file {path} does not exist")
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types
        raise FederatedError(f"cannot read parameters file {path}: {e}") from e
    keys = sorted(tensors)
    if keys != [f"param_{i:04d}" for i in range(len(keys))]:
        raise FederatedError(
            f"{path}: expected keys param_0000..param_{len(keys) - 1:04d}, got {keys[:5]}..."
        )
    arrays = [tensors[k] for k in keys]
    if "shapes" in metadata:  # files from before the shapes were kept have none
        shapes = [tuple(s) for s in json.loads(metadata["shapes"])]
        if len(shapes) != len(arrays):
            raise FederatedError(
                f"{path}: its metadata lists {len(shapes)} shapes for {len(arrays)} arrays"
            )
        arrays = [
            a.reshape(s) if a.size == int(np.prod(s)) else a
            for a, s in zip(arrays, shapes, strict=True)
        ]
    return arrays


@dataclass
class RunRecorder:
    """Accumulates the run's record and rewrites the output files (used by the ServerApp).

    Args:
        out_dir: the run's ``output-dir``.
        cfg: the run's settings (a :class:`~privacy.flower.config.FlowerRunConfig`).
        run_id: Flower's run id.
    """

    out_dir: Path
    cfg: Any
    run_id: int = 0
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.record = {
            "status": "running",
            "error": None,
            "run_id": self.run_id,
            "started": time.time(),
            "config": self.cfg.to_dict(),
            "sites_connected": None,
            "completed_rounds": 0,
            "rounds": [],
            "dp": None,
        }
        self._write_json()

    def _round(self, server_round: int) -> dict[str, Any]:
        for r in self.record["rounds"]:
            if r["round"] == server_round:
                return r
        r = {
            "round": server_round,
            "sampled": 0,
            "fit": {},
            "failures": [],
            "fit_aggregated": {},
            "evaluate": {},
            "evaluate_loss": None,
            "evaluate_aggregated": {},
            "dp_epsilon": None,
        }
        self.record["rounds"].append(r)
        return r

    def set_sites_connected(self, n: int) -> None:
        """How many SuperNodes were connected when round 1 started."""
        self.record["sites_connected"] = int(n)
        self.record["sites_connected_s"] = round(time.time() - self.record["started"], 3)
        self._write_json()

    def start_round(self, server_round: int, sampled: int) -> None:
        """A round began with ``sampled`` sites asked to train."""
        r = self._round(server_round)
        r["sampled"] = int(sampled)
        r["started_s"] = round(time.time() - self.record["started"], 3)

    def record_fit(
        self, server_round: int, sites: dict[str, dict[str, Any]], failures: list[str]
    ) -> None:
        """The sites that answered (their metrics) and the failures of a round."""
        r = self._round(server_round)
        r["fit"] = _jsonable(sites)
        r["failures"] = list(failures)
        r["fit_done_s"] = round(time.time() - self.record["started"], 3)
        self._write_json()

    def round_failures(self, server_round: int) -> list[str]:
        """The failures recorded for a round."""
        return list(self._round(server_round)["failures"])

    def finish_round(
        self,
        server_round: int,
        parameters: list[np.ndarray],
        metrics: dict[str, Any],
        dp_epsilon: float | None,
    ) -> None:
        """A round produced a new global model: save it and the record."""
        r = self._round(server_round)
        r["fit_aggregated"] = _jsonable(metrics)
        r["dp_epsilon"] = dp_epsilon
        self.record["completed_rounds"] = server_round
        if dp_epsilon is not None:
            self.record["dp"] = {
                "epsilon": dp_epsilon,
                "delta": self.cfg.dp_delta,
                "noise_multiplier": self.cfg.dp_noise_multiplier,
                "clipping_norm": self.cfg.dp_clipping_norm,
                "releases": server_round,
                "level": "client",
                "accountant": "opacus RDP, sampling rate 1 (no amplification)",
            }
        self.save_parameters(parameters)
        self._write_json()

    def record_evaluate(
        self,
        server_round: int,
        sites: dict[str, dict[str, Any]],
        loss: float | None,
        metrics: dict[str, Any],
    ) -> None:
        """Each site's evaluation of the new global model."""
        r = self._round(server_round)
        r["evaluate"] = _jsonable(sites)
        r["evaluate_loss"] = None if loss is None else float(loss)
        r["evaluate_aggregated"] = _jsonable(metrics)
        r["evaluate_done_s"] = round(time.time() - self.record["started"], 3)
        self._write_json()

    def save_parameters(self, parameters: list[np.ndarray]) -> None:
        """Replace ``parameters.safetensors`` with ``parameters``."""
        save_parameters(self.out_dir / PARAMETERS_FILE, parameters)

    def save_start(self, result: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
        """Write the ``start`` function's result to ``start.json`` (atomically) and note
        ``summary`` (function, queries, seconds) in ``federation.json``."""
        self._save_step(START_FILE, "start", result, summary)

    def save_finish(self, result: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
        """Write the ``finish`` function's result to ``finish.json`` (atomically) and note
        ``summary`` (function, queries, seconds) in ``federation.json``."""
        self._save_step(FINISH_FILE, "finish", result, summary)

    def _save_step(
        self, name: str, key: str, result: Mapping[str, Any], summary: Mapping[str, Any]
    ) -> None:
        data = json.dumps(_jsonable(dict(result)), indent=2, sort_keys=True)
        _atomic_write_bytes(self.out_dir / name, data.encode("utf-8"))
        self.record[key] = _jsonable(dict(summary))
        self._write_json()

    def finish(
        self, status: str, parameters: list[np.ndarray] | None, error: str | None = None
    ) -> None:
        """Final status; the last global model is written if there is one."""
        if parameters is not None and not (self.out_dir / PARAMETERS_FILE).exists():
            self.save_parameters(parameters)
        self.record["status"] = status
        self.record["error"] = error
        self.record["finished"] = time.time()
        self._write_json()

    def _write_json(self) -> None:
        data = json.dumps(self.record, indent=2, sort_keys=True, default=str)
        _atomic_write_bytes(self.out_dir / RESULT_FILE, data.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.hex()
    return obj


@dataclass
class FlowerRunResult:
    """A finished (or failed) Flower run read back from its ``output-dir``.

    Attributes:
        out_dir: the run's output folder.
        status: ``completed``, ``failed`` or ``running``.
        parameters: the last global model (None when no round finished and no initial
            model was saved).
        record: the parsed ``federation.json``.
        finish: the parsed ``finish.json`` (None when the run has no ``finish`` function or
            it did not complete).
        start: the parsed ``start.json`` (None when the run has no ``start`` function or it
            did not complete).
    """

    out_dir: Path
    status: str
    parameters: list[np.ndarray] | None
    record: dict[str, Any]
    finish: dict[str, Any] | None = None
    start: dict[str, Any] | None = None

    @property
    def error(self) -> str | None:
        """The ServerApp's error message, if it failed."""
        return self.record.get("error")

    @property
    def dp_epsilon(self) -> float | None:
        """Client-level ε spent (None without DP)."""
        dp = self.record.get("dp")
        return None if dp is None else float(dp["epsilon"])


def read_result(out_dir: Path) -> FlowerRunResult:
    """Read ``federation.json`` and ``parameters.safetensors`` from ``out_dir``.

    Raises:
        FederatedError: ``federation.json`` missing or unreadable.
    """
    out_dir = Path(out_dir)
    path = out_dir / RESULT_FILE
    if not path.is_file():
        raise FederatedError(f"{path} does not exist: the ServerApp did not start this run")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise FederatedError(f"cannot read {path}: {e}") from e
    params_path = out_dir / PARAMETERS_FILE
    params = load_parameters(params_path) if params_path.is_file() else None
    finish, start = (_read_step(out_dir / name) for name in (FINISH_FILE, START_FILE))
    return FlowerRunResult(out_dir, str(record.get("status")), params, record, finish, start)


def _read_step(path: Path) -> dict[str, Any] | None:
    """A ``start.json``/``finish.json`` (None when the run did not write it)."""
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise FederatedError(f"cannot read {path}: {e}") from e
