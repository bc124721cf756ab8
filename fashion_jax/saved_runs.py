"""Loading a training workdir's model read-only: metadata, checkpoint choice, variables.

Nothing here creates, moves or deletes anything in a workdir: the orbax manager is opened with
`read_only=True` and restores the saved tree without a target, of which only `params` and
`batch_stats` are kept. The training config, class names and model config come from the
manager's root metadata (see checkpointing.py), the split from the workdir's split.csv.
"""

import dataclasses
import functools
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd

from fashion_jax import errors
from fashion_jax import models
from fashion_jax.data import dataset
from fashion_jax.training import checkpointing


@dataclasses.dataclass
class Run:
    """A training workdir opened read-only."""

    workdir: str
    name: str  # Short name for tables, e.g. "adam".
    manager: ocp.CheckpointManager
    class_names: tuple
    model_config: dict
    image_shape: tuple
    config: ml_collections.ConfigDict
    model: object  # The flax module; equal configs give equal (hashable) modules.
    heads: dict | None = None  # Multi-head runs: head -> class names (tuple), in head order.
    head: str | None = None  # The head evaluated (class_names are its classes); see with_head.

    @property
    def optimizer(self) -> str:
        return self.config.optimizer.name


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a run. Its variables are read by `load()` and not kept, so that holding
    references to many checkpoints costs no memory."""

    run: Run
    step: int
    epoch: int | None  # None for a mid-epoch checkpoint.

    @property
    def name(self) -> str:
        where = f"epoch {self.epoch}" if self.epoch is not None else f"step {self.step}"
        return f"{self.run.name}@{where}"

    @property
    def key(self) -> tuple:
        """Identifies the checkpoint whatever name or head its run is seen through."""
        return os.path.realpath(self.run.workdir), self.step

    def load(self) -> dict:
        """{"params", "batch_stats"} as numpy arrays (the weight average's, if the run kept one)."""
        return load_variables(self.run, self.step)


def open_run(workdir: str, name: str | None = None) -> Run:
    """Opens `workdir` (a run_train.py --workdir) read-only."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    folder = checkpointing.checkpoint_dir(workdir)
    if not os.path.isdir(os.path.join(folder, "metadata")):
        raise errors.RestoreError(
            f"{workdir} is not a training workdir with checkpoints (no {folder}/metadata). Pass "
            "the --workdir given to run_train.py, after at least one epoch has finished."
        )
    manager = checkpointing.create_manager(workdir, read_only=True)
    if not manager.all_steps():
        raise errors.RestoreError(
            f"{folder} holds no finished checkpoint yet; let training finish an epoch first."
        )
    meta = checkpointing.run_metadata(manager)
    missing = [k for k in ("class_names", "model", "image_shape", "config") if k not in meta]
    if missing:
        raise errors.RestoreError(
            f"{folder}/metadata lacks {missing}; was it written by run_train.py?"
        )
    config = ml_collections.ConfigDict(json.loads(meta["config"]))
    model_config = _hashable(meta["model"])
    heads = {h: tuple(c) for h, c in meta["heads"].items()} if meta.get("heads") else None
    model = models.create_model(
        ml_collections.ConfigDict(model_config), models.output_classes(meta["class_names"], heads)
    )
    return Run(
        workdir=workdir,
        name=name or os.path.basename(workdir),
        manager=manager,
        class_names=tuple(meta["class_names"]),
        model_config=model_config,
        image_shape=tuple(meta["image_shape"]),
        config=config,
        model=model,
        heads=heads,
        head=next(iter(heads)) if heads else None,
    )


def with_head(run: Run, head: str) -> Run:
    """The run seen through one of its heads (its classes, its labels in split.csv)."""
    if not run.heads:
        raise errors.RestoreError(
            f"--config.head={head}: {run.workdir} is a single-head run (of "
            f"{run.config.data.label_column}); leave --config.head out."
        )
    if head not in run.heads:
        raise errors.RestoreError(
            f"--config.head={head}: {run.workdir} has the heads {list(run.heads)}."
        )
    return dataclasses.replace(run, head=head, class_names=run.heads[head])


def _hashable(value):
    """JSON lists -> tuples, so the model module built from them is hashable (a jit static)."""
    if isinstance(value, dict):
        return {k: _hashable(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def short_names(workdirs) -> list:
    """Folder names, with parent folders added until they are unique."""
    parts = [os.path.abspath(w).rstrip(os.sep).split(os.sep) for w in workdirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [os.path.abspath(w) for w in workdirs]


def select_step(run: Run, which: str = "best", flag: str = "--config.checkpoint") -> int:
    """The step for --checkpoint: "best" (lowest monitored metric), "latest" or a step number.
    A best or latest checkpoint that cannot be read (a file cut short) gives way, with a
    warning, to the newest one that can; a step asked for by number does not."""
    steps = run.manager.all_steps()
    which = str(which).strip().lower()
    if which.isdigit() and int(which) in steps:
        reason = checkpointing.unreadable_reason(run.workdir, int(which))
        if reason:
            raise errors.RestoreError(
                f"{flag}={which}: checkpoint step {which} of {run.workdir} cannot be read "
                f"({reason}); choose another of the steps {list(steps)}."
            )
        return int(which)
    if which == "latest":
        return _readable(run, run.manager.latest_step())
    if which == "best":
        best = run.manager.best_step()
        if best is None:
            logging.warning(
                "%s has no epoch-end checkpoint with metrics; using the latest.", run.workdir
            )
            return _readable(run, run.manager.latest_step())
        return _readable(run, best)
    raise errors.RestoreError(
        f"{flag}={which} does not name a checkpoint of {run.workdir}: use "
        f"best, latest or one of the steps {list(steps)}."
    )


def _readable(run: Run, step: int) -> int:
    """`step` if it reads back, else the newest step that does (with a warning naming both)."""
    reason = checkpointing.unreadable_reason(run.workdir, step)
    if not reason:
        return step
    for other in sorted(run.manager.all_steps(), reverse=True):
        if other != step and not checkpointing.unreadable_reason(run.workdir, other):
            logging.warning(
                "Checkpoint step %d of %s cannot be read (%s); using step %d, the newest one "
                "that can. Nothing was changed in the workdir.",
                step,
                run.workdir,
                reason,
                other,
            )
            return other
    raise errors.RestoreError(
        f"No checkpoint of {run.workdir} can be read (step {step}: {reason})."
    )


def epoch_end_steps(run: Run) -> dict:
    """{step: epoch} of the epoch-end checkpoints still in the workdir, oldest first (from the
    newest progress record that reads back)."""
    present = set(run.manager.all_steps())
    for step in sorted(present, reverse=True):
        try:
            progress = run.manager.restore(
                step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())
            )["progress"]
            break
        except Exception as e:  # A file cut short: the history of the step before will do.
            logging.warning("Progress of step %d of %s cannot be read: %s", step, run.workdir, e)
    else:
        raise errors.RestoreError(f"No checkpoint of {run.workdir} has a readable history.")
    return {r["step"]: r["epoch"] for r in progress["history"] if r["step"] in present}


def checkpoint_at(run: Run, step: int) -> Checkpoint:
    return Checkpoint(run=run, step=step, epoch=epoch_end_steps(run).get(step))


def load_variables(run: Run, step: int) -> dict:
    """{"params", "batch_stats"} of checkpoint `step` as numpy arrays, checked against the model;
    the EMA parameters and their statistics for runs that kept them."""
    saved = run.manager.item_metadata(step)["state"]
    prefix = "ema_" if "ema_params" in saved else ""  # Runs with --config.ema_decay.
    restored = checkpointing.restore_state_on_this_host(
        run.manager, step, keys=(prefix + "params", prefix + "batch_stats")
    )
    variables = jax.tree.map(
        np.asarray,
        jax.device_get(
            {"params": restored[prefix + "params"], "batch_stats": restored[prefix + "batch_stats"]}
        ),
    )
    expected = model_shapes(run.model, run.image_shape)
    differences = tree_differences(expected, variables)
    if differences:
        raise errors.RestoreError(
            f"Checkpoint {step} of {run.workdir} does not match its model config "
            f"{run.model_config}: {'; '.join(differences[:5])}."
        )
    return variables


@functools.lru_cache(maxsize=8)
def model_shapes(model, image_shape) -> dict:
    """The shapes of a freshly initialised model's variables, without computing them."""
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jnp.zeros((1,) + tuple(image_shape), jnp.float32),
    )
    return {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}


