"""Evaluation building blocks on hand-computed cases: audio metrics, probes, music statistics."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from musicflax.eval import audio_metrics, probes, statistics

SR = 16000


def chord(seconds: float = 1.0, batch: int = 2) -> np.ndarray:
    """[batch, T] sums of three sines, a different chord per item."""
    t = np.arange(int(seconds * SR)) / SR
    return np.stack([sum(0.2 * np.sin(2 * np.pi * f * (1 + 0.25 * i) * t)
                         for f in (261.6, 329.6, 392.0)) for i in range(batch)])


def noise(shape, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------- audio metrics

def test_stft_matches_torch_layout():
    wave = noise((1, 4000))
    magnitude = audio_metrics.stft_magnitude(wave, 512, 128, 384)
    assert magnitude.shape == (1, 1 + 4000 // 128, 257)
    # A centred frame at sample 1024 sees samples 1024 ± 256; the window covers ± 192 of them.
    frame = wave[0, 1024 - 256:1024 + 256].copy()
    window = np.zeros(512)
    window[64:448] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(384) / 384)
    np.testing.assert_allclose(magnitude[0, 8], np.abs(np.fft.rfft(frame * window)), atol=2e-6)


def test_stft_and_mel_filterbank_equal_librosas():
    librosa = pytest.importorskip("librosa")
    wave = noise((3000,))
    for n_fft, hop, win in ((512, 128, 384), (2048, 256, 1536), (256, 64, 256)):
        ours = audio_metrics.stft_magnitude(wave[None], n_fft, hop, win)[0]
        theirs = np.abs(librosa.stft(wave, n_fft=n_fft, hop_length=hop, win_length=win,
                                     window="hann", center=True, pad_mode="reflect")).T
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    for rate, n_fft, mels in ((16000, 1024, 80), (44100, 2048, 128)):
        np.testing.assert_allclose(
            audio_metrics.mel_filterbank(rate, n_fft, mels),
            librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=mels, htk=True, norm=None),
            atol=1e-6)


def test_spectral_convergence_perfect_half_and_noise():
    ref = chord()
    assert audio_metrics.spectral_convergence(ref, ref) < -100.0
    assert audio_metrics.spectral_convergence(ref, 0.5 * ref) == pytest.approx(
        20 * np.log10(0.5), abs=1e-6)
    rms = np.sqrt(np.mean(ref ** 2))
    assert audio_metrics.spectral_convergence(ref, noise(ref.shape, scale=rms)) > -1.0
    per_item = audio_metrics.spectral_convergence(ref, 0.5 * ref, reduce=False)
    assert per_item.shape == (2,)
    np.testing.assert_allclose(per_item, 20 * np.log10(0.5), atol=1e-6)


def test_spectral_convergence_of_a_silent_reference_is_jukebox_zero():
    silent = np.zeros((1, SR))
    assert audio_metrics.spectral_convergence(silent, noise(silent.shape)) == pytest.approx(-200)


def test_si_sdr_is_scale_invariant():
    ref = chord()
    ref -= ref.mean(axis=1, keepdims=True)
    assert audio_metrics.si_sdr(ref, ref) > 80.0
    assert audio_metrics.si_sdr(ref, 0.5 * ref) > 80.0
    # est = ref + n with n ⟂ ref and ‖n‖ = ‖ref‖ / 10 reads 20 dB.
    n = noise(ref.shape)
    n -= n.mean(axis=1, keepdims=True)
    n -= (np.sum(n * ref, axis=1) / np.sum(ref ** 2, axis=1))[:, None] * ref
    n *= (np.linalg.norm(ref, axis=1) / np.linalg.norm(n, axis=1) / 10)[:, None]
    assert audio_metrics.si_sdr(ref, 3.0 * (ref + n)) == pytest.approx(20.0, abs=1e-6)
    assert audio_metrics.si_sdr(ref[0], ref[0] + n[0]) == pytest.approx(20.0, abs=1e-6)


def test_multi_resolution_stft_distance():
    ref = noise((2, SR))
    assert audio_metrics.multi_resolution_stft_distance(ref, ref) == 0.0
    # White noise keeps every bin far above the log clamp: SC 0.5 plus |ln 0.5|.
    assert audio_metrics.multi_resolution_stft_distance(ref, 0.5 * ref) == pytest.approx(
        0.5 + np.log(2), abs=1e-5)
    assert audio_metrics.multi_resolution_stft_distance(ref, noise(ref.shape, seed=1)) > 1.0


def test_log_mel_l1():
    ref = noise((2, SR))
    assert audio_metrics.log_mel_l1(ref, ref, SR) == 0.0
    assert audio_metrics.log_mel_l1(ref, 0.5 * ref, SR) == pytest.approx(np.log(2), abs=1e-5)
    assert audio_metrics.log_mel_l1(ref, noise(ref.shape, seed=1), SR) > 0.1
    with pytest.raises(ValueError):
        audio_metrics.log_mel_l1(ref, ref[:, :-1], SR)


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_mel_filterbank_is_non_negative_and_covers_the_spectrum(sample_rate):
    filters = audio_metrics.mel_filterbank(sample_rate, 1024, 80)
    assert filters.shape == (80, 513)
    assert (filters >= 0).all()
    assert (filters.max(axis=1) > 0).all()  # no empty filter
    coverage = filters.sum(axis=0)
    assert (coverage[1:-1] > 0).all()  # every bin strictly between 0 Hz and Nyquist
    bins = np.fft.rfftfreq(1024, 1 / sample_rate)
    mels = np.linspace(0.0, audio_metrics.hz_to_mel(sample_rate / 2), 82)
    first_peak, last_peak = audio_metrics.mel_to_hz(mels[[1, -2]])
    inside = (bins >= first_peak) & (bins <= last_peak)
    np.testing.assert_allclose(coverage[inside], 1.0, atol=1e-12)
    assert np.all(np.diff(np.argmax(filters, axis=1)) >= 0)  # peaks rise with the filter index
    assert audio_metrics.hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.1)


# ---------------------------------------------------------------- probes

def test_average_precision_hand_computed():
    # Thresholds 0.9..0.6: (P, R) = (1, 1/2), (1/2, 1/2), (2/3, 1), (1/2, 1).
    assert probes.average_precision(np.array([[1, 0], [1, 0]]),
                                    np.array([[0.9, 0.8], [0.7, 0.6]])) == pytest.approx(5 / 6)
    # Tied scores are one threshold: 0.9 -> (0, 0), 0.5 -> (1/3, 1/2), 0.1 -> (1/2, 1).
    assert probes.average_precision(np.array([0, 1, 0, 1]),
                                    np.array([0.9, 0.5, 0.5, 0.1])) == pytest.approx(5 / 12)
    assert probes.average_precision(np.array([0, 1, 1, 0, 1]),
                                    np.array([0.1, 0.7, 0.8, 0.3, 0.6])) == 1.0
    assert np.isnan(probes.average_precision(np.zeros(3), np.arange(3)))


def test_average_precision_equals_scikit_learns():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    targets = rng.random((200, 7)) < 0.3
    scores = np.round(rng.random((200, 7)) + 0.5 * targets, 2)  # ties included
    assert probes.average_precision(targets, scores) == pytest.approx(
        sklearn_metrics.average_precision_score(targets.ravel(), scores.ravel()), abs=1e-12)


def blobs(seed: int, per_class: int = 100, dims: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = 4.0 * np.eye(3, dims)
    labels = np.repeat(np.arange(3), per_class)
    return centres[labels] + rng.standard_normal((len(labels), dims)), labels


def test_linear_probe_separates_blobs_and_not_shuffled_labels():
    x, y = blobs(0)
    x_eval, y_eval = blobs(1)
    probe = probes.train_linear_probe(x, y, num_classes=3)
    assert probe.accuracy(x_eval, y_eval) > 0.95
    assert probe.predict_proba(x_eval).shape == (300, 3)
    np.testing.assert_allclose(probe.predict_proba(x_eval).sum(axis=1), 1.0)
    shuffled = probes.train_linear_probe(x, np.random.default_rng(2).permutation(y), 3)
    majority = probes.accuracy(np.full(len(y_eval), probes.majority_class(y)), y_eval)
    assert shuffled.accuracy(x_eval, y_eval) < majority + 0.1


def test_majority_class_accuracy_and_balanced_accuracy():
    assert probes.majority_class([2, 0, 2, 1, 2]) == 2
    assert probes.majority_class([1, 0]) == 0  # a tie goes to the smaller label
    assert probes.accuracy(np.array([0, 1, 1]), np.array([0, 1, 0])) == pytest.approx(2 / 3)
    # Labels 0,0,0,1: always 0 is 3/4 accurate but balanced (1 + 0) / 2.
    assert probes.balanced_accuracy([0, 0, 0, 0], [0, 0, 0, 1]) == 0.5
    assert probes.balanced_accuracy([0, 1, 0, 1], [0, 0, 1, 1]) == 0.5
    assert probes.balanced_accuracy([1, 0, 0, 1], [0, 0, 0, 1]) == pytest.approx((2 / 3 + 1) / 2)


def test_multilabel_probe_on_linear_and_random_features():
    rng = np.random.default_rng(0)
    targets = rng.random((1200, 12)) < 0.2
    mixing = rng.standard_normal((12, 24))
    features = targets @ mixing + 0.3 * rng.standard_normal((1200, 24))
    probe = probes.train_multilabel_probe(features[:800], targets[:800])
    scores = probe.predict_proba(features[800:])
    assert scores.shape == (400, 12) and ((scores > 0) & (scores < 1)).all()
    assert probes.average_precision(targets[800:], scores) > 0.9
    random = rng.standard_normal((1200, 24))
    chance = probes.train_multilabel_probe(random[:800], targets[:800])
    ap = probes.average_precision(targets[800:], chance.predict_proba(random[800:]))
    assert abs(ap - targets[800:].mean()) < 0.05


def test_probes_reach_the_optimum_of_scikit_learns_regressions():
    from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
    x, y = blobs(3, per_class=40)
    x[:, 0] *= 5.0  # standardisation is part of the probe: sklearn sees the standardised x
    l2 = 0.05
    standard = (x - x.mean(axis=0)) / x.std(axis=0)
    # sklearn minimises 0.5·‖W‖² + C·Σ loss = N·C·(mean loss + (l2 / 2)·‖W‖²) for C = 1/(l2·N).
    ours = probes.train_linear_probe(x, y, 3, l2=l2)
    theirs = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=5000).fit(standard, y)
    np.testing.assert_allclose(ours.predict_proba(x), theirs.predict_proba(standard), atol=1e-4)
    targets = np.stack([y == 0, (y == 1) | (x[:, 2] > 0)], axis=1)
    ours = probes.train_multilabel_probe(x, targets, l2=l2)
    for k in range(targets.shape[1]):
        theirs = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=5000).fit(
            standard, targets[:, k])
        np.testing.assert_allclose(ours.predict_proba(x)[:, k],
                                   theirs.predict_proba(standard)[:, 1], atol=1e-4)


# ---------------------------------------------------------------- statistics

def triad(frames: int = 10, groups: int = 1) -> np.ndarray:
    """C major (C4 E4 G4) held for `frames` frames in group 0."""
    roll = np.zeros((frames, groups * 128), np.float32)
    roll[:, [60, 64, 67]] = 1.0
    return roll


def test_statistics_of_a_held_triad():
    roll, frame_rate = triad(), 31.25
    stats = statistics.music_statistics(roll, frame_rate)
    expected = np.zeros(12)
    expected[[0, 4, 7]] = 1 / 3
    np.testing.assert_allclose(stats["pitch_class_histogram"], expected)
    assert stats["polyphony"] == 3.0 and stats["pitch_range"] == 7.0
    assert stats["note_density"] == pytest.approx(3 / (10 / frame_rate))


def test_statistics_over_groups_windows_and_silence_and_as_sums():
    # Window 0: the triad in group 0 plus C4 again in group 1 (still 3 pitches, 4 onsets) and a
    # silent half; window 1: a re-struck A2 alone.
    rolls = np.zeros((2, 20, 256), np.float32)
    rolls[0, :10] = triad(groups=2)
    rolls[0, :10, 128 + 60] = 1.0
    rolls[1, [0, 1, 3], 45] = 1.0
    stats = statistics.music_statistics(rolls, 10.0)
    assert stats["polyphony"] == pytest.approx((10 * 3 + 3 * 1) / 13)
    assert stats["pitch_range"] == pytest.approx((7 + 0) / 2)
    assert stats["note_density"] == pytest.approx((4 + 2) / 4.0)
    histogram = stats["pitch_class_histogram"]
    assert histogram[0] == pytest.approx(10 / 33) and histogram[9] == pytest.approx(3 / 33)
    given = np.zeros_like(rolls)
    given[0, 0, 60] = 1.0
    assert statistics.music_statistics(rolls, 10.0, given)["note_density"] == \
        pytest.approx(1 / 4.0)
    # Summed one window at a time: the same numbers.
    sums = statistics.add_sums(statistics.music_sums(rolls[:1]), statistics.music_sums(rolls[1:]))
    by_parts = statistics.from_sums(sums, 10.0)
    for key in ("polyphony", "pitch_range", "note_density"):
        assert by_parts[key] == pytest.approx(stats[key])
    silent = statistics.music_statistics(np.zeros((5, 128)), 10.0)
    assert np.isnan(silent["polyphony"]) and np.isnan(silent["pitch_range"])
    with pytest.raises(ValueError):
        statistics.music_statistics(np.zeros((5, 100)), 10.0)


def test_pitch_class_js_divergence():
    c_major = statistics.music_statistics(triad(), 10.0)["pitch_class_histogram"]
    assert statistics.pitch_class_js_divergence(c_major, c_major) == 0.0
    f_sharp = np.roll(c_major, 6)  # F# A# C#: no class shared with C major
    assert statistics.pitch_class_js_divergence(c_major, f_sharp) == pytest.approx(1.0)
    a_minor = np.zeros(12)
    a_minor[[9, 0, 4]] = 1 / 3
    # Two of three classes shared: JS = (1/3)·(2 · 1/2 · log2 2) = 1/3.
    assert statistics.pitch_class_js_divergence(c_major, a_minor) == pytest.approx(1 / 3)
    assert statistics.pitch_class_js_divergence(a_minor, c_major) == pytest.approx(1 / 3)


def test_pca_recovers_the_principal_axis_with_a_fixed_sign():
    rng = np.random.default_rng(0)
    angle = np.pi / 6
    axis = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-np.sin(angle), np.cos(angle)])
    raw = rng.standard_normal((500, 2)) * [5.0, 1.0]
    points = raw[:, :1] * axis + raw[:, 1:] * normal + [3.0, -2.0]
    projected = statistics.pca_2d(points)
    centred = points - points.mean(axis=0)
    # Both loadings of `axis` are positive, so the fixed sign keeps it as is.
    np.testing.assert_allclose(projected[:, 0], centred @ axis, atol=0.05 * 5)
    assert np.corrcoef(projected[:, 0], centred @ axis)[0, 1] > 0.999
    assert projected[:, 0].var() > 20 * projected[:, 1].var()
    np.testing.assert_allclose(statistics.pca_2d(-points)[:, 0], -projected[:, 0], atol=1e-9)


def test_png_writers(tmp_path):
    points = np.random.default_rng(0).standard_normal((30, 2))
    statistics.scatter_png(tmp_path / "scatter.png", points, np.arange(30) % 3,
                           ["Bach", "Mozart", "Schubert"], "composers")
    statistics.code_histogram_png(tmp_path / "codes.png", np.array([5, 0, 100, 1, 30]),
                                  "code usage")
    for name in ("scatter.png", "codes.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0  # something was drawn


def test_note_event_stream_bits_by_hand():
    import types  # pylint: disable=g-import-not-at-top
    # One recording of 10 s at 10 fps: four notes, onsets 0, 5, 5, 10; durations 5, 5, 5, 10.
    data = types.SimpleNamespace(
        note_rec=np.zeros(4, int), note_start=np.array([0, 5, 5, 10]),
        note_end=np.array([5, 10, 10, 20]), note_pitch=np.array([60, 64, 67, 60]),
        note_group=np.array([0, 0, 0, 1]), num_frames=np.array([100]), frame_rate=10.0)
    out = statistics.note_event_bits(data)
    # Deltas 0, 5, 0, 5 (1 bit); durations 5, 5, 5, 10 (H(3/4, 1/4)); pitches 60, 64, 67, 60
    # (1.5 bits); groups 0, 0, 0, 1 (H(3/4, 1/4)).
    h = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    assert out["bits_per_note"] == pytest.approx(1 + h + 1.5 + h)
    assert out["notes_per_second"] == pytest.approx(0.4)
    assert out["bits_per_second"] == pytest.approx(0.4 * (2.5 + 2 * h))
