"""Learning-rate schedules and optimizers from the config (optax)."""

import jax
import optax


def create_learning_rate_fn(opt_config, total_steps: int = 0):
    """The learning rate per step, by `opt_config.schedule`:

    "exponential" (the seed's): lr * decay_rate ** (step / decay_steps), optionally staircase.
    "cosine": linear warm-up over warmup_steps, then cosine decay to 0 at decay_steps, or at
    `total_steps` (the run's num_epochs * steps per epoch) when decay_steps is 0.
    """
    schedule = opt_config.schedule
    if schedule == "exponential":
        return optax.exponential_decay(
            init_value=opt_config.learning_rate,
            transition_steps=opt_config.decay_steps,
            decay_rate=opt_config.decay_rate,
            staircase=opt_config.staircase)
    if schedule == "cosine":
        decay_steps = opt_config.decay_steps or total_steps
        warmup = opt_config.warmup_steps
        if decay_steps <= warmup:
            raise ValueError(f"--config.optimizer.decay_steps={decay_steps} (0 = the whole run: "
                             f"{total_steps} steps) must exceed warmup_steps={warmup}")
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else opt_config.learning_rate,
            peak_value=opt_config.learning_rate, warmup_steps=warmup, decay_steps=decay_steps)
    raise ValueError(f"--config.optimizer.schedule={schedule!r}: use exponential or cosine")


def _kernels_only(params):
    """Weight decay mask: matrices and convolution kernels, not biases or BatchNorm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(opt_config, learning_rate_fn) -> optax.GradientTransformation:
    """adam, sgd or rmsprop with Keras' default hyper-parameters unless the config says otherwise."""
    name = opt_config.name
    weight_decay = float(opt_config.weight_decay)
    if name == "adam":
        if weight_decay:  # Decoupled (AdamW): params -= lr * weight_decay * params.
            return optax.adamw(learning_rate_fn, b1=opt_config.beta1, b2=opt_config.beta2,
                               eps=opt_config.eps, weight_decay=weight_decay,
                               mask=_kernels_only)
        return optax.adam(learning_rate_fn, b1=opt_config.beta1, b2=opt_config.beta2,
                          eps=opt_config.eps)
    if name == "sgd":
        tx = optax.sgd(learning_rate_fn, momentum=opt_config.momentum or None,
                       nesterov=opt_config.nesterov)
    elif name == "rmsprop":
        tx = optax.rmsprop(learning_rate_fn, decay=opt_config.rho, eps=opt_config.eps,
                           momentum=opt_config.momentum or None)
    else:
        raise ValueError(f"--config.optimizer.name={name!r} is unknown; use adam, sgd or rmsprop")
    if weight_decay:  # L2 on the kernels, added to the gradient (as Keras' kernel_regularizer).
        tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=_kernels_only), tx)
    return tx
