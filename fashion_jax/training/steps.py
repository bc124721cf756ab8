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
from fashion_jax.training import health
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
    norm_periods: tuple = (1,),
):
    """One optimizer step; returns (new state, summed metrics of the batch, with the step's
    gradient, parameter and update norms: training/health.py).

    `loss_spec` (static) describes the heads and class weights; see fashion_jax/losses.py.
    `augment` (static) flips/shifts (and cuts and mixes) the uint8 images first; see
    fashion_jax/data/augment.py.
    `norm_periods` (static): the norms are measured after steps whose number divides by one of
    these (the logged steps; measuring every step costs ~6% of a CPU step), else zero.
    """
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = augment_lib.augment_images(batch["image"], jax.random.fold_in(dropout_rng, 1), augment)
    if augment.cutmix:
        images, own = augment_lib.cutmix(images, jax.random.fold_in(dropout_rng, 2), augment.cutmix)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            models.scale_images(images),
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        teacher = batch.get("teacher")  # Distillation's targets (training/distill.py).
        losses, metrics = losses_lib.loss_and_metrics(
            logits, batch["label"], loss_spec, teacher=teacher
        )
        if augment.cutmix:  # Each label weighs its share of the pixels; metrics: own labels.
            neighbours = jnp.roll(batch["label"], 1, axis=0)
            if teacher is not None:
                teacher = jnp.roll(teacher, 1, axis=0)
            neighbour_losses, _ = losses_lib.loss_and_metrics(
                logits, neighbours, loss_spec, teacher=teacher
            )
            losses = own * losses + (1.0 - own) * neighbour_losses
        return losses.mean(), (metrics, updates)

    grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    previous_params = state.params
    state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    measured = functools.reduce(jnp.logical_or, [state.step % n == 0 for n in norm_periods])
    norms = jax.lax.cond(
        measured, health.norm_sums, health.no_norm_sums, grads, previous_params, state.params
    )
    metrics = {**metrics, **norms}
    if state.ema_decay:  # Bias-corrected: step t's average weighs step s's params ~ d^(t-s).
        d, t = state.ema_decay, state.step.astype(jnp.float32)
        decay = d * (1.0 - d ** (t - 1.0)) / (1.0 - d**t)
        state = state.replace(
            ema_params=jax.tree.map(
                lambda ema, p: decay * ema + (1.0 - decay) * p, state.ema_params, state.params
            )
        )
    return state, metrics


def _masked_train_scan(state, sums, batch_of, xs, valid, rng, loss_spec, augment, norm_periods):
    """len(valid) train steps in one lax.scan, step i on batch_of(xs[i]); returns (state, `sums`
    + the steps' metric sums). Steps whose `valid` is False pad a shorter chunk (an epoch's
    last, a resume's first) to the compiled length: they change neither state nor sums."""

    def one_step(carry, step):
        state, sums = carry
        x, is_valid = step
        new_state, metrics = train_step(state, batch_of(x), rng, loss_spec, augment, norm_periods)
        keep = functools.partial(jnp.where, is_valid)  # Exactly the old values when invalid.
        state = jax.tree.map(keep, new_state, state)
        return (state, jax.tree.map(keep, sum_metrics(sums, metrics), sums)), None

    (state, sums), _ = jax.lax.scan(one_step, (state, sums), (xs, valid))
    return state, sums


def _per_row_arrays(images, labels) -> dict:
    """{"image", "label"} and, when distilling, "teacher": `labels` is the labels array or a
    dict of the batch's per-row arrays other than the images."""
    return {"image": images} | (labels if isinstance(labels, dict) else {"label": labels})


def train_steps_on_device_data(
    state: TrainState,
    sums,
    images,
    labels,
    indices,
    valid,
    rng,
    loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
    augment: augment_lib.AugmentSpec = augment_lib.NO_AUGMENT,
    norm_periods: tuple = (1,),
):
    """len(indices) train steps in one dispatch, each batch gathered from the device-resident
    uint8 `images` and `labels` by a row of `indices` [k, B], the steps whose `valid` [k] is
    False padding (_masked_train_scan). `labels`: an array, or {"label", "teacher"} (the
    batch's other per-row arrays)."""

    def batch_of(batch_indices):
        return {k: v[batch_indices] for k, v in _per_row_arrays(images, labels).items()}

    return _masked_train_scan(
        state, sums, batch_of, indices, valid, rng, loss_spec, augment, norm_periods
    )


