"""A waveform VQ-VAE sized for a laptop CPU: audible reconstructions in about 20 minutes.

    python -m musicflax.train --config=configs/waveform_laptop.py --workdir=workdirs/waveform_laptop
    python -m musicflax.eval --config=configs/eval.py --workdir=workdirs/waveform_laptop

configs/waveform.py shrunk: 0.6 s windows (9,600 samples at 16 kHz), width 32, 2 residual
blocks a stage, batch 8; the same two levels (hops 8 and 32: 2,000 and 500 codes/s) and loss.
The full-size configs (waveform.py, jukebox.py) are accelerator jobs. The window is a
multiple of 128 samples so configs/jukebox.py can train on the same windows
(--config.data.window_samples=9600 --config.batch_size=8).
"""

from configs import waveform


def get_config(arg: str | None = None):
    config = waveform.get_config(arg)
    config.data.update(window_samples=9600, train_hop_frames=15)
    if arg == "runlocal":
        return config
    config.model.update(width=32, res_depth=2)
    config.batch_size = 8
    config.optim.learning_rate = 1e-3
    config.num_train_steps = 4000
    config.eval_every = config.checkpoint_every = 1000
    return config
