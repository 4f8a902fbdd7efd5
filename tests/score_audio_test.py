"""Score-to-audio: the oscillators by hand, and a tiny model trained on rendered windows that
renders a given MIDI file and a prior's samples, with the errors a user can run into."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pretty_midi
import pytest
from scipy.io import wavfile

from musicflax.models import score_audio

REPO = Path(__file__).resolve().parents[1]


def test_oscillators_sum_partials_with_amplitudes_ramping_between_frames():
    hop, rate = 8, 16000
    model = score_audio.ScoreToAudio(num_groups=1, hop=hop, sample_rate=rate, harmonics=2,
                                     min_pitch=69, max_pitch=108)
    amplitude = np.zeros((1, 3, 40, 2), np.float32)  # [B, F, pitches 69..108, partials]
    amplitude[0, :, 0, 0] = 0.5                      # A4's fundamental, held
    amplitude[0, 1:, 1, 1] = 1.0                     # A#4's second partial from frame 1
    amplitude[0, :, 39, 1] = 1.0                     # C8's second partial: above Nyquist
    wave = np.asarray(model._oscillators(jnp.asarray(amplitude)))[0, :, 0]
    t = np.arange(3 * hop)
    a_sharp = 440 * 2 ** (1 / 12)
    # Frame values sit at each frame's first sample, linear in between (the last one held).
    ramp = np.clip((t - 0) / hop, 0, 1)
    expected = 0.5 * np.sin(2 * np.pi * 440 * t / rate) + ramp * np.sin(
        2 * np.pi * 2 * a_sharp * t / rate)
    np.testing.assert_allclose(wave, expected, atol=1e-5)


def test_a_voice_is_silent_once_its_release_is_over():
    model = score_audio.ScoreToAudio(num_groups=1, hop=8, sample_rate=16000, width=4, depth=1,
                                     harmonics=2, release_frames=3)
    score = np.zeros((1, 12, 256), np.float32)
    score[0, 0:2, 60] = score[0, 0, 128 + 60] = 1.0  # C4 for two frames, with its onset
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(score))
    wave = np.asarray(model.apply(params, jnp.asarray(score)))[0, :, 0]
    # On for frames 0-1, releasing over 2-4; frame 4 ramps down to frame 5's zero.
    assert np.abs(wave[:8]).max() > 0 and not wave[5 * 8:].any()


def _midi(path: Path, notes) -> Path:
    song = pretty_midi.PrettyMIDI()
    for program, pitch, start, end in notes:
        track = pretty_midi.Instrument(program=program)
        track.notes.append(pretty_midi.Note(80, pitch, start, end))
        song.instruments.append(track)
    song.write(str(path))
    return path


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "musicflax.sample", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def score_run(tmp_path_factory):
    """A tiny score-to-audio model trained on the synthesized audio of a tiny MusicNet folder
    (a violin or piano note every 0.5 s)."""
    import conftest  # pylint: disable=g-import-not-at-top
    from configs import score_audio as score_config  # pylint: disable=g-import-not-at-top
    from musicflax.train import trainer  # pylint: disable=g-import-not-at-top
    root = tmp_path_factory.mktemp("score_audio")
    source = conftest.write_synthesized_tiny(root / "src")
    config = score_config.get_config("runlocal")
    config.data.update(source=str(source), tfds_data_dir=str(root / "tfds"))
    config.update(num_train_steps=60, batch_size=8, log_every=1, eval_every=60,
                  checkpoint_every=60, image_every=0)
    config.optim.update(learning_rate=1e-2, warmup_steps=5)
    config.mesh.num_devices = 1
    trainer.train_and_evaluate(config, str(root / "run"))
    return root


def test_training_lowers_the_loss_and_eval_scores_the_rendition(score_run):
    from train_test import logged  # pylint: disable=g-import-not-at-top
    losses = logged(score_run / "run")
    assert np.mean([losses[s] for s in range(51, 61)]) < 0.8 * np.mean(
        [losses[s] for s in range(1, 6)])
    proc = subprocess.run([sys.executable, "-m", "musicflax.eval",
                           "--config=configs/eval.py:runlocal", f"--workdir={score_run / 'run'}",
                           "--config.evals.reconstruction.figures=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = score_run / "run/eval/60/validation"
    report = json.loads((out / "report.json").read_text())
    assert set(report["reconstruction"]) >= {"spectral_convergence_db", "mr_stft",
                                             "log_mel_l1", "si_sdr_db"}
    assert "skipped" in report["codebook"] and "skipped" in report["latent_space"]
    pitch = report["probes"]["pitch"]
    # The transcription probe on the renditions, against the score they were rendered from.
    # A scorer that knows nothing reaches the fraction of sounding (frame, pitch) pairs.
    from musicflax.train import run  # pylint: disable=g-import-not-at-top
    labels = [b["pitch_labels"][b["mask"]] for b in run.open_run(score_run / "run").task
              .eval_windows("validation").eval_dataset(8).as_numpy_iterator()]
    chance = np.mean(np.concatenate(labels) > 0)
    assert pitch["level0_audio_average_precision"] > 2 * chance
    assert pitch["eval_frames"] == report["loss"]["windows"] * 60
    rate, original = wavfile.read(out / "reconstruction_0_original.wav")
    assert rate == 16000 and wavfile.read(out / "reconstruction_0.wav")[1].shape == original.shape


def test_a_given_midi_renders_at_its_pitch_and_length(score_run, tmp_path):
    song = _midi(tmp_path / "a4.mid", [(40, 69, 0.5, 1.5)])  # violin A4 for a second
    runs = [tmp_path / "one", tmp_path / "two"]
    for out in runs:
        proc = _cli(f"--render_with={score_run / 'run'}", f"--midi={song}", f"--out={out}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x real time" in proc.stdout
    rate, wave = wavfile.read(runs[0] / "a4_score_audio.wav")
    assert rate == 16000 and len(wave) == 1.5 * 16000
    assert (runs[0] / "a4_score_audio.wav").read_bytes() == \
        (runs[1] / "a4_score_audio.wav").read_bytes()
    note = wave[int(0.6 * rate):int(1.4 * rate)]
    power = np.abs(np.fft.rfft(note * np.hanning(len(note)))) ** 2
    hz = np.fft.rfftfreq(len(note), 1 / rate)
    # Only the A4 voice sounds: its energy is at the partials of 440 Hz (the 60-step model
    # has not learnt the violin's balance between them yet).
    near = np.abs(hz - 440 * np.maximum(1, np.round(hz / 440))) < 10
    assert power[near].sum() > 0.95 * power.sum()
    assert np.sqrt(np.mean(note ** 2)) > 3 * np.sqrt(np.mean(wave[:int(0.4 * rate)] ** 2))
    settings = json.loads((runs[0] / "settings.json").read_text())
    assert settings["render_with"]["step"] == 60 and settings["files"][0]["notes"] == 1


def test_prior_samples_render_through_it_and_bad_input_is_one_line(score_run, runs, tmp_path):
    root, _ = runs
    proc = _cli(f"--workdir={root / 'prior'}", f"--render_with={score_run / 'run'}",
                f"--out={tmp_path / 's'}", "--num=1", "--seconds=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rate, wave = wavfile.read(tmp_path / "s/sample_00_score_audio.wav")
    assert rate == 16000 and len(wave) == 3 * 16000
    settings = json.loads((tmp_path / "s/settings.json").read_text())
    assert settings["files"][0]["score_audio_wav"].endswith("sample_00_score_audio.wav")

    trumpet = _midi(tmp_path / "trumpet.mid", [(56, 60, 0.0, 1.0)])
    for args, message in (
            ([f"--render_with={score_run / 'run'}", f"--midi={trumpet}"], "instrument 57"),
            ([f"--render_with={root / 'vqvae'}", f"--midi={trumpet}"], "not a score_audio"),
            ([f"--render_with={score_run / 'run'}", f"--midi={tmp_path / 'none.mid'}"],
             "no such file")):
        proc = _cli(*args, f"--out={tmp_path / 'bad'}")
        assert proc.returncode != 0 and message in proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr
