"""Training loop: jitted train/eval steps, early stopping, resumable orbax checkpoints.

`train_and_evaluate(config, workdir)` is the whole run; running it again on the same workdir
resumes from the latest checkpoint and ends with the same parameters as an uninterrupted run.
"""

import functools
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct
from flax.training import train_state
from tqdm import tqdm

from fashion_jax import augment as augment_lib
from fashion_jax import batch_norm
from fashion_jax import checkpointing
from fashion_jax import dataset
from fashion_jax import input_pipeline
from fashion_jax import losses as losses_lib
from fashion_jax import models
from fashion_jax import optim
from fashion_jax import parallel
from fashion_jax import reporting
from fashion_jax import restore
from fashion_jax import run_progress


class TrainState(train_state.TrainState):
    batch_stats: Any
    # With --config.ema_decay > 0: an exponential moving average of the parameters, which is
    # what is validated, selected and evaluated, with BatchNorm statistics recomputed for it.
    ema_params: Any = None
    ema_batch_stats: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def for_evaluation(self) -> "TrainState":
        """The state whose predictions count: the EMA parameters when there are any."""
        if self.ema_params is None:
            return self
        return self.replace(params=self.ema_params, batch_stats=self.ema_batch_stats)


class NonFiniteLossError(FloatingPointError):
    pass


# ----------------------------------------------------------------------------------------------
# Steps (pure functions, jitted by the caller).
# ----------------------------------------------------------------------------------------------

scale_images = models.scale_images


SINGLE_HEAD = losses_lib.LossSpec(heads=("label",))


def train_step(state: TrainState, batch, rng, loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
               augment: augment_lib.AugmentSpec = augment_lib.NO_AUGMENT):
    """One optimizer step; returns (new state, summed metrics of the batch).

    `loss_spec` (static) describes the heads and class weights; see fashion_jax/losses.py.
    `augment` (static) flips/shifts the uint8 images first; see fashion_jax/augment.py.
    """
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = augment_lib.augment_images(batch["image"], jax.random.fold_in(dropout_rng, 1),
                                        augment)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, scale_images(images),
            train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        losses, metrics = losses_lib.loss_and_metrics(logits, batch["label"], loss_spec)
        return losses.mean(), (metrics, updates)

    grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    if state.ema_decay:  # Bias-corrected: step t's average weighs step s's params ~ d^(t-s).
        d, t = state.ema_decay, state.step.astype(jnp.float32)
        decay = d * (1.0 - d ** (t - 1.0)) / (1.0 - d ** t)
        state = state.replace(ema_params=jax.tree.map(
            lambda ema, p: decay * ema + (1.0 - decay) * p, state.ema_params, state.params))
    return state, metrics


def train_steps_on_device_data(state: TrainState, images, labels, indices, rng,
                               loss_spec: losses_lib.LossSpec = SINGLE_HEAD,
                               augment: augment_lib.AugmentSpec = augment_lib.NO_AUGMENT):
    """len(indices) train steps in one dispatch (lax.scan), each batch gathered from the
    device-resident uint8 `images` and `labels` by a row of `indices` [k, B]."""
    def one_step(state, batch_indices):
        return train_step(state, {"image": images[batch_indices],
                                  "label": labels[batch_indices]}, rng, loss_spec, augment)
    state, metrics = jax.lax.scan(one_step, state, indices)
    return state, jax.tree.map(lambda m: m.sum(0), metrics)


def predict_logits(apply_fn, variables, images):
    return apply_fn(variables, scale_images(images), train=False)


def eval_step(state: TrainState, batch, loss_spec: losses_lib.LossSpec = SINGLE_HEAD):
    """Masked sums over one padded eval batch: padding contributes nothing. The loss is the plain
    cross-entropy (class weights and label smoothing only steer training)."""
    logits = predict_logits(state.apply_fn,
                            {"params": state.params, "batch_stats": state.batch_stats},
                            batch["image"])
    _, metrics = losses_lib.loss_and_metrics(logits, batch["label"],
                                             loss_spec.for_evaluation(), batch["mask"])
    return metrics


def sum_metrics(total, new):
    return jax.tree.map(jnp.add, total, new)


summarize = losses_lib.summarize


# ----------------------------------------------------------------------------------------------
# Set-up: mesh, state.
# ----------------------------------------------------------------------------------------------

def create_loss_spec(config, data: dataset.FashionData) -> losses_lib.LossSpec:
    """Heads, their loss weights and (optional) class weights from the training labels."""
    heads = tuple(data.heads) if data.heads else (config.data.label_column,)
    weights = tuple(config.loss.head_weights)
    if weights and len(weights) != len(heads):
        raise ValueError(f"--config.loss.head_weights has {len(weights)} values for the "
                         f"{len(heads)} heads {heads}; give one per head (or none).")
    labels = data.subsets["train"].labels
    labels = labels[:, None] if labels.ndim == 1 else labels
    sizes = [len(c) for c in data.heads.values()] if data.heads else [len(data.class_names)]
    class_weights = tuple(losses_lib.class_weights_for(labels[:, n], size,
                                                       config.loss.class_weighting)
                          for n, size in enumerate(sizes))
    if all(w is None for w in class_weights):
        class_weights = None
    else:
        logging.info("Class weights of the training loss (%s): %s", config.loss.class_weighting,
                     class_weights[0])
    smoothing = float(config.loss.label_smoothing)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"--config.loss.label_smoothing={smoothing} must be in [0, 1).")
    return losses_lib.LossSpec(heads=heads, head_weights=weights, multi_head=bool(data.heads),
                               class_weights=class_weights, label_smoothing=smoothing)


def create_train_state(config, model, learning_rate_fn, image_shape, sharding=None,
                       load_init_checkpoint: bool = True) -> TrainState:
    """Initialises parameters (from `init_seed`, else `seed`, or --config.init_checkpoint unless
    `load_init_checkpoint` is False, as when resuming) and optimizer state, replicated."""
    init_seed = config.seed if config.init_seed is None else config.init_seed
    tx = optim.create_optimizer(config.optimizer, learning_rate_fn)

    ema_decay = float(config.get("ema_decay", 0.0))
    if ema_decay and not config.bn_recalibration_batches:
        raise ValueError("--config.ema_decay needs --config.bn_recalibration_batches > 0: the "
                         "averaged parameters need BatchNorm statistics of their own.")

    def init():
        variables = model.init(jax.random.key(init_seed),
                               jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables["batch_stats"], ema_decay=ema_decay)
    state = jax.jit(init, out_shardings=sharding)()
    if load_init_checkpoint:
        state = restore.init_from_checkpoint(config, state)  # If --config.init_checkpoint is set.
    if ema_decay:  # The average starts at the initial parameters (own buffers: state is donated).
        copy = jax.jit(lambda tree: jax.tree.map(lambda x: x * 1, tree), out_shardings=sharding)
        state = state.replace(ema_params=copy(state.params),
                              ema_batch_stats=copy(state.batch_stats))
    return state


def state_tree(state: TrainState) -> dict:
    """The checkpointed part of the state, as a plain dict."""
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "batch_stats": state.batch_stats}
    if state.ema_params is not None:
        tree.update(ema_params=state.ema_params, ema_batch_stats=state.ema_batch_stats)
    return tree


def count_parameters(state: TrainState) -> dict:
    trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.batch_stats))
    return {"trainable": trainable, "batch_norm_statistics": stats, "total": trainable + stats}


