"""Evaluating latents: which evaluators run, and their settings.

    python -m musicflax.eval --config=configs/eval.py --workdir=workdirs/default
    python -m musicflax.eval --config=configs/eval.py --workdir=workdirs/default \
        --split=test --config.evals.prior.workdir=workdirs/prior \
        --config.evals.generated.workdir=workdirs/prior

    python -m musicflax.eval --config=configs/eval.py --workdir=workdirs/default \
        --config.data.source=/data/other_quartets --config.data.split_scheme=hash --split=test

The VQ-VAE's own config is read from its workdir; this file only configures evaluation.
Evaluators run in the order listed; drop one with e.g. --config.evals.probes.enabled=False.
`data` points the evaluation at other data (empty fields: as the run was trained); the
windows (representation, rates, length) always stay as the model was trained.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 64
    config.data = ml_collections.ConfigDict(dict(
        source="", tfds_data_dir="", split_scheme="", split_lists="", validation_fraction=0.0,
        test_fraction=0.0, instrument_groups="", audio_source="", soundfont="",
        on_bad_row=""))
    # The VQ-VAE's `encode` settings for this evaluation (-1: as the run was trained), e.g.
    # --config.encode.search_candidates=8 scores codes found by analysis-by-synthesis.
    config.encode = ml_collections.ConfigDict(dict(search_candidates=-1, search_sweeps=-1))
    config.evals = ml_collections.ConfigDict(dict(
        loss=dict(enabled=True),
        codebook=dict(enabled=True),
        # Offline: mir_eval's multi-pitch frame metrics too, every recording's reconstructed
        # notes as a MusicNet CSV + MIDI (notes/level<L>/<id>.csv), and figures.
        reconstruction=dict(enabled=True, multipitch=True, write_notes=True, figures=4),
        probes=dict(enabled=True, l2=1e-3, max_train_windows=4000, pitch_train_frames=20000),
        latent_space=dict(enabled=True, max_points=2000, interpolation_steps=8),
        # temperatures: also the bits under softmax(logits / t), what sampling at t draws
        # from; the lowest at t = 1 says the prior is calibrated on this split.
        prior=dict(enabled=True, workdir="", temperatures=(0.9, 1.0, 1.1, 1.2)),
        # seconds 0: samples as long as a window of the VQ-VAE.
        generated=dict(enabled=True, workdir="", num_samples=16, seed=0, seconds=0.0,
                       temperature=1.0, top_p=1.0),
    ))
    if arg == "runlocal":
        config.evals.probes.update(max_train_windows=256, pitch_train_frames=2000)
        config.evals.reconstruction.figures = 2
        config.evals.generated.num_samples = 4
    return config
