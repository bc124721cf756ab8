"""Keeps the training log readable: library INFO chatter (orbax saves) is dropped."""

import logging

from absl import logging as absl_logging

_NOISY_PATHS = ("/orbax/", "/etils/", "/matplotlib/", "/jax/_src/")


class _DropLibraryInfo(logging.Filter):
    def filter(self, record):
        if "did not provide metrics" in str(record.msg):  # Mid-epoch saves carry none by design.
            return False
        return record.levelno >= logging.WARNING or not any(
            p in record.pathname for p in _NOISY_PATHS)


def quiet_library_logs():
    absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
