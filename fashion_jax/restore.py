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
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd

from fashion_jax import checkpointing
from fashion_jax import dataset
from fashion_jax import models


class RestoreError(ValueError):
    """A workdir or checkpoint that cannot be used; the message says which and what to do."""


@dataclasses.dataclass
class Run:
    """A training workdir opened read-only."""
    workdir: str
    name: str                     # Short name for tables, e.g. "adam".
    manager: ocp.CheckpointManager
    class_names: tuple
    model_config: dict
    image_shape: tuple
    config: ml_collections.ConfigDict
    model: object                 # The flax module; equal configs give equal (hashable) modules.
    heads: Optional[dict] = None  # Multi-head runs: head -> class names (tuple), in head order.
    head: Optional[str] = None    # The head evaluated (class_names are its classes); see with_head.

    @property
    def optimizer(self) -> str:
        return self.config.optimizer.name


@dataclasses.dataclass
class Checkpoint:
    """One checkpoint's inference variables ({"params", "batch_stats"}, on the default device)."""
    run: Run
    step: int
    epoch: Optional[int]          # None for a mid-epoch checkpoint.
    variables: dict

    @property
    def name(self) -> str:
        where = f"epoch {self.epoch}" if self.epoch is not None else f"step {self.step}"
        return f"{self.run.name}@{where}"


def open_run(workdir: str, name: Optional[str] = None) -> Run:
    """Opens `workdir` (a run_train.py --workdir) read-only."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    folder = checkpointing.checkpoint_dir(workdir)
    if not os.path.isdir(os.path.join(folder, "metadata")):
        raise RestoreError(
            f"{workdir} is not a training workdir with checkpoints (no {folder}/metadata). Pass "
            "the --workdir given to run_train.py, after at least one epoch has finished.")
    manager = checkpointing.create_manager(workdir, read_only=True)
    if not manager.all_steps():
        raise RestoreError(f"{folder} holds no finished checkpoint yet; let training finish an "
                           "epoch first.")
    meta = checkpointing.run_metadata(manager)
    missing = [k for k in ("class_names", "model", "image_shape", "config") if k not in meta]
    if missing:
        raise RestoreError(f"{folder}/metadata lacks {missing}; was it written by run_train.py?")
    config = ml_collections.ConfigDict(json.loads(meta["config"]))
    model_config = _hashable(meta["model"])
    heads = {h: tuple(c) for h, c in meta["heads"].items()} if meta.get("heads") else None
    model = models.create_model(ml_collections.ConfigDict(model_config),
                                models.output_classes(meta["class_names"], heads))
    return Run(workdir=workdir, name=name or os.path.basename(workdir), manager=manager,
               class_names=tuple(meta["class_names"]), model_config=model_config,
               image_shape=tuple(meta["image_shape"]), config=config, model=model, heads=heads,
               head=next(iter(heads)) if heads else None)


def with_head(run: Run, head: str) -> Run:
    """The run seen through one of its heads (its classes, its labels in split.csv)."""
    if not run.heads:
        raise RestoreError(f"--head={head}: {run.workdir} is a single-head run (of "
                           f"{run.config.data.label_column}); leave --head out.")
    if head not in run.heads:
        raise RestoreError(f"--head={head}: {run.workdir} has the heads {list(run.heads)}.")
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


def select_step(run: Run, which: str = "best") -> int:
    """The step for --checkpoint: "best" (lowest monitored metric), "latest" or a step number."""
    steps = run.manager.all_steps()
    which = str(which).strip().lower()
    if which == "latest":
        return run.manager.latest_step()
    if which == "best":
        best = run.manager.best_step()
        if best is None:
            logging.warning("%s has no epoch-end checkpoint with metrics; using the latest.",
                            run.workdir)
            return run.manager.latest_step()
        return best
    if which.isdigit() and int(which) in steps:
        return int(which)
    raise RestoreError(f"--checkpoint={which} does not name a checkpoint of {run.workdir}: use "
                       f"best, latest or one of the steps {list(steps)}.")


def epoch_end_steps(run: Run) -> dict:
    """{step: epoch} of the epoch-end checkpoints still in the workdir, oldest first."""
    latest = run.manager.latest_step()
    progress = run.manager.restore(latest, args=ocp.args.Composite(
        progress=ocp.args.JsonRestore()))["progress"]
    present = set(run.manager.all_steps())
    return {r["step"]: r["epoch"] for r in progress["history"] if r["step"] in present}


def load_checkpoint(run: Run, step: int) -> Checkpoint:
    return Checkpoint(run=run, step=step, epoch=epoch_end_steps(run).get(step),
                      variables=jax.device_put(load_variables(run, step)))


def load_variables(run: Run, step: int) -> dict:
    """{"params", "batch_stats"} of checkpoint `step` as numpy arrays, checked against the model;
    the EMA parameters and their statistics for runs that kept them."""
    restored = checkpointing.restore_state_on_this_host(run.manager, step)
    prefix = "ema_" if "ema_params" in restored else ""  # Runs with --config.ema_decay.
    variables = jax.tree.map(np.asarray, jax.device_get(
        {"params": restored[prefix + "params"], "batch_stats": restored[prefix + "batch_stats"]}))
    expected = model_shapes(run.model, run.image_shape)
    differences = tree_differences(expected, variables)
    if differences:
        raise RestoreError(f"Checkpoint {step} of {run.workdir} does not match its model config "
                           f"{run.model_config}: {'; '.join(differences[:5])}.")
    return variables


@functools.lru_cache(maxsize=8)
def model_shapes(model, image_shape) -> dict:
    """The shapes of a freshly initialised model's variables, without computing them."""
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            jnp.zeros((1,) + tuple(image_shape), jnp.float32))
    return {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}


