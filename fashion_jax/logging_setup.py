"""Keeps logs readable: library INFO chatter (orbax saves and read-only opens) is dropped, and
progress bars are drawn only on a terminal (in a log file their carriage returns would run into
the log lines)."""

import logging
import sys

from absl import logging as absl_logging

_NOISY_PATHS = ("/orbax/", "/etils/", "/matplotlib/", "/jax/_src/")


class _DropLibraryInfo(logging.Filter):
    def filter(self, record):
        message = str(record.msg)
        # Mid-epoch saves carry no metrics by design; the evaluator always opens read-only.
        if (
            "did not provide metrics" in message
            or "read only" in message
            or "read_only=True" in message
        ):
            return False
        return record.levelno >= logging.WARNING or not any(
            p in record.pathname for p in _NOISY_PATHS
        )


def quiet_library_logs():
    absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def progress_bars_wanted(requested: bool) -> bool:
    """Progress bars when asked for and standard error is a terminal."""
    return bool(requested) and sys.stderr.isatty()
