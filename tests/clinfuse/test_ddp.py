"""Data-parallel training (DDP) through the CLI: two CPU processes on the gloo backend.

Lightning Fabric's ``launch()`` re-runs the command line in the extra processes, so the
multi-process run is ``python -m clinfuse train`` in a subprocess, never ``train_run``
inside the pytest process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clinfuse.config import RunConfig
from clinfuse.errors import ConfigError
from clinfuse.model import load_run
from clinfuse.training import train_run
from tests.conftest import tiny_config

# rank-0 only variables that must not leak into the test's command (they would make it a worker)
_DIST_VARS = ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _exact_config(batch_size: int, **training) -> RunConfig:
    """Settings under which 2 processes x ``batch_size`` equal 1 process x ``2 * batch_size``.

    Nothing per-rank or random inside a step: GroupNorm instead of BatchNorm (per-rank batch
    statistics), no dropout, no augmentation (drawn per rank). Signal + tabular: the signal is
    missing for some cases, so the per-modality loss denominators differ between the ranks'
    shards. 37 training cases: with ``batch_size`` 6 the last step has one case, so rank 1's
    shard is empty (padding, weighted 0); with 8 it has 5 (shards of 3 and 2).
    """
    settings = {"epochs": 3, "patience": 5, **training}
    cfg = tiny_config(batch_size=batch_size, augment=False, device="cpu", **settings)
    cfg.data.modalities = ["signal", "tabular"]
    cfg.data.split_fractions = (0.6, 0.2, 0.2)
    cfg.encoders["signal"].update(norm="group", dropout=0.0)
    cfg.encoders["tabular"]["dropout"] = 0.0
    cfg.fusion.head_dropout = 0.0
    return cfg


def _env() -> dict[str, str]:
    """The test's environment without rank variables, offline, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _cli_train(cohort: Path, out: Path, cfg: RunConfig, timeout: float = 600.0) -> str:
    """``clinfuse train`` in a subprocess (its own session: a hung worker is killed with it)."""
    cfg_path = out.with_name(out.name + ".yaml")
    cfg.save(cfg_path)
    env = _env()
    cmd = [sys.executable, "-m", "clinfuse", "train", str(cohort), "--out", str(out)]
    cmd += ["--config", str(cfg_path), "--device", "cpu"]
    proc = subprocess.Popen(
        cmd,
        cwd=out.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        pytest.fail(f"clinfuse train (DDP) did not finish in {timeout:.0f}s:\n{text[-3000:]}")
    assert proc.returncode == 0, text[-3000:]
    return text


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_run(run).network.state_dict().items()}


def _rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| of any tensor relative to that tensor's largest |b|."""
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
            continue
        scale = float(b[k].abs().max()) or 1.0
        worst = max(worst, float((a[k] - b[k]).abs().max()) / scale)
    return worst


