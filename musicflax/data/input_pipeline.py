"""tf.data input pipeline: deterministic, exactly resumable, sharded by process.

Every batch is a pure function of (seed, step, process): the global batch at step s holds
windows g = s*B .. s*B + B - 1 of an endless stream in which epoch e = g // N visits the N
windows of the window table in the order `index_shuffle(·, seed=(seed, e))`. Process p
assembles only rows p*B/P .. (p+1)*B/P - 1 of it. Nothing needs saving to resume (start the
range at the restored step), and the stream does not depend on the number of processes.

Outputs numpy dicts; `musicflax.train` turns a process's rows into a global jax.Array.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from musicflax.data import instruments, musicnet, splits, tfds_musicnet, windows


@dataclasses.dataclass(frozen=True)
class Shard:
    """Which share of every global batch this process assembles."""

    index: int = 0
    count: int = 1

    def per_process(self, global_batch: int) -> int:
        if global_batch % self.count:
            raise musicnet.DataError(f"global batch {global_batch} does not divide over "
                             f"{self.count} processes")
        return global_batch // self.count


def _splitmix64(z: tf.Tensor) -> tf.Tensor:
    """A 64-bit mixing function: turns (seed, epoch) into well-spread cipher keys."""
    def shift_xor(v, bits):
        return tf.bitwise.bitwise_xor(v, tf.bitwise.right_shift(v, tf.constant(bits, tf.uint64)))
    z = z + tf.constant(0x9E3779B97F4A7C15, tf.uint64)
    z = shift_xor(z, 30) * tf.constant(0xBF58476D1CE4E5B9, tf.uint64)
    z = shift_xor(z, 27) * tf.constant(0x94D049BB133111EB, tf.uint64)
    return shift_xor(z, 31)


def shuffled_position(index: tf.Tensor, seed: int, epoch: tf.Tensor, stream: int,
                      max_index: int) -> tf.Tensor:
    """Where each index lands in the permutation of [0, max_index] for (seed, epoch, stream).

    Calls the raw op with a key per element, so one batch may straddle two epochs (the
    public wrapper takes one key per call, and its weak zero key is close to the identity).
    """
    key = _splitmix64(tf.cast(epoch, tf.uint64) ^ _splitmix64(tf.constant(seed, tf.uint64)))
    keys = tf.stack([key, _splitmix64(key + 1), _splitmix64(key + 2 + stream)], axis=1)
    return tf.raw_ops.RandomIndexShuffle(
        index=index, seed=keys, rounds=4,
        max_index=tf.fill(tf.shape(index), tf.constant(max_index, index.dtype)))


def _hide_accelerators_from_tf() -> None:
    # TensorFlow would otherwise grab GPU memory that JAX needs.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: too late to change, and nothing to do
        pass


def frames_per_window(cfg: ml_collections.ConfigDict) -> int:
    """Window length in frames; waveform windows must span a whole number of frames."""
    if cfg.representation == "pianoroll":
        return int(cfg.window_frames)
    hop = cfg.sample_rate / cfg.frame_rate
    frames = cfg.window_samples * cfg.frame_rate / cfg.sample_rate
    if hop != int(hop) or frames != int(frames):
        raise musicnet.DataError(f"data.window_samples={cfg.window_samples} at {cfg.sample_rate} Hz "
                         f"must be a whole number of frames at data.frame_rate={cfg.frame_rate}"
                         " (and sample_rate/frame_rate an integer)")
    return int(frames)


def audio_rate(cfg: ml_collections.ConfigDict) -> int:
    """The rate the TFDS dataset must store audio at (0: labels only)."""
    return int(cfg.sample_rate) if cfg.representation == "waveform" else 0


def get_builder(cfg: ml_collections.ConfigDict) -> tfds_musicnet.MusicNet:
    """The prepared TFDS builder for a data config (builds it on first use)."""
    _hide_accelerators_from_tf()
    builder = tfds_musicnet.get_builder(
        cfg.source, audio_rate(cfg), splits.SplitSpec.from_config(cfg), cfg.tfds_data_dir,
        audio_source=cfg.get("audio_source", "auto"), on_bad_row=cfg.on_bad_row,
        accept_any_rate=cfg.accept_any_rate, downmix=cfg.downmix,
        soundfont=cfg.get("soundfont", ""))
    tfds_musicnet.prepare(builder)
    return builder


def dataset_record(builder: tfds_musicnet.MusicNet) -> dict:
    """Which data a run or a report used: source, dataset, fingerprint, split rule and ids."""
    meta = builder.info.metadata
    return {"source": meta["source"], "dataset": builder.info.full_name,
            "fingerprint": meta["fingerprint"], "split_rule": meta["split_rule"],
            "split_ids": {k: list(v) for k, v in meta["split_ids"].items()}}


def load_split(cfg: ml_collections.ConfigDict, split: str,
               builder: tfds_musicnet.MusicNet | None = None) -> windows.SplitData:
    """Reads one split of the TFDS dataset into memory as note events (+ PCM16 audio)."""
    builder = builder or get_builder(cfg)
    groups = instruments.InstrumentGroups.parse(cfg.instrument_groups)
    group_of = groups.group_of()
    vocab = {k: list(builder.info.metadata[k]) for k in ("composers", "ensembles")}
    ids, composer, ensemble, num_frames, audio, offsets = [], [], [], [], [], []
    notes = {k: [] for k in ("rec", "start", "end", "group", "pitch", "onset", "offset")}
    offset = 0
    # In id order: TFDS stores examples in an order of its own (a hash of their keys).
    examples = sorted(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)),
                      key=lambda ex: int(ex["id"]))
    for r, ex in enumerate(examples):
        n = ex["notes"]
        for code in np.unique(n["instrument"]).tolist():
            if code not in group_of and code not in groups.dropped:
                raise groups.unknown_code_error(
                    code, f"{builder.info.metadata['source']}: recording {ex['id']} "
                    f"({ex['labels_file'].decode()})")
        start, end = windows.notes_to_frames(n["start_time"], n["end_time"], cfg.frame_rate)
        length = int(end.max(initial=0))
        kept = np.isin(n["instrument"], list(group_of))
        start, end = start[kept], end[kept]
        notes["rec"].append(np.full(len(start), r, np.int64))
        notes["start"].append(start)
        notes["end"].append(end)
        notes["group"].append(np.vectorize(group_of.get, otypes=[np.int32])(
            n["instrument"][kept]) if kept.any() else np.zeros(0, np.int32))
        notes["pitch"].append(n["note"][kept].astype(np.int32))
        notes["onset"].append(n["start_time"][kept] / musicnet.LABEL_RATE)
        notes["offset"].append(n["end_time"][kept] / musicnet.LABEL_RATE)
        ids.append(ex["id"])
        composer.append(vocab["composers"].index(ex["composer"].decode()))
        ensemble.append(vocab["ensembles"].index(ex["ensemble"].decode()))
        if "audio" in ex:
            audio.append(ex["audio"])
            offsets.append(offset)
            offset += len(ex["audio"])
            num_frames.append(len(ex["audio"]) * cfg.frame_rate // cfg.sample_rate)
        else:
            num_frames.append(length)
    if not ids:
        raise musicnet.DataError(f"split {split!r} of {builder.info.full_name} is empty")
    cat = {k: np.concatenate(v) for k, v in notes.items()}
    order = np.lexsort((cat["start"], cat["rec"]))
    return windows.SplitData(
        ids=np.asarray(ids, np.int32), composer=np.asarray(composer, np.int32),
        ensemble=np.asarray(ensemble, np.int32), num_frames=np.asarray(num_frames, np.int64),
        note_rec=cat["rec"][order], note_start=cat["start"][order], note_end=cat["end"][order],
        note_group=cat["group"][order], note_pitch=cat["pitch"][order],
        note_onset=cat["onset"][order], note_offset=cat["offset"][order],
        frame_rate=float(cfg.frame_rate), vocab=vocab,
        audio=np.concatenate(audio) if audio else None,
        audio_offset=np.asarray(offsets, np.int64) if audio else None,
        sample_rate=audio_rate(cfg))


class TableStream:
    """Deterministic tf.data streams over a table of windows (recording, start).

    Subclasses set the table (`rec`, `start`, `num_frames` per recording, `window`, `hop`)
    and `assemble(rec, start) -> dict of tensors` for a batch of table rows.
    """

    rec: np.ndarray
    start: np.ndarray
    num_frames: np.ndarray
    window: int
    hop: int
    jitter: bool = False
    align: int = 1       # window starts stay multiples of this (jitter included)
    # Piano-roll windows only: every window moved by `transpose` semitones, train windows
    # also by a uniform draw from [-pitch_shift, pitch_shift].
    transpose: int = 0
    pitch_shift: int = 0
    num_threads: int = 0
    prefetch: int = 0

    def assemble(self, rec: tf.Tensor, start: tf.Tensor) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.rec)

    def _check_table(self, what: str) -> None:
        if not len(self.rec):
            raise musicnet.DataError(f"no window of {self.window} {what} fits in any recording of the "
                             "split; use shorter windows")

    def _cut(self, rec: tf.Tensor, start: tf.Tensor, semitones: tf.Tensor | None = None):
        """`assemble`, moving the windows by `transpose` (+ `semitones` [B]) if either is set."""
        if not self.transpose and semitones is None:
            return self.assemble(rec, start)
        moves = tf.fill(tf.shape(rec), tf.constant(self.transpose, tf.int64))
        return self.assemble(rec, start, moves if semitones is None else moves + semitones)

    def _dataset(self, steps: tf.data.Dataset, batch_fn) -> tf.data.Dataset:
        options = tf.data.Options()
        options.deterministic = True
        if self.num_threads:
            options.threading.private_threadpool_size = int(self.num_threads)
        return (steps.map(batch_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(int(self.prefetch) or tf.data.AUTOTUNE).with_options(options))

    def train_dataset(self, global_batch: int, seed: int, start_step: int = 0,
                      num_steps: int | None = None, shard: Shard = Shard()) -> tf.data.Dataset:
        """Batches for steps start_step, start_step+1, ... (endless unless num_steps)."""
        rows = shard.per_process(global_batch)
        table_rec, table_start = tf.constant(self.rec), tf.constant(self.start)
        num_frames = tf.constant(self.num_frames)
        n = len(self)
        jitter = self.jitter and self.hop > self.align
        align = int(self.align)

        def batch_at(step):
            g = step * global_batch + shard.index * rows + tf.range(rows, dtype=tf.int64)
            epoch, k = g // n, g % n
            idx = shuffled_position(k, seed, epoch, 0, n - 1)
            rec, start = tf.gather(table_rec, idx), tf.gather(table_start, idx)
            if jitter:  # a deterministic offset inside the hop, so every frame can start a window
                shift = shuffled_position(k, seed, epoch, 1, n - 1) % (self.hop // align)
                last = (tf.gather(num_frames, rec) - self.window) // align * align
                start = tf.minimum(start + shift * align, last)
            semitones = None
            if self.pitch_shift:
                semitones = shuffled_position(k, seed, epoch, 2, n - 1) % (
                    2 * self.pitch_shift + 1) - self.pitch_shift
            batch = self._cut(rec, start, semitones)
            batch["mask"] = tf.ones([rows], tf.bool)
            return batch

        end = start_step + num_steps if num_steps is not None else np.iinfo(np.int64).max
        return self._dataset(tf.data.Dataset.range(start_step, end), batch_at)

    def num_eval_batches(self, global_batch: int) -> int:
        return math.ceil(len(self) / global_batch)

    def eval_dataset(self, global_batch: int, shard: Shard = Shard()) -> tf.data.Dataset:
        """Every window once, in table order; the last batch is padded and `mask` says so."""
        rows = shard.per_process(global_batch)
        table_rec, table_start = tf.constant(self.rec), tf.constant(self.start)
        n = len(self)

        def batch_at(b):
            g = b * global_batch + shard.index * rows + tf.range(rows, dtype=tf.int64)
            idx = tf.minimum(g, n - 1)
            batch = self._cut(tf.gather(table_rec, idx), tf.gather(table_start, idx))
            batch["mask"] = g < n
            return batch

        return self._dataset(tf.data.Dataset.range(self.num_eval_batches(global_batch)),
                             batch_at)


class Windows(TableStream):
    """One split's music windows for a data config (piano-roll or waveform)."""

    def __init__(self, cfg: ml_collections.ConfigDict, data: windows.SplitData, train: bool):
        self.cfg, self.data = cfg, data
        self.groups = instruments.InstrumentGroups.parse(cfg.instrument_groups)
        self.window = frames_per_window(cfg)
        self.hop = int(cfg.train_hop_frames if train else cfg.eval_hop_frames or self.window)
        self.num_frames = data.num_frames
        self.rec, self.start = windows.window_table(data.num_frames, self.window, self.hop)
        self._check_table("frames")
        self.jitter, self.num_threads, self.prefetch = bool(cfg.jitter), cfg.num_threads, cfg.prefetch
        self.pitch_shift = int(cfg.get("pitch_shift", 0)) if train else 0
        if self.pitch_shift and cfg.representation != "pianoroll":
            raise musicnet.DataError("data.pitch_shift transposes piano-roll windows; "
                                     f"{cfg.representation} windows cannot be transposed")
        window_samples = int(cfg.window_samples) if cfg.representation == "waveform" else 0
        self.assemble = windows.WindowAssembler(data, self.groups, self.window,
                                                cfg.representation, window_samples)


