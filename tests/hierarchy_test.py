"""The hierarchy: residual VQ, codes of several levels aligned for upsampler priors, a top
prior and an upsampler trained through the shared loop, ancestral sampling and its eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musicflax.data import input_pipeline, musicnet
from musicflax.models import quantizers
from musicflax.train import codes, run, trainer

REPO = Path(__file__).resolve().parents[1]


def rvq(dropout=False, stages=3):
    return quantizers.ResidualVQ(stages=stages, codebook_size=16, code_dim=4,
                                 restart_threshold=0.0, init_method="kmeans", kmeans_iters=3,
                                 dropout=dropout)


def trained(q, z, steps=3):
    variables = q.init(jax.random.key(0), z, train=False)
    for i in range(steps):
        _, updated = q.apply(variables, z, train=True, mutable=["codebook"],
                             rngs={"restart": jax.random.key(i)})
        variables = {**variables, **updated}
    return variables


def test_residual_vq_stages_refine_the_sum_and_decode_from_codes():
    z = jax.random.normal(jax.random.key(1), (8, 16, 4))
    q = rvq()
    variables = trained(q, z)
    out = q.apply(variables, z, train=False)
    assert out.codes.shape == (8, 16, 3) and out.codes.dtype == jnp.int32
    np.testing.assert_allclose(q.apply(variables, out.codes, method="lookup"), out.quantized,
                               atol=1e-5)
    # Each stage quantizes what the ones before it left: the error falls stage by stage.
    errors = [float(jnp.mean((z - q.apply(variables, out.codes[..., :n], method="lookup")) ** 2))
              for n in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    assert {"stage0/usage", "stage2/perplexity"} <= set(out.stats)
    assert out.commit_loss.shape == (8,)
    # One straight-through estimator for the sum: the gradient to z is the identity.
    weights = jax.random.normal(jax.random.key(2), z.shape)
    grad = jax.grad(lambda z: jnp.sum(q.apply(variables, z, train=False).quantized * weights))(z)
    np.testing.assert_allclose(grad, weights, atol=1e-6)


def test_quantizer_dropout_keeps_a_prefix_of_stages_per_window():
    z = jax.random.normal(jax.random.key(1), (64, 8, 4))
    q = rvq(dropout=True)
    variables = trained(q, z)
    out, _ = q.apply(variables, z, train=True, mutable=["codebook"],
                     rngs={"restart": jax.random.key(9)})
    # Every window's output is the sum of its first n stages, for some n in 1..3.
    kept = []
    for b in range(64):
        partial = [q.apply(variables, out.codes[b:b + 1, :, :n], method="lookup")
                   for n in (1, 2, 3)]
        match = [n for n, p in zip((1, 2, 3), partial)
                 if np.allclose(p, out.quantized[b:b + 1], atol=1e-4)]
        assert match, b
        kept.append(match[0])
    assert len(set(kept)) == 3


def test_tokens_of_residual_vq_and_windows_of_an_upsampler():
    # Two recordings; the fine level has 2 codes per coarse code.
    fine = codes.CodeSet(codes=np.arange(24, dtype=np.int32), offsets=np.array([0, 16, 24]),
                         ids=np.array([1, 2], np.int32), composer=np.zeros(2, np.int32),
                         ensemble=np.zeros(2, np.int32), vocab_size=32,
                         codes_per_second=2.0, vocab={"composers": ["a"], "ensembles": ["b"]})
    coarse = codes.CodeSet(codes=100 + np.arange(12, dtype=np.int32),
                           offsets=np.array([0, 8, 12]), ids=np.array([1, 2], np.int32),
                           composer=np.zeros(2, np.int32), ensemble=np.zeros(2, np.int32),
                           vocab_size=200, codes_per_second=1.0, vocab=fine.vocab)
    windows = input_pipeline.CodeWindows(fine, length=4, hop=4, train=False, upper=coarse,
                                         upper_hop=2)
    for batch in windows.eval_dataset(8).as_numpy_iterator():
        for i in np.flatnonzero(batch["mask"]):
            first = int(batch["codes"][i, 0])
            rec = 0 if first < 16 else 1
            start = first - (0 if rec == 0 else 16)
            expected = coarse.codes[coarse.offsets[rec] + start // 2 + np.arange(2)]
            np.testing.assert_array_equal(batch["upper"][i], expected)
    # Training windows start at multiples of the upsampling factor, jitter included.
    train = input_pipeline.CodeWindows(fine, length=4, hop=4, train=True, upper=coarse,
                                       upper_hop=2)
    batches = [b for _, b in zip(range(6), train.train_dataset(4, seed=0).as_numpy_iterator())]
    for batch in batches:
        for first, upper in zip(batch["codes"][:, 0], batch["upper"]):
            rec = int(first >= 16)
            start = int(first) - fine.offsets[rec]
            assert start % 2 == 0
            np.testing.assert_array_equal(upper, coarse.codes[coarse.offsets[rec] + start // 2
                                                              + np.arange(2)])


def test_windows_of_residual_tokens_start_at_a_position():
    """A top-level prior's windows over 2-stage tokens start on stage 0, jitter included; a
    hop that would split a position is refused."""
    tokens = codes.CodeSet(codes=np.arange(40, dtype=np.int32), offsets=np.array([0, 22, 40]),
                           ids=np.array([1, 2], np.int32), composer=np.zeros(2, np.int32),
                           ensemble=np.zeros(2, np.int32), vocab_size=64, codes_per_second=2.0,
                           vocab={"composers": ["a"], "ensembles": ["b"]}, stages=2)
    train = input_pipeline.CodeWindows(tokens, length=6, hop=8, train=True)
    starts = [int(first) - tokens.offsets[int(first >= 22)]
              for _, b in zip(range(8), train.train_dataset(4, seed=0).as_numpy_iterator())
              for first in b["codes"][:, 0]]
    assert len(set(starts)) > 2 and all(start % 2 == 0 for start in starts)
    with pytest.raises(musicnet.DataError, match="multiple of 2"):
        input_pipeline.CodeWindows(tokens, length=6, hop=3, train=True)


@pytest.fixture(scope="module")
def hierarchy(tmp_path_factory):
    """A tiny two-level VQ-VAE (hops 2 and 4; residual VQ of 2 stages at the finest), a
    top-level prior over level 1 and an upsampler of level 0 from level 1."""
    from conftest import prior_config_for  # pylint: disable=g-import-not-at-top
    from train_test import tiny_config  # pylint: disable=g-import-not-at-top
    root = tmp_path_factory.mktemp("hierarchy")
    tfds_dir = str(root / "tfds")
    vqvae = tiny_config(tfds_dir, steps=6, **{
        "model.levels": 2, "model.downs_t": (1, 1), "model.strides_t": (2, 2),
        "model.quantizer.type": "rvq", "model.quantizer.stages": 2,
        "model.level_quantizer_types": ("rvq", "ema_vq"), "model.level_codebook_sizes": (32, 16)})
    vqvae.eval_every = vqvae.checkpoint_every = 6
    vqvae.image_every = 0
    trainer.train_and_evaluate(vqvae, str(root / "vqvae"))
    for name, level, upper, shift in (("top", 1, -1, 0), ("up0", 0, 1, 0), ("flat0", 0, -1, 0),
                                      ("up0_moved", 0, 1, 1)):
        config = prior_config_for(root, tfds_dir, steps=3)
        config.prior.update(level=level, upper_level=upper, train_hop=8, pitch_shift=shift)
        trainer.train_and_evaluate(config, str(root / name))
    return root


def test_residual_codes_become_one_token_vocabulary(hierarchy):
    fine = codes.encode_split(run.open_run(hierarchy / "vqvae"), "validation", level=0)
    coarse = codes.encode_split(run.open_run(hierarchy / "vqvae"), "validation", level=1)
    assert (fine.stages, fine.vocab_size, coarse.stages, coarse.vocab_size) == (2, 64, 1, 16)
    tokens = fine.codes.reshape(-1, 2)
    assert (tokens[:, 0] < 32).all() and (tokens[:, 1] >= 32).all()
    # 2 fine positions (4 tokens) per coarse code, recording by recording.
    np.testing.assert_array_equal(np.diff(fine.offsets), 4 * np.diff(coarse.offsets))
    assert fine.codes_per_second == 4 * coarse.codes_per_second
    prior = run.open_run(hierarchy / "up0").task
    np.testing.assert_array_equal(prior.tokens_to_codes(fine.codes[None, :8])[0],
                                  tokens[:4] - [0, 32])
    assert prior.upper_hop == 4 and prior.model.upper_vocab_size == 16


def test_pitch_shift_trains_an_upsampler_on_aligned_transposed_copies(hierarchy):
    """prior.pitch_shift=1: the train split's codes at both levels, then those of the split
    moved down and up a semitone, recording by recording in the same order."""
    task = run.open_run(hierarchy / "up0_moved").task
    vqvae = run.open_run(hierarchy / "vqvae")
    for level, ours in ((0, task.train_codes), (1, task.training_codes(1))):
        copies = [codes.encode_split(vqvae, "train", level, transpose=t) for t in (0, -1, 1)]
        as_recorded = copies[0]
        np.testing.assert_array_equal(ours.ids, np.tile(as_recorded.ids, 3))
        np.testing.assert_array_equal(ours.codes, np.concatenate([c.codes for c in copies]))
        np.testing.assert_array_equal(np.diff(ours.offsets), np.tile(np.diff(as_recorded.offsets), 3))
        # A transposed copy is the encoding of other piano-rolls, cached beside the plain one.
        assert not np.array_equal(copies[2].codes, as_recorded.codes)
        assert list((hierarchy / "vqvae" / "codes").rglob(f"level{level}_train+1.npz"))
    stream = task._windows("train", 8, True)  # pylint: disable=protected-access
    assert len(stream) > 0 and stream.num_frames.sum() == 3 * np.diff(
        task.codes("train").offsets).sum()


def test_a_top_level_prior_over_residual_tokens_samples_whole_positions(hierarchy):
    """A single prior over level 0's 2-stage tokens: lengths and primes round up to whole
    positions, every token lies in its position's stage, and the codes decode."""
    from musicflax.hierarchy import Hierarchy  # pylint: disable=g-import-not-at-top
    flat = Hierarchy((run.open_run(hierarchy / "flat0"),))
    task = flat.finest
    assert task.align == 2 and task.model.stages == 2
    odd = 5 / task.codes_per_second  # 5 tokens' worth of music
    (tokens,), (stats,) = flat.sample(0, 2, odd)
    assert tokens.shape == (2, 6) and stats["tokens"] == 6
    np.testing.assert_array_equal(tokens // 32, np.broadcast_to(np.arange(6) % 2, (2, 6)))
    recording = int(task.codes("validation").ids[0])
    (prime,) = flat.prime(recording, 3 / task.codes_per_second)
    assert len(prime) == 4
    (primed,), _ = flat.sample(0, 2, odd, primes=[prime])  # the same compiled sampler
    np.testing.assert_array_equal(primed[:, :4], np.broadcast_to(prime, (2, 4)))
    assert task.decode(tokens)[0]["roll"].shape[0] == 3 * 2  # 3 positions at hop 2


def test_ancestral_sampling_and_the_hierarchy_report(hierarchy, tmp_path):
    root = hierarchy
    proc = subprocess.run([sys.executable, "-m", "musicflax.sample", f"--workdir={root / 'top'}",
                           f"--upsamplers={root / 'up0'}", "--num=2", "--seconds=10",
                           f"--out={tmp_path / 's'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads((tmp_path / "s" / "settings.json").read_text())
    assert [p["level"] for p in settings["priors"]] == [1, 0]
    top = np.load(tmp_path / "s" / "sample_00_codes_level1.npy")
    fine = np.load(tmp_path / "s" / "sample_00_codes.npy")
    # 10 s: ceil(10 * 7.8125) = 79 coarse codes, 4 fine tokens under each.
    assert len(top) == 79 and len(fine) == 4 * 79
    assert [lv["tokens"] for lv in settings["levels"]] == [79, 316]
    assert (tmp_path / "s" / "sample_01.mid").exists()
    proc = subprocess.run([sys.executable, "-m", "musicflax.eval", "--config=configs/eval.py:runlocal",
                           f"--workdir={root / 'vqvae'}",
                           f"--config.evals.prior.workdir={root / 'top'},{root / 'up0'}",
                           f"--config.evals.generated.workdir={root / 'top'},{root / 'up0'}",
                           *[f"--config.evals.{e}.enabled=False" for e in ("probes",
                                                                           "latent_space")]],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((root / "vqvae" / "eval" / "6" / "validation" / "report.json").read_text())
    prior = report["prior"]
    assert prior["total_bits_per_second"] == pytest.approx(
        prior["level1"]["bits_per_second"] + prior["level0"]["bits_per_second"])
    assert prior["level0"]["upper_level"] == 1 and prior["level1"]["upper_level"] == -1
    assert report["generated"]["levels"] == [1, 0]
    assert {"level1/note_onset_f1", "note_onset_f1"} <= set(report["reconstruction"])
    code = report["codebook"]
    assert code["level0"]["bitrate_max"] == pytest.approx(15.625 * 2 * 5)
    assert code["level1"]["bitrate_max"] == pytest.approx(7.8125 * 4)
    # A hierarchy given out of order is refused in one line.
    proc = subprocess.run([sys.executable, "-m", "musicflax.sample", f"--workdir={root / 'up0'}",
                           f"--upsamplers={root / 'top'}", f"--out={tmp_path / 'x'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {root / 'up0'} is an upsampler (of level 0 from 1)")
