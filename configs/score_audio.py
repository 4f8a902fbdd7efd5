"""Score-to-audio: renders a piano-roll as 16 kHz audio (a neural harmonic synthesizer),
trained on the sample set's (score, rendered audio) windows.

    python -m musicflax.train --config=configs/score_audio.py --workdir=workdirs/score_audio
    python -m musicflax.eval --config=configs/eval.py --workdir=workdirs/score_audio
    python -m musicflax.sample --workdir=workdirs/prior --render_with=workdirs/score_audio
    python -m musicflax.sample --render_with=workdirs/score_audio --midi=piece.mid

The windows of configs/waveform_laptop.py (0.6 s at 16 kHz, the score at 100 frames/s);
--config.data.audio_source=fluidsynth learns FluidSynth's General-MIDI timbres instead of
musicflax's synthesizer. Model settings: musicflax.models.score_audio.default_model_config.
"""

from configs import waveform_laptop
from musicflax.models import score_audio


def get_config(arg: str | None = None):
    config = waveform_laptop.get_config(arg)
    config.task = "score_audio"
    config.model = score_audio.default_model_config()
    config.optim.update(learning_rate=3e-3, warmup_steps=100)
    config.num_train_steps = 3000
    config.eval_every = config.checkpoint_every = config.image_every = 500
    config.evals = dict(loss=dict(enabled=True),
                        reconstruction=dict(enabled=True, multipitch=False, write_notes=False,
                                            figures=0))
    if arg == "runlocal":
        config.model.update(width=8, depth=2, harmonics=4)
        config.num_train_steps = 20
        config.eval_every = config.checkpoint_every = config.image_every = 10
    return config