class TrainStepRunner:
    """Runs the train steps of a chunk of batch indices [k, rows].

    Host data (the CPU default): one step per call, the batch gathered on the host and sent
    explicitly. Device data (accelerators: the uint8 training images fit in any GPU's memory):
    the arrays are sent once, and k steps run per dispatch (lax.scan), so Python is not in the
    loop per step.
    """

    def __init__(self, data_parallel: parallel.DataParallel, subset: dataset.Subset, config,
                 loss_spec: losses_lib.LossSpec = SINGLE_HEAD):
        self.dp, self.subset = data_parallel, subset
        augment = augment_lib.from_config(config.augment)
        choice = str(config.data_on_device).lower()
        if choice not in ("auto", "true", "false"):
            raise ValueError(f"--config.data_on_device={config.data_on_device!r}: use auto, "
                             "true or false")
        self.on_device = (jax.default_backend() != "cpu") if choice == "auto" else choice == "true"
        self.steps_per_dispatch = (config.steps_per_dispatch or 50) if self.on_device else 1
        replicated = data_parallel.replicated
        if self.on_device:
            self.images = data_parallel.replicate(subset.images)
            self.labels = data_parallel.replicate(subset.labels)
            self._run = jax.jit(
                functools.partial(train_steps_on_device_data, loss_spec=loss_spec,
                                  augment=augment),
                donate_argnums=(0,),
                in_shardings=(replicated, replicated, replicated, data_parallel.chunk_sharded,
                              replicated),
                out_shardings=(replicated, replicated))
        else:
            self._run = jax.jit(
                functools.partial(train_step, loss_spec=loss_spec, augment=augment),
                donate_argnums=(0,),
                in_shardings=(replicated, data_parallel.batch_sharded, replicated),
                out_shardings=(replicated, replicated))

    def __call__(self, state: TrainState, indices, rng):
        if self.on_device:
            device_indices = self.dp.shard_chunk(indices.astype(np.int32))  # Explicit transfer.
            with jax.transfer_guard("disallow"):
                return self._run(state, self.images, self.labels, device_indices, rng)
        if len(indices) != 1:
            raise ValueError("host data runs one step per dispatch")
        device_batch = self.dp.shard_batch({"image": self.subset.images[indices[0]],
                                            "label": self.subset.labels[indices[0]]})
        with jax.transfer_guard("disallow"):
            return self._run(state, device_batch, rng)


class Evaluator:
    """Loss and accuracy of a state on a subset: padded, masked batches, each image counted once."""

    def __init__(self, data_parallel: parallel.DataParallel, batch_size: int,
                 loss_spec: losses_lib.LossSpec = SINGLE_HEAD):
        data_parallel.check_batch_size(batch_size, "--config.eval_batch_size")
        self.dp, self.batch_size = data_parallel, batch_size
        self.rows = data_parallel.process_rows(batch_size)
        self._step = jax.jit(functools.partial(eval_step, loss_spec=loss_spec),
                             out_shardings=data_parallel.replicated)
        self._sum = jax.jit(sum_metrics, out_shardings=data_parallel.replicated)

    def __call__(self, state: TrainState, subset: dataset.Subset) -> dict:
        total = None
        for batch in input_pipeline.eval_batches(subset.images, subset.labels, self.batch_size,
                                                 self.rows):
            metrics = self._step(state, self.dp.shard_batch(batch))
            total = metrics if total is None else self._sum(total, metrics)
        return summarize(self.dp.to_host(total))


