"""Code prior: cached decoding against the full forward pass, a short training run on a
composer-conditioned Markov corpus, sampling (determinism, prime, sliding window, cached vs
uncached, conditioning and guidance), top-k / top-p filters and the loss."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musicflax.models import prior

K = 32              # codebook size of the synthetic corpus
CONTEXT = 16        # max_len of the tiny priors
STEPS = (1, 5)      # composer c continues a code x with (x + STEPS[c]) % K
FOLLOW = 0.9        # ... with this probability, else with a uniformly drawn code
UPSAMPLER = dict(upper_vocab_size=8, upper_hop=4)


@pytest.fixture(autouse=True, scope="module")
def fast_compiling_rng():
    """With the (default) partitionable threefry, XLA:CPU spends seconds compiling every random
    draw; the classic variant draws equally valid numbers."""
    with jax.threefry_partitionable(False):
        yield


def tiny_prior(upsampler=None, **overrides) -> prior.Prior:
    config = prior.default_prior_config()
    config.update(vocab_size=K, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64,
                  max_len=CONTEXT, num_composers=2, num_ensembles=3, dropout=0.0,
                  cond_drop_prob=0.1)
    config.update(overrides)
    config.upsampler.update(upsampler or {})
    return prior.prior_from_config(config)


def markov_corpus(num, seed):
    """Sequences [num, CONTEXT] and their composers [num]: first code uniform, then each code
    follows the composer's step with probability FOLLOW."""
    rng = np.random.default_rng(seed)
    composer = rng.integers(2, size=num)
    codes = np.zeros((num, CONTEXT), np.int32)
    codes[:, 0] = rng.integers(K, size=num)
    for t in range(1, CONTEXT):
        follow = rng.random(num) < FOLLOW
        codes[:, t] = np.where(follow, (codes[:, t - 1] + np.take(STEPS, composer)) % K,
                               rng.integers(K, size=num))
    return jnp.asarray(codes), jnp.asarray(composer, jnp.int32)


def follow_rate(codes, composer):
    """Fraction of transitions in codes [B, T] that take the composer's step."""
    return float(jnp.mean((codes[:, 1:] - codes[:, :-1]) % K == STEPS[composer]))


@pytest.fixture(scope="module")
def trained():
    """A tiny conditioned prior after 100 Adam steps on the Markov corpus: (model, params)."""
    model = tiny_prior(num_ensembles=0)
    codes, composer = markov_corpus(2048, seed=0)
    optimizer = optax.adam(3e-3)

    @jax.jit
    def train(key):
        params = model.init(jax.random.key(0), codes[:2], composer[:2])["params"]

        def step(carry, i):
            params, opt_state = carry
            row_key, dropout_key = jax.random.split(jax.random.fold_in(key, i))
            rows = jax.random.choice(row_key, codes.shape[0], (64,))

            def loss_fn(params):
                logits = model.apply({"params": params}, codes[rows], composer[rows],
                                     train=True, rngs={"dropout": dropout_key})
                return prior.prior_loss(logits, codes[rows])[0]

            grads = jax.grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(100))[0][0]

    return model, train(jax.random.key(1))


# ---------------------------------------------------------------------------- network