class CodeWindows(TableStream):
    """Windows of `length` codes over code sequences, for the prior.

    `codeset` has `codes` [total] (all sequences concatenated), `offsets` [R + 1], and per
    recording `ids`, `composer`, `ensemble` (see musicflax.train.codes.CodeSet). With `upper`
    (the codes of a coarser level of the same recordings, `upper_hop` of these codes per one
    of its), every window starts at a multiple of upper_hop and carries the coarse codes it
    lies under: batch["upper"] [B, ceil(length / upper_hop)], for an upsampler prior. Without,
    windows of residual-VQ tokens start at a position's first stage.
    """

    def __init__(self, codeset, length: int, hop: int, train: bool, upper=None,
                 upper_hop: int = 1):
        self.window, self.hop, self.jitter = length, hop, train
        self.align = upper_hop if upper is not None else codeset.stages
        if hop % self.align:
            raise musicnet.DataError(f"the code hop {hop} must be a multiple of "
                                     f"{self.align} (tokens a coarse code or a position)")
        self.num_frames = np.diff(codeset.offsets)
        self.rec, self.start = windows.window_table(self.num_frames, length, hop)
        self._check_table("codes")
        self._codes = tf.constant(codeset.codes)
        self._offsets = tf.constant(codeset.offsets)
        self._per_rec = {k: tf.constant(getattr(codeset, attr)) for k, attr in (
            ("recording_id", "ids"), ("composer", "composer"), ("ensemble", "ensemble"))}
        self._upper = None
        if upper is not None:
            if not np.array_equal(upper.ids, codeset.ids) or not np.array_equal(
                    np.diff(upper.offsets) * upper_hop, self.num_frames):
                raise musicnet.DataError("the coarser level's codes do not line up with these "
                                         f"(upsampling factor {upper_hop})")
            self._upper = tf.constant(upper.codes)
            self._upper_offsets = tf.constant(upper.offsets)
            self._upper_length = -(-length // upper_hop)

    def assemble(self, rec: tf.Tensor, start: tf.Tensor) -> dict[str, tf.Tensor]:
        first = tf.gather(self._offsets, rec) + start
        idx = first[:, None] + tf.range(self.window, dtype=tf.int64)[None, :]
        batch = {k: tf.gather(v, rec) for k, v in self._per_rec.items()}
        batch["codes"] = tf.gather(self._codes, idx)
        if self._upper is not None:
            # Clipped at the recording's end: a window's last coarse code may overhang it.
            last = tf.gather(self._upper_offsets, rec + 1) - 1
            up = (tf.gather(self._upper_offsets, rec) + start // self.align)[:, None] + \
                tf.range(self._upper_length, dtype=tf.int64)[None, :]
            batch["upper"] = tf.gather(self._upper, tf.minimum(up, last[:, None]))
        return batch


def create_windows(cfg: ml_collections.ConfigDict, split: str, train: bool | None = None,
                   builder: tfds_musicnet.MusicNet | None = None) -> Windows:
    """Windows of `split` (train-style hops for the train split unless told otherwise)."""
    train = split == "train" if train is None else train
    return Windows(cfg, load_split(cfg, split, builder), train)


def as_numpy(dataset: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    return iter(tfds.as_numpy(dataset))

