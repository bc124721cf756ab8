"""What every evaluator works from: options, runs, their chosen checkpoints, data, predictions.

Predictions of a named checkpoint on a subset are computed once and shared, so the ensemble and
soup evaluators reuse what the single-model evaluator computed (and vice versa), whichever runs
first. For multi-head runs, AllHeadsPredictions reads each checkpoint from disk once and predicts
every head of it at once, shared between the per-head contexts and the hierarchy check; predictions
are keyed by the exact images, since a head's subset leaves out the rows without its label.
"""

import dataclasses
import hashlib
import os
from typing import Optional

from absl import logging
import numpy as np

from fashion_jax import restore
from fashion_jax.evaluation import data as data_lib
from fashion_jax.evaluation import predictor


class EvalError(ValueError):
    """Bad flags or incompatible workdirs; the message says what to do."""


@dataclasses.dataclass
class EvalOptions:
    checkpoint: str = "best"                       # best, latest or a step, for every workdir.
    subsets: tuple = ("val", "test", "control")
    evaluators: tuple = ("auto",)                  # auto: single, + ensemble (2+ runs), + soup.
    ensemble_weights: tuple = ()                   # One per workdir; default uniform.
    soup_ingredients: str = "auto"                 # auto, workdirs or last_epochs.
    soup_last_epochs: int = 0                      # last_epochs: how many (0: all kept).
    soups: tuple = ("uniform", "greedy")
    bn_batches: int = 100                          # BatchNorm recalibration of soups; 0: none.
    bn_batch_size: int = 0                         # 0: the training batch size.
    batch_size: int = 256                          # Inference batch.
    ece_bins: int = 15
    target_precision: float = 0.995                # Selective prediction: threshold on val.
    gallery_size: int = 24                         # Misclassified images shown per PNG.
    data_dir: str = ""                             # Else the training config's, else env.
    progress_bar: bool = False
    head: str = ""                                 # Multi-head runs: a head, "all" or "" (first).
    tta: str = "none"                              # Test-time augmentation: none or flip.

    def __post_init__(self):
        if self.soup_ingredients not in ("auto", "workdirs", "last_epochs"):
            raise EvalError(f"--soup_ingredients={self.soup_ingredients}: use auto, workdirs or "
                            "last_epochs.")
        unknown = sorted(set(self.soups) - {"uniform", "greedy"})
        if unknown or not self.soups:
            raise EvalError(f"--soups={','.join(self.soups)}: use uniform and/or greedy.")
        if any(w < 0 for w in self.ensemble_weights) or (
                self.ensemble_weights and not sum(self.ensemble_weights) > 0):
            raise EvalError(f"--ensemble_weights={','.join(map(str, self.ensemble_weights))}: "
                            "weights must be non-negative and not all zero.")
        for flag in ("soup_last_epochs", "bn_batches", "bn_batch_size", "gallery_size"):
            if getattr(self, flag) < 0:
                raise EvalError(f"--{flag}={getattr(self, flag)} must not be negative.")
        if not 0 < self.target_precision <= 1:
            raise EvalError(f"--target_precision={self.target_precision} must be in (0, 1], "
                            "e.g. 0.995.")
        if self.tta not in predictor.TTA_MODES:
            raise EvalError(f"--tta={self.tta}: use one of {', '.join(predictor.TTA_MODES)}.")
        for flag in ("batch_size", "ece_bins"):
            if getattr(self, flag) < 1:
                raise EvalError(f"--{flag}={getattr(self, flag)} must be at least 1.")


class AllHeadsPredictions:
    """Every head's log-probabilities of saved checkpoints, computed once per (workdir, step,
    images) and shared by the evaluation of all heads of a multi-head run, as are the
    checkpoints' variables."""

    def __init__(self, options: EvalOptions):
        self._options, self._cache, self._checkpoints = options, {}, {}

    def load_checkpoint(self, run: restore.Run, step: int) -> restore.Checkpoint:
        """Checkpoint `step` of `run` (seen through any of its heads), read from disk once."""
        key = (os.path.realpath(run.workdir), step)
        if key not in self._checkpoints:
            self._checkpoints[key] = restore.load_checkpoint(run, step)
        return dataclasses.replace(self._checkpoints[key], run=run)

    def __call__(self, checkpoint: restore.Checkpoint, subset: str, data) -> dict:
        """{head: log-probs} of `checkpoint` on `data` (a dataset.Subset named `subset`)."""
        key = (os.path.realpath(checkpoint.run.workdir), checkpoint.step,
               hashlib.sha256(data.ids.tobytes()).hexdigest())
        if key not in self._cache:
            logging.info("Predicting every head of %s on %s (%d images).", checkpoint.name,
                         subset, len(data.ids))
            self._cache[key] = predictor.predict_array(
                checkpoint.run.model, checkpoint.variables, data.images, self._options.batch_size,
                None, self._options.tta)
        return self._cache[key]


class Context:
    """The runs (one checkpoint each), their shared split, and memoized predictions."""

    def __init__(self, runs: list, checkpoints: list, data: data_lib.EvalData,
                 options: EvalOptions,
                 shared_predictions: Optional[AllHeadsPredictions] = None):
        self.runs, self.checkpoints, self.data, self.options = runs, checkpoints, data, options
        if options.ensemble_weights and len(options.ensemble_weights) != len(checkpoints):
            raise EvalError(f"--ensemble_weights has {len(options.ensemble_weights)} values for "
                            f"{len(checkpoints)} workdirs; give one weight per workdir.")
        self.warnings = []
        self._memo = {}
        self._shared = shared_predictions  # Multi-head runs: all heads' log-probs, shared.
        self.head = runs[0].head           # Multi-head runs: the head evaluated; else None.
        self.top_classes = None            # Class indices for metrics' top_classes_accuracy.

    @property
    def class_names(self) -> list:
        return self.data.class_names

    def warn(self, message: str):
        """A caveat for the reader: logged now and listed in the report."""
        logging.warning("%s", message)
        if message not in self.warnings:
            self.warnings.append(message)

    def log_probs(self, model, variables, subset: str, key: Optional[str] = None) -> np.ndarray:
        """Log-probabilities on `subset`; memoized under `key` (e.g. a checkpoint's name)."""
        if key is not None and (key, subset) in self._memo:
            return self._memo[key, subset]
        images = self.data.subset(subset).images
        logging.info("Predicting %s on %s (%d images).", key or "a soup candidate", subset,
                     len(images))
        result = predictor.predict_array(model, variables, images, self.options.batch_size,
                                         self.head, self.options.tta)
        if key is not None:
            self._memo[key, subset] = result
        return result

    def checkpoint_log_probs(self, checkpoint: restore.Checkpoint, subset: str) -> np.ndarray:
        if self._shared is None or self.head is None:
            return self.log_probs(checkpoint.run.model, checkpoint.variables, subset,
                                  key=checkpoint.name)
        if (checkpoint.name, subset) not in self._memo:
            self._memo[checkpoint.name, subset] = self._shared(
                checkpoint, subset, self.data.subset(subset))[self.head]
        return self._memo[checkpoint.name, subset]

    def labels(self, subset: str) -> np.ndarray:
        return self.data.subset(subset).labels

    def accuracy(self, log_probs: np.ndarray, subset: str) -> float:
        return float((log_probs.argmax(-1) == self.labels(subset)).mean())