@pytest.fixture(scope="module")
def upsampler():
    """A random conditioned upsampler prior, codes of a 2 * CONTEXT sequence and their coarse
    codes (batch 2), and its params with jitted forward / decode_step / prefill."""
    model = tiny_prior(upsampler=UPSAMPLER)
    codes = jax.random.randint(jax.random.key(0), (2, 2 * CONTEXT), 0, K)
    upper = jax.random.randint(jax.random.key(1), (2, 2 * CONTEXT // UPSAMPLER["upper_hop"]),
                               0, UPSAMPLER["upper_vocab_size"])
    params = jax.jit(model.init)(jax.random.key(2), codes[:, :CONTEXT], jnp.zeros(2, jnp.int32),
                                 jnp.zeros(2, jnp.int32), upper=upper)["params"]
    variables = {"params": params}
    calls = dict(
        params=params,
        forward=jax.jit(lambda window, composer, ensemble, upper, offset: model.apply(
            variables, window, composer, ensemble, upper=upper, offset=offset)),
        decode=jax.jit(lambda *args: model.apply(variables, *args, method="decode_step")),
        prefill=jax.jit(lambda *args: model.apply(variables, *args, method="prefill")))
    return model, codes, upper, calls


def test_cached_decoding_matches_the_forward_pass(upsampler):
    """Decoding one code at a time through the cache, and prefilling half then decoding, give
    the full forward pass's logits (with conditioning, and coarse codes at an offset)."""
    model, codes, upper, calls = upsampler
    composer, ensemble = jnp.array([0, 1]), jnp.array([2, -1])
    offset = 8  # a window of the longer sequence, aligned to the coarse codes
    window = codes[:, offset:offset + CONTEXT]
    expected = calls["forward"](window, composer, ensemble, upper, offset)
    # The offset means what it says: the same window with its coarse codes moved to the front.
    moved = jnp.roll(upper, -offset // UPSAMPLER["upper_hop"], axis=1)
    np.testing.assert_allclose(calls["forward"](window, composer, ensemble, moved, 0), expected,
                               atol=1e-5)
    assert np.abs(calls["forward"](window, composer, ensemble, upper, 0) - expected).max() > 1e-3

    cache = model.init_cache(2)
    for t in range(CONTEXT):
        logits, cache = calls["decode"](window[:, max(t - 1, 0)], t, composer, ensemble, cache,
                                        upper, offset)
        np.testing.assert_allclose(logits, expected[:, t], atol=1e-4, err_msg=f"position {t}")

    half = CONTEXT // 2
    logits, cache = calls["prefill"](window[:, :half], composer, ensemble, model.init_cache(2),
                                     upper, offset)
    np.testing.assert_allclose(logits, expected[:, :half + 1], atol=1e-4)
    for t in range(half + 1, CONTEXT):
        logits, cache = calls["decode"](window[:, t - 1], t, composer, ensemble, cache, upper,
                                        offset)
        np.testing.assert_allclose(logits, expected[:, t], atol=1e-4, err_msg=f"position {t}")


def test_conditioning_changes_the_logits_and_minus_one_is_null(upsampler):
    _, codes, upper, calls = upsampler

    def logits(composer, ensemble):
        return calls["forward"](codes[:, :CONTEXT], jnp.array(composer), jnp.array(ensemble),
                                upper, 0)

    base = logits([0, -1], [0, -1])
    assert base.shape == (2, CONTEXT, K) and base.dtype == jnp.float32
    # Another composer (row 0) or ensemble moves every position's logits; the explicit null
    # indices (2 composers, 3 ensembles) are the same as -1 (row 1).
    for other in (logits([1, 2], [0, 3]), logits([0, 2], [2, 3])):
        assert np.all(np.abs(other[0] - base[0]).max(-1) > 1e-4)
        np.testing.assert_array_equal(other[1], base[1])


def test_prior_loss_bits_and_accuracy():
    tokens = jnp.array([[1, 2, 3], [0, 0, 0]])
    logits = jnp.zeros((2, 3, 4)).at[0, :, 1].set(5.0)
    loss, metrics = prior.prior_loss(logits, tokens, mask=jnp.array([[1, 1, 1], [0, 0, 0]]))
    log_p1 = jax.nn.log_softmax(jnp.array([0.0, 5.0, 0.0, 0.0]))
    expected = -(log_p1[1] + 2 * log_p1[2]) / 3  # row 1 is masked out
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["bits_per_code"], expected / math.log(2), rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], 1 / 3, rtol=1e-6)
    uniform, _ = prior.prior_loss(jnp.zeros((2, 3, 4)), tokens)
    np.testing.assert_allclose(uniform, math.log(4), rtol=1e-6)


# ---------------------------------------------------------------------------- training

def test_short_training_beats_the_unigram_entropy_by_30_percent(trained):
    model, params = trained
    codes, composer = markov_corpus(256, seed=1)
    counts = np.bincount(np.asarray(codes).ravel(), minlength=K) / codes.size
    unigram_bits = -np.sum(counts * np.log2(np.maximum(counts, 1e-12)))
    logits = jax.jit(model.apply)({"params": params}, codes, composer)
    bits = float(prior.prior_loss(logits, codes)[1]["bits_per_code"])
    assert bits <= 0.7 * unigram_bits, (bits, unigram_bits)


