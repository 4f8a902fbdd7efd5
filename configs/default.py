"""Default: piano-roll VQ-VAE on the shipped sample set (Bach chorales, Haydn/Mozart quartets).

    python -m musicflax.train --config=configs/default.py --workdir=workdirs/default

Variants import this file and patch it (see configs/waveform.py). `runlocal` shrinks
everything for a smoke run: --config=configs/default.py:runlocal
"""

import ml_collections

from musicflax.models import vqvae


def data_config() -> ml_collections.ConfigDict:
    """Where windows come from and what they look like."""
    return ml_collections.ConfigDict(dict(
        # 'sample' = the shipped sample set; else a folder (or .tar.gz) holding real MusicNet.
        source="sample",
        tfds_data_dir="",            # '' = TFDS's default (~/tensorflow_datasets)
        # Splits, by recording: 'musicnet' (official test folder + MT3's validation ids),
        # 'mt3', 'hash' (any folder: test = its test_labels, validation = a fraction of the
        # train recordings by a hash of the id) or 'lists' (split_lists: a JSON/CSV file or
        # 'validation=ID,..;test=ID,..').
        split_scheme="musicnet",
        split_lists="",
        validation_fraction=0.1,     # 'hash' only
        test_fraction=0.1,           # 'hash' only, for a folder without test_labels
        representation="pianoroll",  # 'pianoroll' or 'waveform'
        frame_rate=31.25,            # frames/s of piano-rolls and of waveform pitch labels
        window_frames=128,           # piano-roll window length (frames)
        sample_rate=16000,           # waveform only: audio rate of the TFDS dataset
        window_samples=16000,        # waveform only: window length (samples)
        train_hop_frames=16,         # spacing of the train window table (jittered inside)
        eval_hop_frames=0,           # 0 = non-overlapping eval windows
        jitter=True,
        # Piano-rolls only: train windows transposed by a uniform draw of -k..k semitones
        # (notes moved out of 0..127 dropped); 0 = as recorded.
        pitch_shift=0,
        # Groups of instrument codes (1-based GM programs); each is one block of 128 pitch
        # channels. Map another code by adding it to a group; drop its notes with ';drop:46'.
        instrument_groups="keyboard:1,7;strings:41,42,43,44;winds:61,69,71,72,74",
        # waveform only: 'auto' (the source's WAVs; the sample set's are rendered from its
        # labels), 'synth' (render any source's labels with musicflax's synthesizer) or
        # 'fluidsynth' (render them with FluidSynth and `soundfont`, '' = FluidR3 GM).
        audio_source="auto",
        soundfont="",
        on_bad_row="error",          # or 'skip' (counted in the build summary)
        accept_any_rate=False,       # resample WAVs that are not 44.1 kHz instead of failing
        downmix=False,               # average multi-channel WAVs instead of failing
        num_threads=0,               # tf.data private threadpool (0 = TF's default)
        prefetch=0,                  # batches prefetched (0 = autotune)
    ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "vqvae"
    config.seed = 0
    config.batch_size = 32           # global, across all processes and devices
    config.num_train_steps = 1500
    config.train_seconds = 0.0       # stop (validate, save) after this long training; 0 = never
    config.data = data_config()

    config.model = vqvae.default_model_config()
    # One level, hop 1 (a code per 32 ms frame, 128 per 4.1 s window): 9 bits per frame of
    # four-part music. Hop 2 halves the bits and reached onset F1 0.61 instead of 0.79 after
    # 1000 steps.
    config.model.update(width=96, res_depth=3, levels=1, downs_t=(1,), strides_t=(1,))
    config.model.quantizer.update(codebook_size=512, code_dim=64, init="kmeans")
    # Onsets are ~0.06% of the entries of their channels: without emphasis their logits
    # rarely pass 0 (onset recall 0.10 at weight 1, 0.67 at weight 10).
    config.model.loss.onset_weight = 10.0
    # Logits start at the log-odds of a 1% base rate: from 0 (p = 0.5) the first steps push
    # every position the same way, which drove FSQ's bounded latents into saturation (one
    # code for everything); from -4.6 FSQ reached onset F1 0.82 in 250 steps.
    config.model.output_bias = -4.6

    # Piano-roll outputs -> notes: onsets are peak-picked from the onset channels (a peak
    # within ±radius frames whose probability mass there exceeds the threshold); a note
    # starts only at an onset and lasts while the roll is on (p > 0.5), bridging dips of at
    # most max_gap_frames.
    config.decode = ml_collections.ConfigDict(dict(onset_radius=1, onset_threshold=0.5,
                                                   max_gap_frames=4))

    # How codes are chosen wherever the model encodes (validation, code caches for priors,
    # musicflax.encode): the nearest code to each encoder output (search_candidates 0, as
    # training assigns them), or analysis-by-synthesis (musicflax.models.search): each
    # position's k nearest codes tried in turn, search_sweeps passes, keeping those whose
    # decoding has the lowest loss. Same rate; encoding costs k x sweeps decodes a position.
    # k 8, 2 sweeps: onset F1 0.924 -> 0.968 here; at hop 2 (onset weight 30, lr 1e-2, half
    # the bits/s) 0.900 -> 0.927.
    config.encode = ml_collections.ConfigDict(dict(search_candidates=0, search_sweeps=2))

    # Evaluators run at every validation (musicflax.eval.evaluators; configs/eval.py runs more
    # of them offline). Their keys are TensorBoard's validation/<evaluator>/<key>.
    config.evals = ml_collections.ConfigDict(dict(
        loss=dict(enabled=True),
        codebook=dict(enabled=True),
        reconstruction=dict(enabled=True, multipitch=False, write_notes=False, figures=0),
    ))

    config.optim = ml_collections.ConfigDict(dict(
        learning_rate=3e-3, warmup_steps=100, end_lr_factor=0.05, grad_clip=1.0,
        b1=0.9, b2=0.99, weight_decay=0.0))

    # Mesh over the first num_devices devices (0 = all): `model` devices split every large
    # kernel along its output features (tensor parallelism), the data axis is the rest.
    config.mesh = ml_collections.ConfigDict(dict(num_devices=0, model=1))
    config.param_sharding = "replicated"  # over the data axis; or 'fsdp' (split over it too)
    config.distributed = ml_collections.ConfigDict(dict(
        enabled=False, coordinator="", num_processes=0, process_id=-1))

    config.log_every = 25
    config.eval_every = 250
    config.checkpoint_every = 250
    config.keep_checkpoints = 3
    # Also kept: the best validated checkpoint by this validation key ('' = the task's own:
    # reconstruction/note_onset_f1 (max) for piano-rolls, loss/loss (min) for waveforms).
    config.best_metric = ""
    config.best_mode = ""            # 'max' or 'min' ('' = the task's)
    config.image_every = 250
    config.image_windows = 3  # validation windows drawn (original vs reconstruction)

    if arg == "runlocal":
        config.num_train_steps = 20
        config.batch_size = 8
        config.log_every = config.eval_every = config.checkpoint_every = 10
        config.image_every = 10
        config.model.update(width=32, res_depth=1)
    return config
