"""VQ-VAE models: shapes per level, straight-through gradients, EMA codebook (init, updates,
restarts), FSQ, codebook statistics, losses, a short training run, encode/decode."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import optax
import pytest

from musicflax.models import layers, losses, quantizers, search, vqvae

PIANOROLL = (2, 128, 32)
WAVEFORM = (2, 1024, 1)
LATENTS = (4, 64, 4)  # encoder outputs fed to quantizers directly


@pytest.fixture(autouse=True, scope="module")
def fast_compiling_rng():
    """With the (default) partitionable threefry, XLA:CPU spends seconds compiling every random
    draw, e.g. each parameter initialiser; the classic variant draws equally valid numbers."""
    with jax.threefry_partitionable(False):
        yield


def tiny_config(levels=1, quantizer="ema_vq"):
    config = vqvae.default_model_config()
    config.update(width=8, res_depth=1, levels=levels)
    # k-means initialisation is tested on the quantizer alone.
    config.quantizer.update(type=quantizer, codebook_size=16, code_dim=4, init="random_batch",
                            fsq_levels=(4, 3))
    return config


def normal(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def synthetic_rolls(shape=PIANOROLL, notes=12, seed=0):
    """Windows of sustained notes starting on a grid of 8 frames: the roll in the first half of
    the channels, its onsets in the second half (the layout piano-roll models see)."""
    num, frames, channels = shape
    channels //= 2
    rng = np.random.default_rng(seed)
    roll = np.zeros((num, frames, channels), np.uint8)
    onsets = np.zeros_like(roll)
    for i in range(num):
        for _ in range(notes):
            start, pitch = 8 * rng.integers(frames // 8), rng.integers(channels)
            roll[i, start:start + 8 * rng.integers(1, 4), pitch] = 1
            onsets[i, start, pitch] = 1
    return {"inputs": jnp.asarray(np.concatenate([roll, onsets], -1)),
            "onset_channels": jnp.arange(2 * channels) >= channels}


# ---------------------------------------------------------------------------- model

@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("shape", [PIANOROLL, WAVEFORM], ids=["pianoroll", "waveform"])
def test_outputs_and_code_lengths_per_level(levels, shape):
    # Traced, not compiled: shapes need no numbers (the tests below run real models).
    model = vqvae.vqvae_from_config(tiny_config(levels), shape[-1])
    (outputs, aux), variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct(shape, jnp.float32))
    assert model.hops == (8, 32, 128)[:levels]
    assert len(outputs) == len(aux["codes"]) == len(aux["codebook_stats"]) == levels
    for level, (out, codes, hop) in enumerate(zip(outputs, aux["codes"], model.hops)):
        assert out.shape == shape and out.dtype == jnp.float32
        assert codes.shape == (shape[0], shape[1] // hop) and codes.dtype == jnp.int32
        assert variables["codebook"][f"quantizers_{level}"]["embedding"].shape == (16, 4)
    assert aux["commit_loss"].shape == shape[:1]  # per window
    for latents, hop in zip(aux["latents"], model.hops):
        assert latents.shape == (shape[0], shape[1] // hop, 4)


def test_window_length_must_be_a_multiple_of_the_top_hop():
    model = vqvae.vqvae_from_config(tiny_config(levels=2), 32)
    with pytest.raises(ValueError, match="multiple of the hop 32"):
        model.init(jax.random.key(0), jnp.zeros((1, 48, 32)), train=False)


def test_bfloat16_computes_convs_in_bfloat16_with_float32_params_and_outputs():
    config = tiny_config()
    config.dtype = "bfloat16"
    model = vqvae.vqvae_from_config(config, 32)
    x = jax.ShapeDtypeStruct(PIANOROLL, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    apply = functools.partial(model.apply, train=False)
    convs = [e for e in jax.make_jaxpr(apply)(variables, x).eqns
             if e.primitive.name == "conv_general_dilated"]
    assert convs and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in convs)
    assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
    outputs, _ = jax.eval_shape(apply, variables, x)
    assert outputs[0].dtype == jnp.float32


@pytest.mark.parametrize("quantizer", ["ema_vq", "fsq"])
def test_decode_of_encode_matches_the_forward_pass(quantizer):
    model = vqvae.vqvae_from_config(tiny_config(levels=2, quantizer=quantizer), 32)
    x = synthetic_rolls()["inputs"]
    variables = model.init(jax.random.key(0), x, train=False)
    # One training call, so the EMA codebook is the data-initialised one.
    _, state = model.apply(variables, x, train=True, mutable=["codebook"],
                           rngs={"restart": jax.random.key(1)})
    variables = {**variables, **state}
    outputs, aux = model.apply(variables, x, train=False)
    codes = model.apply(variables, x, method="encode")
    for level, (c, expected) in enumerate(zip(codes, aux["codes"])):
        np.testing.assert_array_equal(c, expected)
        # The codes name exactly the vectors the decoder was given.
        np.testing.assert_array_equal(model.apply(
            variables, c, method=lambda m, c, level=level: m.quantizers[level].lookup(c)),
            aux["latents"][level])
        np.testing.assert_array_equal(
            model.apply(variables, c, level, method="decode"), outputs[level])
    for decoded, out in zip(model.apply(variables, codes, method="decode"), outputs):
        np.testing.assert_array_equal(decoded, out)


def test_output_bias_shifts_the_initial_logits():
    x = synthetic_rolls()["inputs"]
    outputs = []
    for bias in (0.0, -4.6):
        config = tiny_config(quantizer="fsq")
        config.output_bias = bias
        model = vqvae.vqvae_from_config(config, 32)
        variables = model.init(jax.random.key(0), x, train=False)
        outputs.append(model.apply(variables, x, train=False)[0][0])
    np.testing.assert_allclose(outputs[1], outputs[0] - 4.6, atol=1e-5)


@pytest.fixture(scope="module", params=["ema_vq", "fsq"])
def training_run(request):
    """(loss per step, first step's gradients) of 50 Adam steps on fixed synthetic rolls.

    The commitment loss is off, so the encoder gets gradients only through the
    straight-through estimator.
    """
    config = tiny_config(quantizer=request.param)
    config.quantizer.update(commitment=0.0, restart_threshold=0.1)
    batch = synthetic_rolls()
    model = vqvae.vqvae_from_config(config, 32)
    variables = model.init(jax.random.key(0), batch["inputs"], train=False)
    params = variables.pop("params")
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, state, opt_state, key):
        def loss_fn(params):
            (outputs, aux), state_out = model.apply(
                {"params": params, **state}, batch["inputs"], train=True,
                mutable=["codebook"], rngs={"restart": key})
            return losses.vqvae_loss(outputs, batch, aux, config)[0], state_out

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), state, opt_state, loss, grads

    state, opt_state, history = variables, optimizer.init(params), []
    for i in range(50):
        params, state, opt_state, loss, grads = step(params, state, opt_state,
                                                     jax.random.key(i))
        history.append(float(loss))
        if i == 0:
            first_grads = grads
    return history, first_grads


def test_reconstruction_gradient_reaches_the_encoder(training_run):
    _, grads = training_run
    assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads["encoders_0"]))


def test_short_training_run_reduces_the_loss(training_run):
    history, _ = training_run
    assert np.isfinite(history).all()
    assert np.mean(history[-5:]) < 0.3 * history[0]


# ---------------------------------------------------------------------------- EMA VQ

def quantizer_state(q, z, embedding, cluster_size):
    """Variables of `q` with a given (already initialised) codebook."""
    embedding = jnp.asarray(embedding, jnp.float32)
    cluster_size = jnp.asarray(cluster_size, jnp.float32)
    variables = q.init(jax.random.key(0), z, train=False)
    return {"codebook": {**variables["codebook"], "embedding": embedding,
                         "cluster_size": cluster_size,
                         "embed_sum": embedding * cluster_size[:, None],
                         "initialized": jnp.array(True)}}


@functools.partial(jax.jit, static_argnums=0)
def train_call(q, variables, z, key):
    out, state = q.apply(variables, z, train=True, mutable=["codebook"],
                         rngs={"restart": key})
    return out, {**variables, **state}


def two_clusters(n=64, seed=0):
    centers = np.where(np.arange(n)[:, None] % 2 == 0, 3.0, -3.0)
    return jnp.asarray(centers + 0.3 * normal((n, 2), seed))[None]


def test_ema_update_moves_codes_to_the_mean_of_their_vectors():
    z = two_clusters()
    q = quantizers.EMAVectorQuantizer(codebook_size=2, code_dim=2, decay=0.8,
                                      restart_threshold=0.0)
    variables = quantizer_state(q, z, [[1.0, 1.0], [-1.0, -1.0]], [1.0, 1.0])
    flat = np.asarray(z[0])
    means = np.stack([flat[0::2].mean(0), flat[1::2].mean(0)])

    out, variables = train_call(q, variables, z, jax.random.key(0))
    np.testing.assert_array_equal(out.codes[0], np.arange(64) % 2)
    start = np.where(np.arange(64)[:, None] % 2 == 0, 1.0, -1.0)
    np.testing.assert_allclose(out.commit_loss, [0.02 * np.mean((flat - start) ** 2)], rtol=1e-5)
    # One EMA step by hand (Laplace smoothing is negligible at these counts).
    expected = (0.8 * np.array([[1.0, 1.0], [-1.0, -1.0]]) + 0.2 * 32 * means) / (0.8 + 0.2 * 32)
    np.testing.assert_allclose(variables["codebook"]["embedding"], expected, rtol=1e-4)
    np.testing.assert_allclose(variables["codebook"]["cluster_size"], [7.2, 7.2], rtol=1e-6)
    for i in range(30):
        _, variables = train_call(q, variables, z, jax.random.key(i))
    np.testing.assert_allclose(variables["codebook"]["embedding"], means, atol=1e-3)


def test_eval_and_immutable_calls_leave_the_codebook_alone():
    z = two_clusters()
    q = quantizers.EMAVectorQuantizer(codebook_size=2, code_dim=2)
    variables = q.init(jax.random.key(0), z, train=False)
    assert not variables["codebook"]["initialized"]
    _, state = q.apply(variables, z, train=False, mutable=["codebook"])
    jax.tree.map(np.testing.assert_array_equal, state, variables)
    q.apply(variables, z, train=True)  # not mutable: no update, and no rng needed


@pytest.mark.parametrize("init_method", ["random_batch", "kmeans"])
def test_first_training_call_initialises_the_codebook_from_the_batch(init_method):
    z = normal(LATENTS)
    q = quantizers.EMAVectorQuantizer(codebook_size=16, code_dim=4, init_method=init_method,
                                      kmeans_iters=5)
    variables = q.init(jax.random.key(0), z, train=False)
    out, variables = train_call(q, variables, z, jax.random.key(1))
    codebook, flat = variables["codebook"], z.reshape(-1, 4)
    assert codebook["initialized"]
    np.testing.assert_array_equal(codebook["cluster_size"], np.ones(16))
    distances = jnp.sum((codebook["embedding"][:, None] - flat[None]) ** 2, -1)
    if init_method == "random_batch":
        # Every row is one of the batch's vectors, and they are distinct ones.
        assert np.all(np.asarray(distances).min(axis=1) == 0)
        assert len(np.unique(np.asarray(distances.argmin(axis=1)))) == 16
    else:
        # Lloyd iterations from the same random rows can only lower the distortion.
        random_init = q.clone(init_method="random_batch")
        baseline, _ = train_call(random_init, random_init.init(jax.random.key(0), z, train=False),
                                 z, jax.random.key(1))
        assert out.commit_loss.sum() < baseline.commit_loss.sum()
    # The call's own codes already use the new codebook.
    np.testing.assert_array_equal(out.codes, quantizers.nearest_codes(
        flat, codebook["embedding"]).reshape(LATENTS[:-1]))


def test_quantized_vectors_pass_gradients_straight_through():
    z, weights = normal(LATENTS, seed=0), normal(LATENTS, seed=1)
    q = quantizers.EMAVectorQuantizer(codebook_size=16, code_dim=4, commitment=0.0)
    variables = q.init(jax.random.key(0), z, train=False)

    def weighted_sum(z):
        # The initialising call, whose codebook is made of (gradient-free) copies of z.
        out, _ = q.apply(variables, z, train=True, mutable=["codebook"],
                         rngs={"restart": jax.random.key(1)})
        return jnp.sum(out.quantized * weights)

    np.testing.assert_allclose(jax.jit(jax.grad(weighted_sum))(z), weights, rtol=1e-6)


def restart_run(key, calls=5):
    z = normal(LATENTS)
    q = quantizers.EMAVectorQuantizer(codebook_size=32, code_dim=4, decay=0.9,
                                      restart_threshold=1.0)
    # Four codes near the data, 28 far away that no vector ever picks (and counted as dead).
    embedding = np.concatenate([0.1 * np.eye(4), np.full((28, 4), 100.0)])
    variables = quantizer_state(q, z, embedding, [64.0] * 4 + [0.01] * 28)
    before = q.apply(variables, z, train=False).stats
    for i in range(calls):
        _, variables = train_call(q, variables, z, jax.random.fold_in(key, i))
    return before, q.apply(variables, z, train=False).stats, variables


def test_dead_codes_are_restarted_from_the_batch():
    before, after, variables = restart_run(jax.random.key(0))
    assert before["dead_codes"] == 28 and before["usage"] == 4 / 32
    assert after["dead_codes"] <= 4 and after["usage"] >= 0.75
    # EMA alone never moves an unused code; the far ones now sit among the data.
    assert np.abs(variables["codebook"]["embedding"][4:]).max() < 10


def test_restarts_are_deterministic_for_a_fixed_rng():
    *_, first = restart_run(jax.random.key(0))
    *_, again = restart_run(jax.random.key(0))
    *_, other = restart_run(jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.array_equal(first["codebook"]["embedding"], other["codebook"]["embedding"])


# ---------------------------------------------------------------------------- code search

def test_candidates_are_the_k_nearest_codes_nearest_first():
    z, embedding = normal((1, 6, 3), seed=0), normal((10, 3), seed=1)
    q = quantizers.EMAVectorQuantizer(codebook_size=10, code_dim=3)
    variables = quantizer_state(q, z, embedding, [1.0] * 10)
    got = q.apply(variables, z, 4, method="candidates")
    distances = np.sum((np.asarray(z)[0, :, None] - np.asarray(embedding)[None]) ** 2, -1)
    np.testing.assert_array_equal(got[0], np.argsort(distances, axis=1)[:, :4])


def test_search_picks_each_positions_cheapest_code_when_positions_do_not_interact():
    rng = np.random.default_rng(0)
    cost = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)  # [B, T, code]
    candidates = jnp.asarray(np.stack([np.stack([rng.permutation(6) for _ in range(5)])
                                       for _ in range(3)]))      # every code, shuffled

    def window_loss(trial):  # [B, k, T] -> [B, k]
        return jnp.take_along_axis(cost[:, None], trial[..., None], -1)[..., 0].sum(-1)

    got = search.refine_codes(window_loss, candidates, sweeps=1)
    np.testing.assert_array_equal(got, np.argmin(cost, -1))


def test_search_ends_where_no_single_change_helps_and_never_raises_the_loss():
    rng = np.random.default_rng(1)
    unary = rng.normal(size=(2, 6, 4))
    pair = rng.normal(size=(4, 4))  # neighbours interact, so positions must be revisited

    def loss(codes):  # numpy, [T] -> float
        return unary[b, np.arange(6), codes].sum() + pair[codes[:-1], codes[1:]].sum()

    def window_loss(trial):
        u = jnp.take_along_axis(jnp.asarray(unary, jnp.float32)[:, None], trial[..., None],
                                -1)[..., 0].sum(-1)
        return u + jnp.asarray(pair, jnp.float32)[trial[..., :-1], trial[..., 1:]].sum(-1)

    candidates = jnp.asarray(np.tile(np.arange(4), (2, 6, 1)))
    got = np.asarray(search.refine_codes(window_loss, candidates, sweeps=6))
    for b in range(2):
        start = loss(np.zeros(6, int))
        assert loss(got[b]) <= start
        for t in range(6):
            for code in range(4):
                moved = got[b].copy()
                moved[t] = code
                assert loss(moved) >= loss(got[b]) - 1e-5


def searched_outputs(candidates: int, quantizer_type: str = "ema_vq"):
    from configs import default  # pylint: disable=g-import-not-at-top
    from musicflax.train.vqvae_model import VQVAEModel  # pylint: disable=g-import-not-at-top
    config = default.get_config("runlocal")
    config.model.update(width=16)
    config.model.quantizer.update(type=quantizer_type, codebook_size=16, code_dim=4, stages=2)
    config.encode.update(search_candidates=candidates, search_sweeps=2)
    task = VQVAEModel(config)
    params, state = task.init(jax.random.key(0))
    rolls = synthetic_rolls((3, 128, 2 * task.num_channels), notes=20)["inputs"]
    channels = task.num_channels
    batch = {"inputs": rolls[..., :channels].astype(jnp.uint8),
             "onsets": rolls[..., channels:].astype(jnp.uint8)}
    return task, params, state, batch, jax.jit(task.eval_outputs)(params, state, batch)


@pytest.mark.parametrize("quantizer", ["ema_vq", "rvq"])
def test_search_of_one_candidate_is_the_nearest_code_and_more_lower_every_windows_loss(
        quantizer):
    task, params, state, batch, plain = searched_outputs(0, quantizer)
    _, _, _, _, one = searched_outputs(1, quantizer)
    _, _, _, _, searched = searched_outputs(4, quantizer)
    np.testing.assert_array_equal(one["codes0"], plain["codes0"])
    np.testing.assert_array_equal(one["loss/recon_loss"], plain["loss/recon_loss"])
    assert np.all(searched["loss/recon_loss"] <= plain["loss/recon_loss"] + 1e-6)
    assert np.any(searched["codes0"] != plain["codes0"])
    # Each code is among its position's (and stage's) 4 candidates.
    variables = {"params": params, **state}
    near = task.model.apply(variables, task.model_inputs(batch), 0, 4, method="candidates")
    assert near.shape == (*searched["codes0"].shape, 4)
    assert np.all(np.any(np.asarray(near) == np.asarray(searched["codes0"])[..., None], -1))
    # The nearest candidates are the forward pass's codes.
    np.testing.assert_array_equal(near[..., 0], plain["codes0"])


def test_search_refuses_fsq_levels_in_one_line():
    from musicflax import app  # pylint: disable=g-import-not-at-top
    with pytest.raises(app.UserError, match="encode.search_candidates needs 'ema_vq' or 'rvq'"):
        searched_outputs(4, quantizer_type="fsq")


# ---------------------------------------------------------------------------- FSQ

def test_fsq_codes_and_vectors_round_trip():
    levels = (8, 5, 5, 5)
    fsq = quantizers.FSQ(levels)
    assert fsq.codebook_size == 1000 and fsq.dim == 4
    vectors = quantizers.fsq_lookup(jnp.arange(1000), levels)
    assert len(np.unique(np.asarray(vectors), axis=0)) == 1000
    assert np.all(np.abs(vectors) <= 1)
    np.testing.assert_array_equal(quantizers.fsq_codes(vectors, levels), np.arange(1000))

    z = 3 * normal(LATENTS)
    out = fsq.apply({}, z, train=True)
    assert out.codes.shape == LATENTS[:-1] and 0 <= out.codes.min() and out.codes.max() < 1000
    np.testing.assert_array_equal(fsq.apply({}, out.codes, method="lookup"), out.quantized)
    assert (out.commit_loss == 0).all() and out.commit_loss.shape == LATENTS[:1]


def test_fsq_rounds_with_straight_through_gradients():
    z = normal((3, 2))
    grad = jax.grad(lambda z: jnp.sum(quantizers.fsq_quantize(z, (4, 3))[0]))(z)
    assert np.all(np.asarray(grad) > 0)


# ---------------------------------------------------------------------------- statistics

def test_usage_stats_of_uniform_and_single_code_batches():
    usage_stats = jax.jit(quantizers.usage_stats, static_argnums=1)
    uniform = usage_stats(np.tile(np.arange(64), 3), 64)
    np.testing.assert_allclose(uniform["perplexity"], 64, rtol=1e-5)
    assert uniform["usage"] == 1 and uniform["dead_codes"] == 0
    single = usage_stats(np.full((4, 8), 5), 64)
    np.testing.assert_allclose(single["perplexity"], 1, rtol=1e-6)
    assert single["usage"] == 1 / 64 and single["dead_codes"] == 63
    ema = usage_stats(np.arange(4), 4, ema_counts=np.array([0.5, 2, 0.9, 1]), threshold=1.0)
    assert ema["dead_codes"] == 2


# ---------------------------------------------------------------------------- losses

def test_pianoroll_loss_by_hand():
    # Channel 0 holds notes, channel 1 onsets; window 1 is window 0 with the targets flipped.
    logits = jnp.array([[[0.0, 2.0], [-1.0, 0.5]]] * 2)
    targets = jnp.array([[[1, 0], [0, 1]], [[0, 1], [1, 0]]], jnp.uint8)
    onset_channels = jnp.array([False, True])
    note_bce = (math.log(2) + math.log(1 + math.e ** -1)) / 2
    onset_bce = (math.log(1 + math.e ** 2) + math.log(1 + math.e ** -0.5)) / 2
    loss, parts = losses.pianoroll_loss(logits, targets, onset_channels, onset_weight=3.0)
    assert loss.shape == (2,)
    np.testing.assert_allclose(parts["bce"][0], note_bce, rtol=1e-6)
    np.testing.assert_allclose(parts["onset_bce"][0], onset_bce, rtol=1e-6)
    np.testing.assert_allclose(loss[0], note_bce + 3 * onset_bce, rtol=1e-6)
    flipped_note = (math.log(2) + math.log(1 + math.e)) / 2
    flipped_onset = (math.log(1 + math.e ** -2) + math.log(1 + math.e ** 0.5)) / 2
    np.testing.assert_allclose(loss[1], flipped_note + 3 * flipped_onset, rtol=1e-6)
    no_onsets, parts = losses.pianoroll_loss(logits, targets, jnp.zeros(2, bool), 3.0)
    assert (parts["onset_bce"] == 0).all()
    np.testing.assert_allclose(no_onsets[0], (note_bce + onset_bce) / 2, rtol=1e-6)


def test_pianoroll_loss_prefers_calibrated_onsets():
    """Firing an onset everywhere must cost more than firing it only where it is."""
    targets = jnp.zeros((1, 64, 2)).at[0, 10, 1].set(1.0)
    onset_channels = jnp.array([False, True])
    exact = jnp.where(targets > 0, 5.0, -5.0)
    everywhere = jnp.full_like(targets, 5.0).at[..., 0].set(-5.0)
    loss = lambda logits: losses.pianoroll_loss(logits, targets, onset_channels, 1.0)[0][0]
    assert loss(exact) < loss(everywhere) / 10


def test_waveform_loss_l2_and_spectral_terms_per_window():
    waveform_loss = jax.jit(losses.waveform_loss, static_argnames="stft_resolutions")
    t = np.arange(2048) / 16000
    target = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 300 * t)])
    target = jnp.asarray(target[..., None], jnp.float32)
    same, parts = waveform_loss(target, target)
    assert (same == 0).all() and (parts["spectral_convergence"] == 0).all()

    pred = target + jnp.array([0.1, 0.2])[:, None, None]
    l2_only, parts = waveform_loss(pred, target, spectral_weight=0.0)
    np.testing.assert_allclose(l2_only, [0.01, 0.04], rtol=1e-4)
    loss, parts = waveform_loss(pred, target, spectral_weight=2.0)
    assert (parts["spectral_convergence"] > 0).all() and (parts["log_magnitude"] > 0).all()
    np.testing.assert_allclose(
        loss, l2_only + 2 * (parts["spectral_convergence"] + parts["log_magnitude"]), rtol=1e-4)
    # Window 0 alone gives window 0's values: nothing is shared across the batch.
    alone, _ = waveform_loss(pred[:1], target[:1], spectral_weight=2.0)
    np.testing.assert_allclose(alone[0], loss[0], rtol=1e-6)


def test_stft_magnitude_peaks_at_the_sine_bin():
    sine = jnp.asarray(np.sin(2 * np.pi * 16 * np.arange(4096) / 256)[None], jnp.float32)
    magnitude = losses.stft_magnitude(sine, n_fft=256, hop=64, win_length=256)
    assert magnitude.shape == (1, 4096 // 64 + 1, 129)
    np.testing.assert_array_equal(magnitude[0, 4:-4].argmax(-1), 16)


def test_vqvae_loss_sums_levels_and_commitment():
    batch = synthetic_rolls((2, 16, 8), notes=3)
    outputs = [normal((2, 16, 8), seed) for seed in range(2)]
    stats = quantizers.usage_stats(np.arange(4), 4)
    aux = {"commit_losses": [jnp.array([0.2, 0.4]), jnp.array([0.3, 0.1])],
           "codebook_stats": [stats, stats]}
    config = tiny_config()
    per_window, parts = losses.window_losses(outputs, batch, aux, config)
    recons = [losses.pianoroll_loss(o, batch["inputs"], batch["onset_channels"], 1.0)[0]
              for o in outputs]
    np.testing.assert_allclose(per_window, recons[0] + recons[1] + np.array([0.5, 0.5]),
                               rtol=1e-6)
    loss, metrics = losses.vqvae_loss(outputs, batch, aux, config)
    np.testing.assert_allclose(loss, np.mean(per_window), rtol=1e-6)
    np.testing.assert_allclose(metrics["level1/recon"], np.mean(recons[1]), rtol=1e-6)
    np.testing.assert_allclose(metrics["level1/commit"], 0.2, rtol=1e-6)
    assert metrics["level0/perplexity"] == 4
    assert {"loss", "recon_loss", "commit_loss", "level0/onset_bce"} <= set(metrics)


def test_vqvae_loss_on_waveforms_uses_the_configured_stft():
    config = tiny_config()
    config.output = "waveform"
    config.loss.update(stft_resolutions=((64, 16, 64),), spectral_weight=0.5)
    target, output = normal((2, 256, 1), seed=0), normal((2, 256, 1), seed=1)
    aux = {"commit_losses": [jnp.array([0.1, 0.1])],
           "codebook_stats": [quantizers.usage_stats(np.arange(4), 4)]}
    loss, metrics = losses.vqvae_loss([output], {"inputs": target}, aux, config)
    expected, _ = losses.waveform_loss(output, target, ((64, 16, 64),), 0.5)
    np.testing.assert_allclose(loss, np.mean(expected) + 0.1, rtol=1e-6)
    assert metrics["level0/spectral_convergence"] > 0


def test_jukebox_config_builds_the_published_model():
    config = vqvae.jukebox_model_config()
    model = vqvae.vqvae_from_config(config, 1)
    assert model.hops == (8, 32, 128)
    assert (config.quantizer.codebook_size, config.quantizer.code_dim) == (2048, 64)
    assert config.output == "waveform" and config.loss.spectral_weight > 0


# ---------------------------------------------------------------------------- upsampling

@pytest.mark.parametrize("stride, kernel", [(1, 2), (2, 4), (3, 6), (4, 8), (2, 3), (3, 2)])
def test_sub_pixel_transposed_conv_is_flax_conv_transpose(stride, kernel):
    x = normal((2, 7, 5))
    reference = nn.ConvTranspose(6, (kernel,), strides=(stride,), padding="SAME")
    variables = reference.init(jax.random.key(1), x)
    ours = layers.SubPixelConvTranspose(6, kernel, stride)
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x),
                               atol=1e-5)
    grads = [jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(v, x))))(variables)
             for m in (ours, reference)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), *grads)


def test_the_decoder_reads_checkpoints_of_the_conv_transpose_decoder():
    """Same parameter tree and the same outputs as the decoder built on nn.ConvTranspose."""
    class OldDecoder(layers._Tower):  # the decoder as it was, upsampling with nn.ConvTranspose
        @nn.compact
        def __call__(self, z):
            x = nn.Conv(self.width, (3,))(z)
            for stride in reversed(self.strides):
                x = self.stack(reverse=True)(x)
                x = nn.ConvTranspose(self.width, (2 * stride,), strides=(stride,),
                                     padding="SAME")(x)
            return nn.Conv(self.out_dim, (3,))(x)

    fields = dict(width=8, depth=2, dilation_growth=3, dilation_cycle=2, strides=(2, 2, 2),
                  out_dim=5)
    z = normal((2, 4, 3))
    old_variables = OldDecoder(**fields).init(jax.random.key(0), z)
    new = layers.Decoder(**fields)
    assert jax.tree.map(jnp.shape, new.init(jax.random.key(0), z)) == \
        jax.tree.map(jnp.shape, old_variables)
    np.testing.assert_allclose(new.apply(old_variables, z),
                               OldDecoder(**fields).apply(old_variables, z), atol=1e-5)
