"""Jukebox's published VQ-VAE settings (Dhariwal et al. 2020) as a baseline, on waveforms.

    python -m musicflax.train --config=configs/jukebox.py --workdir=workdirs/jukebox

Codebook 2048 x 64, EMA decay 0.99, commitment 0.02, random restarts (threshold 1.0),
three levels with hops 8 / 32 / 128, width 64, 4 residual blocks with dilation growth 3,
spectral loss on. Jukebox trained 44.1 kHz audio; here the sample set's 16 kHz audio.
"""

from configs import waveform
from musicflax.models import vqvae


def get_config(arg: str | None = None):
    config = waveform.get_config(arg)
    config.model = vqvae.jukebox_model_config()
    if arg == "runlocal":
        config.model.update(width=16, res_depth=1)
    return config
