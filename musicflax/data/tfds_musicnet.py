"""TFDS builder for MusicNet-format sources: one example per recording, split by recording,
built offline.

A builder config is made for one source folder (the shipped sample set, real MusicNet, or any
folder in its layout) and the options that change the examples (audio or labels only, audio
rate and how it is obtained, split rule, bad-row policy). Its name ends with a fingerprint of
those options and of the source's files (see `musicnet.source_fingerprint`), so a second
source, or the same folder after its files changed, never reuses a dataset built from other
data. Nothing is written under the source: archives are unpacked into a cache of ours.

The source is scanned and every label row checked before anything is written, and TFDS writes
into a temporary folder that it renames only at the end, so a failed build never leaves a
half-written dataset behind. The sample set's audio is rendered from its labels by
musicflax's synthesizer (`audio_source` 'synth' does the same for any source).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from musicflax.audio import fluidsynth, synth
from musicflax.data import musicnet, splits

_NOTE_FEATURES = {
    "start_time": np.int64, "end_time": np.int64, "instrument": np.int32, "note": np.int32,
    "start_beat": np.float32, "end_beat": np.float32,
}
AUDIO_SOURCES = ("auto", "wav", "synth", "fluidsynth")
PROGRESS_SECONDS = 5.0

log = logging.getLogger(__name__)


@dataclasses.dataclass
class MusicNetConfig(tfds.core.BuilderConfig):
    """One source folder and the options that change its examples.

    audio: 'none' (labels only), 'wav' (the source's WAVs, resampled to sample_rate and
    stored as PCM16), 'synth' (rendered from the labels at sample_rate by musicflax's
    synthesizer) or 'fluidsynth' (rendered by FluidSynth through `soundfont`).
    """

    source: str = ""
    extract_dir: str = ""
    audio: str = "none"
    sample_rate: int = 0
    split: splits.SplitSpec = dataclasses.field(default_factory=splits.SplitSpec)
    on_bad_row: str = "error"
    accept_any_rate: bool = False
    downmix: bool = False
    soundfont: str = ""
    fingerprint: str = ""


def source_root(source: str) -> Path:
    """'sample' means the shipped sample set; anything else is a path to a MusicNet copy."""
    return musicnet.SHIPPED_SAMPLE_SET if source == "sample" else Path(source).expanduser()


def make_config(source: str, sample_rate: int = 0, split: splits.SplitSpec | None = None,
                audio_source: str = "auto", on_bad_row: str = "error",
                accept_any_rate: bool = False, downmix: bool = False,
                extract_dir: str | Path | None = None, soundfont: str = "") -> MusicNetConfig:
    """The config for a source; named after what changes the data, e.g.
    'sample_labels_3f2a9c01d4e5' or 'src_audio16000_hash_0b7d...'."""
    split = split or splits.SplitSpec()
    if audio_source not in AUDIO_SOURCES:
        raise musicnet.DataError(f"unknown data.audio_source {audio_source!r}; choose one of "
                                 f"{', '.join(AUDIO_SOURCES)}")
    if on_bad_row not in ("error", "skip"):
        raise musicnet.DataError(f"data.on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    extract_dir = Path(extract_dir or musicnet.DEFAULT_EXTRACT_DIR).expanduser()
    layout = musicnet.find_layout(source_root(source), extract_dir)
    if not sample_rate:
        audio = "none"
    elif audio_source == "auto":
        audio = "synth" if layout.synthesized_audio else "wav"
    elif audio_source == "wav" and layout.synthesized_audio:
        raise musicnet.DataError(f"{layout.root}: this source has no WAVs (its audio is "
                                 "rendered from the labels): use data.audio_source=auto")
    else:
        audio = audio_source
    options = {"audio": audio, "sample_rate": int(sample_rate), "split": split.identity(),
               "on_bad_row": on_bad_row, "accept_any_rate": bool(accept_any_rate),
               "downmix": bool(downmix)}
    if audio == "fluidsynth":
        try:
            sf2 = fluidsynth.soundfont_path(soundfont)
        except fluidsynth.FluidSynthError as e:
            raise musicnet.DataError(str(e)) from None
        soundfont = str(sf2)
        options["soundfont"] = [sf2.name, sf2.stat().st_size]
    else:
        soundfont = ""
    payload = json.dumps({"source": musicnet.source_fingerprint(layout, audio == "wav"),
                          "options": options}, sort_keys=True)
    fingerprint = hashlib.sha256(payload.encode()).hexdigest()
    kind = "sample" if layout.synthesized_audio else "src"
    name = f"{kind}_" + (f"audio{sample_rate}" if sample_rate else "labels")
    name += "".join(f"_{flag}" for flag, on in (
        ("synth", audio == "synth" and not layout.synthesized_audio),
        ("fluidsynth", audio == "fluidsynth"),
        (split.scheme, split.scheme != "musicnet"), ("skipbadrows", on_bad_row == "skip"),
        ("anyrate", accept_any_rate), ("downmix", downmix)) if on)
    return MusicNetConfig(
        name=f"{name}_{fingerprint[:12]}", description=f"{layout.root} ({json.dumps(options)})",
        source=str(source_root(source)), extract_dir=str(extract_dir), audio=audio,
        sample_rate=int(sample_rate), split=split, on_bad_row=on_bad_row,
        accept_any_rate=bool(accept_any_rate), downmix=bool(downmix), soundfont=soundfont,
        fingerprint=fingerprint)


class _Progress:
    """Logs recordings built / total with hours and an ETA, at most every few seconds."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done, self.seconds = name, total, 0, 0.0
        self.started = self.last = time.perf_counter()

    def advance(self, seconds: float) -> None:
        self.done += 1
        self.seconds += seconds
        now = time.perf_counter()
        if now - self.last < PROGRESS_SECONDS and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.started
        eta = elapsed / self.done * (self.total - self.done)
        log.info("building %s: %d/%d recordings (%.1f h of music), %s elapsed, ETA %s",
                 self.name, self.done, self.total, self.seconds / 3600, _clock(elapsed),
                 _clock(eta))


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


