"""Samples new music from a trained prior: MIDI, WAV, a piano-roll PNG and the settings JSON.

    python -m musicflax.sample --workdir=workdirs/prior --num=4 --seconds=20 \
        --composer=Bach --ensemble="String Quartet" --temperature=0.9 --top_p=0.95 --seed=0
    python -m musicflax.sample --workdir=workdirs/prior --prime=10016@8 --seconds=30
    python -m musicflax.sample --workdir=workdirs/h_top \
        --upsamplers=workdirs/h_up1,workdirs/h_up0 --seconds=60 --num=1
    python -m musicflax.sample --workdir=workdirs/prior --render_with=workdirs/score_audio
    python -m musicflax.sample --render_with=workdirs/score_audio --midi=piece.mid

With --upsamplers, sampling is ancestral (musicflax.train.hierarchy): the top prior draws the
coarsest level, each upsampler the next finer level given the one above, and the VQ-VAE
decodes the finest; --prime primes every level with the same excerpt.

Codes come from the prior(s) (KV-cached decoding compiled once), are decoded by the VQ-VAE the
prior was trained on (the step it is pinned to), read back as notes the way evaluation reads
them, written as MIDI with each group's General MIDI program, and rendered to WAV by
musicflax's synthesizer; --render_with also renders them through a score-to-audio model
(configs/score_audio.py) as sample_<i>_score_audio.wav, and with --midi (no --workdir) renders
a given MIDI file through it. The same seed and flags give the same files. Every call writes a new
folder, <workdir>/samples/<NNN>_seed<seed>/ (or --out, which must not hold files yet), with
settings.json recording the exact command: nothing written before is replaced.
"""

from __future__ import annotations

import json
import shlex
import sys
import time

import numpy as np
from absl import flags
from etils import epath
from scipy.io import wavfile

from musicflax import app

_WORKDIR = flags.DEFINE_string("workdir", "", "Prior workdir (the top-level prior).")
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
_RENDER_WITH = flags.DEFINE_string("render_with", "", "A score_audio workdir: render every "
                                   "sample (or --midi) through it too.")
_MIDI = flags.DEFINE_string("midi", "", "With --render_with and no --workdir: a MIDI file to "
                            "render instead of sampling.")


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


class ScoreRenderer:
    """A score-to-audio run (--render_with) that renders notes as audio."""

    def __init__(self, workdir: str):
        from musicflax.train import run  # pylint: disable=g-import-not-at-top
        self.run = run.open_run(workdir)
        if self.run.config.task != "score_audio":
            raise app.UserError(f"--render_with={workdir} holds a {self.run.config.task!r} run, "
                                "not a score_audio one (configs/score_audio.py)")
        self.task = self.run.task
        self.seconds = 0.0  # rendering time, compiling included

    def score(self, notes: dict, seconds: float, where: str) -> tuple[np.ndarray, np.ndarray]:
        """(roll, onsets) of notes (start, end, pitch, instrument) at the model's frame rate."""
        from musicflax.audio import midi  # pylint: disable=g-import-not-at-top
        frames = max(1, int(np.ceil(seconds * self.task.frame_rate)))
        try:
            return midi.notes_to_roll(notes["start"], notes["end"], notes["pitch"],
                                      notes["instrument"], self.task.frame_rate, frames,
                                      self.task.groups.group_of())
        except ValueError as e:
            raise app.UserError(f"{where}: {e}; the score-to-audio model knows the groups "
                                f"{self.task.groups.spec!r}") from None

    def render(self, notes: dict, seconds: float, where: str) -> np.ndarray:
        """Audio [seconds * sample_rate] of notes."""
        return self.render_score(*self.score(notes, seconds, where), seconds)

    def render_score(self, roll: np.ndarray, onsets: np.ndarray, seconds: float) -> np.ndarray:
        begin = time.perf_counter()
        wave = self.task.render(self.run.state.params, roll, onsets)
        self.seconds += time.perf_counter() - begin
        return wave[:int(round(seconds * self.task.sample_rate))]

    def write(self, path, wave: np.ndarray) -> None:
        wavfile.write(path, self.task.sample_rate, wave)

    def record(self) -> dict:
        return {"workdir": str(self.run.workdir), "step": int(self.run.state.step)}


