"""Lengths of a run given in optimizer steps, epochs or training examples (in the manner of
big_vision's `u.steps`), turned into whole steps for a data size and a batch size.

A length NAME is set by at most one of NAME_steps, NAME_epochs and NAME_examples (0: not set).
Steps cover other images at another --config.batch_size; epochs and examples do not, so a recipe
written in them keeps its meaning at any batch size. One epoch is the training loop's epoch,
ceil(train examples / batch size) steps. A length in epochs or examples is rounded to the nearest
whole step (halves up), and to at least 1 step: a length that is set never vanishes.

The lengths: optimizer.warmup, optimizer.decay, checkpoint.every, log_every, and ema_horizon,
the weight average's horizon H steps, i.e. a per-step decay of 1 - 1/H (--config.ema_decay gives
the decay itself, as before horizons existed; 0 turns the average off).
"""

import dataclasses
import math

from fashion_jax import errors
from fashion_jax.data import input_pipeline

UNITS = ("steps", "epochs", "examples")
LENGTHS = ("optimizer.warmup", "optimizer.decay", "checkpoint.every", "log_every", "ema_horizon")
INTERVALS = ("checkpoint.every", "log_every")  # The run needs these; the others may be unset.


@dataclasses.dataclass(frozen=True)
class RunLengths:
    """A run's lengths in steps (0: not set) and its weight average's per-step decay."""

    warmup_steps: int
    decay_steps: int
    checkpoint_every_steps: int
    log_every_steps: int
    ema_decay: float  # 0: no weight average.


def given(config, length: str) -> dict:
    """{flag: value} of the units set for `length` (e.g. {"optimizer.decay_examples": 320000});
    fields an older config lacks count as not set."""
    *sections, name = length.split(".")
    node = config
    for section in sections:
        node = node.get(section) or {}
    values = {f"{length}_{unit}": node.get(f"{name}_{unit}") for unit in UNITS}
    return {flag: value for flag, value in values.items() if value}


def describe(config, length: str) -> str:
    """The flag that sets `length`, as --config.optimizer.decay_examples=320000 (the steps flag
    with 0 when none is set)."""
    flags = given(config, length) or {f"{length}_steps": 0}
    return " and ".join(f"--config.{flag}={value}" for flag, value in flags.items())


def to_steps(config, length: str, train_examples: int | None, batch_size: int | None) -> int:
    """`length` in whole optimizer steps (0 when not set). `train_examples` is needed only for a
    length in epochs."""
    flags = given(config, length)
    if not flags:
        return 0
    (flag, value), *_ = flags.items()
    unit = flag.rpartition("_")[2]
    if unit == "steps":
        exact = value
    elif batch_size is None or (unit == "epochs" and train_examples is None):
        raise ValueError(f"--config.{flag} needs the batch size and data size to count steps")
    elif unit == "examples":
        exact = value / batch_size
    else:
        exact = value * input_pipeline.steps_per_epoch(train_examples, batch_size)
    return max(1, math.floor(exact + 0.5))


def ema_decay(config, train_examples: int | None, batch_size: int) -> float:
    """The weight average's per-step decay: --config.ema_decay when it is given (0: no average),
    else 1 - 1/H for a horizon of H steps, else 0."""
    decay = config.get("ema_decay")
    if decay is not None:
        return float(decay)
    horizon = to_steps(config, "ema_horizon", train_examples, batch_size)
    if horizon == 1:
        raise errors.ConfigError(
            f"{describe(config, 'ema_horizon')} is 1 step at batch {batch_size}: give the weight "
            "average a horizon of at least 2 steps (0 turns it off)."
        )
    return 1.0 - 1.0 / horizon if horizon else 0.0


def uses_ema(config) -> bool:
    """Whether the run keeps a weight average (decided before any data is read)."""
    decay = config.get("ema_decay")
    return bool(decay) if decay is not None else bool(given(config, "ema_horizon"))


def check_config(config) -> None:
    """Refuses a negative length, two units for one length, a missing interval, and a weight
    average given both as ema_decay and as a horizon; each before any data is read."""
    for length in LENGTHS:
        flags = given(config, length)
        for flag, value in flags.items():
            if value < 0:
                raise errors.ConfigError(f"--config.{flag}={value} must not be negative.")
        if len(flags) > 1:
            raise errors.ConfigError(
                f"{describe(config, length)} are both set: give the length in one unit "
                "(steps, epochs or examples) and set the other to 0."
            )
        if length in INTERVALS and not flags:
            raise errors.ConfigError(
                f"--config.{length}_steps=0 must be at least 1 (or give --config.{length}_epochs "
                f"or --config.{length}_examples)."
            )
    if config.get("ema_decay") and given(config, "ema_horizon"):
        raise errors.ConfigError(
            f"--config.ema_decay={config.ema_decay} and {describe(config, 'ema_horizon')} are "
            "both set: give the weight average as a horizon or as a per-step decay, not both "
            "(--config.ema_decay=0 turns the average off)."
        )
    if not any(flag.endswith("_epochs") for flag in given(config, "ema_horizon")):
        ema_decay(config, None, config.batch_size)  # A horizon under 2 steps is known now.


def resolve(config, train_examples: int, batch_size: int) -> RunLengths:
    """Every length of the run in steps, for `train_examples` training examples and the global
    `batch_size`."""

    def steps(length):
        return to_steps(config, length, train_examples, batch_size)

    return RunLengths(
        warmup_steps=steps("optimizer.warmup"),
        decay_steps=steps("optimizer.decay"),
        checkpoint_every_steps=steps("checkpoint.every"),
        log_every_steps=steps("log_every"),
        ema_decay=ema_decay(config, train_examples, batch_size),
    )
