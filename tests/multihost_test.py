"""Multi-host for real on one machine: two JAX processes on 127.0.0.1 with 4 CPU devices each
(jax.distributed, gloo collectives) train together, checkpoint, stop, resume, and match one
process with 8 devices step for step; SIGTERM to one of them stops both at the same step."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import default as default_config
from musicflax.train import checkpoints, trainer
from train_test import logged

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Shared by the subprocesses' flags and the in-process single-process reference run.
OVERRIDES = {"batch_size": 8, "model.width": 16, "model.res_depth": 1,
             "model.quantizer.codebook_size": 32, "model.quantizer.code_dim": 8,
             "model.quantizer.kmeans_iters": 2, "optim.warmup_steps": 2, "log_every": 1,
             "eval_every": 3, "checkpoint_every": 3, "image_every": 3}


def train_command(workdir, tfds_dir, steps, extra=(), overrides=OVERRIDES):
    return [sys.executable, "-m", "musicflax.train", "--config=configs/default.py",
            f"--workdir={workdir}", f"--config.data.tfds_data_dir={tfds_dir}",
            f"--config.num_train_steps={steps}",
            *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]


def env_with_devices(n: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def start_pair(workdir, tfds_dir, steps, overrides=OVERRIDES):
    port = free_port()
    return [subprocess.Popen(
        train_command(workdir, tfds_dir, steps, overrides=overrides, extra=[
            "--config.distributed.enabled=True",
            f"--config.distributed.coordinator=127.0.0.1:{port}",
            "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"]),
        cwd=REPO, env=env_with_devices(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in range(2)]


def wait_all(procs, timeout=600):
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return outputs


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    # Build the dataset once, before two processes would race to build it.
    subprocess.run([sys.executable, "-m", "musicflax.prepare", "--config=configs/default.py",
                    f"--config.data.tfds_data_dir={path}"], cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    return str(path)


# fsdp with a width whose kernels are large enough to be split (FSDP_MIN_SIZE).
SHARDINGS = {"replicated": {}, "fsdp": {"param_sharding": "fsdp", "model.width": 32}}


@pytest.mark.parametrize("mode", sorted(SHARDINGS))
def test_two_processes_match_one_process_and_resume(tfds_dir, tmp_path, mode):
    overrides = {**OVERRIDES, **SHARDINGS[mode]}
    # The reference: this (pytest) process, one process with 8 devices.
    assert jax.device_count() == 8
    config = default_config.get_config()
    config.data.tfds_data_dir, config.num_train_steps = tfds_dir, 6
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        functools.reduce(getattr, path, config)[leaf] = value
    trainer.train_and_evaluate(config, str(tmp_path / "single"))
    pair = tmp_path / "pair"
    wait_all(start_pair(pair, tfds_dir, 3, overrides))            # run, checkpoint at 3, exit
    assert checkpoints.create_manager(pair / "checkpoints", 3, 3).latest_step() == 3
    outputs = wait_all(start_pair(pair, tfds_dir, 6, overrides))  # resume to 6
    assert any("resumed from step 3" in out for out in outputs)
    expected, got = logged(tmp_path / "single"), logged(pair)
    assert sorted(got) == list(range(1, 7))
    np.testing.assert_allclose([got[s] for s in range(1, 7)],
                               [expected[s] for s in range(1, 7)], rtol=2e-5)
    # Images of the validation windows, drawn by process 0 from a model on both processes.
    assert sorted(p.name for p in (pair / "recon").glob("*.png")) == ["step_3.png", "step_6.png"]
    assert logged(pair, "validation/loss/loss")[6] == pytest.approx(
        logged(tmp_path / "single", "validation/loss/loss")[6], rel=2e-5)


def test_sigterm_to_one_process_stops_both_with_a_resumable_checkpoint(tfds_dir, tmp_path):
    workdir = tmp_path / "run"
    procs = start_pair(workdir, tfds_dir, 100000)
    deadline = time.time() + 300
    while time.time() < deadline and not list(workdir.glob("events.out.tfevents.*")):
        time.sleep(1)
    while time.time() < deadline and max(logged(workdir) or [0]) < 2:
        time.sleep(1)
    procs[1].send_signal(signal.SIGTERM)
    outputs = wait_all(procs, timeout=300)
    step = checkpoints.create_manager(workdir / "checkpoints", 3, 3).latest_step()
    assert step is not None and step >= 2
    assert all(f"stopped at step {step}" in out for out in outputs), outputs[0][-2000:]
    outputs = wait_all(start_pair(workdir, tfds_dir, step + 2))
    assert any(f"resumed from step {step}" in out for out in outputs)
