"""Recomputing BatchNorm running statistics for fixed parameters ("precise BN").

Running averages with momentum 0.99 lag behind weights that still move (and the average of
several networks' statistics does not describe their averaged parameters). Recalibration runs the
network in training mode, without dropout, over full batches of training images and stores the
mean of each batch's statistics (PyTorch's `update_bn`). Used by model soups and, with
--config.bn_recalibration_batches, by training at every epoch end.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fashion_jax import models


def statistics_model(model):
    """`model` with BatchNorm momentum 0 (running statistics := the batch's) and no dropout."""
    if not hasattr(model, "bn_momentum"):
        raise ValueError(
            f"{type(model).__name__} has no `bn_momentum` field, which BatchNorm "
            "recalibration sets to 0; add one, or turn recalibration off."
        )
    fields = {name: 0.0 for name in ("bn_momentum", "dropout_rate") if hasattr(model, name)}
    return model.clone(**fields)


def _batch_statistics(stats_model, variables, images):
    _, updates = stats_model.apply(
        variables,
        models.scale_images(images),
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(0)},
    )
    return updates["batch_stats"]


# Every BatchNorm layer's mean and variance over one batch of uint8 images.
batch_statistics = jax.jit(_batch_statistics, static_argnums=0)


def mean_batch_statistics(stats_model, variables, images, rows):
    """On device: the mean of the BatchNorm statistics of the batches `images[rows[n]]` (rows
    [batches, batch]), in one dispatch (lax.scan). Summed in float32, not the host path's
    float64: over tens of batches that differs by ~1e-7 relative."""

    def add(total, batch_rows):
        stats = _batch_statistics(stats_model, variables, images[batch_rows])
        return jax.tree.map(lambda t, x: t + x.astype(jnp.float32), total, stats), None

    old = variables["batch_stats"]
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), old)
    total, _ = jax.lax.scan(add, zeros, rows)
    return jax.tree.map(lambda t, x: (t / rows.shape[0]).astype(x.dtype), total, old)


def recalibration_rows(
    num_images: int, num_batches: int, batch_size: int, seed: int, epoch: int
) -> np.ndarray:
    """Precise BN's training rows at the end of `epoch`, [batches, batch]: drawn from (seed,
    epoch) alone, so a resumed run draws the same ones; sorted, full batches only."""
    count = min(num_batches * batch_size, num_images)
    if not count:
        raise ValueError("BatchNorm recalibration needs training images; the split has none.")
    rows = np.sort(np.random.default_rng([seed, epoch, 1]).permutation(num_images)[:count])
    batch_size = min(batch_size, count)
    return rows[: count // batch_size * batch_size].reshape(-1, batch_size)


def recalibrate_batch_norm(model, variables: dict, images: np.ndarray, batch_size: int) -> dict:
    """`variables` with batch_stats recomputed over full batches of `images`; params unchanged."""
    if not len(images):
        raise ValueError("BatchNorm recalibration needs training images; the split has none.")
    batch_size = min(batch_size, len(images))
    num_batches = len(images) // batch_size
    stats_model = statistics_model(model)
    total = None
    for n in range(num_batches):
        stats = jax.device_get(
            batch_statistics(stats_model, variables, images[n * batch_size : (n + 1) * batch_size])
        )
        stats = jax.tree.map(lambda x: np.asarray(x, np.float64), stats)
        total = stats if total is None else jax.tree.map(np.add, total, stats)
    batch_stats = jax.tree.map(
        lambda t, old: (t / num_batches).astype(np.asarray(old).dtype),
        total,
        jax.device_get(variables["batch_stats"]),
    )
    return {"params": variables["params"], "batch_stats": jax.device_put(batch_stats)}


def recalibrate_train_state(
    state,
    model,
    images: np.ndarray,
    num_batches: int,
    batch_size: int,
    seed: int,
    epoch: int,
    data_parallel,
):
    """Precise BN during training: `state` with batch_stats recomputed on `num_batches` full
    batches of training images drawn for (seed, epoch), so a resumed run draws the same ones.
    Every process computes the same statistics on its own copy; the result is replicated."""
    rows = recalibration_rows(len(images), num_batches, batch_size, seed, epoch)
    host = data_parallel.to_host({"params": state.params, "batch_stats": state.batch_stats})
    variables = recalibrate_batch_norm(model, host, images[rows.ravel()], rows.shape[1])
    return state.replace(
        batch_stats=data_parallel.replicate(jax.device_get(variables["batch_stats"]))
    )


class DeviceRecalibration:
    """recalibrate_train_state on the device-resident training `images` (as the train steps
    have them): the same rows, gathered and averaged on the devices in one compiled dispatch."""

    def __init__(self, model, images: jax.Array, data_parallel):
        self.images, self.dp = images, data_parallel
        self._mean = jax.jit(
            functools.partial(mean_batch_statistics, statistics_model(model)),
            out_shardings=data_parallel.replicated,
        )

    def __call__(self, state, num_batches: int, batch_size: int, seed: int, epoch: int):
        rows = recalibration_rows(len(self.images), num_batches, batch_size, seed, epoch)
        if rows.shape[1] % self.dp.mesh.size:  # Fewer images than a batch: no sharding.
            device_rows = self.dp.replicate(rows.astype(np.int32))
        else:  # Each device computes its part of each batch (explicit transfer).
            device_rows = self.dp.shard_chunk(rows[:, self.dp.process_rows(rows.shape[1])])
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        with jax.transfer_guard("disallow"):
            return state.replace(batch_stats=self._mean(variables, self.images, device_rows))