class MusicNet(tfds.core.GeneratorBasedBuilder):
    """MusicNet (Thickstun et al. 2017): recordings with aligned note labels."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: notes, metadata, optional resampled audio.",
        "2.0.0": "Configs per source fingerprint; labels_file feature; split rule in metadata.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download musicnet.tar.gz and musicnet_metadata.csv (https://zenodo.org/record/5120004)
    and either extract the archive or leave it as is; pass the folder holding them as
    musicflax's --config.data.source=/path/to/folder. The folders {train,test}_{data,labels}
    are found at any depth. The shipped sample set (source 'sample') needs no download.
    """
    # Every config is made for a source (`make_config`); none is predefined.
    BUILDER_CONFIGS = []

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "id": np.int32,
            "labels_file": tfds.features.Text(),  # e.g. "train_labels/1727.csv"
            "composer": tfds.features.Text(),
            "composition": tfds.features.Text(),
            "movement": tfds.features.Text(),
            "ensemble": tfds.features.Text(),
            "duration": np.float32,  # seconds: audio length, or the last note's end
            "notes": {k: tfds.features.Tensor(shape=(None,), dtype=v)
                      for k, v in _NOTE_FEATURES.items()},
        }
        if self.builder_config.sample_rate:
            features["audio"] = tfds.features.Tensor(shape=(None,), dtype=np.int16)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            homepage="https://zenodo.org/record/5120004",
            citation="@inproceedings{thickstun2017learning, title={Learning Features of Music "
                     "from Scratch}, author={Thickstun, John and Harchaoui, Zaid and Kakade, "
                     "Sham}, booktitle={ICLR}, year={2017}}",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the config knows its source; nothing is downloaded
        cfg = self.builder_config
        layout, report = musicnet.scan(cfg.source, cfg.on_bad_row, cfg.audio,
                                       cfg.accept_any_rate, cfg.downmix, cfg.extract_dir)
        assignment = splits.assign(report.recordings, cfg.split, layout.sample_set,
                                   where=str(layout.root))
        self.info.metadata.update({
            "source": cfg.source,
            "root": str(layout.root),
            "fingerprint": cfg.fingerprint,
            "audio": cfg.audio,
            "composers": sorted({r.metadata["composer"] for r in report.recordings}),
            "ensembles": sorted({r.metadata["ensemble"] for r in report.recordings}),
            "split_rule": assignment.rule,
            "split_ids": assignment.ids,
            "left_out_ids": list(assignment.left_out),
            "skipped_files": [f"{p}: {why}" for p, why in report.skipped],
            "skipped_rows": report.skipped_rows,
            "synthesized_audio": cfg.audio in ("synth", "fluidsynth"),
        })
        progress = _Progress(self.info.full_name,
                             sum(len(v) for v in assignment.by_split.values()))
        return {name: self._generate_examples(recs, layout, progress)
                for name, recs in assignment.by_split.items()}

    def _generate_examples(self, recordings, layout, progress: _Progress):
        cfg = self.builder_config
        for rec in recordings:
            notes = rec.notes
            example = {
                "id": rec.id,
                "labels_file": f"{rec.labels_path.parent.name}/{rec.labels_path.name}",
                **{k: rec.metadata.get(k, "") for k in ("composer", "composition", "movement",
                                                          "ensemble")},
                "notes": {k: getattr(notes, k) for k in _NOTE_FEATURES},
                "duration": notes.duration_seconds,
            }
            if cfg.sample_rate:
                audio = self._audio(rec, notes)
                if not len(audio):
                    raise musicnet.MusicNetFormatError(rec.audio_path or rec.labels_path,
                                                       "empty audio")
                example["audio"] = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
                example["duration"] = len(audio) / cfg.sample_rate
            progress.advance(float(example["duration"]))
            yield rec.id, example

    def _audio(self, rec: musicnet.Recording, notes: musicnet.Notes) -> np.ndarray:
        cfg = self.builder_config
        if cfg.audio == "synth":
            # The metadata's length (whole seconds) keeps the tail after the last note.
            return synth.synthesize(notes.start_time / musicnet.LABEL_RATE,
                                    notes.end_time / musicnet.LABEL_RATE, notes.note,
                                    notes.instrument, cfg.sample_rate,
                                    duration=_seconds(rec.metadata.get("seconds")))
        if cfg.audio == "fluidsynth":
            try:
                return fluidsynth.render(notes.start_time / musicnet.LABEL_RATE,
                                         notes.end_time / musicnet.LABEL_RATE, notes.note,
                                         notes.instrument, cfg.sample_rate,
                                         duration=_seconds(rec.metadata.get("seconds")),
                                         soundfont=cfg.soundfont)
            except fluidsynth.FluidSynthError as e:
                raise musicnet.DataError(f"{rec.labels_path}: {e}") from None
        return musicnet.read_audio(rec.audio_path, cfg.sample_rate, cfg.accept_any_rate,
                                   cfg.downmix)


