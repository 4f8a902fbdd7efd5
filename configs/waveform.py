"""Waveform VQ-VAE: one-second 16 kHz windows of the sample set's synthesized audio.

    python -m musicflax.train --config=configs/waveform.py --workdir=workdirs/waveform

The first run renders the sample set's audio (TFDS config synth_audio16000), which takes a
few minutes on a laptop CPU. Hops 8 and 32 (two levels); L2 + multi-resolution STFT loss.
"""

from configs import default


def get_config(arg: str | None = None):
    config = default.get_config(arg)
    config.data.update(representation="waveform", frame_rate=100.0, sample_rate=16000,
                       window_samples=16000, train_hop_frames=25)
    config.model.update(output="waveform", width=64, res_depth=3, levels=2, downs_t=(3, 2),
                        strides_t=(2, 2), output_bias=0.0)
    config.model.quantizer.update(codebook_size=512, code_dim=64)
    config.optim.learning_rate = 5e-4
    config.batch_size = 16
    return config
