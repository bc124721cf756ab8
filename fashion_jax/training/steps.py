"""The jitted steps (pure functions) and what runs them over the data.

`train_step` and `eval_step` are pure: the caller jits them with shardings. `TrainStepRunner` runs
a chunk of training steps and `SubsetMetrics` a masked evaluation of a subset; every host <->
device transfer goes through parallel.DataParallel, explicitly, and the steps run under
`jax.transfer_guard("disallow")` so an accidental transfer is an error, not a slowdown.
"""

import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from fashion_jax import models
from fashion_jax.data import augment as augment_lib
from fashion_jax.data import dataset
from fashion_jax.data import host_rows
from fashion_jax.data import input_pipeline
from fashion_jax.training import losses as losses_lib
from fashion_jax.training import parallel
from fashion_jax.training.state import TrainState

SINGLE_HEAD = losses_lib.LossSpec(heads=("label",))


def train_step(
    state: TrainState,
    batch,
    rng,
    loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
    augment: augment_lib.AugmentSpec = augment_lib.NO_AUGMENT,
):
    """One optimizer step; returns (new state, summed metrics of the batch).

    `loss_spec` (static) describes the heads and class weights; see fashion_jax/losses.py.
    `augment` (static) flips/shifts the uint8 images first; see fashion_jax/augment.py.
    """
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = augment_lib.augment_images(batch["image"], jax.random.fold_in(dropout_rng, 1), augment)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            models.scale_images(images),
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        losses, metrics = losses_lib.loss_and_metrics(logits, batch["label"], loss_spec)
        return losses.mean(), (metrics, updates)

    grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    if state.ema_decay:  # Bias-corrected: step t's average weighs step s's params ~ d^(t-s).
        d, t = state.ema_decay, state.step.astype(jnp.float32)
        decay = d * (1.0 - d ** (t - 1.0)) / (1.0 - d**t)
        state = state.replace(
            ema_params=jax.tree.map(
                lambda ema, p: decay * ema + (1.0 - decay) * p, state.ema_params, state.params
            )
        )
    return state, metrics


def train_steps_on_device_data(
    state: TrainState,
    images,
    labels,
    indices,
    rng,
    loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
    augment: augment_lib.AugmentSpec = augment_lib.NO_AUGMENT,
):
    """len(indices) train steps in one dispatch (lax.scan), each batch gathered from the
    device-resident uint8 `images` and `labels` by a row of `indices` [k, B]."""

    def one_step(state, batch_indices):
        return train_step(
            state,
            {"image": images[batch_indices], "label": labels[batch_indices]},
            rng,
            loss_spec,
            augment,
        )

    state, metrics = jax.lax.scan(one_step, state, indices)
    return state, jax.tree.map(lambda m: m.sum(0), metrics)


def train_steps_on_epoch_data(
    state: TrainState,
    images,
    labels,
    step_numbers,
    rng,
    loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
    augment: augment_lib.AugmentSpec = augment_lib.NO_AUGMENT,
):
    """The train steps `step_numbers` [k] of an epoch in one dispatch (lax.scan), from the
    epoch's batches laid out per device (host_rows.TrainRows.epoch_layout): `images` [devices,
    steps, rows per device, H, W, 3] sharded along devices, so each device slices its own rows
    of a step's batch, and the batch, [devices * rows], is sharded as a host batch is."""

    def one_step(state, step):
        def batch_of(x):
            return x[:, step].reshape((-1,) + x.shape[3:])

        return train_step(
            state, {"image": batch_of(images), "label": batch_of(labels)}, rng, loss_spec, augment
        )

    state, metrics = jax.lax.scan(one_step, state, step_numbers)
    return state, jax.tree.map(lambda m: m.sum(0), metrics)


def eval_step(
    state: TrainState, batch, loss_spec: losses_lib.LossSpec = SINGLE_HEAD, tta: str = "none"
):
    """Masked sums over one padded eval batch: padding contributes nothing. The loss is the plain
    cross-entropy (class weights and label smoothing only steer training) of the predicted
    probabilities, with test-time augmentation `tta` (static; models.TTA_MODES)."""
    logits = models.predict_log_probabilities(  # Log-probabilities serve as logits.
        state.apply_fn,
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["image"],
        tta,
    )
    _, metrics = losses_lib.loss_and_metrics(
        logits, batch["label"], loss_spec.for_evaluation(), batch["mask"]
    )
    return metrics


def sum_metrics(total, new):
    return jax.tree.map(jnp.add, total, new)


