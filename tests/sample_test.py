"""Stage two end to end: codes cached from a tiny VQ-VAE, a prior trained through the shared
loop (with exact resume), and sampling to MIDI / WAV / PNG that reads back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pretty_midi
import pytest
from scipy.io import wavfile

from conftest import prior_config_for
from musicflax.train import codes, run, trainer
from train_test import logged

REPO = Path(__file__).resolve().parents[1]


def test_codes_are_cached_and_a_stale_cache_is_rebuilt(runs):
    root, _ = runs
    vqvae = run.open_run(root / "vqvae")
    (path,) = (root / "vqvae" / "codes" / "step_30").glob("*/level0_validation.npz")
    first = codes.encode_split(vqvae, "validation")
    data = dict(np.load(path))
    fingerprint = json.loads(str(data["fingerprint"]))
    fingerprint["vqvae_config"] = "something else"
    data["fingerprint"] = np.asarray(json.dumps(fingerprint))
    data["codes"] = np.zeros_like(data["codes"])
    np.savez(path, **data)
    again = codes.encode_split(vqvae, "validation")
    np.testing.assert_array_equal(again.codes, first.codes)
    assert json.loads(str(np.load(path)["fingerprint"]))["vqvae_config"] != "something else"
    # 128-frame windows at the default hop 1 -> 128 codes a window, whole windows a recording.
    assert (np.diff(first.offsets) % 128 == 0).all() and first.vocab_size == 32


def test_prior_trains_through_the_shared_loop_and_resumes_exactly(runs):
    root, tfds_dir = runs
    losses = logged(root / "prior")
    assert sorted(losses) == list(range(1, 7))
    resumed = root / "prior_resumed"
    trainer.train_and_evaluate(prior_config_for(root, tfds_dir, steps=3), str(resumed))
    trainer.train_and_evaluate(prior_config_for(root, tfds_dir, steps=6), str(resumed))
    again = logged(resumed)
    np.testing.assert_allclose([again[s] for s in range(1, 7)],
                               [losses[s] for s in range(1, 7)], rtol=1e-6)
    # Validation bits are the nats of every validation code, in bits: recomputed here.
    prior = run.open_run(root / "prior")
    nll, count = 0.0, 0
    for batch in prior.task.eval_windows("validation").eval_dataset(8).as_numpy_iterator():
        out = prior.task.eval_outputs(prior.state.params, {}, batch)
        nll += float(np.sum(np.asarray(out["nll"])[batch["mask"]]))
        count += int(np.sum(np.asarray(out["codes"])[batch["mask"]]))
    assert logged(root / "prior", "validation/prior/bits_per_code")[6] == pytest.approx(
        nll / count / np.log(2), rel=1e-5)


def test_tempered_bits_are_those_of_the_scaled_softmax(runs):
    root, _ = runs
    prior = run.open_run(root / "prior")
    batch = next(prior.task.eval_windows("validation").eval_dataset(8).as_numpy_iterator())
    out = prior.task.eval_outputs(prior.state.params, {}, batch, temperatures=(0.5, 1.0, 2.0))
    logits = np.asarray(prior.task.model.apply({"params": prior.state.params}, batch["codes"],
                                               batch["composer"], batch["ensemble"]), np.float64)
    for j, t in enumerate((0.5, 1.0, 2.0)):
        scaled = logits / t
        log_p = scaled - scaled.max(-1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
        nats = -np.take_along_axis(log_p, batch["codes"][..., None], -1)[..., 0].sum(1)
        np.testing.assert_allclose(np.asarray(out["nll_tempered"])[:, j], nats, rtol=1e-4)
    np.testing.assert_allclose(out["nll_tempered"][:, 1], out["nll"], rtol=1e-6)


def sample(root, out, *extra):
    proc = subprocess.run(
        [sys.executable, "-m", "musicflax.sample", f"--workdir={root / 'prior'}",
         f"--out={out}", "--num=2", "--seconds=6", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "settings.json").read_text())


def test_sampling_writes_midi_wav_png_and_is_deterministic(runs, tmp_path):
    root, _ = runs
    settings = sample(root, tmp_path / "a", "--seed=3", "--composer=Bach",
                      "--ensemble=String Quartet")
    sample(root, tmp_path / "b", "--seed=3", "--composer=Bach", "--ensemble=String Quartet")
    sample(root, tmp_path / "c", "--seed=4", "--composer=Bach", "--ensemble=String Quartet")
    assert settings["composer"] == "Bach" and len(settings["files"]) == 2
    for i in range(2):
        a, b = (tmp_path / d / f"sample_{i:02d}.mid" for d in "ab")
        assert a.read_bytes() == b.read_bytes()
        rate, wave = wavfile.read(tmp_path / "a" / f"sample_{i:02d}.wav")
        assert rate == 22050 and len(wave) >= 6 * rate
        assert (tmp_path / "a" / f"sample_{i:02d}.png").stat().st_size > 1000
        song = pretty_midi.PrettyMIDI(str(a))
        programs = {inst.program for inst in song.instruments}
        # Instruments are the groups' General MIDI programs (0-based in the file).
        assert programs <= {0, 40, 60}
        assert song.get_end_time() <= 6.0 + 1e-6
    # Compared as codes: the 20-step VQ-VAE here may decode different codes to the same
    # (near-silent) MIDI.
    codes = {d: [np.load(tmp_path / d / f"sample_{i:02d}_codes.npy") for i in range(2)]
             for d in "abc"}
    assert all((x == y).all() for x, y in zip(codes["a"], codes["b"]))
    assert any((x != y).any() for x, y in zip(codes["a"], codes["c"]))


def test_priming_and_bad_flags(runs, tmp_path):
    root, _ = runs
    rec = int(codes.encode_split(run.open_run(root / "vqvae"), "train").ids[0])
    settings = sample(root, tmp_path / "p", f"--prime={rec}@2")
    assert settings["prime"] == f"{rec}@2"
    proc = subprocess.run([sys.executable, "-m", "musicflax.sample", f"--workdir={root / 'prior'}",
                           f"--out={tmp_path / 'x'}", "--composer=Nobody"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "unknown composer 'Nobody'" in proc.stderr.splitlines()[-1]


def test_samples_never_overwrite_and_record_the_command(runs, tmp_path):
    root, _ = runs
    prior = root / "prior"

    def call(*extra):
        return subprocess.run([sys.executable, "-m", "musicflax.sample", f"--workdir={prior}",
                               "--num=1", "--seconds=2", *extra], cwd=REPO,
                              capture_output=True, text=True, timeout=600)

    before = set((prior / "samples").glob("*")) if (prior / "samples").exists() else set()
    for _ in range(2):
        assert call().returncode == 0
    first, second = sorted(set((prior / "samples").glob("*")) - before)
    assert first.name.endswith("_seed0") and second.name.endswith("_seed0")
    assert int(second.name[:3]) == int(first.name[:3]) + 1
    settings = json.loads((first / "settings.json").read_text())
    assert settings["command"].endswith(f"--workdir={prior} --num=1 --seconds=2")
    assert settings["vqvae_step"] == 30 and settings["vqvae_workdir"] == str(root / "vqvae")
    proc = call(f"--out={first}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --out={first} already holds files; samples never replace others: give a new "
        "folder")


def test_a_tensor_parallel_prior_trains_like_one_device(runs, tmp_path):
    root, tfds_dir = runs
    losses, states = {}, {}
    for name, devices, model in (("one", 1, 1), ("tensor", 8, 2)):
        config = prior_config_for(root, tfds_dir, steps=2)
        config.mesh.update(num_devices=devices, model=model)
        states[name] = trainer.train_and_evaluate(config, str(tmp_path / name))
        losses[name] = logged(tmp_path / name)
    split = [x for x in jax.tree.leaves(states["tensor"].params) if "model" in x.sharding.spec]
    assert len(split) >= 4  # attention, MLP and embedding kernels
    np.testing.assert_allclose([losses["tensor"][s] for s in (1, 2)],
                               [losses["one"][s] for s in (1, 2)], rtol=2e-5)


def test_a_prior_stays_pinned_to_the_vqvae_step_it_was_trained_on(runs, tmp_path):
    import os  # pylint: disable=g-import-not-at-top
    import shutil  # pylint: disable=g-import-not-at-top
    from train_test import tiny_config  # pylint: disable=g-import-not-at-top
    root, tfds_dir = runs
    vqvae = tmp_path / "vqvae"
    shutil.copytree(root / "vqvae", vqvae, ignore=shutil.ignore_patterns("eval", "codes",
                                                                         "samples"))
    config = prior_config_for(tmp_path, tfds_dir, steps=3)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # a relative workdir, as a user types it
        config.prior.vqvae_workdir = "vqvae"
        trainer.train_and_evaluate(config, str(tmp_path / "prior"))
    finally:
        os.chdir(cwd)
    saved = run.load_config(tmp_path / "prior").prior
    assert (saved.vqvae_workdir, saved.vqvae_step) == (str(vqvae), 30)
    # The VQ-VAE trains on; the prior resumes, samples and is evaluated on step 30.
    more = tiny_config(tfds_dir, steps=33, **{"optim.learning_rate": 3e-3,
                                              "model.output_bias": -2.0})
    more.eval_every = more.checkpoint_every = 30
    trainer.train_and_evaluate(more, str(vqvae))
    resumed = prior_config_for(tmp_path, tfds_dir, steps=5)  # vqvae_step=-1 again
    trainer.train_and_evaluate(resumed, str(tmp_path / "prior"))
    assert json.loads((tmp_path / "prior" / "data.json").read_text())["vqvae_step"] == 30
    assert int(run.open_run(tmp_path / "prior").task.vqvae.state.step) == 30
    settings = sample(tmp_path, tmp_path / "s")
    assert settings["vqvae_step"] == 30
    proc = subprocess.run([sys.executable, "-m", "musicflax.eval", "--config=configs/eval.py:runlocal",
                           f"--workdir={vqvae}", f"--config.evals.prior.workdir={tmp_path / 'prior'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: the prior in {tmp_path / 'prior'} was trained on step 30 of {vqvae}; evaluate "
        f"that (--workdir={vqvae} --step=30)")
    # A VQ-VAE whose config changed under the prior is refused.
    saved_config = json.loads((vqvae / "config.json").read_text())
    saved_config["model"]["output_bias"] = 0.0
    (vqvae / "config.json").write_text(json.dumps(saved_config))
    with pytest.raises(trainer.app.UserError, match="config.json changed since the prior"):
        run.open_run(tmp_path / "prior")
