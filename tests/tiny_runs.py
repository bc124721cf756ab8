"""Tiny trained workdirs for the evaluation tests, trained once per test session.

Two runs on one synthetic dataset, sharing an initialisation (init_seed 0) as soups need:
`adam` (3 epochs, so 3 epoch-end checkpoints) and `sgd` (2 epochs, other shuffling seed, a
profile of 2 steps).
"""

import hashlib
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from fashion_jax import models
from tests.conftest import tiny_config
from tests.conftest import write_synthetic_dataset

_TRAINED = {}


def train_once(tmp_path_factory) -> dict:
    """{"data", "cache", "adam", "sgd"}: paths, trained on the first call of the session."""
    if not _TRAINED:
        from fashion_jax.training import train

        root = tmp_path_factory.mktemp("tiny_runs")
        data = write_synthetic_dataset(root / "data", rows_per_class=30)
        cache = root / "cache"
        common = {"data.cache_dir": str(cache), "init_seed": 0, "early_stopping.patience": 100}
        runs = {
            "adam": {"num_epochs": 3, "seed": 0},
            "sgd": {
                "num_epochs": 2,
                "seed": 1,
                "optimizer.name": "sgd",
                "optimizer.learning_rate": 0.05,
                "profile_steps": 2,  # tests/test_health.py looks at the trace.
            },
        }
        for name, overrides in runs.items():
            train.train_and_evaluate(tiny_config(data, **common, **overrides), str(root / name))
        _TRAINED.update(data=data, cache=cache, adam=root / "adam", sgd=root / "sgd")
    return dict(_TRAINED)


# Reference computations that do not go through fashion_jax.evaluation.


def own_state(workdir, step):
    """(model, {"params", "batch_stats"} as numpy) of a checkpoint, restored directly."""
    manager = ocp.CheckpointManager(
        os.path.join(str(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    )
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    meta = dict(manager.metadata().custom_metadata)
    model = models.create_model(ml_collections.ConfigDict(meta["model"]), len(meta["class_names"]))
    state = jax.device_get(state["state"])
    return model, {"params": state["params"], "batch_stats": state["batch_stats"]}


def own_probabilities(model, variables, images):
    """Softmax of flax's eval-mode apply, in float64."""
    logits = model.apply(variables, images.astype(np.float32) / 255.0, train=False)
    return np.asarray(jax.nn.softmax(logits), np.float64)


def best_step(workdir):
    """The step training restored at the end (its best), from summary.json."""
    return json.loads((workdir / "summary.json").read_text())["final_step"]


def folder_digest(folder) -> dict:
    """{relative path: sha256} of every file and {relative path: "dir"} of every folder."""
    digest = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            digest[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digest
