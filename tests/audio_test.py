"""Audio package: synthesizer spectra and limits, roll and MIDI round trips, plot output."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pretty_midi
import pytest

from musicflax.audio import fluidsynth, midi, plots, synth

SR = 16000
GROUPS = {1: 0, 7: 0, 41: 1, 42: 1, 43: 1, 44: 1, 61: 2, 69: 2, 71: 2, 72: 2, 74: 2}


def render(pitch, instrument, start=1.0, end=2.0, sample_rate=SR):
    return synth.synthesize(np.array([start]), np.array([end]), np.array([pitch]),
                            np.array([instrument]), sample_rate)


def spectrum(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, magnitudes) of a Hann-windowed wave."""
    magnitude = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / sample_rate), magnitude


# ---------------------------------------------------------------- synthesizer

def test_violin_a4_sounds_at_440_hz_only_while_it_plays():
    wave = render(69, 41)
    assert wave.dtype == np.float32
    assert len(wave) == int(np.ceil((2.0 + synth.RELEASE_SECONDS) * SR))
    freq, mag = spectrum(wave[SR:2 * SR], SR)
    assert abs(freq[np.argmax(mag)] - 440.0) < 2.0
    assert np.abs(wave[:int(0.9 * SR)]).max() == 0.0
    assert np.sqrt(np.mean(wave[SR:2 * SR] ** 2)) > 0.02
    # The release fades to silence: nothing after end + RELEASE_SECONDS.
    assert np.abs(wave[int((2.0 + synth.RELEASE_SECONDS) * SR) - 1:]).max() < 1e-3