# ---------------------------------------------------------------------------- sampling

LENGTH = 3 * CONTEXT + 5  # slides the window several times
PRIME = jnp.array([[3, 4, 5], [7, 12, 17]])  # each row continues its composer's pattern


def test_sampling_is_seeded_keeps_the_prime_and_runs_past_the_context(trained):
    model, params = trained

    def sample(seed):
        return model.sample(params, jax.random.key(seed), 2, LENGTH, jnp.array([0, 1]),
                            temperature=0.5, prime=PRIME)

    first = sample(0)
    assert first.shape == (2, LENGTH) and first.dtype == jnp.int32
    assert 0 <= first.min() and first.max() < K
    np.testing.assert_array_equal(first[:, :3], PRIME)
    np.testing.assert_array_equal(sample(0), first)
    assert np.any(sample(1) != first)
    # The learnt pattern survives every window rebuild.
    for row in range(2):
        assert follow_rate(first[row:row + 1, -CONTEXT:], row) > 0.8


def test_cached_and_uncached_sampling_draw_the_same_codes(trained):
    model, params = trained
    for temperature in (1.0, 0.0):
        args = (params, jax.random.key(7), 2, LENGTH, jnp.array([0, 1]))
        kwargs = dict(prime=PRIME, temperature=temperature)
        np.testing.assert_array_equal(model.sample(*args, **kwargs),
                                      model.sample_uncached(*args, **kwargs))


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_composer_selects_its_pattern_when_sampling(trained, guidance_scale):
    """From the same neutral prime, each row follows its composer's pattern, whichever it is."""
    model, params = trained
    prime = jnp.full((2, 3), 9)
    for composer in ([0, 1], [1, 0]):
        codes = model.sample(params, jax.random.key(0), 2, LENGTH, jnp.array(composer),
                             temperature=0.5, guidance_scale=guidance_scale, prime=prime)
        for row, c in enumerate(composer):
            assert follow_rate(codes[row:row + 1, 3:], c) > 0.7
            assert follow_rate(codes[row:row + 1, 3:], 1 - c) < 0.1


def test_upsampler_sampling_follows_the_coarse_codes_through_the_window(upsampler):
    """Cached and uncached sampling agree while the window slides over the coarse codes, and
    the coarse codes matter; without them sampling refuses."""
    model, _, upper, calls = upsampler
    params = calls["params"]
    length = upper.shape[1] * UPSAMPLER["upper_hop"]  # 2 * CONTEXT: slides the window
    args = (params, jax.random.key(3), 2, length, jnp.array([0, 1]), jnp.array([2, -1]))
    cached = model.sample(*args, upper=upper)
    np.testing.assert_array_equal(model.sample_uncached(*args, upper=upper), cached)
    assert np.any(model.sample(*args, upper=(upper + 1) % UPSAMPLER["upper_vocab_size"])
                  != cached)
    with pytest.raises(ValueError, match="upper"):
        model.sample(*args)


# ---------------------------------------------------------------------------- filters

