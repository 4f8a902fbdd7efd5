"""Notes rendered by FluidSynth through a General-MIDI SoundFont: timbres that resemble real
instruments, an option beside musicflax's additive synthesizer (`data.audio_source=fluidsynth`).

Needs the `fluidsynth` program and a SoundFont (Debian: apt-get install fluidsynth
fluid-soundfont-gm). Reverb and chorus are off so the audio ends where the notes say.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from musicflax.audio import midi, synth

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
INSTALL_HINT = "apt-get install fluidsynth fluid-soundfont-gm"
DEFAULT_GAIN = 0.5


class FluidSynthError(RuntimeError):
    """FluidSynth or its SoundFont is missing, or a render failed (one line)."""


def soundfont_path(soundfont: str = "") -> Path:
    """The SoundFont to use ('' = Debian's FluidR3 GM), checked to exist with the program."""
    if shutil.which("fluidsynth") is None:
        raise FluidSynthError(f"data.audio_source=fluidsynth needs the fluidsynth program: "
                              f"{INSTALL_HINT}")
    path = Path(soundfont or DEFAULT_SOUNDFONT).expanduser()
    if not path.is_file():
        raise FluidSynthError(f"{path}: no such SoundFont (set data.soundfont, or "
                              f"{INSTALL_HINT})")
    return path


def available(soundfont: str = "") -> bool:
    try:
        soundfont_path(soundfont)
    except FluidSynthError:
        return False
    return True


def render(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, instrument: np.ndarray,
           sample_rate: int, duration: float | None = None, soundfont: str = "",
           gain: float = DEFAULT_GAIN) -> np.ndarray:
    """Notes (seconds, MIDI pitch, 1-based GM program) -> float32 mono audio in [-1, 1].

    Exactly as long as `synth.synthesize` makes it (the labels' span plus its release), so
    either renderer lines up with the same labels.
    """
    sf2 = soundfont_path(soundfont)
    end = np.maximum(np.asarray(end, np.float64), np.asarray(start, np.float64))
    last = float(end.max()) + synth.RELEASE_SECONDS if len(end) else 0.0
    length = math.ceil(max(duration or 0.0, last) * sample_rate)
    out = np.zeros(length, np.float32)
    if not len(end):
        return out
    from scipy.io import wavfile  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory(prefix="musicflax_fluidsynth_") as tmp:
        mid, wav = os.path.join(tmp, "notes.mid"), os.path.join(tmp, "notes.wav")
        midi.write_midi(mid, start, end, pitch, instrument)
        proc = subprocess.run(
            ["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", str(gain),
             "-r", str(int(sample_rate)), "-T", "wav", "-O", "s16", "-F", wav, str(sf2), mid],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not os.path.exists(wav):
            why = (proc.stderr or proc.stdout).strip().splitlines()
            raise FluidSynthError(f"fluidsynth failed ({why[-1] if why else proc.returncode})")
        rate, data = wavfile.read(wav)
    if rate != sample_rate:
        raise FluidSynthError(f"fluidsynth wrote {rate} Hz, asked for {sample_rate} Hz")
    audio = data.astype(np.float32).reshape(len(data), -1).mean(axis=1) / 32768.0
    n = min(length, len(audio))
    out[:n] = audio[:n]
    return np.clip(out, -1.0, 1.0)