class TrainStepRunner:
    """Runs the train steps of a chunk of batch indices [k, rows].

    Host data (the CPU default): one step per call, the batch gathered on the host and sent
    explicitly; with several processes each holds only its share of the epoch (host_rows.py,
    read at `start_epoch`). Device data (accelerators: the uint8 training images fit in any
    GPU's memory): the arrays are sent once, and k steps run per dispatch (lax.scan), so Python
    is not in the loop per step; with several processes, each uploads at every epoch's start
    only its devices' rows of the epoch's batches (train_steps_on_epoch_data).
    `workdir`: where a process of several records what it held (host_rows.write_record).
    """

    def __init__(
        self,
        data_parallel: parallel.DataParallel,
        subset: dataset.Subset,
        config,
        loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
        workdir: str | None = None,
    ):
        self.dp, self.subset, self.workdir = data_parallel, subset, workdir
        augment = augment_lib.from_config(config.augment)
        choice = str(config.data_on_device).lower()
        self.on_device = (jax.default_backend() != "cpu") if choice == "auto" else choice == "true"
        self.steps_per_dispatch = (config.steps_per_dispatch or 50) if self.on_device else 1
        self.rows = host_rows.TrainRows(
            subset.images,
            subset.labels,
            config.batch_size,
            config.seed,
            data_parallel.process_rows(config.batch_size),
            input_pipeline.sampling_probabilities(subset.labels, config.data.sampling),
        )
        replicated, sharded = data_parallel.replicated, data_parallel.batch_sharded
        self.per_epoch_upload = self.on_device and not self.rows.in_memory
        self.step_in_epoch, self.epoch_data = 0, None
        if self.per_epoch_upload:
            self._run = jax.jit(
                functools.partial(train_steps_on_epoch_data, loss_spec=loss_spec, augment=augment),
                donate_argnums=(0,),
                in_shardings=(replicated, sharded, sharded, replicated, replicated),
                out_shardings=(replicated, replicated),
            )
        elif self.on_device:
            self.images = data_parallel.replicate(subset.images)
            self.labels = data_parallel.replicate(subset.labels)
            self._run = jax.jit(
                functools.partial(train_steps_on_device_data, loss_spec=loss_spec, augment=augment),
                donate_argnums=(0,),
                in_shardings=(
                    replicated,
                    replicated,
                    replicated,
                    data_parallel.chunk_sharded,
                    replicated,
                ),
                out_shardings=(replicated, replicated),
            )
        else:
            self._run = jax.jit(
                functools.partial(train_step, loss_spec=loss_spec, augment=augment),
                donate_argnums=(0,),
                in_shardings=(replicated, data_parallel.batch_sharded, replicated),
                out_shardings=(replicated, replicated),
            )

    def start_epoch(self, epoch: int, first_step: int = 0) -> None:
        """Several processes: reads this process's rows of `epoch` (from `first_step` on) and,
        with device data, uploads them, each device its own; records what it holds."""
        self.step_in_epoch = first_step
        if not self.rows.in_memory:
            self.rows.start_epoch(epoch)
        if self.per_epoch_upload:
            self.epoch_data = None  # The last epoch's arrays are freed before these are sent.
            self.epoch_data = self.dp.shard_batch(self.rows.epoch_layout(jax.local_device_count()))
            self.rows.held_images = None  # On the devices now: the host's copy is freed.
        if self.workdir and not self.rows.in_memory:
            held = self.rows.held_rows
            logging.info(
                "Process %d of %d holds %d of %d train images for epoch %d.",
                jax.process_index(),
                jax.process_count(),
                len(held),
                len(self.subset),
                epoch + 1,
            )
            host_rows.write_record(
                self.workdir,
                jax.process_index(),
                jax.process_count(),
                {
                    "epoch": epoch + 1,
                    "train_images": len(self.subset),
                    "train_ids_held": self.subset.ids[held].tolist(),
                },
            )

    def __call__(self, state: TrainState, indices, rng):
        steps = np.arange(self.step_in_epoch, self.step_in_epoch + len(indices))
        self.step_in_epoch += len(indices)
        if self.per_epoch_upload:
            if not np.array_equal(self.rows.epoch_indices[steps], indices):
                raise ValueError(f"steps {steps[0]}.. are not those of the epoch started last")
            step_numbers = self.dp.replicate(steps.astype(np.int32))  # Explicit transfer.
            with jax.transfer_guard("disallow"):
                data = self.epoch_data
                return self._run(state, data["image"], data["label"], step_numbers, rng)
        if self.on_device:
            device_indices = self.dp.shard_chunk(indices.astype(np.int32))  # Explicit transfer.
            with jax.transfer_guard("disallow"):
                return self._run(state, self.images, self.labels, device_indices, rng)
        if len(indices) != 1:
            raise ValueError("host data runs one step per dispatch")
        device_batch = self.dp.shard_batch(self.rows.batch(indices[0]))
        with jax.transfer_guard("disallow"):
            return self._run(state, device_batch, rng)


class SubsetMetrics:
    """Loss and accuracy of a state on a subset: padded, masked batches, each image counted once."""

    def __init__(
        self,
        data_parallel: parallel.DataParallel,
        batch_size: int,
        loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
        tta: str = "none",
        workdir: str | None = None,
    ):
        data_parallel.check_batch_size(batch_size, "--config.eval_batch_size")
        self.dp, self.batch_size, self.workdir = data_parallel, batch_size, workdir
        self.rows = data_parallel.process_rows(batch_size)
        self._step = jax.jit(
            functools.partial(eval_step, loss_spec=loss_spec, tta=tta),
            out_shardings=data_parallel.replicated,
        )
        self._sum = jax.jit(sum_metrics, out_shardings=data_parallel.replicated)

    def __call__(self, state: TrainState, subset: dataset.Subset) -> dict:
        total = None
        for batch in input_pipeline.eval_batches(
            subset.images, subset.labels, self.batch_size, self.rows
        ):
            metrics = self._step(state, self.dp.shard_batch(batch))
            total = metrics if total is None else self._sum(total, metrics)
        if self.workdir and isinstance(subset.images, host_rows.CachedRows):
            host_rows.write_record(  # The rows of `subset` this process has read so far.
                self.workdir,
                jax.process_index(),
                jax.process_count(),
                {
                    "eval_images": len(subset),
                    "eval_ids_read": subset.ids[subset.images.read].tolist(),
                },
            )
        return losses_lib.summarize(self.dp.to_host(total))