def test_top_k_keeps_exactly_k():
    top_k = jax.jit(prior.top_k_filter)
    logits = jnp.array([[0.5, 3.0, 3.0, 2.0, -1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    for k, kept in [(1, [[1], [4]]), (2, [[1, 2], [3, 4]]), (4, [[0, 1, 2, 3], [1, 2, 3, 4]])]:
        filtered = top_k(logits, k)
        for row in range(2):
            np.testing.assert_array_equal(np.flatnonzero(np.isfinite(filtered[row])), kept[row])
            np.testing.assert_array_equal(filtered[row, kept[row]], logits[row, kept[row]])
    np.testing.assert_array_equal(top_k(logits, 0), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = jnp.array([0.15, 0.5, 0.05, 0.3])
    logits = jnp.log(probs)
    top_p = jax.jit(prior.top_p_filter)
    for p, kept in [(0.3, [1]), (0.45, [1]), (0.7, [1, 3]), (0.9, [0, 1, 3]),
                    (0.97, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])]:
        filtered = top_p(logits, p)
        np.testing.assert_array_equal(np.flatnonzero(np.isfinite(filtered)), kept, f"p={p}")
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(top_p(logits, 0.0))),
                                  [1])


def test_sample_logits_greedy_and_filtered_draws():
    logits = jnp.tile(jnp.array([[0.0, 1.0, 2.0, 1.5]]), (512, 1))
    sample = jax.jit(prior.sample_logits)
    key = jax.random.key(0)
    np.testing.assert_array_equal(sample(key, logits, 0.0, 0, 1.0), 2)
    assert set(np.unique(sample(key, logits, 1.0, 0, 1.0))) == {0, 1, 2, 3}
    # Top-2, and the nucleus of mass 0.5 (probabilities 0.47 and 0.29 lead), draw both of theirs.
    assert set(np.unique(sample(key, logits, 1.0, 2, 1.0))) == {2, 3}
    assert set(np.unique(sample(key, logits, 1.0, 0, 0.5))) == {2, 3}


def test_residual_stages_keep_each_position_to_its_codebook():
    """With stages=2 (tokens s*16 + c), a position's distribution lies on its stage's 16 codes
    (also at an odd window offset and through the cache), and sampling past the context, with
    its window rebuilds at odd offsets, only ever draws tokens of the position's stage."""
    model = tiny_prior(stages=2)
    codes = jnp.asarray(np.random.default_rng(0).integers(16, size=(2, 40)) +
                        16 * (np.arange(40) % 2), jnp.int32)
    ids = jnp.array([0, 1])
    params = model.init(jax.random.key(0), codes[:, :CONTEXT], ids, ids)["params"]
    decode = jax.jit(lambda *args: model.apply({"params": params}, *args, method="decode_step"))
    for offset in (0, 3):
        window = codes[:, offset:offset + CONTEXT]
        logits = model.apply({"params": params}, window, ids, ids, offset=offset)
        probs = np.asarray(jax.nn.softmax(logits))
        stage = (offset + np.arange(CONTEXT)) % 2
        own = np.stack([probs[:, t, 16 * s:16 * s + 16].sum(-1) for t, s in enumerate(stage)], 1)
        np.testing.assert_allclose(own, 1.0, atol=1e-6)
        cache = model.init_cache(2)
        for t in range(CONTEXT):
            step, cache = decode(window[:, max(t - 1, 0)], t, ids, ids, cache, None, offset)
            np.testing.assert_allclose(step, logits[:, t], atol=1e-4)
    drawn = np.asarray(model.sample(params, jax.random.key(1), 2, 40, ids, prime=codes[:, :2]))
    np.testing.assert_array_equal(drawn // 16, np.broadcast_to(np.arange(40) % 2, (2, 40)))
    with pytest.raises(ValueError, match="stages=3"):
        tiny_prior(stages=3).init(jax.random.key(0), codes[:, :CONTEXT], ids, ids)


def test_baselines_of_residual_tokens_model_each_stage():
    """2 stages of K=2 (tokens 0,1 | 2,3): unigram and bigram within a position's stage."""
    from musicflax.eval.evaluators.prior import baseline_bits  # pylint: disable=g-import-not-at-top
    from musicflax.train.codes import CodeSet  # pylint: disable=g-import-not-at-top

    def codeset(tokens):
        one = np.zeros(1, np.int32)
        return CodeSet(codes=np.asarray(tokens, np.int32), offsets=np.array([0, len(tokens)]),
                       ids=one, composer=one, ensemble=one, vocab_size=4, codes_per_second=1.0,
                       vocab={}, stages=2)

    bits = baseline_bits(codeset([0, 2, 1, 3, 0, 2]), codeset([1, 3]))
    # Per stage: 2 of 3 training codes are the first (0 / 2); add-one: 3/5 and 2/5.
    assert bits["uniform_bits"] == 1.0
    assert bits["unigram_bits"] == pytest.approx(-(2 / 3) * math.log2(2 / 3) -
                                                 (1 / 3) * math.log2(1 / 3))
    assert bits["unigram_xent_bits"] == pytest.approx(-math.log2(0.4))
    # After 1 (stage 0) come 2 or 3: one count of 1 -> 3 in training, plus one each: 2/3.
    assert bits["bigram_xent_bits"] == pytest.approx(-math.log2(2 / 3))
