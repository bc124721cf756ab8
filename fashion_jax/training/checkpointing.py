"""Orbax checkpoints of a training run: latest (for resume), best (by the monitored metric) and
the last K epoch ends (soup ingredients), in <workdir>/checkpoints.

Each checkpoint holds two items: `state` (step, params, opt_state, batch_stats) and `progress`
(JSON: epoch history, early-stopping counters, partial epoch sums). The manager's root metadata
holds what a later reader needs without the training config in memory: class names, the model
config and image size, and the whole config.
"""

import os

from absl import logging
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from fashion_jax import errors

CHECKPOINT_DIR = "checkpoints"
# Checkpoints that cannot be read are moved here (beside checkpoints/, where orbax does not
# look), never deleted.
UNREADABLE_DIR = "checkpoints_unreadable"


def _monitored(metrics):
    return metrics["monitored"]


class LatestEpochEnds(policies.PreservationPolicy):
    """Preserves the last `n` checkpoints that carry metrics (the epoch ends)."""

    def __init__(self, n: int):
        self.n = n

    def should_preserve(self, checkpoints, *, context):
        with_metrics = [i for i, info in enumerate(checkpoints) if info.metrics is not None]
        keep = set(with_metrics[-self.n :]) if self.n > 0 else set()
        return [i in keep for i in range(len(checkpoints))]


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a finished checkpoint (a run to resume)."""
    folder = checkpoint_dir(workdir)
    return os.path.isdir(folder) and bool(create_manager(workdir, read_only=True).all_steps())


def newest_step_on_disk(workdir: str) -> int | None:
    """The newest fully written step in `workdir`'s checkpoints (orbax writes a step under a
    temporary name and renames it when complete), or None."""
    folder = checkpoint_dir(workdir)
    steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
    return max(steps, default=None)


def unreadable_reason(workdir: str, step: int) -> str:
    """ "" if checkpoint `step` reads back whole (every array of its state, and its progress),
    else the error: a file cut short or corrupted. Reads the saved tree as it is, so that a
    checkpoint which merely does not fit this run's model is not taken for a broken one."""
    manager = create_manager(workdir, read_only=True)
    try:
        restore_state_on_this_host(manager, step)
        if "progress" in manager.item_metadata(step):
            manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
    except Exception as e:  # TensorStore raises plain Exceptions; JSON a ValueError.
        return f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return ""


def set_aside(workdir: str, step: int, reason: str) -> str:
    """Moves unreadable checkpoint `step` into <workdir>/checkpoints_unreadable/ (so that the run
    resumes from the one before and later saves cannot collide with it); returns where."""
    target = os.path.join(os.path.abspath(workdir), UNREADABLE_DIR, str(step))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(checkpoint_dir(workdir), str(step)), target)
    logging.warning(
        "Checkpoint step %d of %s cannot be read (%s); moved to %s (kept, not deleted) and "
        "resuming from the checkpoint before it.",
        step,
        workdir,
        reason,
        target,
    )
    return target


def restore_newest_readable(manager: ocp.CheckpointManager, workdir: str, abstract_state_tree):
    """(step, state tree, progress) of the newest checkpoint that reads back; newer ones that do
    not (a file cut short) are set aside. A checkpoint that reads but does not fit the target
    (another model) raises as before: it is not broken."""
    unreadable = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            tree, progress = restore(manager, step, abstract_state_tree)
        except Exception:
            reason = unreadable_reason(workdir, step)
            if not reason:
                raise
            unreadable.append((step, reason))
            continue
        if unreadable:
            if jax.process_index() == 0:
                for bad, reason in unreadable:
                    set_aside(workdir, bad, reason)
            if jax.process_count() > 1:  # The others wait until process 0 has moved them.
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("set_aside_unreadable_checkpoints")
            manager.reload()
        return step, tree, progress
    raise errors.RestoreError(
        f"No checkpoint in {checkpoint_dir(workdir)} can be read: "
        + "; ".join(f"step {s}: {r}" for s, r in unreadable)
        + ". Nothing was moved or deleted; move that folder away to start the run afresh."
    )


def create_manager(
    workdir: str, keep_epochs: int = 1, run_metadata: dict | None = None, read_only: bool = False
) -> ocp.CheckpointManager:
    """A manager keeping latest, best-by-`monitored` and the last `keep_epochs` epoch ends.

    Only epoch-end checkpoints carry metrics; mid-epoch ones are kept only while they are latest.
    With `read_only`, nothing in the folder is created, moved or deleted.
    """
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=1),
            policies.BestN(
                get_metric_fn=_monitored, reverse=True, n=1, keep_checkpoints_without_metrics=False
            ),
            LatestEpochEnds(keep_epochs),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        best_fn=_monitored,
        best_mode="min",
        preservation_policy=None if read_only else preservation,
        read_only=read_only,
        create=not read_only,
        enable_async_checkpointing=not read_only,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=options,
        metadata=None if read_only else run_metadata,
        item_handlers={
            # Readers restore parts of the state (an evaluator needs no optimizer state).
            "state": ocp.PyTreeCheckpointHandler()
            if read_only
            else ocp.StandardCheckpointHandler(),
            "progress": ocp.JsonCheckpointHandler(),
        },
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state_tree,
    progress: dict,
    metrics: dict | None = None,
):
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state_tree), progress=ocp.args.JsonSave(progress)
        ),
        metrics=metrics,
    )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state_tree):
    """Restores (state tree, progress) at `step` into the structure and shardings given."""
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state_tree), progress=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["progress"]


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state_tree):
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state_tree))
    )
    return restored["state"]


def restore_state_on_this_host(
    manager: ocp.CheckpointManager, step: int, keys=None, sharding=None
) -> dict:
    """Restores the saved state tree (only its top-level `keys`, when given) from a read-only
    manager onto `sharding` (default: this host's first device), whatever topology (devices,
    processes) it was saved from. The structure comes from the checkpoint itself, so no model or
    optimizer needs to be built first, and what is not asked for is never read."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    saved = manager.item_metadata(step)["state"]
    if keys is not None:
        saved = {k: v for k, v in saved.items() if k in keys}
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=keys is not None,
            )
        ),
    )
    return restored["state"]


def run_metadata(manager: ocp.CheckpointManager) -> dict:
    return dict(manager.metadata().custom_metadata or {})


def abstract_tree(tree):
    """ShapeDtypeStructs (with shardings) to restore into, without allocating."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
