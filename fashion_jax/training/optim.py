"""Learning-rate schedules and optimizers from the config (optax)."""

import jax
import optax

from fashion_jax import errors

OPTIMIZERS = ("adam", "sgd", "rmsprop")
SCHEDULES = ("exponential", "cosine")


def check_config(opt_config, total_steps: int | None = None) -> None:
    """Refuses an unknown optimizer or schedule, a non-positive learning rate, and a cosine decay
    that ends before its warm-up (`total_steps`: the run's steps, what decay_steps=0 means; None
    before the data is read, when only an explicit decay_steps can be checked)."""
    errors.check_choice("--config.optimizer.name", opt_config.name, OPTIMIZERS)
    errors.check_choice("--config.optimizer.schedule", opt_config.schedule, SCHEDULES)
    if not opt_config.learning_rate > 0:
        raise errors.ConfigError(
            f"--config.optimizer.learning_rate={opt_config.learning_rate} must be positive."
        )
    if opt_config.weight_decay < 0:
        raise errors.ConfigError(
            f"--config.optimizer.weight_decay={opt_config.weight_decay} must not be negative."
        )
    if opt_config.schedule == "cosine" and (opt_config.decay_steps or total_steps is not None):
        decay_steps = opt_config.decay_steps or total_steps
        if decay_steps <= opt_config.warmup_steps:
            raise errors.ConfigError(
                f"--config.optimizer.decay_steps={opt_config.decay_steps} (0 = the whole run: "
                f"{total_steps} steps) must exceed --config.optimizer.warmup_steps="
                f"{opt_config.warmup_steps}."
            )


def create_learning_rate_fn(opt_config, total_steps: int = 0):
    """The learning rate per step, by `opt_config.schedule`:

    "exponential" (the 2020 study's): lr * decay_rate ** (step / decay_steps), optionally staircase.
    "cosine": linear warm-up over warmup_steps, then cosine decay to 0 at decay_steps, or at
    `total_steps` (the run's num_epochs * steps per epoch) when decay_steps is 0.
    """
    check_config(opt_config, total_steps)
    if opt_config.schedule == "exponential":
        return optax.exponential_decay(
            init_value=opt_config.learning_rate,
            transition_steps=opt_config.decay_steps,
            decay_rate=opt_config.decay_rate,
            staircase=opt_config.staircase,
        )
    decay_steps = opt_config.decay_steps or total_steps
    warmup = opt_config.warmup_steps
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else opt_config.learning_rate,
        peak_value=opt_config.learning_rate,
        warmup_steps=warmup,
        decay_steps=decay_steps,
    )


def _kernels_only(params):
    """Weight decay mask: matrices and convolution kernels, not biases or BatchNorm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(opt_config, learning_rate_fn) -> optax.GradientTransformation:
    """adam, sgd or rmsprop with Keras' default hyper-parameters unless the config says otherwise."""
    errors.check_choice("--config.optimizer.name", opt_config.name, OPTIMIZERS)
    name = opt_config.name
    weight_decay = float(opt_config.weight_decay)
    if name == "adam":
        if weight_decay:  # Decoupled (AdamW): params -= lr * weight_decay * params.
            return optax.adamw(
                learning_rate_fn,
                b1=opt_config.beta1,
                b2=opt_config.beta2,
                eps=opt_config.eps,
                weight_decay=weight_decay,
                mask=_kernels_only,
            )
        return optax.adam(
            learning_rate_fn, b1=opt_config.beta1, b2=opt_config.beta2, eps=opt_config.eps
        )
    if name == "sgd":
        tx = optax.sgd(
            learning_rate_fn, momentum=opt_config.momentum or None, nesterov=opt_config.nesterov
        )
    else:
        tx = optax.rmsprop(
            learning_rate_fn,
            decay=opt_config.rho,
            eps=opt_config.eps,
            momentum=opt_config.momentum or None,
        )
    if weight_decay:  # L2 on the kernels, added to the gradient (as Keras' kernel_regularizer).
        tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=_kernels_only), tx)
    return tx
