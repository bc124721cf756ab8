"""The training state: parameters, optimizer state, BatchNorm statistics and the weight average.

`TrainState` subclasses Flax's for `batch_stats` (as Flax's ImageNet example does) and, with
--config.ema_horizon_* or --config.ema_decay, an exponential moving average of the parameters
with BatchNorm statistics of its own. The averaged parameters are what is validated, checkpointed
for evaluation and restored.
"""

from typing import Any

from absl import logging
from flax import struct
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np

from fashion_jax import errors
from fashion_jax import saved_runs
from fashion_jax.training import lengths
from fashion_jax.training import optim


class TrainState(train_state.TrainState):
    batch_stats: Any
    # With a weight average (per-step decay > 0, lengths.ema_decay): an exponential moving average
    # of the parameters, which is what is validated, selected and evaluated, with BatchNorm
    # statistics recomputed for it.
    ema_params: Any = None
    ema_batch_stats: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def for_evaluation(self) -> "TrainState":
        """The state whose predictions count: the EMA parameters when there are any."""
        if self.ema_params is None:
            return self
        return self.replace(params=self.ema_params, batch_stats=self.ema_batch_stats)

    def with_evaluation_batch_stats(self, batch_stats) -> "TrainState":
        """`batch_stats` stored as the statistics of the parameters that are evaluated: the
        average's when there is one (the raw parameters keep their running statistics)."""
        if self.ema_params is None:
            return self.replace(batch_stats=batch_stats)
        return self.replace(ema_batch_stats=batch_stats)


def create_train_state(
    config,
    model,
    learning_rate_fn,
    image_shape,
    sharding=None,
    load_init_checkpoint: bool = True,
    ema_decay: float | None = None,
    initial_params: dict | None = None,
) -> TrainState:
    """Initialises parameters (from `init_seed`, else `seed`, or --config.init_checkpoint unless
    `load_init_checkpoint` is False, as when resuming) and optimizer state, replicated.
    `ema_decay`: the weight average's per-step decay (lengths.resolve); None: from the config,
    which needs no data size unless its horizon is in epochs. `initial_params`: {module: {name:
    value}} that replace the random initial values (a data-dependent initialisation)."""
    init_seed = config.seed if config.init_seed is None else config.init_seed
    tx = optim.create_optimizer(config.optimizer, learning_rate_fn)
    if ema_decay is None:
        ema_decay = lengths.ema_decay(config, None, config.batch_size)
    ema_decay = float(ema_decay)

    def init():
        variables = model.init(
            jax.random.key(init_seed), jnp.zeros((1, *image_shape), jnp.float32), train=False
        )
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=tx,
            batch_stats=variables["batch_stats"],
            ema_decay=ema_decay,
        )

    state = jax.jit(init, out_shardings=sharding)()
    if load_init_checkpoint and config.init_checkpoint:
        like = {"params": state.params, "batch_stats": state.batch_stats}
        state = state.replace(
            **load_init_variables(config.init_checkpoint, config.init_checkpoint_step, like)
        )
    if initial_params:
        state = state.replace(params=_with_values(state.params, initial_params))
    if ema_decay:  # The average starts at the initial parameters (own buffers: state is donated).
        copy = jax.jit(lambda tree: jax.tree.map(lambda x: x * 1, tree), out_shardings=sharding)
        state = state.replace(
            ema_params=copy(state.params), ema_batch_stats=copy(state.batch_stats)
        )
    return state


def _with_values(params, values: dict):
    """`params` with the leaves named in `values` ({module: {name: array}}) replaced, each placed
    like the leaf it replaces."""
    params = dict(params)
    for module, leaves in values.items():
        params[module] = dict(params[module])
        for name, value in leaves.items():
            ref = params[module][name]
            value = np.asarray(value, dtype=ref.dtype).reshape(ref.shape)
            params[module][name] = jax.make_array_from_callback(
                value.shape, ref.sharding, lambda index, v=value: v[index]
            )
    return params


def load_init_variables(workdir: str, which: str, like: dict) -> dict:
    """A run's variables to start training from (--config.init_checkpoint), with the dtypes and
    shardings of `like`; the optimizer state stays fresh."""
    run = saved_runs.open_run(workdir)
    step = saved_runs.select_step(run, which, "--config.init_checkpoint_step")
    variables = saved_runs.load_variables(run, step)
    differences = saved_runs.tree_differences(
        like, variables, names=("new model", "init checkpoint")
    )
    if differences:
        raise errors.RestoreError(
            f"--config.init_checkpoint={workdir} (step {step}) has a different architecture or "
            f"class count than this config: {'; '.join(differences[:5])}."
        )
    logging.info("Initialised parameters and BatchNorm statistics from %s step %d.", workdir, step)

    def place(ref, value):
        value = np.asarray(value, dtype=ref.dtype)
        return jax.make_array_from_callback(value.shape, ref.sharding, lambda index: value[index])

    return jax.tree.map(place, like, variables)


def state_tree(state: TrainState) -> dict:
    """The checkpointed part of the state, as a plain dict."""
    tree = {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "batch_stats": state.batch_stats,
    }
    if state.ema_params is not None:
        tree.update(ema_params=state.ema_params, ema_batch_stats=state.ema_batch_stats)
    return tree


def count_parameters(state: TrainState) -> dict:
    trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.batch_stats))
    return {"trainable": trainable, "batch_norm_statistics": stats, "total": trainable + stats}
