"""A three-level piano-roll VQ-VAE whose coarser levels compress time: hops 4 / 16 / 64 frames
(7.8 / 2.0 / 0.5 codes per second), the base of the default hierarchy of priors.

    python -m musicflax.train --config=configs/hierarchy.py --workdir=workdirs/hierarchy
    python -m musicflax.train --config=configs/hierarchy_prior.py:top --workdir=workdirs/h_top
    python -m musicflax.train --config=configs/hierarchy_prior.py:up1 --workdir=workdirs/h_up1
    python -m musicflax.train --config=configs/hierarchy_prior.py:up0 --workdir=workdirs/h_up0
    python -m musicflax.sample --workdir=workdirs/h_top \
        --upsamplers=workdirs/h_up1,workdirs/h_up0 --seconds=60 --num=1

Every level is its own encoder -> quantizer -> decoder (Jukebox's design) and reconstructs
the whole window from its codes. The finest level, which the hierarchy decodes, uses residual
VQ (2 codebooks of 512 at hop 4: 140.6 bits/s, half the single-level default's 281); the
coarser ones one codebook each (1024 at hop 16, 2048 at hop 64). `runlocal` shrinks it.
"""

from configs import default


def get_config(arg: str | None = None):
    config = default.get_config(arg)
    config.model.update(levels=3, downs_t=(2, 2, 2), strides_t=(2, 2, 2))
    config.model.quantizer.update(type="rvq", stages=2, codebook_size=512)
    config.model.update(level_quantizer_types=("rvq", "ema_vq", "ema_vq"),
                        level_codebook_sizes=(512, 1024, 2048))
    return config