def _seconds(text: str | None) -> float:
    try:
        return max(float(text or 0), 0.0)
    except ValueError:
        return 0.0


def get_builder(source: str, sample_rate: int = 0, split: splits.SplitSpec | None = None,
                data_dir: str | None = None, audio_source: str = "auto",
                **options) -> MusicNet:
    """The builder for a source folder; its config name says how the data was made."""
    data_dir = Path(data_dir or "~/tensorflow_datasets").expanduser()
    config = make_config(source, sample_rate, split, audio_source,
                         extract_dir=data_dir / "downloads" / "musicflax_extracted", **options)
    return MusicNet(config=config, data_dir=str(data_dir))


def _earlier_builds(builder: MusicNet) -> list[str]:
    """Datasets in the same TFDS dir built from the same folder with the same options but
    other files: the source changed since."""
    config = builder.builder_config
    kind = config.name.rsplit("_", 1)[0]
    names = []
    for meta in Path(builder.data_dir).parents[1].glob(f"{kind}_*/*/metadata.json"):
        try:
            source = json.loads(meta.read_text()).get("source")
        except (OSError, json.JSONDecodeError):
            continue
        name = meta.parent.parent.name
        if source == config.source and name != config.name and name.rsplit("_", 1)[0] == kind:
            names.append(name)
    return sorted(set(names))


def prepare(builder: MusicNet) -> None:
    """Builds the dataset unless it is already there (offline: never asks a server)."""
    if not Path(builder.data_dir).exists():
        earlier = _earlier_builds(builder)
        if earlier:
            log.warning("%s changed since it was built as %s: building %s",
                        builder.builder_config.source, ", ".join(earlier),
                        builder.builder_config.name)
        log.info("building %s from %s", builder.info.full_name, builder.builder_config.source)
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    builder.download_and_prepare(download_config=config)
