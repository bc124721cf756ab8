"""Recomputing BatchNorm running statistics for fixed parameters ("precise BN").

Running averages with momentum 0.99 lag behind weights that still move (and the average of
several networks' statistics does not describe their averaged parameters). Recalibration runs the
network in training mode, without dropout, over full batches of training images and stores the
mean of each batch's statistics (PyTorch's `update_bn`). Used by model soups and, with
--config.bn_recalibration_batches, by training at every epoch end.
"""

import functools

import jax
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


@functools.partial(jax.jit, static_argnums=0)
def batch_statistics(stats_model, variables, images):
    """Every BatchNorm layer's mean and variance over one batch of uint8 images."""
    _, updates = stats_model.apply(
        variables,
        models.scale_images(images),
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(0)},
    )
    return updates["batch_stats"]


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
    count = min(num_batches * batch_size, len(images))
    rows = np.sort(np.random.default_rng([seed, epoch, 1]).permutation(len(images))[:count])
    host = data_parallel.to_host({"params": state.params, "batch_stats": state.batch_stats})
    variables = recalibrate_batch_norm(model, host, images[rows], batch_size)
    return state.replace(
        batch_stats=data_parallel.replicate(jax.device_get(variables["batch_stats"]))
    )
