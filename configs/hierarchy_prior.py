"""The priors of the default hierarchy over configs/hierarchy.py's VQ-VAE (train it first).

    python -m musicflax.train --config=configs/hierarchy_prior.py:top --workdir=workdirs/h_top
    python -m musicflax.train --config=configs/hierarchy_prior.py:up1 --workdir=workdirs/h_up1
    python -m musicflax.train --config=configs/hierarchy_prior.py:up0 --workdir=workdirs/h_up0
    python -m musicflax.sample --workdir=workdirs/h_top \
        --upsamplers=workdirs/h_up1,workdirs/h_up0 --seconds=60 --num=1

top: the coarsest level (hop 64, 0.49 codes/s) conditioned on composer and ensemble, with a
context of 64 codes = 131 s of music. up1: level 1 (hop 16) given level 2 (4 codes of level
1 under each), context 256 codes = 131 s. up0: level 0's residual-VQ tokens (2 a position,
hop 4: 15.6 tokens/s) given level 1 (8 tokens under each), context 256 tokens = 16 s (512
trains at 0.45 steps/s on a 2-core CPU). Longer samples slide their context. Append
",runlocal" to the stage for a smoke run.
"""

import ml_collections

from configs import prior

# stage -> (level, upper level, context in tokens, train hop in tokens, steps). The coarse
# levels hold few codes (5k and 20k in the sample set's train split), so every prior also
# trains on the split transposed by -3..3 semitones (prior.pitch_shift): the top prior's
# validation bits/code were 5.90 after 200 steps without, 4.61 after 300 with.
STAGES = {"top": (2, -1, 64, 4, 300), "up1": (1, 2, 256, 16, 400),
          "up0": (0, 1, 256, 16, 600)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    stage, _, rest = (arg or "top").partition(",")
    if stage not in STAGES:
        raise ValueError(f"unknown hierarchy stage {stage!r}; choose one of {sorted(STAGES)}")
    config = prior.get_config(rest or None)
    level, upper, context, hop, steps = STAGES[stage]
    config.prior.update(vqvae_workdir="workdirs/hierarchy", level=level, upper_level=upper,
                        train_hop=hop, pitch_shift=3)
    config.model.max_len = context
    if not rest:  # runlocal keeps its own few steps
        config.num_train_steps = steps
        config.eval_every = config.checkpoint_every = min(200, steps // 2)
    return config