@pytest.mark.parametrize("batch_size", [6, 8])
def test_ddp_on_two_cpu_processes_equals_one_process_with_twice_the_batch(
    tiny_cohort, tmp_path, batch_size
):
    """``devices: 2, strategy: ddp`` on CPU (gloo) writes one complete run folder whose weights
    match a one-process run with batch ``2 * batch_size`` (relative 1e-5), and differ from a
    one-process run with ``batch_size`` (each rank trains on its half of every global batch).

    DDP averages the ranks' gradients; each rank's loss is weighted by its share of the
    global batch, so the average is the gradient of the global batch's loss whatever the
    shard sizes. Validation (early stopping) and the combiner use every validation case.
    """
    ddp_cfg = _exact_config(batch_size, devices=2, strategy="ddp")
    out = tmp_path / "ddp"
    text = _cli_train(tiny_cohort, out, ddp_cfg)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text  # two processes did train
    # the worker's rerun of the command ended cleanly too (it returns once the folder exists)
    assert "internal error" not in text and "Traceback" not in text, text[-3000:]
    assert text.count("run folder:") == 1, text[-3000:]  # only rank 0 reports

    # one complete run folder, nothing left behind by either rank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "ddp.yaml"]
    assert json.loads((out / "run.json").read_text())["complete"] is True
    for name in ("config.yaml", "model/model.json", "metrics.json", "predictions.csv"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists()
    report = json.loads((out / "data_report.json").read_text())
    assert report["n_used"] == 64 and report["splits"]["train"]["n_cases"] == 37
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3]

    # the saved model predicts what the run wrote
    saved = pd.read_csv(out / "predictions.csv")
    again = load_run(out).predict(tiny_cohort)
    np.testing.assert_array_equal(
        again["logit_fusion"].to_numpy(), saved["logit_fusion"].to_numpy()
    )

    # the same optimisation as one process with the global batch
    ref = train_run(tiny_cohort, tmp_path / "ref", _exact_config(2 * batch_size))
    rel = _rel_diff(_weights(out), _weights(ref))
    print(
        f"batch {batch_size}x2: max relative weight difference DDP vs 1x{2 * batch_size}: {rel:.2e}"
    )
    assert rel < 1e-5
    ref_log = pd.read_csv(ref / "train_log.csv")
    np.testing.assert_allclose(log["train_loss"], ref_log["train_loss"], rtol=1e-5)
    for col in [c for c in ref_log.columns if c.startswith("val_auroc_")]:
        np.testing.assert_allclose(log[col], ref_log[col], rtol=0, atol=1e-9, err_msg=col)
    ref_pred = pd.read_csv(ref / "predictions.csv")
    np.testing.assert_allclose(saved["logit_fusion"], ref_pred["logit_fusion"], rtol=0, atol=1e-4)

    # and not the optimisation of one process with the per-rank batch
    small = train_run(tiny_cohort, tmp_path / "small", _exact_config(batch_size))
    assert _rel_diff(_weights(out), _weights(small)) > 1e-2


def test_unsupported_strategy_is_refused_before_anything_is_written(tiny_cohort, tmp_path):
    """Strategies the training loop does not drive (spawned processes, sharded models) are a
    ConfigError naming the field, raised before the run folder is created."""
    for strategy in ("ddp_spawn", "fsdp", "dp"):
        cfg = _exact_config(8, devices=2, strategy=strategy)
        with pytest.raises(ConfigError, match=r"training\.strategy") as info:
            train_run(tiny_cohort, tmp_path / strategy, cfg)
        assert "ddp" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ddp_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(
    tiny_cohort, tmp_path
):
    """Both DDP processes are killed (SIGKILL, as a preempted job) once rank 0 has written an
    epoch checkpoint; ``clinfuse train --resume`` with two processes finishes the run, and its
    weights equal those of an uninterrupted two-process run (relative 1e-6)."""
    epochs = 12
    cfg = _exact_config(8, devices=2, strategy="ddp", epochs=epochs, patience=epochs)
    whole = tmp_path / "whole"
    _cli_train(tiny_cohort, whole, cfg)

    out = tmp_path / "killed"
    cfg_path = out.with_name(out.name + ".yaml")
    cfg.save(cfg_path)
    env = _env()
    base = [sys.executable, "-m", "clinfuse", "train", str(tiny_cohort), "--out", str(out)]
    base += ["--config", str(cfg_path), "--device", "cpu"]
    proc = subprocess.Popen(
        base,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpt = out.with_name(out.name + ".partial") / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the deadline"
    stopped_at = int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])
    assert 1 <= stopped_at < epochs, stopped_at  # killed mid-run, not after it
    assert not out.exists()  # nothing looks complete

    proc = subprocess.run(
        [*base, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == list(range(1, epochs + 1))
    assert _rel_diff(_weights(out), _weights(whole)) < 1e-6
    np.testing.assert_allclose(
        log["train_loss"], pd.read_csv(whole / "train_log.csv")["train_loss"], rtol=1e-6
    )
