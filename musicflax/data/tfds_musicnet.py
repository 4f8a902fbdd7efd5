"""TFDS builder for MusicNet: one example per recording, split by recording, built offline.

A builder config chooses the source (the shipped sample set or a real MusicNet copy given as
the manual dir), the audio (none, or resampled to a rate) and the split scheme. The sample
set's audio is rendered from its labels by musicflax's synthesizer, so it builds with no
download. The source is scanned and every label row checked before anything is written, and
TFDS writes into a temporary folder that it renames only at the end, so a failed build never
leaves a half-written dataset behind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from musicflax.audio import synth
from musicflax.data import musicnet, splits

_NOTE_FEATURES = {
    "start_time": np.int64, "end_time": np.int64, "instrument": np.int32, "note": np.int32,
    "start_beat": np.float32, "end_beat": np.float32,
}


@dataclasses.dataclass
class MusicNetConfig(tfds.core.BuilderConfig):
    """sample_rate 0 means labels only; otherwise audio resampled to it (stored as PCM16).

    synthesized_audio marks a source in MusicNet layout without WAVs, like the shipped
    sample set, whose audio is rendered from its labels.
    """

    synthesized_audio: bool = True
    sample_rate: int = 0
    split_scheme: str = "musicnet"
    on_bad_row: str = "error"
    accept_any_rate: bool = False
    downmix: bool = False


def make_config(synthesized_audio: bool, sample_rate: int = 0, split_scheme: str = "musicnet",
                on_bad_row: str = "error", accept_any_rate: bool = False,
                downmix: bool = False) -> MusicNetConfig:
    """A config named after everything that changes the data, e.g. 'synth_audio16000_mt3'."""
    name = ("synth_" if synthesized_audio else "") + (f"audio{sample_rate}" if sample_rate else "labels")
    name += "".join(f"_{flag}" for flag, on in (
        (split_scheme, split_scheme != "musicnet"), ("skipbadrows", on_bad_row == "skip"),
        ("anyrate", accept_any_rate), ("downmix", downmix)) if on)
    return MusicNetConfig(name=name, synthesized_audio=synthesized_audio, sample_rate=sample_rate,
                          split_scheme=split_scheme, on_bad_row=on_bad_row,
                          accept_any_rate=accept_any_rate, downmix=downmix)


class MusicNet(tfds.core.GeneratorBasedBuilder):
    """MusicNet (Thickstun et al. 2017): 330 recordings with aligned note labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: notes, metadata, optional resampled audio."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download musicnet.tar.gz and musicnet_metadata.csv (https://zenodo.org/record/5120004)
    and either extract the archive or leave it as is; pass the folder holding them as the
    manual dir (musicflax: --config.data.source=/path/to/folder). The folders
    {train,test}_{data,labels} are found at any depth. The shipped sample set
    (musicflax's default source; config names starting with 'synth_') needs no download.
    """
    BUILDER_CONFIGS = [make_config(synth, rate, scheme)
                       for synth in (True, False) for rate in (0, 16000)
                       for scheme in splits.SCHEMES]

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "id": np.int32,
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
        cfg = self.builder_config
        layout, report = musicnet.scan(dl_manager.manual_dir, cfg.on_bad_row)
        if cfg.synthesized_audio != layout.synthesized_audio:
            raise musicnet.MusicNetFormatError(
                layout.root, f"synthesized_audio={layout.synthesized_audio} but the builder "
                f"config {cfg.name!r} says {cfg.synthesized_audio}")
        by_split = splits.assign(report.recordings, cfg.split_scheme, layout.sample_set)
        for name, recs in by_split.items():
            if not recs:
                raise musicnet.MusicNetFormatError(layout.root, f"split '{name}' is empty "
                                                   f"under the {cfg.split_scheme} scheme")
        self.info.metadata.update({
            "composers": sorted({r.metadata["composer"] for r in report.recordings}),
            "ensembles": sorted({r.metadata["ensemble"] for r in report.recordings}),
            "split_ids": {n: [r.id for r in recs] for n, recs in by_split.items()},
            "skipped_files": [f"{p}: {why}" for p, why in report.skipped],
            "skipped_rows": report.skipped_rows,
            "synthesized_audio": layout.synthesized_audio,
        })
        return {name: self._generate_examples(recs) for name, recs in by_split.items()}

    def _generate_examples(self, recordings):
        cfg = self.builder_config
        for rec in recordings:
            notes = rec.notes
            example = {
                "id": rec.id,
                **{k: rec.metadata.get(k, "") for k in ("composer", "composition", "movement",
                                                          "ensemble")},
                "notes": {k: getattr(notes, k) for k in _NOTE_FEATURES},
                "duration": notes.duration_seconds,
            }
            if cfg.sample_rate:
                audio = self._audio(rec, notes)
                example["audio"] = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
                example["duration"] = len(audio) / cfg.sample_rate
                if not len(audio):
                    raise musicnet.MusicNetFormatError(rec.audio_path, "empty audio")
            yield rec.id, example

    def _audio(self, rec: musicnet.Recording, notes: musicnet.Notes) -> np.ndarray:
        cfg = self.builder_config
        if rec.audio_path is None:
            # The metadata's length (whole seconds) keeps the tail after the last note.
            return synth.synthesize(notes.start_time / musicnet.LABEL_RATE,
                                    notes.end_time / musicnet.LABEL_RATE, notes.note,
                                    notes.instrument, cfg.sample_rate,
                                    duration=float(rec.metadata.get("seconds") or 0))
        return musicnet.read_audio(rec.audio_path, cfg.sample_rate, cfg.accept_any_rate,
                                   cfg.downmix)


def source_root(source: str) -> Path:
    """'sample' means the shipped sample set; anything else is a path to MusicNet."""
    return musicnet.SHIPPED_SAMPLE_SET if source == "sample" else Path(source).expanduser()


def get_builder(source: str, sample_rate: int = 0, split_scheme: str = "musicnet",
                data_dir: str | None = None, **options) -> MusicNet:
    """The builder for a source folder; its config name says how the data was made."""
    root = source_root(source)
    synthesized = root.is_dir() and (root / musicnet.SAMPLE_SET_MARKER).exists()
    config = make_config(synthesized, sample_rate, split_scheme, **options)
    # TFDS accepts a config object only if its name is not a predefined one.
    predefined = {c.name for c in MusicNet.BUILDER_CONFIGS}
    return MusicNet(config=config.name if config.name in predefined else config,
                    data_dir=data_dir or None)


def prepare(builder: MusicNet, source: str) -> None:
    """Builds the dataset unless it is already there (offline: never asks a server)."""
    config = tfds.download.DownloadConfig(manual_dir=source_root(source),
                                          try_download_gcs=False)
    builder.download_and_prepare(download_config=config)
