"""What every entry point shares: absl start-up, quiet TensorFlow, one-line errors, and
handing memory freed after compiling back to the OS.

Known user errors (a bad file, a bad config value) print one line naming the problem and
exit with status 2, instead of a traceback from deep inside TensorFlow or JAX.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc's, in the running process
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Returns the heap glibc keeps after XLA compiles (LLVM frees ~0.3 GB a train step it
    compiles on CPU, which malloc would otherwise hold for the rest of the run); a no-op
    without glibc."""
    if trim := _malloc_trim():
        trim(0)


class UserError(Exception):
    """A problem the user can fix (bad flag, missing workdir, mismatched checkpoint)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from musicflax.data.musicnet import DataError  # pylint: disable=g-import-not-at-top
    return (UserError, DataError, FileNotFoundError, NotADirectoryError)


class _OwnInfoOnly(logging.Filter):
    """Keeps musicflax's INFO lines and everyone's warnings (Orbax and TFDS chat at INFO), but
    TFDS's warning that a builder config is not predefined: musicflax makes one per source."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Using custom data configuration"):
            return False
        return record.levelno >= logging.WARNING or f"{os.sep}musicflax{os.sep}" in record.pathname


def run(main: Callable[[list[str]], None]) -> None:
    """absl.app.run(main), turning user errors into `error: ...` and exit status 2."""
    def guarded(argv):
        from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
        absl_logging.set_verbosity(absl_logging.INFO)
        absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        try:
            import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
            tfds.disable_progress_bar()
            main(argv)
        except _user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    app.run(guarded)