def test_piano_c4_strongest_partial_is_the_fundamental_and_it_decays():
    wave = render(60, 1)
    freq, mag = spectrum(wave[SR:2 * SR], SR)
    assert abs(freq[np.argmax(mag)] - 261.63) < 2.0
    # Partials 2 and 3 are present (a timbre, not a sine).
    for h in (2, 3):
        band = np.abs(freq - h * 261.63) < 5
        assert mag[band].max() > 0.05 * mag.max()
    early, late = (np.sqrt(np.mean(wave[a:a + SR // 10] ** 2)) for a in (SR, int(1.8 * SR)))
    assert late < 0.7 * early


def test_families_differ_and_unknown_programs_fall_back_to_a_default():
    waves = {code: render(57, code)[SR:2 * SR] for code in (1, 41, 61, 74, 20, 0, 300)}
    spectra = {code: spectrum(w, SR)[1] for code, w in waves.items()}
    assert not np.allclose(spectra[1], spectra[41], rtol=0.05)
    assert not np.allclose(spectra[41], spectra[74], rtol=0.05)
    np.testing.assert_array_equal(waves[20], waves[0])
    np.testing.assert_array_equal(waves[20], waves[300])


def test_dense_chord_never_clips_and_renders_are_identical():
    pitches = np.arange(12) * 3 + 40
    start, end = np.zeros(12), np.full(12, 2.0)
    args = (start, end, pitches, np.full(12, 61), SR)
    first, second = synth.synthesize(*args), synth.synthesize(*args)
    assert np.abs(first).max() <= 1.0 and np.abs(first).max() > synth.LIMITER_KNEE
    np.testing.assert_array_equal(first, second)


def test_soft_limiter_is_linear_below_the_knee_and_bounded_above():
    x = np.linspace(-50, 50, 100001, dtype=np.float32)
    y = synth.soft_limit(x)
    quiet = np.abs(x) <= synth.LIMITER_KNEE
    np.testing.assert_array_equal(y[quiet], x[quiet])
    assert np.abs(y).max() <= 1.0 and np.all(np.diff(y) >= 0)


def test_partials_above_nyquist_are_dropped():
    # D8 (4699 Hz) at 16 kHz: only the fundamental fits below 8 kHz. Had the second partial
    # (9397 Hz) been kept, it would alias to 16000 - 9397 = 6603 Hz.
    freq, mag = spectrum(render(110, 41)[SR:2 * SR], SR)
    fundamental = np.abs(freq - 4698.6) < 20
    assert abs(freq[np.argmax(mag)] - 4698.6) < 2.0
    assert (mag[~fundamental] ** 2).sum() < 1e-4 * (mag[fundamental] ** 2).sum()
    # C9 (8372 Hz) is above Nyquist at 16 kHz: silence. At 44.1 kHz it sounds, at 8372 Hz.
    assert np.abs(render(120, 41)).max() == 0.0
    freq, mag = spectrum(render(120, 41, sample_rate=44100)[44100:88200], 44100)
    assert abs(freq[np.argmax(mag)] - 8372.0) < 2.0


def test_length_follows_duration_and_bad_input_raises():
    assert len(synth.synthesize([], [], [], [], SR, duration=1.5)) == int(1.5 * SR)
    assert len(synth.synthesize([0.0], [0.5], [60], [1], SR, duration=3.0)) == 3 * SR
    with pytest.raises(ValueError, match="pitch"):
        synth.synthesize([0.0], [0.5], [128], [1], SR)
    with pytest.raises(ValueError, match="equal length"):
        synth.synthesize([0.0, 1.0], [0.5], [60], [1], SR)


# ---------------------------------------------------------------- FluidSynth

needs_fluidsynth = pytest.mark.skipif(not fluidsynth.available(),
                                      reason="fluidsynth or its GM SoundFont not installed")


@needs_fluidsynth
def test_fluidsynth_violin_a4_is_440_hz_silent_before_it_and_as_long_as_the_synth():
    one = dict(start=np.array([1.0]), end=np.array([2.0]), pitch=np.array([69]),
               instrument=np.array([41]), sample_rate=SR)
    wave = fluidsynth.render(**one)
    assert wave.dtype == np.float32 and len(wave) == len(synth.synthesize(**one))
    freq, mag = spectrum(wave[int(1.2 * SR):int(1.9 * SR)], SR)
    assert abs(freq[np.argmax(mag)] - 440.0) < 3.0
    assert np.abs(wave[:int(0.95 * SR)]).max() == 0.0
    assert np.sqrt(np.mean(wave[int(1.2 * SR):2 * SR] ** 2)) > 0.005
    # Another program sounds different at the same pitch; the same notes render the same.
    flute = fluidsynth.render(**{**one, "instrument": np.array([74])})
    assert np.abs(flute - wave).max() > 0.01
    np.testing.assert_array_equal(fluidsynth.render(**one), wave)


def test_fluidsynth_missing_program_or_soundfont_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(fluidsynth.FluidSynthError) as e:
        if fluidsynth.available():
            fluidsynth.soundfont_path(str(tmp_path / "none.sf2"))
        else:
            fluidsynth.soundfont_path()
    assert "\n" not in str(e.value) and fluidsynth.INSTALL_HINT in str(e.value)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(fluidsynth.FluidSynthError) as e:
        fluidsynth.render(np.array([0.0]), np.array([1.0]), np.array([60]), np.array([1]), SR)
    assert str(e.value) == ("data.audio_source=fluidsynth needs the fluidsynth program: "
                            + fluidsynth.INSTALL_HINT)


# ---------------------------------------------------------------- rolls

# Repeated G4 on violin without a gap, a held cello C3, a piano chord, a flute over the end.
NOTES = dict(start=np.array([0.0, 0.5, 0.25, 1.0, 1.0, 1.5]),
             end=np.array([0.5, 1.0, 1.75, 1.25, 1.25, 2.5]),
             pitch=np.array([67, 67, 48, 60, 64, 81]),
             instrument=np.array([41, 41, 43, 1, 1, 74]))


def test_notes_to_roll_paints_frames_and_onsets():
    roll, onsets = midi.notes_to_roll(**NOTES, frame_rate=4.0, num_frames=10,
                                      instrument_to_group=GROUPS)
    assert roll.dtype == onsets.dtype == np.uint8 and roll.shape == (10, 3 * 128)
    np.testing.assert_array_equal(np.flatnonzero(roll[:, 128 + 67]), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.flatnonzero(onsets[:, 128 + 67]), [0, 2])
    np.testing.assert_array_equal(np.flatnonzero(roll[:, 128 + 48]), np.arange(1, 7))
    np.testing.assert_array_equal(np.flatnonzero(roll[:, 60]), [4])
    np.testing.assert_array_equal(np.flatnonzero(roll[:, 256 + 81]), [6, 7, 8, 9])
    assert roll.sum() == 4 + 6 + 1 + 1 + 4 and onsets.sum() == 6


def test_very_short_note_gets_one_frame_and_unknown_instrument_raises():
    roll, onsets = midi.notes_to_roll([1.0], [1.01], [60], [1], 10.0, 20, GROUPS)
    assert roll[10, 60] == 1 and roll.sum() == 1 and onsets[10, 60] == 1
    with pytest.raises(ValueError, match="instrument 40 "):
        midi.notes_to_roll([0.0], [1.0], [60], [40], 10.0, 20, GROUPS)


def test_notes_roll_notes_round_trip():
    roll, onsets = midi.notes_to_roll(**NOTES, frame_rate=4.0, num_frames=12,
                                      instrument_to_group=GROUPS)
    notes = midi.roll_to_notes(roll, 4.0, (1, 41, 74), onsets=onsets)
    order = np.lexsort((NOTES["pitch"], NOTES["start"]))
    for key in ("start", "end", "pitch"):
        np.testing.assert_array_equal(notes[key], NOTES[key][order])
    # Each group reads back as its representative program: the cello becomes a violin.
    np.testing.assert_array_equal(notes["instrument"], [41, 41, 41, 1, 1, 74])
    # Without onsets the repeated G4 merges into one note.
    merged = midi.roll_to_notes(roll, 4.0, (1, 41, 74))
    g4 = merged["pitch"] == 67
    assert len(merged["start"]) == 5 and g4.sum() == 1
    assert (merged["start"][g4][0], merged["end"][g4][0]) == (0.0, 1.0)


def test_roll_to_notes_thresholds_probabilities_and_drops_short_notes():
    roll = np.zeros((8, 128), np.float32)
    roll[1:6, 60] = 0.9
    roll[3:4, 62] = 0.7
    roll[:, 64] = 0.3
    notes = midi.roll_to_notes(roll, 2.0, [1], min_frames=2)
    np.testing.assert_array_equal(notes["pitch"], [60])
    np.testing.assert_array_equal(notes["start"], [0.5])
    np.testing.assert_array_equal(notes["end"], [3.0])
    with pytest.raises(ValueError, match="channels"):
        midi.roll_to_notes(roll, 2.0, [1, 41])


# ---------------------------------------------------------------- MIDI

def test_midi_file_round_trip(tmp_path):
    path = tmp_path / "piece.mid"
    midi.write_midi(path, **NOTES, tempo_bpm=97.0)
    back = pretty_midi.PrettyMIDI(str(path))
    by_program = {track.program: track for track in back.instruments}
    assert sorted(by_program) == [0, 40, 42, 73]
    for code in np.unique(NOTES["instrument"]):
        track = by_program[code - 1]
        assert track.name == midi.INSTRUMENT_NAMES[code] and not track.is_drum
        mine = NOTES["instrument"] == code
        expected = sorted(zip(NOTES["start"][mine], NOTES["end"][mine], NOTES["pitch"][mine]))
        got = [(n.start, n.end, n.pitch) for n in track.notes]
        assert len(got) == len(expected)
        for (s, e, p), (s2, e2, p2) in zip(expected, sorted(got)):
            assert p == p2 and abs(s - s2) < 1e-3 and abs(e - e2) < 1e-3


def test_pretty_midi_tracks_are_sorted_and_named():
    start = np.array([0.7, 0.1, 0.4])
    pm = midi.notes_to_pretty_midi(start, start + 0.2, np.array([60, 62, 64]),
                                   np.array([7, 7, 7]), velocity=90)
    (track,) = pm.instruments
    assert (track.program, track.name) == (6, "Harpsichord")
    assert [n.start for n in track.notes] == sorted(start.tolist())
    assert {n.velocity for n in track.notes} == {90}
    assert midi.INSTRUMENT_NAMES[61] == "Horn" and len(midi.INSTRUMENT_NAMES) == 11


# ---------------------------------------------------------------- plots

@pytest.fixture(scope="module")
def rolls():
    roll, onsets = midi.notes_to_roll(**NOTES, frame_rate=8.0, num_frames=24,
                                      instrument_to_group=GROUPS)
    noise = np.random.default_rng(0).random(roll.shape).astype(np.float32)
    return roll, onsets, np.clip(0.8 * roll + 0.1 * noise, 0, 1)


def test_render_roll_comparison_is_uint8_rgb_and_shows_the_notes(rolls):
    roll, _, reconstruction = rolls
    image = plots.render_roll_comparison(roll, reconstruction, 8.0, title="step 1")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # Not a blank canvas: the group colours appear.
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10
    empty = plots.render_roll_comparison(np.zeros_like(roll), np.zeros_like(roll), 8.0)
    assert not np.array_equal(image, empty)


def test_png_writers_write_loadable_images(rolls, tmp_path):
    roll, onsets, reconstruction = rolls
    wave = synth.synthesize(**NOTES, sample_rate=8000)
    paths = [tmp_path / name for name in ("roll.png", "comparison.png", "spectrogram.png")]
    plots.pianoroll_figure_png(paths[0], roll, 8.0, title="roll", onsets=onsets,
                               group_names=["keys", "strings", "winds"])
    plots.roll_comparison_png(paths[1], roll, reconstruction, 8.0, title="comparison")
    plots.spectrogram_comparison_png(paths[2], wave, 0.5 * wave[:len(wave) // 2], 8000,
                                     title="spectrogram")
    for path in paths:
        assert path.stat().st_size > 1000
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[0] > 100
        assert image[..., :3].std() > 0.01
