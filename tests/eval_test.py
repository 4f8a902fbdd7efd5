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
from scipy.io import wavfile

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


def run_eval(*args):
    return subprocess.run([sys.executable, "-m", "musicflax.eval", "--config=configs/eval.py:runlocal",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def report(runs):
    """The offline report of the tiny VQ-VAE and prior, validation split."""
    root, _ = runs
    proc = run_eval(f"--workdir={root / 'vqvae'}", f"--config.evals.prior.workdir={root / 'prior'}",
                    f"--config.evals.generated.workdir={root / 'prior'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = root / "vqvae" / "eval" / "30" / "validation"
    return json.loads((out / "report.json").read_text()), out


def test_report_has_every_section_and_its_files(report):
    report, out = report
    for section in ("loss", "codebook", "reconstruction", "probes", "latent_space", "prior",
                    "generated"):
        assert section in report and "skipped" not in report[section], section
    assert report["split_ids"] == report["data"]["split_ids"]["validation"]
    for name in (report["codebook"]["level0"]["figure"], report["latent_space"]["pca_figure"],
                 *report["reconstruction"]["figures"]):
        assert (out / name).stat().st_size > 1000
    assert (out / report["latent_space"]["interpolation_midi"]).exists()
    assert list(out.glob("events.out.tfevents.*"))


def test_training_validation_and_the_offline_report_agree(runs, report):
    from train_test import logged  # pylint: disable=g-import-not-at-top
    root, _ = runs
    report, _ = report
    for key in ("loss/loss", "reconstruction/frame_f1", "reconstruction/note_onset_f1",
                "reconstruction/onset_channel_f1", "codebook/level0/usage",
                "codebook/level0/perplexity"):
        section, name = key.split("/", 1)
        value = report[section]
        for part in name.split("/"):
            value = value[part]
        assert logged(root / "vqvae", f"validation/{key}")[30] == pytest.approx(value, rel=1e-6)


def test_codebook_numbers_are_those_of_the_split_codes(runs, report):
    from musicflax.train import run  # pylint: disable=g-import-not-at-top
    root, _ = runs
    report, _ = report
    opened = run.open_run(root / "vqvae")
    codes = []
    for batch in opened.task.eval_windows("validation").eval_dataset(16).as_numpy_iterator():
        encoded = opened.task.model.apply(
            {"params": opened.state.params, **opened.state.model_state},
            opened.task.model_inputs(batch), method="encode")[0]
        codes.append(np.asarray(encoded)[batch["mask"]])
    counts = np.bincount(np.concatenate(codes).ravel(), minlength=32)
    p = counts / counts.sum()
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    level = report["codebook"]["level0"]
    assert level["usage"] == pytest.approx(np.mean(counts > 0))
    assert level["perplexity"] == pytest.approx(np.exp(entropy), rel=1e-5)
    assert level["bitrate_max"] == pytest.approx(31.25 * 5)
    assert level["bitrate_entropy"] == pytest.approx(31.25 * entropy / np.log(2), rel=1e-5)


def test_note_scores_are_recomputed_from_the_written_label_files(runs, report):
    import mir_eval  # pylint: disable=g-import-not-at-top
    from musicflax.data import musicnet  # pylint: disable=g-import-not-at-top
    from musicflax.train import run  # pylint: disable=g-import-not-at-top
    root, _ = runs
    report, out = report
    recon = report["reconstruction"]
    windows = run.open_run(root / "vqvae").task.eval_windows("validation")
    data, covered = windows.data, {}
    for r, start in zip(windows.rec, windows.start):
        covered[r] = max(covered.get(r, 0), start + windows.window)
    tp = ref_total = est_total = 0
    for r, rec_id in enumerate(data.ids.tolist()):
        est = musicnet.read_labels(out / "notes" / "level0" / f"{rec_id}.csv")
        assert (out / "notes" / "level0" / f"{rec_id}.mid").exists()
        mine = (data.note_rec == r) & (data.note_start < covered[r])
        end = np.minimum(np.maximum(data.note_offset[mine], data.note_onset[mine] + 1 / 31.25),
                         covered[r] / 31.25)
        ref_key = data.note_group[mine] * 128 + data.note_pitch[mine]
        groups = {1: 0, 41: 1, 61: 2}
        est_key = np.array([groups[i] for i in est.instrument.tolist()], int) * 128 + est.note
        ref_total, est_total = ref_total + mine.sum(), est_total + len(est)
        for key in np.intersect1d(ref_key, est_key):
            r_iv = np.stack([data.note_onset[mine][ref_key == key], end[ref_key == key]], 1)
            e = est_key == key
            e_iv = np.stack([est.start_time[e], est.end_time[e]], 1) / musicnet.LABEL_RATE
            hz = np.full(len(r_iv), 440.0), np.full(len(e_iv), 440.0)
            tp += len(mir_eval.transcription.match_notes(r_iv, hz[0], e_iv, hz[1],
                                                         offset_ratio=None))
    assert (ref_total, est_total) == (recon["reference_notes"], recon["estimated_notes"])
    assert est_total > 0
    assert recon["note_onset_precision"] == pytest.approx(tp / est_total, abs=1e-9)
    assert recon["note_onset_recall"] == pytest.approx(tp / ref_total, abs=1e-9)
    assert recon["onset_tolerance_seconds"] == 0.05 and recon["onset_tolerance_frames"] == 1


def test_probes_and_generated_use_the_whole_data(runs, report):
    root, _ = runs
    report, _ = report
    train_ids = json.loads((root / "vqvae" / "data.json").read_text())["split_ids"]["train"]
    composer = report["probes"]["composer_level0"]
    # 256 probe windows over 264 train recordings: one from each of 256... or from all.
    assert composer["train_recordings"] == min(len(train_ids), composer["train_windows"])
    assert sum(composer["eval_class_counts"].values()) == report["windows"]
    assert sum(composer["train_class_counts"].values()) == composer["train_windows"]
    assert report["generated"]["held_out_windows"] == report["windows"]
    prior = report["prior"]
    assert prior["uniform_bits"] == pytest.approx(5.0)
    assert prior["reduction_vs_unigram"] == pytest.approx(
        1 - prior["bits_per_code"] / prior["unigram_xent_bits"])
    tempered = prior["bits_per_code_at_temperature"]
    assert list(tempered) == ["0.9", "1", "1.1", "1.2"]
    assert tempered["1"] == pytest.approx(prior["bits_per_code"], rel=1e-6)
    assert prior["best_temperature"] == float(min(tempered, key=tempered.get))


def test_validation_loss_does_not_depend_on_the_batch_size(runs, tmp_path):
    root, _ = runs
    losses = []
    for batch_size in (8, 48):
        proc = run_eval(f"--workdir={root / 'vqvae'}", f"--config.batch_size={batch_size}",
                        *[f"--config.evals.{e}.enabled=False" for e in
                          ("reconstruction", "probes", "latent_space", "prior", "generated",
                           "codebook")])
        assert proc.returncode == 0, proc.stderr[-3000:]
        folder = sorted((root / "vqvae" / "eval" / "30").glob("validation*"))[-1]
        losses.append(json.loads((folder / "report.json").read_text())["loss"]["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_a_second_report_never_overwrites_the_first(runs, report):
    root, _ = runs
    first = (report[1] / "report.json").read_text()
    before = set((root / "vqvae" / "eval" / "30").glob("validation*"))
    proc = run_eval(f"--workdir={root / 'vqvae'}", *[f"--config.evals.{e}.enabled=False" for e in
                    ("reconstruction", "probes", "latent_space", "prior", "generated")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (report[1] / "report.json").read_text() == first
    (new,) = set((root / "vqvae" / "eval" / "30").glob("validation*")) - before
    assert new.name == f"validation.{len(before) + 1}" and (new / "report.json").exists()


def test_code_search_at_evaluation_is_recorded_and_lowers_the_reconstruction_loss(runs, report):
    root, _ = runs
    plain, _ = report
    proc = run_eval(f"--workdir={root / 'vqvae'}", "--config.encode.search_candidates=4",
                    "--config.encode.search_sweeps=1", *[f"--config.evals.{e}.enabled=False"
                                                         for e in ("probes", "latent_space",
                                                                   "prior", "generated")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = max((root / "vqvae" / "eval" / "30").glob("validation*"),
                 key=lambda p: p.stat().st_mtime)
    searched = json.loads((folder / "report.json").read_text())
    assert plain["encode"] == {"search_candidates": 0, "search_sweeps": 2}
    assert searched["encode"] == {"search_candidates": 4, "search_sweeps": 1}
    assert searched["loss"]["recon_loss"] < plain["loss"]["recon_loss"]
    # The codes change, the encoder's commitment (to its nearest codes) does not.
    assert searched["loss"]["commit_loss"] == pytest.approx(plain["loss"]["commit_loss"],
                                                            rel=1e-6)


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
    # A workdir saved by another version, whose model has a field this one lacks.
    newer = tmp_path / "newer"
    shutil.copytree(root / "vqvae", newer, ignore=shutil.ignore_patterns("eval", "codes"))
    saved = json.loads((newer / "config.json").read_text())
    saved["model"]["future_field"] = 0.5
    (newer / "config.json").write_text(json.dumps(saved))
    proc = run_eval(f"--workdir={newer}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1] == (
        f"error: {newer}/config.json: model config field(s) future_field unknown to this "
        "version's VQVAE")


def test_waveform_report_has_audio_metrics_and_the_pitch_probe(tmp_path):
    import conftest  # pylint: disable=g-import-not-at-top
    from configs import waveform  # pylint: disable=g-import-not-at-top
    from musicflax.eval import audio_metrics  # pylint: disable=g-import-not-at-top
    from musicflax.train import run, trainer  # pylint: disable=g-import-not-at-top

    source = conftest.write_synthesized_tiny(tmp_path / "src")
    config = waveform.get_config("runlocal")
    config.data.update(source=str(source), tfds_data_dir=str(tmp_path / "tfds"))
    config.model.update(width=8, res_depth=1, levels=2, downs_t=(3, 2), strides_t=(2, 2))
    config.model.quantizer.update(codebook_size=16, code_dim=4, kmeans_iters=1)
    config.update(num_train_steps=2, batch_size=8, eval_every=2, checkpoint_every=2,
                  image_every=0)
    config.mesh.num_devices = 1
    trainer.train_and_evaluate(config, str(tmp_path / "wave"))
    proc = run_eval(f"--workdir={tmp_path / 'wave'}", "--config.evals.reconstruction.figures=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "wave/eval/2/validation/report.json").read_text())
    recon = report["reconstruction"]
    # Recomputed from the model: the split's mean ratio, converted once; window means.
    opened = run.open_run(tmp_path / "wave")
    refs, ests = [], []
    for batch in opened.task.eval_windows("validation").eval_dataset(8).as_numpy_iterator():
        outputs, _ = opened.task.model.apply(
            {"params": opened.state.params, **opened.state.model_state},
            opened.task.model_inputs(batch), train=False)
        refs.append(batch["inputs"][batch["mask"], :, 0])
        ests.append(np.asarray(outputs[0])[batch["mask"], :, 0])
    ref, est = np.concatenate(refs), np.concatenate(ests)
    ratio = audio_metrics.spectral_convergence_ratio(ref, est)
    assert recon["spectral_convergence_db"] == pytest.approx(
        20 * np.log10(np.mean(ratio)), abs=1e-4)
    assert recon["si_sdr_db"] == pytest.approx(
        np.mean(audio_metrics.si_sdr(ref, est, reduce=False)), abs=1e-3)
    # The first window and each level's reconstruction of it, to listen to and to look at.
    out = tmp_path / "wave/eval/2/validation"
    rate, original = wavfile.read(out / "reconstruction_0_original.wav")
    assert rate == 16000
    np.testing.assert_allclose(original, ref[0], atol=1e-6)
    np.testing.assert_allclose(wavfile.read(out / "reconstruction_0.wav")[1],
                               np.clip(est[0], -1, 1), atol=1e-4)
    assert wavfile.read(out / "reconstruction_0_level1.wav")[1].shape == ref[0].shape
    assert {"reconstruction_0.png", "reconstruction_0_level1.png"} <= set(
        recon["figures"])
    pitch = report["probes"]["pitch"]
    assert pitch["eval_frames"] == len(ref) * 100
    # The synthesizer's notes are clean harmonic tones: semitone-resolution spectra find them.
    assert pitch["raw_spectrum_average_precision"] > 0.6
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
