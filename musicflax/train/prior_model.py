"""The prior stage's pure parts: the transformer of a config over a codebook of K codes, its
loss and its per-window outputs for the evaluators. Plain JAX (no data pipeline), so a train
step can be built and timed from a config alone; musicflax.train.prior_task adds the codes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from musicflax import app
from musicflax.models import prior


class PriorModel:
    """A prior over `vocab_size` codes, conditioned on composer and ensemble ids."""

    best_metric = "prior/bits_per_code"
    best_mode = "min"

    def __init__(self, config: ml_collections.ConfigDict, vocab_size: int, num_composers: int,
                 num_ensembles: int, upper_vocab_size: int = 0, upper_hop: int = 1,
                 stages: int = 1):
        self.config = config
        model_config = ml_collections.ConfigDict(config.model.to_dict())
        model_config.update(vocab_size=vocab_size, num_composers=num_composers,
                            num_ensembles=num_ensembles, stages=stages)
        model_config.upsampler.update(upper_vocab_size=upper_vocab_size, upper_hop=upper_hop)
        self.model = prior.prior_from_config(model_config)
        self.length = int(config.model.max_len)
        if upper_vocab_size and self.length % upper_hop:
            raise app.UserError(f"model.max_len={self.length} must be a multiple of the "
                                f"upsampling factor {upper_hop}")
        if self.length % stages:
            raise app.UserError(f"model.max_len={self.length} must be a multiple of the "
                                f"residual-VQ stages {stages} (a position's tokens stay together)")
        self.upper_length = -(-self.length // upper_hop) if upper_vocab_size else 0

    def init(self, rng):
        tokens = jnp.zeros((1, self.length), jnp.int32)
        ids = jnp.zeros((1,), jnp.int32)
        upper = jnp.zeros((1, self.upper_length), jnp.int32) if self.upper_length else None
        return self.model.init({"params": rng}, tokens, ids, ids, train=False,
                               upper=upper)["params"], {}

    def _logits(self, params, batch, rng, train: bool):
        rngs = {"dropout": rng} if train else {}
        return self.model.apply({"params": params}, batch["codes"], batch["composer"],
                                batch["ensemble"], train=train, rngs=rngs,
                                upper=batch.get("upper"))

    def loss(self, params, model_state, batch, rng, train: bool):
        logits = self._logits(params, batch, rng, train)
        loss, parts = prior.prior_loss(logits, batch["codes"])
        return loss, (parts, model_state)

    def eval_outputs(self, params, model_state, batch, temperatures: tuple = ()) -> dict:
        """Per window: summed negative log-likelihood (nats), correct top-1 guesses, codes;
        with `temperatures`, "nll_tempered" [B, len(temperatures)]: the nats of the codes
        under softmax(logits / t), the distribution sampling at temperature t draws from."""
        del model_state
        logits = self._logits(params, batch, None, False)

        def nll_at(t: float):
            log_p = jax.nn.log_softmax(logits / t)
            return -jnp.sum(jnp.take_along_axis(log_p, batch["codes"][..., None], axis=-1)[..., 0],
                            axis=1)
        nll = nll_at(1.0)
        correct = (jnp.argmax(logits, -1) == batch["codes"]).astype(jnp.float32)
        out = {"nll": nll, "correct": jnp.sum(correct, axis=1),
               "codes": jnp.full(nll.shape, logits.shape[1], jnp.float32)}
        if temperatures:
            out["nll_tempered"] = jnp.stack([nll_at(float(t)) for t in temperatures], axis=1)
        return out