def tree_differences(reference, other, names=("expected", "found")) -> list:
    """Human-readable differences in paths and shapes between two variable trees."""
    def flat(tree):
        return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(np.shape(leaf))
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    a, b = flat(reference), flat(other)
    differences = [f"{path} only in the {names[0]} tree" for path in sorted(a.keys() - b.keys())]
    differences += [f"{path} only in the {names[1]} tree" for path in sorted(b.keys() - a.keys())]
    differences += [f"{path} has shape {a[path]} ({names[0]}) vs {b[path]} ({names[1]})"
                    for path in sorted(a.keys() & b.keys()) if a[path] != b[path]]
    return differences


def read_split(run: Run) -> pd.DataFrame:
    path = os.path.join(run.workdir, dataset.SPLIT_FILE)
    if not os.path.exists(path):
        raise RestoreError(f"{path} is missing; the evaluator uses the split saved by training.")
    return dataset.read_split(run.workdir)


def init_identity(config: ml_collections.ConfigDict) -> str:
    """Where a run's parameters started: an init checkpoint or an init seed."""
    if config.get("init_checkpoint"):
        return (f"checkpoint {os.path.abspath(config.init_checkpoint)} "
                f"({config.get('init_checkpoint_step', 'best')})")
    seed = config.get("init_seed")
    return f"init_seed {config.seed if seed is None else seed}"


def init_from_checkpoint(config: ml_collections.ConfigDict, state):
    """`state` with params and batch_stats from --config.init_checkpoint, when it is set.

    The optimizer state stays fresh; each array keeps the sharding it has in `state`.
    """
    if not config.get("init_checkpoint"):
        return state
    like = {"params": state.params, "batch_stats": state.batch_stats}
    return state.replace(**load_init_variables(
        config.init_checkpoint, config.get("init_checkpoint_step", "best"), like))


def load_init_variables(workdir: str, which: str, like: dict) -> dict:
    """A run's variables to start training from, with the dtypes and shardings of `like`."""
    run = open_run(workdir)
    step = select_step(run, which)
    variables = load_variables(run, step)
    differences = tree_differences(like, variables, names=("new model", "init checkpoint"))
    if differences:
        raise RestoreError(
            f"--config.init_checkpoint={workdir} (step {step}) has a different architecture or "
            f"class count than this config: {'; '.join(differences[:5])}.")
    logging.info("Initialised parameters and BatchNorm statistics from %s step %d.", workdir, step)

    def place(ref, value):
        value = np.asarray(value, dtype=ref.dtype)
        return jax.make_array_from_callback(value.shape, ref.sharding, lambda index: value[index])
    return jax.tree.map(place, like, variables)
