"""Batches of uint8 images and int32 labels with fixed shapes.

Training: a fresh permutation per epoch derived from (seed, epoch) alone, so a resumed run sees
exactly the batches an uninterrupted one would. The last, partial batch is filled up with the first
images of the same epoch's permutation, so every batch has one shape (no recompilation) and every
image is seen at least once per epoch. With class-balanced sampling the epoch is instead as many
draws with replacement, weighted against frequent classes, also from (seed, epoch) alone.

Evaluation: in order, the last batch padded with zeros and a `mask` that marks real images, so each
image is counted exactly once.
"""

import math

import numpy as np

SAMPLING_MODES = ("uniform", "class_balanced", "sqrt")


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def epoch_permutation(
    num_examples: int, seed: int, epoch: int, probabilities: np.ndarray | None = None
) -> np.ndarray:
    """The epoch's order of examples: a permutation, or, given sampling `probabilities`,
    `num_examples` draws with replacement (class-balanced sampling)."""
    rng = np.random.default_rng([seed, epoch])
    if probabilities is None:
        return rng.permutation(num_examples)
    return rng.choice(num_examples, size=num_examples, replace=True, p=probabilities)


def sampling_probabilities(labels: np.ndarray, mode: str) -> np.ndarray | None:
    """Per-example probabilities ~ count(class)^-1 ("class_balanced") or ^-1/2 ("sqrt") of the
    example's label; None for "uniform". Labels [N] or [N, heads] (the first head is used)."""
    if mode == "uniform":
        return None
    exponent = {"class_balanced": 1.0, "sqrt": 0.5}[mode]
    labels = labels if labels.ndim == 1 else labels[:, 0]
    counts = np.bincount(labels).astype(np.float64)
    weights = 1.0 / counts[labels] ** exponent
    return weights / weights.sum()


def train_indices(
    num_examples: int,
    batch_size: int,
    seed: int,
    epoch: int,
    first_step: int = 0,
    rows: slice = slice(None),
    steps_per_chunk: int = 1,
    probabilities: np.ndarray | None = None,
):
    """Yields (step_in_epoch of the chunk's first step, indices [k, len(rows)]) to the epoch end.

    `batch_size` is the global batch; only its `rows` (this process's part) are returned. Chunks
    of `steps_per_chunk` steps let several steps run in one dispatch; the last may be shorter.
    `probabilities`: see sampling_probabilities.
    """
    order = epoch_permutation(num_examples, seed, epoch, probabilities)
    last = steps_per_epoch(num_examples, batch_size)
    for start in range(first_step, last, steps_per_chunk):
        steps = np.arange(start, min(start + steps_per_chunk, last))
        positions = steps[:, None] * batch_size + np.arange(batch_size)[rows][None, :]
        yield start, order[positions % num_examples]


def eval_batches(images, labels, batch_size: int, rows: slice = slice(None)):
    """Yields padded batches with a float32 `mask` (1 for real images, 0 for padding).

    `batch_size` is the global batch; only its `rows` (this process's contiguous part) are read
    and yielded, so a process reads just its share of `images` (host_rows.CachedRows reads
    lazily from the image cache).
    """
    n = len(images)
    first, stop, step = rows.indices(batch_size)
    if step != 1:
        raise ValueError(f"eval_batches takes contiguous rows, not {rows}")
    for start in range(0, n, batch_size):
        lo, hi = min(start + first, n), min(start + stop, n)
        pad = (stop - first) - (hi - lo)
        batch = {
            "image": images[lo:hi],
            "label": labels[lo:hi] if labels is not None else np.zeros(hi - lo, np.int32),
            "mask": np.ones(hi - lo, np.float32),
        }
        if pad:
            batch = {
                k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
                for k, v in batch.items()
            }
        yield batch
