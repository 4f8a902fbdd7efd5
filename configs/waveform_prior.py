"""Priors over configs/waveform_laptop.py's two levels, to sample audio through the hierarchy
(train the VQ-VAE first; this CPU budget gives babble, not music: it measures the path and
its real-time factor).

    python -m musicflax.train --config=configs/waveform_prior.py:top --workdir=workdirs/w_top
    python -m musicflax.train --config=configs/waveform_prior.py:up0 --workdir=workdirs/w_up0
    python -m musicflax.sample --workdir=workdirs/w_top --upsamplers=workdirs/w_up0 \
        --seconds=4 --num=1

top: level 1 (hop 32, 500 codes/s) conditioned on composer and ensemble, context 512 codes
= 1 s. up0: level 0 (hop 8, 2,000 codes/s) given level 1 (4 codes under each), context 512
= 0.26 s. Append ",runlocal" to the stage for a smoke run.
"""

import ml_collections

from configs import prior

# stage -> (level, upper level, context in codes, train hop in codes)
STAGES = {"top": (1, -1, 512, 64), "up0": (0, 1, 512, 128)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    stage, _, rest = (arg or "top").partition(",")
    if stage not in STAGES:
        raise ValueError(f"unknown waveform prior stage {stage!r}; choose one of {sorted(STAGES)}")
    config = prior.get_config(rest or None)
    level, upper, context, hop = STAGES[stage]
    config.prior.update(vqvae_workdir="workdirs/waveform_laptop", level=level,
                        upper_level=upper, train_hop=hop)
    config.model.max_len = context
    config.batch_size = 16
    if not rest:
        config.num_train_steps = 400
        config.eval_every = config.checkpoint_every = 200
    return config
