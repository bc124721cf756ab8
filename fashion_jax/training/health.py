"""Training health: the global l2 norms of each step's gradients, parameters and updates.

As big_vision logs l2_grads, l2_params and l2_updates: a norm that explodes, collapses or stalls
shows a diverging or dead run before its loss does. The train step returns metric *sums* (so that
the steps of a dispatch and of a log interval add up, as loss_sum and count do); the norms ride
along the same way, as per-step norms summed with a step count, and the log divides: the mean
norm over the measured steps. The step measures them only at the logged steps and each epoch's
last (steps.train_step's `norm_periods`): on every step they cost ~6% of a CPU training step.
"""

import jax
import jax.numpy as jnp
import optax

NORMS = ("grad_norm", "param_norm", "update_norm")
STEPS = "steps"  # The number of train steps summed into the *_norm_sum entries.


def norm_sums(grads, params_before, params_after) -> dict:
    """One step's entries for the metric sums. The update is the parameters' actual change
    (whatever the optimizer did: momentum, weight decay, Muon); the parameters are after it."""
    update = jax.tree.map(jnp.subtract, params_after, params_before)
    return {
        "grad_norm_sum": optax.tree.norm(grads),
        "param_norm_sum": optax.tree.norm(params_after),
        "update_norm_sum": optax.tree.norm(update),
        STEPS: jnp.ones((), jnp.float32),
    }


def no_norm_sums(grads, params_before, params_after) -> dict:
    """norm_sums' entries for a step that is not measured: zeros, and no step counted."""
    del grads, params_before, params_after
    return {name: jnp.zeros((), jnp.float32) for name in (*(f"{n}_sum" for n in NORMS), STEPS)}


def interval_scalars(interval_sums: dict) -> dict:
    """{train/<norm>: mean over the steps} of host sums over some steps; {} without any (sums
    saved by a version without the norms)."""
    steps = float(interval_sums.get(STEPS, 0.0))
    if steps <= 0:
        return {}
    return {f"train/{name}": float(interval_sums[f"{name}_sum"]) / steps for name in NORMS}


def with_norm_sums(partial_sums: dict | None) -> dict | None:
    """A mid-epoch checkpoint's partial sums with zero norm sums and steps where it has none (one
    saved before the norms were logged), so that the resumed epoch adds the same entries up."""
    if not partial_sums:
        return partial_sums
    return {**{f"{name}_sum": 0.0 for name in NORMS}, STEPS: 0.0, **partial_sums}
