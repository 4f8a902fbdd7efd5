"""Trains a model: `python -m musicflax.train --config=configs/<name>.py --workdir=DIR`.

Running the same command again resumes from the latest checkpoint in DIR (a config that would
change the data stream or the model is refused; --allow_config_change resumes anyway). Any
config field can be overridden: --config.num_train_steps=500 --config.model.width=64.
"""

from absl import flags, logging
from ml_collections import config_flags

from musicflax import app

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and images go.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume even if the config changes the data stream or the "
    "model (the resumed run then differs from an uninterrupted one).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from musicflax import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize(_CONFIG.value)
    from musicflax.train import trainer  # pylint: disable=g-import-not-at-top
    logging.info("workdir %s", _WORKDIR.value)
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value, _ALLOW_CHANGE.value)


if __name__ == "__main__":
    app.run(main)