def tree_differences(reference, other, names=("expected", "found")) -> list:
    """Human-readable differences in paths and shapes between two variable trees."""

    def flat(tree):
        return {
            jax.tree_util.keystr(path, simple=True, separator="/"): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        }

    a, b = flat(reference), flat(other)
    differences = [f"{path} only in the {names[0]} tree" for path in sorted(a.keys() - b.keys())]
    differences += [f"{path} only in the {names[1]} tree" for path in sorted(b.keys() - a.keys())]
    differences += [
        f"{path} has shape {a[path]} ({names[0]}) vs {b[path]} ({names[1]})"
        for path in sorted(a.keys() & b.keys())
        if a[path] != b[path]
    ]
    return differences


def read_split(run: Run) -> pd.DataFrame:
    path = os.path.join(run.workdir, dataset.SPLIT_FILE)
    if not os.path.exists(path):
        raise errors.RestoreError(
            f"{path} is missing; the evaluator uses the split saved by training."
        )
    return dataset.read_split(run.workdir)


def init_identity(config: ml_collections.ConfigDict) -> str:
    """Where a run's parameters started: an init checkpoint or an init seed."""
    if config.get("init_checkpoint"):
        return (
            f"checkpoint {os.path.abspath(config.init_checkpoint)} "
            f"({config.get('init_checkpoint_step', 'best')})"
        )
    seed = config.get("init_seed")
    return f"init_seed {config.seed if seed is None else seed}"
