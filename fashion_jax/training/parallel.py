"""Data parallelism over every device of every process (jax.sharding, no pmap).

One mesh with a `data` axis over all devices. Parameters and optimizer state are replicated;
batches are sharded along `data`. Each process holds and reads only its own contiguous part of
every global batch and builds the global array from that process-local data. Every host <-> device
transfer in the training loop goes through this module, explicitly.
"""

import dataclasses

from absl import logging
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from fashion_jax import errors


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
    heartbeat_timeout_seconds: int = 100,
):
    """Joins a multi-process job, from explicit values or the launcher's environment.

    With `auto` (or any value given), `jax.distributed.initialize` is called; values left None
    are detected by JAX from SLURM, Open MPI, Kubernetes or TPU environments. A process that
    dies while the others wait at a checkpoint's barrier (JAX's coordination service, not a
    collective, which fails at once) is noticed after `heartbeat_timeout_seconds`.
    """
    if not (auto or coordinator_address or num_processes or process_id is not None):
        return
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
    logging.info(
        "Process %d of %d; %d local and %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


@dataclasses.dataclass(frozen=True)
class DataParallel:
    mesh: jax.sharding.Mesh

    @classmethod
    def over_all_devices(cls) -> "DataParallel":
        return cls(
            jax.make_mesh(
                (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
            )
        )

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_sharded(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    @property
    def chunk_sharded(self) -> NamedSharding:
        """[steps, batch] index arrays: sharded along the batch axis."""
        return NamedSharding(self.mesh, P(None, "data"))

    def check_batch_size(self, batch_size: int, flag: str):
        check_batch_divides(batch_size, self.mesh.size, flag)

    def process_rows(self, global_batch_size: int) -> slice:
        """This process's contiguous rows of a global batch."""
        per_process = global_batch_size // jax.process_count()
        start = jax.process_index() * per_process
        return slice(start, start + per_process)

    def shard_batch(self, local_batch: dict) -> dict:
        """Process-local rows -> one global array per field, sharded along `data`."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharded, v)
            for k, v in local_batch.items()
        }

    def shard_chunk(self, local_indices: np.ndarray) -> jax.Array:
        """Process-local [steps, rows] -> global [steps, batch], sharded along the batch."""
        return jax.make_array_from_process_local_data(self.chunk_sharded, local_indices)

    def replicate(self, host_tree):
        """Identical host values on every process -> replicated global arrays."""
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)),
            host_tree,
        )

    @staticmethod
    def to_host(tree):
        """Replicated (or fully addressable) arrays -> numpy, from this process's copy."""
        return jax.tree.map(
            lambda x: np.asarray(x.addressable_data(0)) if x.is_fully_replicated else np.asarray(x),
            tree,
        )


def check_batch_divides(batch_size: int, devices: int, flag: str):
    """Every device gets the same number of rows of a global batch, or the batch is refused."""
    if batch_size % devices:
        raise errors.ConfigError(
            f"{flag}={batch_size} must divide by the number of devices "
            f"({devices}); use a multiple of {devices}."
        )


def is_main_process() -> bool:
    return jax.process_index() == 0
