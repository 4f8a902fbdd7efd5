"""Training loop: learning, exact resume, sharded == single device, topology change on
restore, FSQ and VQ, SIGTERM, NaN handling. Tiny models on the shipped sample set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import default as default_config
from musicflax.train import checkpoints, trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(tfds_dir, steps=6, **overrides):
    config = default_config.get_config()
    config.data.tfds_data_dir = tfds_dir
    config.batch_size = 8
    config.num_train_steps = steps
    config.model.update(width=16, res_depth=1)
    config.model.quantizer.update(codebook_size=32, code_dim=8, kmeans_iters=2)
    config.optim.warmup_steps = 2
    config.log_every = 1
    config.eval_every = config.checkpoint_every = config.image_every = 3
    config.mesh.num_devices = 1
    for key, value in overrides.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


def logged(workdir, tag="train/loss") -> dict[int, float]:
    """Scalars from the TensorBoard event files the run wrote (step -> value)."""
    values = {}
    for path in sorted(Path(workdir).glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for v in event.summary.value:
                if v.tag == tag:
                    values[event.step] = float(tf.make_ndarray(v.tensor))
    return values


def test_a_few_steps_reduce_the_loss(tfds_dir, tmp_path):
    config = tiny_config(tfds_dir, steps=40, **{"optim.learning_rate": 3e-3})
    config.eval_every = config.checkpoint_every = config.image_every = 40
    trainer.train_and_evaluate(config, str(tmp_path))
    losses = logged(tmp_path)
    assert len(losses) == 40
    assert np.mean([losses[s] for s in range(36, 41)]) < 0.7 * np.mean(
        [losses[s] for s in range(1, 6)])
    assert (tmp_path / "metrics.json").exists()
    assert list((tmp_path / "recon").glob("step_*.png"))


def test_resume_repeats_the_uninterrupted_run(tfds_dir, tmp_path):
    trainer.train_and_evaluate(tiny_config(tfds_dir, steps=6), str(tmp_path / "straight"))
    trainer.train_and_evaluate(tiny_config(tfds_dir, steps=3), str(tmp_path / "resumed"))
    trainer.train_and_evaluate(tiny_config(tfds_dir, steps=6), str(tmp_path / "resumed"))
    straight, resumed = logged(tmp_path / "straight"), logged(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 7))
    np.testing.assert_allclose([resumed[s] for s in range(1, 7)],
                               [straight[s] for s in range(1, 7)], rtol=1e-6)


def test_a_spent_time_budget_validates_saves_and_the_run_resumes(tfds_dir, tmp_path):
    # A budget spent by the first log step: the run stops there like a finished one.
    config = tiny_config(tfds_dir, steps=6, train_seconds=1e-6, log_every=2)
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert checkpoints.create_manager(tmp_path / "run/checkpoints", 3, 3).latest_step() == 2
    assert json.loads((tmp_path / "run/metrics.json").read_text())["step"] == 2
    assert json.loads((tmp_path / "run/heartbeat.json").read_text())["state"] == "finished"
    assert sorted(logged(tmp_path / "run", "validation/loss/loss")) == [2]
    # Without the budget the same command finishes the run, as the uninterrupted one.
    trainer.train_and_evaluate(tiny_config(tfds_dir, steps=6, log_every=2), str(tmp_path / "run"))
    trainer.train_and_evaluate(tiny_config(tfds_dir, steps=6, log_every=2),
                               str(tmp_path / "straight"))
    resumed, straight = logged(tmp_path / "run"), logged(tmp_path / "straight")
    assert sorted(resumed) == [2, 4, 6]
    np.testing.assert_allclose([resumed[s] for s in (2, 4, 6)],
                               [straight[s] for s in (2, 4, 6)], rtol=1e-6)


def test_sharded_step_equals_single_device_and_restores_on_fewer_devices(tfds_dir, tmp_path):
    assert jax.device_count() == 8
    one = trainer.train_and_evaluate(tiny_config(tfds_dir, steps=3), str(tmp_path / "one"))
    eight = trainer.train_and_evaluate(
        tiny_config(tfds_dir, steps=3, **{"mesh.num_devices": 8}), str(tmp_path / "eight"))
    np.testing.assert_allclose([logged(tmp_path / "eight")[s] for s in (1, 2, 3)],
                               [logged(tmp_path / "one")[s] for s in (1, 2, 3)], rtol=2e-5)
    for a, b in zip(jax.tree.leaves(eight.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    assert len(jax.tree.leaves(eight.params)[0].sharding.device_set) == 8
    # Saved on 8 devices, resumed on 1: continues where it stopped.
    resumed = trainer.train_and_evaluate(tiny_config(tfds_dir, steps=5), str(tmp_path / "eight"))
    assert int(resumed.step) == 5
    assert len(jax.tree.leaves(resumed.params)[0].sharding.device_set) == 1
    assert sorted(logged(tmp_path / "eight")) == [1, 2, 3, 4, 5]


def test_fsdp_sharded_params_train_like_replicated_ones(tfds_dir, tmp_path):
    runs = {}
    for mode in ("replicated", "fsdp"):
        config = tiny_config(tfds_dir, steps=2, **{"mesh.num_devices": 8, "param_sharding": mode,
                                                   "model.width": 32})
        state = trainer.train_and_evaluate(config, str(tmp_path / mode))
        runs[mode] = (state, logged(tmp_path / mode))
    split = [x for x in jax.tree.leaves(runs["fsdp"][0].params)
             if not x.sharding.is_fully_replicated]
    assert split, "fsdp left every parameter replicated"
    np.testing.assert_allclose([runs["fsdp"][1][s] for s in (1, 2)],
                               [runs["replicated"][1][s] for s in (1, 2)], rtol=2e-5)


@pytest.mark.parametrize("quantizer", ["ema_vq", "fsq"])
def test_vq_and_fsq_both_train(tfds_dir, tmp_path, quantizer):
    config = tiny_config(tfds_dir, steps=40, **{"model.quantizer.type": quantizer,
                                                "model.quantizer.fsq_levels": (4, 4, 2),
                                                "optim.learning_rate": 3e-3})
    config.eval_every = config.checkpoint_every = config.image_every = 40
    trainer.train_and_evaluate(config, str(tmp_path))
    losses = logged(tmp_path)
    assert np.mean([losses[s] for s in (38, 39, 40)]) < 0.7 * np.mean([losses[s] for s in (1, 2, 3)])
    # The validation codebook numbers are those of the codes of the validation windows.
    from musicflax.train import run  # pylint: disable=g-import-not-at-top
    opened = run.open_run(tmp_path)
    codes = []
    windows = opened.task.eval_windows("validation")
    for batch in windows.eval_dataset(8).as_numpy_iterator():
        encoded = opened.task.model.apply(
            {"params": opened.state.params, **opened.state.model_state},
            opened.task.model_inputs(batch), method="encode")[0]
        codes.append(np.asarray(encoded)[batch["mask"]])
    used = len(np.unique(np.concatenate(codes)))
    size = 32 if quantizer == "ema_vq" else 4 * 4 * 2
    assert logged(tmp_path, "validation/codebook/level0/usage")[40] == pytest.approx(used / size)


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tfds_dir, tmp_path):
    config = tiny_config(tfds_dir, steps=50, **{"optim.learning_rate": 1e30,
                                                "optim.warmup_steps": 0,
                                                "optim.grad_clip": 1e30})
    config.checkpoint_every = 1
    with pytest.raises(trainer.NonFiniteLossError, match="loss became NaN/inf at step") as e:
        trainer.train_and_evaluate(config, str(tmp_path))
    manager = checkpoints.create_manager(tmp_path / "checkpoints", 1, 3)
    good = manager.latest_step()
    assert good is not None and f"last good checkpoint is step {good}" in str(e.value)
    restored = manager.restore(good)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["params"]))


def test_sigterm_saves_a_checkpoint_that_resumes(tfds_dir, tmp_path):
    workdir = tmp_path / "run"

    def command(steps):
        return [sys.executable, "-m", "musicflax.train", "--config=configs/default.py",
                f"--workdir={workdir}", f"--config.data.tfds_data_dir={tfds_dir}",
                f"--config.num_train_steps={steps}", "--config.batch_size=8",
                "--config.model.width=16", "--config.model.res_depth=1",
                "--config.model.quantizer.codebook_size=32",
                "--config.model.quantizer.code_dim=8", "--config.log_every=1",
                "--config.mesh.num_devices=1"]

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.Popen(command(100000), cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "step 3/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "checkpoint saved" in rest
    step = checkpoints.create_manager(workdir / "checkpoints", 1, 3).latest_step()
    assert step is not None and step >= 3
    resumed = subprocess.run(command(step + 1), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {step}" in resumed.stderr


def test_the_model_axis_splits_kernels_and_trains_like_one_device(tfds_dir, tmp_path):
    from jax.sharding import PartitionSpec  # pylint: disable=g-import-not-at-top
    runs = {}
    for name, devices, model in (("one", 1, 1), ("tensor", 8, 2), ("tensor_fsdp", 8, 4)):
        config = tiny_config(tfds_dir, steps=2, **{"mesh.num_devices": devices,
                                                   "mesh.model": model, "model.width": 32})
        if name == "tensor_fsdp":
            config.param_sharding = "fsdp"
        state = trainer.train_and_evaluate(config, str(tmp_path / name))
        runs[name] = (state, logged(tmp_path / name))
    for name in ("tensor", "tensor_fsdp"):
        specs = [x.sharding.spec for x in jax.tree.leaves(runs[name][0].params)]
        assert any("model" in spec for spec in specs), name
        np.testing.assert_allclose([runs[name][1][s] for s in (1, 2)],
                                   [runs["one"][1][s] for s in (1, 2)], rtol=2e-5)
    assert any(spec == PartitionSpec(None, "data", "model")
               for spec in (x.sharding.spec for x in jax.tree.leaves(runs["tensor_fsdp"][0].params)))


def test_every_validated_state_is_saved_with_its_metrics_and_the_best_is_kept(tfds_dir, tmp_path):
    config = tiny_config(tfds_dir, steps=7)
    config.eval_every, config.checkpoint_every, config.image_every = 2, 3, 0
    config.keep_checkpoints = 10
    config.best_metric, config.best_mode = "loss/loss", "min"
    trainer.train_and_evaluate(config, str(tmp_path))
    loss = logged(tmp_path, "validation/loss/loss")
    assert sorted(loss) == [2, 4, 6, 7]
    manager = checkpoints.create_manager(tmp_path / "checkpoints", 3, 1, "loss/loss", "min",
                                         read_only=True)
    # Validated steps are saved with their metrics (eval_every and checkpoint_every need not
    # divide each other); the interval's step 3 has none.
    assert sorted(manager.all_steps()) == [2, 3, 4, 6, 7]
    for step in (2, 4, 6, 7):
        assert manager.metrics(step)["loss/loss"] == pytest.approx(loss[step])
    assert manager.metrics(3) is None
    assert manager.best_step() == min(loss, key=loss.get)


def test_resume_refuses_a_config_that_changes_the_data_stream_or_the_model(tfds_dir, tmp_path):
    trainer.train_and_evaluate(tiny_config(tfds_dir, steps=3), str(tmp_path))
    for key, value, field in (("batch_size", 4, "batch_size"), ("seed", 1, "seed"),
                              ("model.width", 32, "model.width")):
        with pytest.raises(trainer.app.UserError) as e:
            trainer.train_and_evaluate(tiny_config(tfds_dir, steps=4, **{key: value}),
                                       str(tmp_path))
        assert str(e.value) == (f"{tmp_path} holds a run whose config differs in {field}: "
                                "resuming would change its data stream or model. Use another "
                                "--workdir, or --allow_config_change to resume anyway")
    # Extending the run is fine; so is forcing a change on purpose.
    assert int(trainer.train_and_evaluate(tiny_config(tfds_dir, steps=4), str(tmp_path)).step) == 4
    forced = trainer.train_and_evaluate(tiny_config(tfds_dir, steps=5, batch_size=16),
                                        str(tmp_path), allow_config_change=True)
    assert int(forced.step) == 5


def test_resume_refuses_a_source_whose_files_changed(tmp_path):
    import conftest  # pylint: disable=g-import-not-at-top
    source = conftest.write_musicnet(tmp_path / "src", with_audio=False)
    config = tiny_config(str(tmp_path / "tfds"), steps=2)
    config.data.source = str(source)
    config.data.split_scheme = "hash"
    config.data.validation_fraction = 0.5
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
    labels = source / "musicnet/train_labels/1727.csv"
    labels.write_text(labels.read_text() + "440000,441000,1,100,99.0,0.5,Quarter\n")
    config.num_train_steps = 3
    with pytest.raises(trainer.app.UserError, match="the source files or data options changed"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_release_freed_memory_hands_the_freed_heap_back():
    # 200 MB in 100-KB blocks (below malloc's mmap threshold: they live on the heap), then a
    # block above them, so that freeing them cannot shrink the heap from its top.
    script = """
import ctypes, ctypes.util, sys
from musicflax import app
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
blocks = [libc.malloc(100_000) for _ in range(2000)]
for b in blocks:
    ctypes.memset(b, 1, 100_000)
pin = libc.malloc(1000)
for b in blocks:
    libc.free(b)
before = rss_mb()
app.release_freed_memory()
print(before, rss_mb())
"""
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs /proc")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.split()
    before, after = map(float, out)
    assert before - after > 150, (before, after)


def test_building_a_train_step_loads_no_plotting_or_scipy():
    # The step is what benchmarks/peer_torch.py times and weighs: matplotlib and scipy (90 MB
    # of resident memory) belong to the figures, loaded when one is drawn.
    script = """
import sys
from configs import default
from musicflax.train import step
from musicflax.train.vqvae_model import VQVAEModel
config = default.get_config("runlocal")
model = VQVAEModel(config)
tx, _ = step.make_optimizer(config.optim, 10)
step.make_train_step(model, tx)
print(sorted(m for m in ("matplotlib", "scipy", "tensorflow") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.splitlines()[-1]
    assert out == "[]", out
