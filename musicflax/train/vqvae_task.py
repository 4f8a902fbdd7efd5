"""Tasks over the windows of `config.data`: the VQ-VAE (stage one) and score-to-audio.

The models' pure parts are musicflax.train.vqvae_model and musicflax.train.score_audio_model;
`WindowsTask` adds their shared data: the TFDS dataset of `config.data`, the windows of each
split and the batches of a step range.
"""

from __future__ import annotations

import functools

import numpy as np

from musicflax.data import input_pipeline
from musicflax.train.score_audio_model import ScoreAudioModel
from musicflax.train.task import Task, process_shard
from musicflax.train.vqvae_model import VQVAEModel


class WindowsTask(Task):
    """The data of a task trained on the windows of `config.data`."""

    # Data loads on first use, so that loading a checkpoint to sample from is cheap.
    @functools.cached_property
    def builder(self):
        return input_pipeline.get_builder(self.config.data)

    @functools.lru_cache(maxsize=None)
    def windows(self, split: str, train: bool = False) -> input_pipeline.Windows:
        """A split's windows: train-style (hopped, jittered) or every window once."""
        return input_pipeline.create_windows(self.config.data, split, train=train,
                                             builder=self.builder)

    def eval_windows(self, split: str) -> input_pipeline.Windows:
        return self.windows(split)

    def data_record(self) -> dict:
        return input_pipeline.dataset_record(self.builder)

    def image_batch(self) -> dict[str, np.ndarray]:
        first = next(iter(self.windows("validation").eval_dataset(self.config.image_windows)))
        return {k: np.asarray(v) for k, v in first.items()}

    def train_batches(self, start_step: int):
        ds = self.windows("train", train=True).train_dataset(
            self.config.batch_size, self.config.seed, start_step, shard=process_shard())
        return input_pipeline.as_numpy(ds)


class VQVAETask(VQVAEModel, WindowsTask):
    """A VQ-VAE over the windows of `config.data`."""


class ScoreAudioTask(ScoreAudioModel, WindowsTask):
    """Score-to-audio over the (score, rendered audio) pairs of waveform windows."""