def train_steps_on_epoch_data(
    state: TrainState,
    sums,
    images,
    labels,
    step_numbers,
    valid,
    rng,
    loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
    augment: augment_lib.AugmentSpec = augment_lib.NO_AUGMENT,
    norm_periods: tuple = (1,),
):
    """The train steps `step_numbers` [k] of an epoch in one dispatch, from the epoch's batches
    laid out per device (host_rows.TrainRows.epoch_layout): `images` [devices, steps, rows per
    device, H, W, 3] sharded along devices, so each device slices its own rows of a step's
    batch, and the batch, [devices * rows], is sharded as a host batch is. Padding as
    train_steps_on_device_data's; `labels` as there."""

    def batch_of(step):
        def rows(x):
            return x[:, step].reshape((-1,) + x.shape[3:])

        return {k: rows(v) for k, v in _per_row_arrays(images, labels).items()}

    return _masked_train_scan(
        state, sums, batch_of, step_numbers, valid, rng, loss_spec, augment, norm_periods
    )


def zero_train_sums(
    state: TrainState,
    batch,
    rng,
    loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
    augment: augment_lib.AugmentSpec = augment_lib.NO_AUGMENT,
    norm_periods: tuple = (1,),
):
    """Host zeros shaped like train_step's metrics for `batch` (arrays or jax.ShapeDtypeStruct
    of a global batch): an epoch's sums before its first step."""
    shapes = jax.eval_shape(
        functools.partial(
            train_step, loss_spec=loss_spec, augment=augment, norm_periods=norm_periods
        ),
        state,
        batch,
        rng,
    )[1]
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


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


def eval_on_device_data(
    state: TrainState,
    batches: dict,
    loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
    tta: str = "none",
):
    """eval_step's metrics summed over device-resident padded `batches` (image, label, mask,
    each [batches, B, ...]) in one dispatch (lax.scan), in the host loop's order."""
    step = functools.partial(eval_step, loss_spec=loss_spec, tta=tta)
    first = jax.tree.map(lambda x: x[0], batches)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(step, state, first))
    total, _ = jax.lax.scan(
        lambda sums, b: (sum_metrics(sums, step(state, b)), None), zeros, batches
    )
    return total


