"""Learning-rate schedules and optimizers from the config (optax), and the learning rate's
scaling rule for the batch size."""

import math

import jax
import optax

from fashion_jax import errors
from fashion_jax.training import lengths

OPTIMIZERS = ("adam", "sgd", "rmsprop", "muon")
SCHEDULES = ("exponential", "cosine")
BATCH_SCALING = ("auto", "linear", "sqrt", "none")


def batch_scaling_rule(opt_config) -> str:
    """The rule applied: "auto" is "linear" for sgd and "sqrt" for adam and rmsprop."""
    rule = opt_config.get("batch_scaling") or "none"
    if rule == "auto":
        return "linear" if opt_config.name == "sgd" else "sqrt"  # Muon: its Adam part.
    return rule


def scaled_learning_rate(opt_config, batch_size: int) -> float:
    """optimizer.learning_rate, tuned at optimizer.reference_batch_size, moved to `batch_size`:

    "linear": lr * B / B_ref, for SGD (Goyal et al. 2017; Flax's ImageNet example: 0.1 * B / 256).
    "sqrt": lr * sqrt(B / B_ref), for Adam-type optimizers (Malladi et al. 2022, the square-root
    rule for adaptive methods). "none", or reference_batch_size 0 (also an older config without
    it): the rate as given. At the reference batch it is the rate as given, exactly.
    """
    reference = opt_config.get("reference_batch_size") or 0
    rule = batch_scaling_rule(opt_config)
    ratio = batch_size / reference if reference else 1.0
    if rule == "linear":
        return opt_config.learning_rate * ratio
    if rule == "sqrt":
        return opt_config.learning_rate * math.sqrt(ratio)
    return float(opt_config.learning_rate)


def describe_learning_rate(opt_config, batch_size: int) -> str:
    """The rate used at `batch_size` and where it comes from (for the start-up log)."""
    return (
        f"Learning rate {scaled_learning_rate(opt_config, batch_size):.4g} at batch {batch_size} "
        f"(--config.optimizer.learning_rate={opt_config.learning_rate:g} at reference batch "
        f"{opt_config.get('reference_batch_size') or 'none'}, {batch_scaling_rule(opt_config)} "
        "rule)"
    )


def check_config(opt_config) -> None:
    """Refuses an unknown optimizer, schedule or batch-size rule, a non-positive learning rate,
    and a cosine decay that ends before its warm-up, given in the same unit (other mixes are
    compared in create_learning_rate_fn, once they are steps)."""
    errors.check_choice("--config.optimizer.name", opt_config.name, OPTIMIZERS)
    errors.check_choice("--config.optimizer.schedule", opt_config.schedule, SCHEDULES)
    errors.check_choice(
        "--config.optimizer.batch_scaling", opt_config.get("batch_scaling", "none"), BATCH_SCALING
    )
    if (opt_config.get("reference_batch_size") or 0) < 0:
        raise errors.ConfigError(
            f"--config.optimizer.reference_batch_size={opt_config.reference_batch_size} must not "
            "be negative (0: no scaling for the batch size)."
        )
    if not opt_config.learning_rate > 0:
        raise errors.ConfigError(
            f"--config.optimizer.learning_rate={opt_config.learning_rate} must be positive."
        )
    if opt_config.weight_decay < 0:
        raise errors.ConfigError(
            f"--config.optimizer.weight_decay={opt_config.weight_decay} must not be negative."
        )
    if opt_config.schedule == "cosine":
        for unit in lengths.UNITS:  # Comparable before the data is read: the same unit.
            warmup, decay = opt_config.get(f"warmup_{unit}"), opt_config.get(f"decay_{unit}")
            if warmup and decay and decay <= warmup:
                raise errors.ConfigError(
                    f"--config.optimizer.decay_{unit}={decay} must exceed "
                    f"--config.optimizer.warmup_{unit}={warmup}: the cosine decay ends after "
                    "its warm-up."
                )


def create_learning_rate_fn(
    opt_config,
    total_steps: int = 0,
    batch_size: int | None = None,
    train_examples: int | None = None,
):
    """The learning rate per step at `batch_size` (scaled_learning_rate), its lengths in steps
    for `train_examples` training examples (lengths.py), by `opt_config.schedule`:

    "exponential" (the 2020 study's): lr * decay_rate ** (step / decay), optionally staircase;
    a constant rate without a decay length.
    "cosine": linear warm-up, then cosine decay to 0 at the decay length, or at `total_steps`
    (the run's num_epochs * steps per epoch) without one.
    Without `batch_size`: at reference_batch_size, the batch the recipe was written for (as for
    tests and benchmarks of a step).
    """
    check_config(opt_config)
    batch_size = batch_size or opt_config.get("reference_batch_size") or None
    learning_rate = (
        scaled_learning_rate(opt_config, batch_size) if batch_size else opt_config.learning_rate
    )
    named = {"optimizer": opt_config}  # lengths.py finds lengths by their dotted flag names.
    warmup = lengths.to_steps(named, "optimizer.warmup", train_examples, batch_size)
    decay = lengths.to_steps(named, "optimizer.decay", train_examples, batch_size)
    if opt_config.schedule == "exponential":
        return optax.exponential_decay(
            init_value=learning_rate,
            transition_steps=decay,
            decay_rate=opt_config.decay_rate,
            staircase=opt_config.staircase,
        )
    if (decay or total_steps) <= warmup:
        raise errors.ConfigError(
            f"{lengths.describe(named, 'optimizer.decay')} ({decay} steps; 0 = the whole run: "
            f"{total_steps} steps) must exceed {lengths.describe(named, 'optimizer.warmup')} "
            f"({warmup} steps at batch {batch_size})."
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup,
        decay_steps=decay or total_steps,
    )


def _kernels_only(params):
    """Weight decay mask: matrices and convolution kernels, not biases or BatchNorm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _muon_dimensions(params):
    """Muon orthogonalises the 3x3 convolution kernels [3, 3, in, out] as [9 in, out] matrices;
    None (Adam) for the rest: the stem, dense layers and heads, biases, BatchNorm."""
    conv = optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,))
    return jax.tree.map(lambda p: conv if p.ndim == 4 else None, params)


def create_optimizer(opt_config, learning_rate_fn) -> optax.GradientTransformation:
    """adam, sgd or rmsprop with Keras' default hyper-parameters unless the config says otherwise;
    muon: Muon (optax.contrib) on the convolution kernels and Adam on the other parameters, both
    at the same rate (Muon's updates scaled to Adam's RMS, Liu et al. 2025)."""
    errors.check_choice("--config.optimizer.name", opt_config.name, OPTIMIZERS)
    name = opt_config.name
    weight_decay = float(opt_config.weight_decay)
    if name == "muon":
        return optax.contrib.muon(
            learning_rate_fn,
            beta=opt_config.get("muon_beta", 0.95),
            weight_decay=weight_decay,
            weight_decay_mask=_kernels_only,
            adam_b1=opt_config.beta1,
            adam_b2=opt_config.beta2,
            adam_weight_decay=weight_decay,
            muon_weight_dimension_numbers=_muon_dimensions,
            consistent_rms=0.2,
        )
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
