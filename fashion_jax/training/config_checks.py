"""Every check of a training config, run before any data is read or anything is compiled.

Each family checks its own section (models, optim, dataset, losses, augment, input_pipeline);
this module runs them all and adds the checks that span sections. A failure is one ConfigError
that names the flag and the valid choices. `check_for_devices` judges the config against the
devices: it is called once the process has joined the others (run_train.py checks flags before
jax.distributed.initialize, which must come before anything asks JAX about devices).
"""

import dataclasses
import os

from absl import logging
import jax

from fashion_jax import errors
from fashion_jax import models
from fashion_jax.data import augment
from fashion_jax.data import dataset
from fashion_jax.training import checkpointing
from fashion_jax.training import distill
from fashion_jax.training import lengths
from fashion_jax.training import losses
from fashion_jax.training import optim
from fashion_jax.training import parallel

EARLY_STOPPING_MONITORS = ("val_loss", "train_loss")
DATA_ON_DEVICE = ("auto", "true", "false")
# bench/README.md, "bfloat16 on CPU": bench/bench_train_step.py --frameworks=jax,jax_bf16
# --batch_sizes=32 --repeats=3, the seed CNN's train step; XLA:CPU has no fast bfloat16 path.
CPU_BFLOAT16_SLOWDOWN = (
    "3.9x slower than float32 (8.0 against 31.2 img/s, seed CNN, batch 32) on a 2-core "
    "Intel Xeon @ 2.80GHz (AVX-512)"
)


def check_train_config(config, workdir: str | None = None) -> None:
    """Raises ConfigError for the first unknown name, out-of-range value or impossible mix.
    --config.init_checkpoint is looked at only for a new run (a resumed `workdir` ignores it)."""
    models.check_config(config.model)
    _check_fields_of_other_models(config.model)
    optim.check_config(config.optimizer)
    dataset.check_config(config.data)
    augment.from_config(config.augment)
    losses.check_config(config.loss, num_heads=len(config.data.head_columns) or 1)
    distill.check_config(config.loss)
    errors.check_choice(
        "--config.early_stopping.monitor", config.early_stopping.monitor, EARLY_STOPPING_MONITORS
    )
    errors.check_choice(
        "--config.data_on_device", str(config.data_on_device).lower(), DATA_ON_DEVICE
    )
    errors.check_choice("--config.val_tta", config.get("val_tta", "none"), models.TTA_MODES)
    for flag, value in (
        ("batch_size", config.batch_size),
        ("eval_batch_size", config.eval_batch_size),
        ("num_epochs", config.num_epochs),
        ("early_stopping.patience", config.early_stopping.patience),
    ):
        if value < 1:
            raise errors.ConfigError(f"--config.{flag}={value} must be at least 1.")
    target = config.early_stopping.get("target_accuracy", 0.0)
    if not 0.0 <= target <= 1.0:
        raise errors.ConfigError(
            f"--config.early_stopping.target_accuracy={target} must be in [0, 1], e.g. 0.9885 "
            "(0: no target)."
        )
    _check_val_not_trained_on_for_choices(config)
    for flag, value, zero in (
        ("steps_per_dispatch", config.steps_per_dispatch, "50 on accelerators"),
        ("bn_recalibration_batches", config.bn_recalibration_batches, "no recalibration"),
        ("checkpoint.keep_epochs", config.checkpoint.keep_epochs, "none kept but best and latest"),
        ("profile_steps", config.get("profile_steps", 0), "no profile"),
    ):
        if value < 0:
            raise errors.ConfigError(f"--config.{flag}={value} must be 0 or more (0: {zero}).")
    if config.ema_decay is not None and not 0.0 <= config.ema_decay < 1.0:
        raise errors.ConfigError(
            f"--config.ema_decay={config.ema_decay} must be in [0, 1), e.g. 0.9995 (0: off)."
        )
    lengths.check_config(config)
    if lengths.uses_ema(config) and config.bn_recalibration_batches < 1:
        flag = "--config.ema_decay" if config.ema_decay else lengths.describe(config, "ema_horizon")
        raise errors.ConfigError(
            f"{flag} needs --config.bn_recalibration_batches > 0: the averaged parameters need "
            "BatchNorm statistics of their own."
        )
    if config.init_checkpoint and not (workdir and checkpointing.has_checkpoints(workdir)):
        _check_init_checkpoint(config.init_checkpoint, str(config.init_checkpoint_step))


