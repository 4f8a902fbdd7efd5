"""Default: piano-roll VQ-VAE on the shipped sample set (Bach chorales, Haydn/Mozart quartets).

    python -m musicflax.train --config=configs/default.py --workdir=workdirs/default

Variants import this file and patch it (see configs/waveform.py). `runlocal` shrinks
everything for a smoke run: --config=configs/default.py:runlocal
"""

import ml_collections


def data_config() -> ml_collections.ConfigDict:
    """Where windows come from and what they look like."""
    return ml_collections.ConfigDict(dict(
        # 'sample' = the shipped sample set; else a folder (or .tar.gz) holding real MusicNet.
        source="sample",
        tfds_data_dir="",            # '' = TFDS's default (~/tensorflow_datasets)
        split_scheme="musicnet",     # 'musicnet' (official test folder) or 'mt3'
        representation="pianoroll",  # 'pianoroll' or 'waveform'
        frame_rate=31.25,            # frames/s of piano-rolls and of waveform pitch labels
        window_frames=128,           # piano-roll window length (frames)
        sample_rate=16000,           # waveform only: audio rate of the TFDS dataset
        window_samples=16000,        # waveform only: window length (samples)
        train_hop_frames=16,         # spacing of the train window table (jittered inside)
        eval_hop_frames=0,           # 0 = non-overlapping eval windows
        jitter=True,
        # Groups of MusicNet instrument codes; each is one block of 128 pitch channels.
        instrument_groups="keyboard:1,7;strings:41,42,43,44;winds:61,69,71,72,74",
        on_bad_row="error",          # or 'skip' (counted in the build summary)
        accept_any_rate=False,       # resample WAVs that are not 44.1 kHz instead of failing
        downmix=False,               # average multi-channel WAVs instead of failing
        num_threads=0,               # tf.data private threadpool (0 = TF's default)
        prefetch=0,                  # batches prefetched (0 = autotune)
    ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 64  # global, across all processes
    config.data = data_config()
    if arg == "runlocal":
        config.batch_size = 8
    return config
