"""Learning-rate schedules and optimizers from the config (optax)."""

import optax


def create_learning_rate_fn(opt_config):
    """Exponential decay as in the seed: lr * rate ** (step / transition_steps), not staircase."""
    return optax.exponential_decay(
        init_value=opt_config.learning_rate,
        transition_steps=opt_config.decay_steps,
        decay_rate=opt_config.decay_rate,
        staircase=opt_config.staircase)


def create_optimizer(opt_config, learning_rate_fn) -> optax.GradientTransformation:
    """adam, sgd or rmsprop with Keras' default hyper-parameters unless the config says otherwise."""
    name = opt_config.name
    if name == "adam":
        return optax.adam(learning_rate_fn, b1=opt_config.beta1, b2=opt_config.beta2,
                          eps=opt_config.eps)
    if name == "sgd":
        return optax.sgd(learning_rate_fn, momentum=opt_config.momentum or None,
                         nesterov=opt_config.nesterov)
    if name == "rmsprop":
        return optax.rmsprop(learning_rate_fn, decay=opt_config.rho, eps=opt_config.eps,
                             momentum=opt_config.momentum or None)
    raise ValueError(f"--config.optimizer.name={name!r} is unknown; use adam, sgd or rmsprop")
