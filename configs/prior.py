"""Prior over the codes of the default piano-roll VQ-VAE (train that first).

    python -m musicflax.train --config=configs/default.py --workdir=workdirs/default
    python -m musicflax.train --config=configs/prior.py --workdir=workdirs/prior
    python -m musicflax.sample --workdir=workdirs/prior --num=4 --seconds=20 --composer=Bach

The prior reads the VQ-VAE checkpoint in `prior.vqvae_workdir`, encodes the train and
validation splits once (cached under that workdir) and trains with the same loop, mesh,
checkpoints and exact resume as the VQ-VAE.
"""

import ml_collections

from configs import default
from musicflax.models import prior


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config(arg)
    config.task = "prior"
    # A fresh prior run pins its VQ-VAE: the workdir made absolute, step -1 replaced by the
    # latest step, and the VQ-VAE's config hash; resuming, sampling and eval use those.
    config.prior = ml_collections.ConfigDict(dict(
        vqvae_workdir="workdirs/default",
        vqvae_step=-1,      # -1 = the latest checkpoint (when the prior starts)
        vqvae_config_hash="",
        level=0,            # which VQ-VAE level the prior models
        upper_level=-1,     # -1: a top-level prior; level + 1: an upsampler reading that level
        train_hop=8,        # spacing of training crops (codes)
        # Piano-roll VQ-VAEs: also train on the codes of the train split transposed by each
        # of -k..k semitones (2k + 1 copies).
        pitch_shift=0,
    ))
    # vocab_size and the conditioning vocabularies come from the VQ-VAE and its dataset.
    config.model = prior.default_prior_config()
    config.model.update(num_layers=4, num_heads=4, head_dim=32, mlp_dim=512, dropout=0.1,
                        max_len=128, cond_drop_prob=0.1)
    config.optim.update(learning_rate=1e-3, warmup_steps=100)
    config.batch_size = 32
    config.num_train_steps = 600
    config.eval_every = config.checkpoint_every = 200
    config.image_every = 0
    config.evals = ml_collections.ConfigDict(dict(prior=dict(enabled=True)))
    if arg == "runlocal":
        config.model.update(num_layers=1, num_heads=2, head_dim=16, mlp_dim=64)
    return config
