"""What every evaluator works from: the config, the runs, their chosen checkpoints, the data and
the predictions, computed once and shared.

Checkpoints are references (saved_runs.Checkpoint): the first time any evaluator asks for a
checkpoint's predictions, the store reads it from disk once, predicts every head on every subset
the evaluation needs, keeps those log-probabilities and lets the variables go. So the single,
ensemble and soup evaluators, every head of a multi-head run and the hierarchy check share one
read of each checkpoint, and memory holds at most one model's variables for this.
"""

from absl import logging
import jax
import numpy as np

from fashion_jax import saved_runs
from fashion_jax.data import dataset
from fashion_jax.evaluation import config_checks
from fashion_jax.evaluation import data as data_lib
from fashion_jax.inference import predictor


class PredictionStore:
    """Log-probabilities of whole subsets ({head: [N, C]} for multi-head runs), per checkpoint."""

    def __init__(self, config, data: data_lib.EvalData, subsets):
        self.config, self.data, self.subsets = config, data, tuple(subsets)
        self._cache = {}
        self.reads = 0  # Checkpoints read from disk (for tests and logs).

    def __call__(self, checkpoint: saved_runs.Checkpoint, subset: str):
        if (checkpoint.key, subset) not in self._cache:
            variables = jax.device_put(checkpoint.load())
            self.reads += 1
            for name in dict.fromkeys(self.subsets + (subset,)):
                if (checkpoint.key, name) in self._cache:
                    continue
                images = self.data.subset(name).images
                logging.info("Predicting %s on %s (%d images).", checkpoint.name, name, len(images))
                self._cache[checkpoint.key, name] = predictor.predict_array(
                    checkpoint.run.model,
                    variables,
                    images,
                    self.config.batch_size,
                    None,
                    self.config.tta,
                )
        return self._cache[checkpoint.key, subset]


class Context:
    """The runs (one checkpoint each) seen through one head, their shared split, the config, and
    memoized predictions."""

    def __init__(
        self,
        runs: list,
        checkpoints: list,
        data: data_lib.EvalData,
        config,
        store: PredictionStore,
    ):
        self.runs, self.checkpoints, self.data, self.config = runs, checkpoints, data, config
        self.subsets = config_checks.names(config.subsets)
        self.store = store
        self.warnings = []
        self._memo = {}
        self.head = runs[0].head  # Multi-head runs: the head evaluated; else None.
        self.top_classes = None  # Class indices for metrics' top_classes_accuracy.
        self.val_trained_on = False
        for run in runs:
            held_in = dataset.subsets_not_held_out(run.config.data)
            if not held_in:
                continue
            self.val_trained_on |= "val" in held_in
            chosen_on_val = (
                ", and what is chosen on val (greedy soups, temperature, review threshold) "
                "saw its training images"
                if "val" in held_in
                else ""
            )
            self.warn(
                f"{run.workdir} was trained on {', '.join(dataset.trained_subsets(run.config.data))} "
                f"(--config.data.train_subsets): its numbers on {', '.join(held_in)} are not held "
                f"out{chosen_on_val}. Compare it on the subsets it did not train on."
            )

    @property
    def class_names(self) -> list:
        return self.data.class_names

    def warn(self, message: str):
        """A caveat for the reader: logged now and listed in the report."""
        logging.warning("%s", message)
        if message not in self.warnings:
            self.warnings.append(message)

    def log_probs(self, model, variables, subset: str, key: str | None = None) -> np.ndarray:
        """Log-probabilities of this head on `subset` for variables in hand (a soup); memoized
        under `key`."""
        if key is not None and (key, subset) in self._memo:
            return self._memo[key, subset]
        images = self.data.subset(subset).images
        logging.info(
            "Predicting %s on %s (%d images).", key or "a soup candidate", subset, len(images)
        )
        result = predictor.predict_array(
            model, variables, images, self.config.batch_size, self.head, self.config.tta
        )
        if key is not None:
            self._memo[key, subset] = result
        return result

    def checkpoint_log_probs(self, checkpoint: saved_runs.Checkpoint, subset: str) -> np.ndarray:
        """This head's log-probabilities of a saved checkpoint on this context's `subset` rows
        (the rows with a label for the head), from the shared store."""
        whole = self.store(checkpoint, subset)
        if self.head is None:
            return whole
        rows = np.isin(self.store.data.subset(subset).ids, self.data.subset(subset).ids)
        return whole[self.head][rows]

    def labels(self, subset: str) -> np.ndarray:
        return self.data.subset(subset).labels

    def accuracy(self, log_probs: np.ndarray, subset: str) -> float:
        return float((log_probs.argmax(-1) == self.labels(subset)).mean())