def _check_val_not_trained_on_for_choices(config) -> None:
    """A run that trains on val cannot also choose its epoch or stop on val: refused, so that a
    refit runs its recipe's full length."""
    if "val" not in dataset.trained_subsets(config.data):
        return
    stopping = config.early_stopping
    by_val = stopping.monitor.startswith("val") and (
        stopping.restore_best or stopping.patience < config.num_epochs
    )
    if by_val or stopping.get("target_accuracy", 0.0):
        raise errors.ConfigError(
            f"--config.data.train_subsets={dataset.trained_subsets(config.data)} trains on val, "
            "but early stopping would choose on it (monitor "
            f"{stopping.monitor!r}, restore_best={stopping.restore_best}, patience "
            f"{stopping.patience} of {config.num_epochs} epochs, target_accuracy "
            f"{stopping.get('target_accuracy', 0.0)}): set --config.early_stopping.restore_best="
            "False, --config.early_stopping.patience at least --config.num_epochs and "
            "--config.early_stopping.target_accuracy=0, or monitor train_loss."
        )


def backend() -> str:
    """The platform JAX computes on ("cpu", "gpu", "tpu"); tests replace it to act as another."""
    return jax.default_backend()


def device_count() -> int:
    """The devices over all processes that a global batch is split over; tests replace it."""
    return jax.device_count()


def check_for_devices(config) -> None:
    """Refuses what cannot run on these devices before any data is read: the native CPU
    convolution on an accelerator (else a late lowering failure), and a batch or eval batch that
    does not split evenly over the devices; warns about bfloat16 on CPU, which is slower there."""
    platform = backend()
    if platform != "cpu" and config.model.conv_impl == "native":
        raise errors.ConfigError(
            f"--config.model.conv_impl=native is a CPU kernel (AVX-512 / AVX2) and cannot run on "
            f"{platform}; use --config.model.conv_impl=auto (XLA's convolution, cuDNN on GPU) or "
            "xla."
        )
    if platform == "cpu" and config.model.dtype == "bfloat16":
        logging.warning(
            "--config.model.dtype=bfloat16 on CPU: the training step measured %s "
            "(bench/README.md); float32 is faster here, bfloat16 is for accelerators.",
            CPU_BFLOAT16_SLOWDOWN,
        )
    devices = device_count()
    parallel.check_batch_divides(config.batch_size, devices, "--config.batch_size")
    parallel.check_batch_divides(config.eval_batch_size, devices, "--config.eval_batch_size")


def _defaults(model_class) -> dict:
    """{field: default} of a model, sequences as tuples (a config read from JSON has lists)."""
    return {
        f.name: _hashable(f.default)
        for f in dataclasses.fields(model_class)
        if f.default is not dataclasses.MISSING
    }


def _hashable(value):
    return tuple(value) if isinstance(value, list | tuple) else value


def _check_fields_of_other_models(model_config) -> None:
    """A field that only other models have is refused when set to a value none of them has as
    its default: the chosen model would ignore it. Default values are let through, because a
    config cannot drop a field from the command line (configs/default.py's seed_cnn fields are
    in every config, configs/multi_head_resnet.py's under --config.model.name=seed_cnn)."""
    chosen = _defaults(models.MODELS[model_config.name])
    others = {
        name: _defaults(cls) for name, cls in models.MODELS.items() if name != model_config.name
    }
    for field, value in model_config.items():
        owners = {name: d[field] for name, d in others.items() if field in d}
        if field == "name" or field in chosen or not owners:
            continue
        if _hashable(value) not in owners.values():
            raise errors.ConfigError(
                f"--config.model.{field}={value} is a field of {', '.join(owners)}, not of "
                f"--config.model.name={model_config.name}, which would ignore it; leave it at "
                f"its default ({' or '.join(map(str, owners.values()))}) or choose that model."
            )


def _check_init_checkpoint(workdir: str, which: str) -> None:
    """A cheap look before any work: the folder has checkpoints and the step choice parses."""
    if not os.path.isdir(os.path.join(checkpointing.checkpoint_dir(workdir), "metadata")):
        raise errors.ConfigError(
            f"--config.init_checkpoint={workdir} is not a training workdir with checkpoints; "
            "give the --workdir of a finished run_train.py run."
        )
    if which not in ("best", "latest") and not which.isdigit():
        raise errors.ConfigError(
            f"--config.init_checkpoint_step={which!r}: use best, latest or a step number."
        )