# ----------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) in `workdir`; returns the summary written to summary.json."""
    dp = parallel.DataParallel.over_all_devices()
    dp.check_batch_size(config.batch_size, "--config.batch_size")
    is_main = parallel.is_main_process()

    # --- Data (every process loads the arrays; each reads only its rows of each batch) ---
    data = dataset.load_data(config.data, workdir if is_main else None,
                             show_progress=config.progress_bar and is_main)
    train, val = data.subsets["train"], data.subsets["val"]
    logging.info("Classes %s; images: %s", data.class_names,
                 {k: len(v) for k, v in data.subsets.items()})
    image_shape = train.images.shape[1:]

    # --- Model, loss, optimizer, state ---
    model = models.create_model(config.model,
                                models.output_classes(data.class_names, data.heads))
    loss_spec = create_loss_spec(config, data)
    sampling = input_pipeline.sampling_probabilities(train.labels, config.data.sampling)
    learning_rate_fn = optim.create_learning_rate_fn(
        config.optimizer,
        config.num_epochs * input_pipeline.steps_per_epoch(len(train), config.batch_size))
    # A resumed run takes everything from its own checkpoint, not from --config.init_checkpoint.
    resuming = os.path.isdir(checkpointing.checkpoint_dir(workdir)) and bool(
        checkpointing.create_manager(workdir, read_only=True).all_steps())
    state = create_train_state(config, model, learning_rate_fn, image_shape, dp.replicated,
                               load_init_checkpoint=not resuming)
    parameter_counts = count_parameters(state)
    run_steps = TrainStepRunner(dp, train, config, loss_spec)
    logging.info("Parameters: %s; %s; training data on device: %s; steps per dispatch: %d.",
                 parameter_counts, dp.mesh, run_steps.on_device, run_steps.steps_per_dispatch)
    p_sum = jax.jit(sum_metrics, out_shardings=dp.replicated)
    evaluate = Evaluator(dp, config.eval_batch_size, loss_spec)
    rng = jax.jit(lambda: jax.random.key(config.seed), out_shardings=dp.replicated)()

    # --- Checkpoints: resume from the latest if there is one ---
    meta = {"class_names": data.class_names, "model": config.model.to_dict(),
            "image_shape": list(image_shape), "label_column": config.data.label_column,
            "heads": data.heads,
            "parameter_counts": parameter_counts, "config": config.to_json()}
    manager = checkpointing.create_manager(workdir, config.checkpoint.keep_epochs, meta)
    progress, step = run_progress.new_progress(), 0
    if manager.latest_step() is not None:
        step = manager.latest_step()
        run_progress.warn_about_config_changes(
            checkpointing.run_metadata(manager).get("config"), config)
        tree, progress = checkpointing.restore(
            manager, step, checkpointing.abstract_tree(state_tree(state)))
        state = state.replace(**tree)
        # Early stopping is re-judged with this run's patience, so a stopped run can be
        # continued with more patience (and more epochs).
        progress["early_stopped"] = (
            progress["epochs_without_improvement"] >= config.early_stopping.patience)
        logging.info("Resumed from checkpoint at step %d (epoch %d).", step,
                     len(progress["history"]))
    steps_per_epoch = input_pipeline.steps_per_epoch(len(train), config.batch_size)
    batch_rows = dp.process_rows(config.batch_size)

    # --- Training loop ---
    epoch = step // steps_per_epoch
    while not progress["early_stopped"] and epoch < config.num_epochs:
        first_step = step % steps_per_epoch
        partial = progress["partial_sums"] if first_step else None
        sums = dp.replicate({k: np.float32(v) for k, v in partial.items()}) if partial else None
        bar = tqdm(total=steps_per_epoch * config.batch_size, initial=first_step * config.batch_size,
                   desc=f"epoch {epoch + 1}/{config.num_epochs}", unit="img", unit_scale=True,
                   disable=not (config.progress_bar and is_main), mininterval=1, leave=False)
        epoch_start, images_seen = time.time(), 0
        for chunk_start, indices in input_pipeline.train_indices(
                len(train), config.batch_size, config.seed, epoch, first_step, batch_rows,
                run_steps.steps_per_dispatch, sampling):
            state, metrics = run_steps(state, indices, rng)
            sums = metrics if sums is None else p_sum(sums, metrics)
            previous_step, step = step, step + len(indices)
            images_seen += len(indices) * config.batch_size
            bar.update(len(indices) * config.batch_size)
            last_of_epoch = chunk_start + len(indices) == steps_per_epoch
            if _crossed(previous_step, step, config.log_every_steps) or last_of_epoch:
                host_sums = dp.to_host(sums)
                _check_finite(host_sums, step, epoch)
                bar.set_postfix(loss=f"{host_sums['loss_sum'] / host_sums['count']:.4f}")
            if _crossed(previous_step, step, config.checkpoint.every_steps) and not last_of_epoch:
                progress["partial_sums"] = {k: float(v) for k, v in dp.to_host(sums).items()}
                checkpointing.save(manager, step, state_tree(state), progress)
        bar.close()
        train_seconds = time.time() - epoch_start

        # --- Epoch end: (precise BN), validate, early stopping, checkpoint, metrics ---
        if config.bn_recalibration_batches:  # For the EMA parameters when there are any.
            recalibrated = batch_norm.recalibrate_train_state(
                state.for_evaluation(), model, train.images, config.bn_recalibration_batches,
                config.batch_size, config.seed, epoch, dp)
            state = (state.replace(ema_batch_stats=recalibrated.batch_stats)
                     if state.ema_params is not None
                     else state.replace(batch_stats=recalibrated.batch_stats))
        train_metrics = summarize(dp.to_host(sums))
        val_metrics = evaluate(state.for_evaluation(), val)
        epoch += 1
        record = {"epoch": epoch, "step": step,
                  "train_loss": train_metrics["loss"], "train_accuracy": train_metrics["accuracy"],
                  "val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"],
                  "learning_rate": float(learning_rate_fn(step)),
                  "train_seconds": train_seconds,
                  "images_per_second": images_seen / max(train_seconds, 1e-9),
                  "resumed_mid_epoch": bool(first_step)}
        record.update({f"{prefix}_{key}": value
                       for prefix, metrics in (("train", train_metrics), ("val", val_metrics))
                       for key, value in metrics.items() if "/" in key})
        run_progress.record_epoch(progress, record, config.early_stopping.monitor,
                                  config.early_stopping.patience)
        checkpointing.save(manager, step, state_tree(state), progress,
                           metrics={"monitored": record[config.early_stopping.monitor],
                                    "epoch": epoch})
        if is_main:
            reporting.write_metrics(workdir, progress["history"])
        logging.info("epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s%s",
                     epoch, record["train_loss"], record["train_accuracy"], record["val_loss"],
                     record["val_accuracy"], record["images_per_second"],
                     " | early stop" if progress["early_stopped"] else "")
    manager.wait_until_finished()

    # --- Final: restore the best, summarise ---
    final_step = manager.latest_step()
    if config.early_stopping.restore_best and progress["best_step"] >= 0:
        final_step = progress["best_step"]
        state = state.replace(**checkpointing.restore_state(
            manager, final_step, checkpointing.abstract_tree(state_tree(state))))
    final_val = evaluate(state.for_evaluation(), val)
    history = progress["history"]
    summary = {"final_step": final_step, "best_epoch": progress["best_epoch"],
               "epochs_run": len(history), "monitor": config.early_stopping.monitor,
               "val_loss": final_val["loss"], "val_accuracy": final_val["accuracy"],
               "val_images": final_val["count"], "train_images": len(train),
               "val_heads": {k: v for k, v in final_val.items() if "/" in k},
               "train_seconds": sum(r["train_seconds"] for r in history),
               "images_per_second_median": float(np.median(
                   [r["images_per_second"] for r in history])) if history else None,
               "parameter_counts": parameter_counts, "class_names": data.class_names,
               "skipped_rows": len(data.skipped), "backend": jax.default_backend(),
               "devices": jax.device_count(), "processes": jax.process_count()}
    if is_main:
        reporting.write_json(workdir, reporting.SUMMARY_FILE, summary)
        if history:
            reporting.plot_curves(history, f"{workdir}/{reporting.CURVES_FILE}",
                                  title=f"{config.optimizer.name} - {workdir}")
    manager.close()
    logging.info("Done: best epoch %d, val accuracy %.4f on %d images.",
                 summary["best_epoch"], summary["val_accuracy"], summary["val_images"])
    return summary


def _crossed(previous_step: int, step: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (previous_step, step]."""
    return step // every > previous_step // every


def _check_finite(host_sums, step, epoch):
    if not np.isfinite(host_sums["loss_sum"]):
        raise NonFiniteLossError(
            f"Training loss became {host_sums['loss_sum']} by step {step} (epoch {epoch + 1}). "
            "Lower --config.optimizer.learning_rate or check the input data; the last good "
            "checkpoint is kept in the workdir.")