def render_midi(renderer: ScoreRenderer) -> None:
    """--midi: one MIDI file through the score-to-audio model, into a folder of its own."""
    from musicflax.audio import midi, plots  # pylint: disable=g-import-not-at-top
    path = epath.Path(_MIDI.value)
    if not path.exists():
        raise app.UserError(f"--midi={path}: no such file")
    try:
        notes = midi.read_midi(path)
    except ValueError as e:
        raise app.UserError(str(e)) from None
    if not len(notes["pitch"]):
        raise app.UserError(f"{path}: no notes to render")
    seconds = float(notes["end"].max())
    roll, onsets = renderer.score(notes, seconds, str(path))
    wave = renderer.render_score(roll, onsets, seconds)
    out = output_folder(renderer.run.workdir)
    name = out / path.stem
    renderer.write(f"{name}_score_audio.wav", wave)
    plots.pianoroll_figure_png(f"{name}.png", roll, renderer.task.frame_rate, title=path.name,
                               onsets=onsets, group_names=renderer.task.groups.names)
    (out / "settings.json").write_text(json.dumps({
        "command": shlex.join(sys.argv), "midi": str(path), "seconds": seconds,
        "render_with": renderer.record(), "files": [{"wav": f"{name}_score_audio.wav",
                                                      "notes": len(notes["pitch"])}]}, indent=2))
    print(f"rendered {seconds:.1f} s in {renderer.seconds:.1f} s "
          f"({seconds / renderer.seconds:.1f} x real time, compiling included) to {out}")


def main(argv):
    del argv
    renderer = ScoreRenderer(_RENDER_WITH.value) if _RENDER_WITH.value else None
    if _MIDI.value:
        if renderer is None or _WORKDIR.value:
            raise app.UserError("--midi renders a MIDI file with --render_with (and no --workdir)")
        return render_midi(renderer)
    if not _WORKDIR.value:
        raise app.UserError("give --workdir (a prior to sample from), or --render_with and --midi")
    sample(renderer)


def sample(renderer: ScoreRenderer | None) -> None:
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
    if renderer is not None and finest.vqvae.task.representation == "pianoroll":
        missing = set(finest.vqvae.task.groups.programs) - set(renderer.task.groups.group_of())
        if missing:
            raise app.UserError(f"--render_with={_RENDER_WITH.value} knows no instrument "
                                f"{sorted(missing)} of the samples' groups")
    decoded = finest.decode(tokens[-1])

    out = output_folder(workdir)
    settings = {k: flags.FLAGS[k].value for k in ("num", "seconds", "composer", "ensemble",
                                                  "temperature", "top_k", "top_p", "guidance",
                                                  "seed", "prime", "sample_rate")}
    settings.update(command=shlex.join(sys.argv),
                    priors=[{"workdir": str(r.workdir), "step": int(r.state.step),
                             "level": r.task.level} for r in hierarchy.runs],
                    render_with=renderer.record() if renderer else None,
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
            entry = {"midi": f"{name}.mid", "notes": len(notes["pitch"])}
            if renderer is not None:
                renderer.write(f"{name}_score_audio.wav",
                               renderer.render(notes, _SECONDS.value, f"{name}.mid"))
                entry["score_audio_wav"] = f"{name}_score_audio.wav"
            settings["files"].append(entry)
        else:
            if renderer is not None:
                raise app.UserError("--render_with renders scores: this prior samples a waveform "
                                    "VQ-VAE's codes")
            wavfile.write(f"{name}.wav", sample["sample_rate"], sample["wave"])
            settings["files"].append({"wav": f"{name}.wav"})
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    for level in levels:
        print(f"level {level['level']}: {level['tokens']} codes in {level['seconds']:.1f} s "
              f"({level['realtime']:.1f} x real time, compiling included)")
    if renderer is not None:
        total = _SECONDS.value * len(decoded)
        print(f"score-to-audio: {total:.1f} s rendered in {renderer.seconds:.1f} s "
              f"({total / renderer.seconds:.1f} x real time, compiling included)")
    print(f"wrote {len(decoded)} samples to {out}")


if __name__ == "__main__":
    app.run(main)
