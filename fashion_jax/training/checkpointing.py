"""Orbax checkpoints of a training run: latest (for resume), best (by the monitored metric) and
the last K epoch ends (soup ingredients), in <workdir>/checkpoints.

Each checkpoint holds two items: `state` (step, params, opt_state, batch_stats) and `progress`
(JSON: epoch history, early-stopping counters, partial epoch sums). The manager's root metadata
holds what a later reader needs without the training config in memory: class names, the model
config and image size, and the whole config.
"""

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

CHECKPOINT_DIR = "checkpoints"


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
