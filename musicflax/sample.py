"""Samples new music from a trained prior: MIDI, WAV, a piano-roll PNG and the settings JSON.

    python -m musicflax.sample --workdir=workdirs/prior --num=4 --seconds=20 \
        --composer=Bach --ensemble="String Quartet" --temperature=0.9 --top_p=0.95 --seed=0
    python -m musicflax.sample --workdir=workdirs/prior --prime=10016@8 --seconds=30
    python -m musicflax.sample --workdir=workdirs/h_top \
        --upsamplers=workdirs/h_up1,workdirs/h_up0 --seconds=60 --num=1

With --upsamplers, sampling is ancestral (musicflax.train.hierarchy): the top prior draws the
coarsest level, each upsampler the next finer level given the one above, and the VQ-VAE
decodes the finest; --prime primes every level with the same excerpt.

Codes come from the prior(s) (KV-cached decoding compiled once), are decoded by the VQ-VAE the
prior was trained on (the step it is pinned to), read back as notes the way evaluation reads
them, written as MIDI with each group's General MIDI program, and rendered to WAV by
musicflax's synthesizer. The same seed and flags give the same files. Every call writes a new
folder, <workdir>/samples/<NNN>_seed<seed>/ (or --out, which must not hold files yet), with
settings.json recording the exact command: nothing written before is replaced.
"""

from __future__ import annotations

import json
import shlex
import sys

import numpy as np
from absl import flags
from etils import epath
from scipy.io import wavfile

from musicflax import app

_WORKDIR = flags.DEFINE_string("workdir", None, "Prior workdir (the top-level prior).")
_UPSAMPLERS = flags.DEFINE_list("upsamplers", [], "Upsampler prior workdirs, coarse to fine: "
                                "ancestral sampling down to the finest level.")
_NUM = flags.DEFINE_integer("num", 4, "Number of samples.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Length of each sample.")
_COMPOSER = flags.DEFINE_string("composer", "", "Composer name ('' = unconditional).")
_ENSEMBLE = flags.DEFINE_string("ensemble", "", "Ensemble name ('' = unconditional).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature (0 = greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely codes (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = all).")
_GUIDANCE = flags.DEFINE_float("guidance", 1.0, "Classifier-free guidance scale.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_PRIME = flags.DEFINE_string("prime", "", "Continue a real excerpt: <recording id>@<seconds>.")
_STEP = flags.DEFINE_integer("step", None, "Top prior's checkpoint step (default: latest).")
_OUT = flags.DEFINE_string("out", "", "Output folder, new or empty (default: a new "
                           "<workdir>/samples/<NNN>_seed<seed>).")
_SAMPLE_RATE = flags.DEFINE_integer("sample_rate", 22050, "WAV rate for piano-roll models.")
flags.mark_flags_as_required(["workdir"])


def _vocab_id(vocab: list[str], name: str, what: str) -> int:
    if not name:
        return -1
    if name not in vocab:
        raise app.UserError(f"unknown {what} {name!r}; known: {', '.join(vocab)}")
    return vocab.index(name)


def output_folder(workdir: epath.Path) -> epath.Path:
    """A folder of this call's own: --out if new or empty, else the next free
    <workdir>/samples/<NNN>_seed<seed>."""
    if _OUT.value:
        out = epath.Path(_OUT.value)
        if out.exists() and any(out.iterdir()):
            raise app.UserError(f"--out={out} already holds files; samples never replace "
                                "others: give a new folder")
    else:
        root = workdir / "samples"
        taken = [int(p.name.split("_")[0]) for p in root.glob("*_seed*")
                 if p.name.split("_")[0].isdigit()] if root.exists() else []
        out = root / f"{max(taken, default=0) + 1:03d}_seed{_SEED.value}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv):
    del argv
    from musicflax.audio import midi, plots, synth  # pylint: disable=g-import-not-at-top
    from musicflax.train import run  # pylint: disable=g-import-not-at-top

    workdir = epath.Path(_WORKDIR.value)
    hierarchy = run.open_hierarchy([workdir, *_UPSAMPLERS.value], _STEP.value)
    vocab = hierarchy.vocab
    composer = _vocab_id(vocab["composers"], _COMPOSER.value, "composer")
    ensemble = _vocab_id(vocab["ensembles"], _ENSEMBLE.value, "ensemble")
    primes = None
    if _PRIME.value:
        rec_text, _, seconds_text = _PRIME.value.partition("@")
        try:
            recording, seconds = int(rec_text), float(seconds_text)
        except ValueError:
            raise app.UserError(f"--prime={_PRIME.value!r} must look like "
                                "<recording id>@<seconds>") from None
        primes = hierarchy.prime(recording, seconds)
    tokens, levels = hierarchy.sample(
        _SEED.value, _NUM.value, _SECONDS.value, composer, ensemble,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
        guidance=_GUIDANCE.value, primes=primes)
    finest = hierarchy.finest
    decoded = finest.decode(tokens[-1])

    out = output_folder(workdir)
    settings = {k: flags.FLAGS[k].value for k in ("num", "seconds", "composer", "ensemble",
                                                  "temperature", "top_k", "top_p", "guidance",
                                                  "seed", "prime", "sample_rate")}
    settings.update(command=shlex.join(sys.argv),
                    priors=[{"workdir": str(r.workdir), "step": int(r.state.step),
                             "level": r.task.level} for r in hierarchy.runs],
                    vqvae_workdir=str(finest.vqvae.workdir),
                    vqvae_step=int(finest.vqvae.state.step),
                    codes_per_second=finest.codes_per_second, levels=levels, files=[])
    for i, sample in enumerate(decoded):
        name = out / f"sample_{i:02d}"
        # The codes themselves (every level's), to decode again.
        for depth, level_tokens in enumerate(tokens):
            suffix = "" if depth == len(tokens) - 1 else f"_level{hierarchy.tasks[depth].level}"
            with (out / f"sample_{i:02d}_codes{suffix}.npy").open("wb") as f:
                np.save(f, np.asarray(level_tokens[i], np.int32))
        if "roll" in sample:
            # Whole codes can overshoot the length asked for by a few frames: cut them.
            frames = int(_SECONDS.value * sample["frame_rate"])
            roll, onsets = sample["roll"][:frames], sample["onsets"][:frames]
            notes = finest.vqvae.task.read_notes(roll, onsets)
            midi.write_midi(f"{name}.mid", **notes)
            wave = synth.synthesize(**notes, sample_rate=_SAMPLE_RATE.value,
                                    duration=_SECONDS.value)
            wavfile.write(f"{name}.wav", _SAMPLE_RATE.value, wave)
            plots.pianoroll_figure_png(f"{name}.png", roll, sample["frame_rate"],
                                       title=f"sample {i}", onsets=onsets,
                                       group_names=sample["group_names"])
            settings["files"].append({"midi": f"{name}.mid", "notes": len(notes["pitch"])})
        else:
            wavfile.write(f"{name}.wav", sample["sample_rate"], sample["wave"])
            settings["files"].append({"wav": f"{name}.wav"})
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    for level in levels:
        print(f"level {level['level']}: {level['tokens']} codes in {level['seconds']:.1f} s "
              f"({level['realtime']:.1f} x real time, compiling included)")
    print(f"wrote {len(decoded)} samples to {out}")


if __name__ == "__main__":
    app.run(main)
