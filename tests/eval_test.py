"""Eval entry point: metrics on hand-computed cases, and a full report on a tiny trained model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from musicflax.models import metrics

REPO = Path(__file__).resolve().parents[1]


def roll_with_notes(t=40, c=8, seed=0):
    rng = np.random.default_rng(seed)
    roll = np.zeros((1, t, c), bool)
    for ch in range(c):
        for start in range(rng.integers(0, 4), t - 6, 10):
            roll[0, start:start + 5, ch] = True
    return roll


def test_perfect_reconstruction_scores_one_and_a_shift_scores_what_it_should():
    roll = roll_with_notes()
    onsets = metrics.onsets_from_roll(jnp.asarray(roll))
    for counts in (metrics.frame_counts(roll, roll), metrics.onset_counts(onsets, onsets)):
        assert metrics.f1(counts)["f1"] == 1.0
    # Shift by 1 frame: onsets still match within ±1; frames lose 1 of 5 per note each side.
    shifted = np.roll(roll, 1, axis=1)
    assert metrics.f1(metrics.onset_counts(metrics.onsets_from_roll(jnp.asarray(shifted)),
                                           onsets, tolerance=1))["f1"] == 1.0
    assert metrics.f1(metrics.frame_counts(shifted, roll))["f1"] == pytest.approx(4 / 5)
    # Shift by 2: no onset within ±1 -> onset F1 = 0.
    shifted2 = np.roll(roll, 2, axis=1)
    assert metrics.f1(metrics.onset_counts(metrics.onsets_from_roll(jnp.asarray(shifted2)),
                                           onsets, tolerance=1))["f1"] == 0.0
    # Masked windows do not count.
    empty = np.zeros_like(roll)
    counts = metrics.frame_counts(np.concatenate([roll, empty]), np.concatenate([roll, roll]),
                                  mask=np.array([True, False]))
    assert metrics.f1(counts)["f1"] == 1.0


def test_onset_peak_picking_by_hand():
    logit = lambda p: np.log(p / (1 - p))
    probs = np.full((1, 10, 3), 0.01)
    probs[0, 2:5, 0] = [0.2, 0.3, 0.2]   # spread over 3 frames: one onset at the middle
    probs[0, 6, 1] = 0.9                 # sharp
    probs[0, 5:7, 2] = [0.2, 0.2]        # a tie (the earlier frame is the peak), mass 0.41
    probs[0, 1, 2] = 0.15                # a peak with too little mass
    onsets = np.asarray(metrics.pick_onsets(jnp.asarray(logit(probs)), radius=1,
                                            threshold=0.5))
    expected = np.zeros_like(onsets)
    expected[0, 3, 0] = expected[0, 6, 1] = True
    np.testing.assert_array_equal(onsets, expected)
    # A lower threshold admits the tie's earlier frame, still not the small peak.
    onsets = np.asarray(metrics.pick_onsets(jnp.asarray(logit(probs)), 1, 0.4))
    expected[0, 5, 2] = True
    np.testing.assert_array_equal(onsets, expected)


def test_uniform_codes_have_perplexity_k():
    stats = metrics.histogram_stats(np.full(64, 10))
    assert stats["perplexity"] == pytest.approx(64) and stats["normalized_entropy"] == \
        pytest.approx(1.0) and stats["usage"] == 1.0 and stats["dead_codes"] == 0
    one = metrics.histogram_stats(np.eye(64)[3] * 50)
    assert one["perplexity"] == pytest.approx(1.0) and one["usage"] == 1 / 64


def run_eval(*args):
    return subprocess.run([sys.executable, "-m", "musicflax.eval", "--config=configs/eval.py:runlocal",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=900)


def test_report_has_every_section(runs):
    root, _ = runs
    proc = run_eval(f"--workdir={root / 'vqvae'}", f"--config.evals.prior.workdir={root / 'prior'}",
                    f"--config.evals.generated.workdir={root / 'prior'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = root / "vqvae" / "eval" / "30" / "validation"
    report = json.loads((out / "report.json").read_text())
    for section in ("codebook", "reconstruction", "probes", "latent_space", "prior", "generated"):
        assert section in report and "skipped" not in report[section], section
    assert report["split_ids"] and report["windows"] > 0 and report["config_hash"]
    level = report["codebook"]["level0"]
    assert 0 < level["usage"] <= 1 and 1 <= level["perplexity"] <= 32
    assert level["bitrate_max"] == pytest.approx(level["codes_per_second"] * 5)
    assert 0 <= report["reconstruction"]["onset_f1"] <= 1
    probe = report["probes"]["composer_level0"]
    assert 0 <= probe["accuracy"] <= 1 and 0 < probe["majority_baseline"] <= 1
    prior = report["prior"]
    assert prior["uniform_bits"] == pytest.approx(5.0) and prior["bits_per_code"] > 0
    assert "bigram_xent_bits" in prior
    for name in (report["codebook"]["level0"]["figure"], report["latent_space"]["pca_figure"],
                 *report["reconstruction"]["figures"]):
        assert (out / name).stat().st_size > 1000
    assert (out / report["latent_space"]["interpolation_midi"]).exists()
    assert list(out.glob("events.out.tfevents.*"))


def test_clear_errors_for_missing_workdir_and_corrupt_checkpoint(runs, tmp_path):
    root, _ = runs
    proc = run_eval(f"--workdir={tmp_path / 'nowhere'}")
    assert proc.returncode == 2 and "not a musicflax workdir" in proc.stderr.splitlines()[-1]
    broken = tmp_path / "broken"
    shutil.copytree(root / "vqvae", broken, ignore=shutil.ignore_patterns("eval", "codes"))
    for f in (broken / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(b"corrupt")
    proc = run_eval(f"--workdir={broken}")
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("error:"), \
        proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_waveform_report_has_audio_metrics_and_the_pitch_probe(tmp_path):
    import conftest  # pylint: disable=g-import-not-at-top
    from configs import waveform  # pylint: disable=g-import-not-at-top
    from musicflax.data import musicnet  # pylint: disable=g-import-not-at-top
    from musicflax.train import trainer  # pylint: disable=g-import-not-at-top

    source = conftest.write_musicnet(tmp_path / "src", with_audio=False)
    (source / musicnet.SAMPLE_SET_MARKER).write_text(json.dumps(
        {"name": "tiny", "audio": "synthesized",
         "splits": {"musicnet": {"validation": [1728, 1733]}}}))
    config = waveform.get_config("runlocal")
    config.data.update(source=str(source), tfds_data_dir=str(tmp_path / "tfds"))
    config.model.update(width=8, res_depth=1, levels=1, downs_t=(3,), strides_t=(2,))
    config.model.quantizer.update(codebook_size=16, code_dim=4, kmeans_iters=1)
    config.update(num_train_steps=2, batch_size=8, eval_every=2, checkpoint_every=2,
                  image_every=0)
    config.mesh.num_devices = 1
    trainer.train_and_evaluate(config, str(tmp_path / "wave"))
    proc = run_eval(f"--workdir={tmp_path / 'wave'}", "--config.evals.reconstruction.figures=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "wave/eval/2/validation/report.json").read_text())
    recon = report["reconstruction"]
    assert recon["spectral_convergence_db"] < 10 and recon["si_sdr_db"] < 100
    assert recon["log_mel_l1"] > 0 and recon["mr_stft"] > 0
    pitch = report["probes"]["pitch"]
    assert 0 <= pitch["latent_average_precision"] <= 1
    assert 0 <= pitch["raw_spectrum_average_precision"] <= 1
    assert report["sample_rate"] == 16000


def test_eval_on_a_second_dataset_and_on_the_train_split(runs, tmp_path):
    import conftest  # pylint: disable=g-import-not-at-top
    from data_sources_test import by_hash  # pylint: disable=g-import-not-at-top
    root, tfds_dir = runs
    quartets = conftest.write_quartets(tmp_path / "quartets")
    only = ("--config.evals.probes.enabled=False", "--config.evals.latent_space.enabled=False",
            "--config.evals.reconstruction.figures=1")
    proc = run_eval(f"--workdir={root / 'vqvae'}", "--split=test", *only,
                    f"--config.data.source={quartets}", "--config.data.split_scheme=hash")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (path,) = (root / "vqvae/eval/30").glob("src_labels_hash_*/test/report.json")
    report = json.loads(path.read_text())
    ids = [r for r, *_ in conftest.QUARTETS]
    assert report["split_ids"] == by_hash(ids, 0.1)
    assert report["data"]["source"] == str(quartets)
    assert report["data"]["split_rule"].startswith("hash: ")
    assert report["data"]["split_ids"]["test"] == by_hash(ids, 0.1)
    assert report["windows"] == 4  # 8 s recordings hold one 4.1 s window each
    # The run's own data, train split; the model's windows cannot be changed.
    proc = run_eval(f"--workdir={root / 'vqvae'}", "--split=train", *only)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((root / "vqvae/eval/30/train/report.json").read_text())
    assert report["split_ids"] == report["data"]["split_ids"]["train"]
    assert len(report["split_ids"]) == json.loads(
        (root / "vqvae/data.json").read_text())["split_ids"]["train"].__len__()
    proc = run_eval(f"--workdir={root / 'vqvae'}", *only,
                    "--config.data.instrument_groups=all:1,7,41,42,43,44,61,69,71,72,74")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: data.instrument_groups='all:1,7,41,42,43,44,61,69,71,72,74' has 1 groups; the "
        "model was trained on 3 ('keyboard:1,7;strings:41,42,43,44;winds:61,69,71,72,74')")