class TrainStepRunner:
    """Runs the train steps of a chunk of batch indices [k, rows], adding their metrics to the
    epoch's sums.

    Host data (the CPU default): one step per call, the batch gathered on the host and sent
    explicitly; with several processes each holds only its share of the epoch (host_rows.py,
    read at `start_epoch`). Device data (accelerators: the uint8 training images fit in any
    GPU's memory): the arrays are sent once, and steps_per_dispatch steps run per dispatch
    (lax.scan), shorter chunks padded with steps that change nothing, so Python is not in the
    loop per step and the scan compiles once. With several processes and device data, each
    uploads at every epoch's start only its devices' rows of the epoch's batches
    (train_steps_on_epoch_data, padded alike).
    `workdir`: where a process of several records what it held (host_rows.write_record).
    `norm_periods`: train_step's; the run passes its logging period and the epoch's length.
    `teacher_targets` [train images, classes]: distillation's, batched beside the labels.
    """

    def __init__(
        self,
        data_parallel: parallel.DataParallel,
        subset: dataset.Subset,
        config,
        loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
        steps_per_epoch: int | None = None,
        workdir: str | None = None,
        norm_periods: tuple = (1,),
        teacher_targets: np.ndarray | None = None,
    ):
        self.dp, self.subset, self.workdir = data_parallel, subset, workdir
        augment = augment_lib.from_config(config.augment)
        options = {"loss_spec": loss_spec, "augment": augment, "norm_periods": norm_periods}
        choice = str(config.data_on_device).lower()
        self.on_device = (jax.default_backend() != "cpu") if choice == "auto" else choice == "true"
        self.steps_per_dispatch = (config.steps_per_dispatch or 50) if self.on_device else 1
        # Chunks never cross an epoch end: longer ones would be mostly padding.
        self.steps_per_dispatch = min(self.steps_per_dispatch, steps_per_epoch or 1 << 30)
        self.rows = host_rows.TrainRows(
            subset.images,
            subset.labels,
            config.batch_size,
            config.seed,
            data_parallel.process_rows(config.batch_size),
            input_pipeline.sampling_probabilities(subset.labels, config.data.sampling),
            teacher_targets,
        )
        replicated, sharded = data_parallel.replicated, data_parallel.batch_sharded
        self._sum = jax.jit(sum_metrics, out_shardings=replicated)
        self.per_epoch_upload = self.on_device and not self.rows.in_memory
        self.step_in_epoch, self.epoch_data, self._zeros = 0, None, None
        self._zero_sums = functools.partial(zero_train_sums, **options)
        if self.on_device:
            # (state, sums, images, labels, indices or step numbers, valid, rng)
            data_sharding = sharded if self.per_epoch_upload else replicated
            index_sharding = replicated if self.per_epoch_upload else data_parallel.chunk_sharded
            scan = (
                train_steps_on_epoch_data if self.per_epoch_upload else train_steps_on_device_data
            )
            self._run = jax.jit(
                functools.partial(scan, **options),
                donate_argnums=(0, 1),
                in_shardings=(replicated, replicated, data_sharding, data_sharding)
                + (index_sharding, replicated, replicated),
                out_shardings=(replicated, replicated),
            )
            if not self.per_epoch_upload:
                self.images = data_parallel.replicate(subset.images)
                self.labels = data_parallel.replicate(self.rows.targets())
        else:
            self._run = jax.jit(
                functools.partial(train_step, **options),
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

    def __call__(self, state: TrainState, sums, indices, rng):
        """(state, sums + the chunk's metric sums); `sums` None at an epoch's start."""
        steps = np.arange(self.step_in_epoch, self.step_in_epoch + len(indices))
        self.step_in_epoch += len(indices)
        if self.on_device:
            return self._run_on_device(state, sums, indices, steps, rng)
        if len(indices) != 1:
            raise ValueError("host data runs one step per dispatch")
        device_batch = self.dp.shard_batch(self.rows.batch(indices[0]))
        with jax.transfer_guard("disallow"):
            state, metrics = self._run(state, device_batch, rng)
            return state, metrics if sums is None else self._sum(sums, metrics)

    def _run_on_device(self, state: TrainState, sums, indices, steps, rng):
        count = len(indices)
        if count > self.steps_per_dispatch:
            raise ValueError(f"{count} steps in a chunk of at most {self.steps_per_dispatch}")
        valid = np.arange(self.steps_per_dispatch) < count  # Padding: compiled once.
        if self.per_epoch_upload:
            if not np.array_equal(self.rows.epoch_indices[steps], indices):
                raise ValueError(f"steps {steps[0]}.. are not those of the epoch started last")
            step_numbers = np.zeros(self.steps_per_dispatch, np.int32)
            step_numbers[:count] = steps
            xs = self.dp.replicate(step_numbers)  # Explicit transfers, as below.
            images = self.epoch_data["image"]
            labels = {k: v for k, v in self.epoch_data.items() if k != "image"}
        else:
            padded = np.zeros((self.steps_per_dispatch, indices.shape[1]), np.int32)
            padded[:count] = indices
            xs = self.dp.shard_chunk(padded)
            images, labels = self.images, self.labels
        if sums is None:
            sums = self.dp.replicate(self._epoch_zeros(state, rng))
        valid = self.dp.replicate(valid)
        with jax.transfer_guard("disallow"):
            return self._run(state, sums, images, labels, xs, valid, rng)

    def _epoch_zeros(self, state: TrainState, rng):
        """Zero metric sums (host numpy), from the global batch's shapes, traced once."""
        if self._zeros is None:
            batch_size = self.rows.batch_size
            batch = {
                "image": jax.ShapeDtypeStruct(
                    (batch_size,) + self.subset.images.shape[1:], self.subset.images.dtype
                ),
                **jax.tree.map(
                    lambda a: jax.ShapeDtypeStruct((batch_size,) + a.shape[1:], a.dtype),
                    self.rows.targets(),
                ),
            }
            self._zeros = self._zero_sums(state, batch, rng)
        return self._zeros


class SubsetMetrics:
    """Loss and accuracy of a state on a subset: padded, masked batches, each image counted once.

    With `on_device`, a subset's batches are sent once (on its first evaluation) and evaluated in
    one dispatch; else each batch is sent from the host."""

    def __init__(
        self,
        data_parallel: parallel.DataParallel,
        batch_size: int,
        loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
        tta: str = "none",
        on_device: bool = False,
        workdir: str | None = None,
    ):
        data_parallel.check_batch_size(batch_size, "--config.eval_batch_size")
        self.dp, self.batch_size, self.on_device = data_parallel, batch_size, on_device
        self.workdir = workdir
        self.rows = data_parallel.process_rows(batch_size)
        replicated = data_parallel.replicated
        self._step = jax.jit(
            functools.partial(eval_step, loss_spec=loss_spec, tta=tta), out_shardings=replicated
        )
        self._sum = jax.jit(sum_metrics, out_shardings=replicated)
        self._on_device = jax.jit(
            functools.partial(eval_on_device_data, loss_spec=loss_spec, tta=tta),
            in_shardings=(replicated, data_parallel.chunk_sharded),
            out_shardings=replicated,
        )
        self._sent = (None, None)  # (subset, its batches on the devices)

    def __call__(self, state: TrainState, subset: dataset.Subset) -> dict:
        # Only what eval_step reads, so that a restored state (its step not weakly typed, as a
        # trained one's is) does not compile the evaluation again.
        state = state.replace(step=None, opt_state=None, ema_params=None, ema_batch_stats=None)
        batches = input_pipeline.eval_batches(
            subset.images, subset.labels, self.batch_size, self.rows
        )
        if self.on_device:
            if self._sent[0] is not subset:
                batches = list(batches)
                stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
                self._sent = (subset, {k: self.dp.shard_chunk(v) for k, v in stacked.items()})
            with jax.transfer_guard("disallow"):
                total = self._on_device(state, self._sent[1])
        else:
            total = None
            for batch in batches:
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
