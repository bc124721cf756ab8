"""JAX's persistent compilation cache, so that a second run of the same model and shapes (or a
resumed one) loads its compiled steps from disk instead of compiling them again.

--config.compilation_cache_dir: "" = <$FASHION_CACHE_DIR or ~/.cache/fashion_jax>/jax_compilation,
beside the decoded images; "none" = off; else that folder. Configured once at a run's start.
"""

import os

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from fashion_jax.data import image_cache

OFF = "none"
FOLDER_NAME = "jax_compilation"
# JAX caches only compiles longer than 1 s by default; most CPU steps compile faster than that.
MIN_COMPILE_SECONDS = 0.05


def folder(setting: str) -> str | None:
    """The cache folder that `setting` (config.compilation_cache_dir) means; None: off."""
    if str(setting).lower() == OFF:
        return None
    return os.path.expanduser(setting) if setting else _default_folder()


def _default_folder() -> str:
    return os.path.join(image_cache.default_cache_dir(), FOLDER_NAME)


def configure(setting: str) -> str | None:
    """Points JAX's persistent cache at folder(setting) (or turns it off); returns the folder.
    JAX decides once per process whether it uses the cache, so a change resets that decision."""
    path = folder(setting)
    current = (
        jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None
    )
    if path != current:
        jax.config.update("jax_enable_compilation_cache", path is not None)
        jax.config.update("jax_compilation_cache_dir", path)
        jax_cache.reset_cache()
    if path is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        logging.info("Compiled steps are cached in %s (--config.compilation_cache_dir).", path)
    return path
