"""Which decoded images a process holds: train and val in memory (one process), or only its share.

Every process of a data-parallel run computes the same global batches (input_pipeline) and feeds
only its `process_rows` of each to its devices. A single process holds the train and val images
in memory, as it always has: a training batch is one numpy gather per step. With several
processes, images are read from the memory-mapped image cache (image_cache.py) only where this
process uses them:

- train: at each epoch's start, the rows of the epoch's batches that fall in this process's part
  (about 1/P of train; another 1/P each epoch, since the permutation changes), read in one sorted
  pass into memory; each step then gathers from that, as one process does;
- val (any evaluated subset): only this process's rows of each eval batch, read as it is built;
- test and control: never read by training.

So a host's memory holds ~1/P of the train images plus one eval batch, whatever the dataset size.
With device data (steps.TrainStepRunner) the share is uploaded at the epoch's start, each device
its own rows of every batch, and the host's copy freed. The cache file itself is read through the
page cache, which the kernel can evict. What each process held is written to
<workdir>/host_rows/process_<p>.json (several processes only).

Why a share per epoch rather than reading each step's rows from the memmap: a step would then wait
on scattered 14 KB reads (a cold page cache, a network filesystem), and the device-data path needs
the epoch's rows up front anyway; one sorted pass per epoch reads the file front to back. Why not
a fixed shard of rows per process: the batches would differ from one process's. Decoding is not
split: the split needs to know which of all images decode, so the cache is decoded once, whole.
"""

import json
import os

import numpy as np

from fashion_jax.data import input_pipeline

RECORD_DIR = "host_rows"


def subsets_in_memory(process_count: int) -> tuple:
    """The subsets load_data copies into memory: train and val for one process (test and control
    are only written to split.csv); none for several (each reads its share from the cache)."""
    return ("train", "val") if process_count == 1 else ()


class CachedRows:
    """`cache[positions]` read lazily: indexing reads only the rows asked for (from the image
    cache's memmap), and remembers which were read, so a process can report what it held."""

    def __init__(self, cache: np.ndarray, positions: np.ndarray):
        self.cache, self.positions = cache, np.asarray(positions, np.int64)
        self.read = np.zeros(len(self.positions), bool)

    @property
    def shape(self) -> tuple:
        return (len(self.positions),) + self.cache.shape[1:]

    @property
    def dtype(self):
        return self.cache.dtype

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key) -> np.ndarray:
        self.read[key] = True
        # Sorted positions read the file front to back; the caller's order is restored after.
        wanted = np.atleast_1d(self.positions[key])
        order = np.argsort(wanted, kind="stable")
        rows = np.empty((len(wanted),) + self.cache.shape[1:], self.cache.dtype)
        rows[order] = self.cache[wanted[order]]
        return rows if np.ndim(self.positions[key]) else rows[0]

    def __array__(self, dtype=None, copy=None):
        """Every row (the device-data path of several processes uploads all of train)."""
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)


class TrainRows:
    """The training images a process gathers its batches from.

    In memory (a numpy array: one process): every row, gathered per step. Cached (CachedRows:
    several processes): `start_epoch` reads this process's rows of the epoch's batches, and
    `batch` gathers from those.
    """

    def __init__(
        self,
        images,
        labels,
        batch_size: int,
        seed: int,
        rows: slice,
        probabilities,
        teacher_targets: np.ndarray | None = None,
    ):
        self.images, self.labels, self.teacher_targets = images, labels, teacher_targets
        self.batch_size, self.seed, self.rows, self.probabilities = (
            batch_size,
            seed,
            rows,
            probabilities,
        )
        self.in_memory = isinstance(images, np.ndarray)
        self.held_rows = np.arange(len(images)) if self.in_memory else np.zeros(0, np.int64)
        self.held_images = images if self.in_memory else None
        self.epoch_indices = None

    def start_epoch(self, epoch: int) -> None:
        """Reads this process's share of `epoch` (every row it will train on, once)."""
        if self.in_memory:
            return
        n = len(self.images)
        _, indices = next(
            input_pipeline.train_indices(
                n,
                self.batch_size,
                self.seed,
                epoch,
                rows=self.rows,
                steps_per_chunk=input_pipeline.steps_per_epoch(n, self.batch_size),
                probabilities=self.probabilities,
            )
        )
        self.held_images = None  # The previous epoch's share is freed before this one is read.
        self.held_rows = np.unique(indices)
        self.held_images = self.images[self.held_rows]
        self.epoch_indices = indices  # [steps, rows]: this process's part of every batch.

    def epoch_layout(self, local_devices: int) -> dict:
        """The epoch's share as each of this process's devices uses it: {"image": [devices,
        steps, rows per device, H, W, 3], "label": [devices, steps, rows per device, ...]}, so
        device d of the process holds its rows of every batch, and nothing else."""
        steps, rows = self.epoch_indices.shape
        per_device = self.epoch_indices.reshape(steps, local_devices, rows // local_devices)
        per_device = per_device.transpose(1, 0, 2)
        batch = self.batch(per_device.reshape(-1))
        return {k: v.reshape(per_device.shape + v.shape[1:]) for k, v in batch.items()}

    def targets(self) -> dict:
        """What a batch holds beside its images, for every train row: {"label"} and, when
        distilling, {"teacher"} (the teachers' log-probabilities, training/distill.py)."""
        targets = {"label": self.labels}
        if self.teacher_targets is not None:
            targets["teacher"] = self.teacher_targets
        return targets

    def batch(self, indices: np.ndarray) -> dict:
        """{"image", "label"} (and "teacher" when distilling) of the train rows `indices`
        (numpy, on the host)."""
        if self.in_memory:
            local = indices
        else:
            local = np.searchsorted(self.held_rows, indices)
            held = local < len(self.held_rows)
            if not held.all() or not np.array_equal(self.held_rows[local], indices):
                raise ValueError(
                    "train rows outside this epoch's share: start_epoch was not called"
                )
        return {"image": self.held_images[local]} | {
            k: v[indices] for k, v in self.targets().items()
        }


def write_record(workdir: str, process: int, processes: int, record: dict) -> None:
    """Merges `record` into <workdir>/host_rows/process_<process>.json (written whole, then
    renamed, so a reader never sees half a file)."""
    folder = os.path.join(workdir, RECORD_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"process_{process}.json")
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    with open(path + ".tmp", "w") as f:
        json.dump(dict(old, process=process, processes=processes, **record), f)
    os.replace(path + ".tmp", path)
