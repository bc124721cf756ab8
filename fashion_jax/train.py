"""Training loop: jitted train/eval steps, early stopping, resumable orbax checkpoints.

`train_and_evaluate(config, workdir)` is the whole run; running it again on the same workdir
resumes from the latest checkpoint and ends with the same parameters as an uninterrupted run.
"""

import functools
import json
import math
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from fashion_jax import checkpointing
from fashion_jax import dataset
from fashion_jax import input_pipeline
from fashion_jax import models
from fashion_jax import optim
from fashion_jax import reporting


class TrainState(train_state.TrainState):
    batch_stats: Any


class NonFiniteLossError(FloatingPointError):
    pass


# ----------------------------------------------------------------------------------------------
# Steps (pure functions, jitted by the caller).
# ----------------------------------------------------------------------------------------------

def scale_images(images):
    """uint8 [0, 255] -> float32 [0, 1]; runs inside the jitted step, not on the host."""
    return images.astype(jnp.float32) / 255.0


def train_step(state: TrainState, batch, rng):
    """One optimizer step; returns (new state, summed metrics of the batch)."""
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, scale_images(batch["image"]),
            train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return loss.mean(), (loss, logits, updates)

    grads, (losses, logits, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    metrics = {"loss_sum": losses.sum(),
               "correct": (logits.argmax(-1) == batch["label"]).sum().astype(jnp.float32),
               "count": jnp.float32(losses.shape[0])}
    return state, metrics


def predict_logits(apply_fn, variables, images):
    return apply_fn(variables, scale_images(images), train=False)


def eval_step(state: TrainState, batch):
    """Masked sums over one padded eval batch: padding contributes nothing."""
    logits = predict_logits(state.apply_fn,
                            {"params": state.params, "batch_stats": state.batch_stats},
                            batch["image"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    mask = batch["mask"]
    return {"loss_sum": (losses * mask).sum(),
            "correct": ((logits.argmax(-1) == batch["label"]) * mask).sum(),
            "count": mask.sum()}


def sum_metrics(total, new):
    return jax.tree.map(jnp.add, total, new)


def summarize(sums: dict) -> dict:
    count = float(sums["count"])
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count,
            "count": int(count)}


# ----------------------------------------------------------------------------------------------
# Set-up: mesh, state.
# ----------------------------------------------------------------------------------------------

def create_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def create_train_state(config, model, learning_rate_fn, image_shape) -> TrainState:
    init_seed = config.seed if config.init_seed is None else config.init_seed
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(init_seed), jnp.zeros((1,) + image_shape, jnp.float32))
    tx = optim.create_optimizer(config.optimizer, learning_rate_fn)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"])


def state_tree(state: TrainState) -> dict:
    """The checkpointed part of the state, as a plain dict."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "batch_stats": state.batch_stats}


def count_parameters(state: TrainState) -> dict:
    trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.batch_stats))
    return {"trainable": trainable, "batch_norm_statistics": stats, "total": trainable + stats}


class Evaluator:
    """Loss and accuracy of a state on a subset, with padded, masked batches."""

    def __init__(self, mesh, batch_size: int):
        self.batch_size = batch_size
        self.sharding = NamedSharding(mesh, P("data"))
        self._step = jax.jit(eval_step)
        self._sum = jax.jit(sum_metrics)

    def __call__(self, state: TrainState, subset: dataset.Subset) -> dict:
        total = None
        for batch in input_pipeline.eval_batches(subset.images, subset.labels, self.batch_size):
            metrics = self._step(state, jax.device_put(batch, self.sharding))
            total = metrics if total is None else self._sum(total, metrics)
        return summarize(jax.device_get(total))


# ----------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) in `workdir`; returns the summary written to summary.json."""
    is_main = jax.process_index() == 0
    mesh = create_mesh()
    if config.batch_size % jax.device_count():
        raise ValueError(f"--config.batch_size={config.batch_size} must divide by the "
                         f"{jax.device_count()} devices.")

    # --- Data ---
    data = dataset.load_data(config.data, workdir if is_main else None,
                             show_progress=config.progress_bar and is_main)
    train, val = data.subsets["train"], data.subsets["val"]
    logging.info("Classes %s; images: %s", data.class_names,
                 {k: len(v) for k, v in data.subsets.items()})
    image_shape = train.images.shape[1:]

    # --- Model, optimizer, state ---
    model = models.create_model(config.model, len(data.class_names))
    learning_rate_fn = optim.create_learning_rate_fn(config.optimizer)
    replicated = NamedSharding(mesh, P())
    state = jax.device_put(create_train_state(config, model, learning_rate_fn, image_shape),
                           replicated)
    parameter_counts = count_parameters(state)
    logging.info("Parameters: %s", parameter_counts)
    p_train_step = jax.jit(train_step, donate_argnums=(0,))
    p_sum = jax.jit(sum_metrics)
    evaluate = Evaluator(mesh, config.eval_batch_size)
    data_sharding = NamedSharding(mesh, P("data"))
    rng = jax.device_put(jax.random.key(config.seed), replicated)

    # --- Checkpoints: resume from the latest if there is one ---
    meta = {"class_names": data.class_names, "model": config.model.to_dict(),
            "image_shape": list(image_shape), "label_column": config.data.label_column,
            "parameter_counts": parameter_counts, "config": config.to_json()}
    manager = checkpointing.create_manager(workdir, config.checkpoint.keep_epochs, meta)
    progress = {"history": [], "best_monitored": math.inf, "best_epoch": -1, "best_step": -1,
                "epochs_without_improvement": 0, "early_stopped": False, "partial_sums": None}
    step = 0
    if manager.latest_step() is not None:
        step = manager.latest_step()
        _warn_about_config_changes(checkpointing.run_metadata(manager).get("config"), config)
        tree, progress = checkpointing.restore(
            manager, step, checkpointing.abstract_tree(state_tree(state)))
        state = state.replace(**tree)
        logging.info("Resumed from checkpoint at step %d (epoch %d).", step,
                     len(progress["history"]))
    steps_per_epoch = input_pipeline.steps_per_epoch(len(train), config.batch_size)

    # --- Training loop ---
    monitor = config.early_stopping.monitor
    epoch = step // steps_per_epoch
    while not progress["early_stopped"] and epoch < config.num_epochs:
        first_step = step % steps_per_epoch
        sums = (jax.device_put({k: np.float32(v) for k, v in progress["partial_sums"].items()},
                               replicated) if first_step and progress["partial_sums"] else None)
        bar = tqdm(total=steps_per_epoch * config.batch_size, initial=first_step * config.batch_size,
                   desc=f"epoch {epoch + 1}/{config.num_epochs}", unit="img", unit_scale=True,
                   disable=not (config.progress_bar and is_main), mininterval=1, leave=False)
        epoch_start, images_seen = time.time(), 0
        for step_in_epoch, batch in input_pipeline.train_batches(
                train.images, train.labels, config.batch_size, config.seed, epoch, first_step):
            with jax.transfer_guard("disallow"):
                state, metrics = p_train_step(state, jax.device_put(batch, data_sharding), rng)
                sums = metrics if sums is None else p_sum(sums, metrics)
            step += 1
            images_seen += config.batch_size
            bar.update(config.batch_size)
            last_of_epoch = step_in_epoch == steps_per_epoch - 1
            if step % config.log_every_steps == 0 or last_of_epoch:
                host_sums = jax.device_get(sums)
                _check_finite(host_sums, step, epoch)
                bar.set_postfix(loss=f"{host_sums['loss_sum'] / host_sums['count']:.4f}")
            if step % config.checkpoint.every_steps == 0 and not last_of_epoch:
                progress["partial_sums"] = {k: float(v) for k, v in jax.device_get(sums).items()}
                checkpointing.save(manager, step, state_tree(state), progress)
        bar.close()
        train_seconds = time.time() - epoch_start

        # --- Epoch end: validate, early stopping, checkpoint, metrics ---
        train_metrics = summarize(jax.device_get(sums))
        val_metrics = evaluate(state, val)
        record = {"epoch": epoch + 1, "step": step,
                  "train_loss": train_metrics["loss"], "train_accuracy": train_metrics["accuracy"],
                  "val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"],
                  "learning_rate": float(learning_rate_fn(step)),
                  "train_seconds": train_seconds,
                  "images_per_second": images_seen / max(train_seconds, 1e-9),
                  "resumed_mid_epoch": bool(first_step)}
        progress["history"].append(record)
        monitored = record[monitor]
        if monitored < progress["best_monitored"]:
            progress.update(best_monitored=monitored, best_epoch=epoch + 1, best_step=step,
                            epochs_without_improvement=0)
        else:
            progress["epochs_without_improvement"] += 1
        epoch += 1
        stop = progress["epochs_without_improvement"] >= config.early_stopping.patience
        progress["early_stopped"] = stop
        progress["partial_sums"] = None
        checkpointing.save(manager, step, state_tree(state), progress,
                           metrics={"monitored": monitored, "epoch": epoch})
        if is_main:
            reporting.write_metrics(workdir, progress["history"])
        logging.info("epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s%s",
                     epoch, record["train_loss"], record["train_accuracy"], record["val_loss"],
                     record["val_accuracy"], record["images_per_second"],
                     " | early stop" if stop else "")
    manager.wait_until_finished()

    # --- Final: restore the best, summarise ---
    final_step = manager.latest_step()
    if config.early_stopping.restore_best and progress["best_step"] >= 0:
        final_step = progress["best_step"]
        state = state.replace(**checkpointing.restore_state(
            manager, final_step, checkpointing.abstract_tree(state_tree(state))))
    final_val = evaluate(state, val)
    history = progress["history"]
    summary = {"final_step": final_step, "best_epoch": progress["best_epoch"],
               "epochs_run": len(history), "monitor": monitor,
               "val_loss": final_val["loss"], "val_accuracy": final_val["accuracy"],
               "val_images": final_val["count"], "train_images": len(train),
               "train_seconds": sum(r["train_seconds"] for r in history),
               "images_per_second_median": float(np.median(
                   [r["images_per_second"] for r in history])) if history else None,
               "parameter_counts": parameter_counts, "class_names": data.class_names,
               "skipped_rows": len(data.skipped), "backend": jax.default_backend(),
               "devices": jax.device_count()}
    if is_main:
        reporting.write_json(workdir, reporting.SUMMARY_FILE, summary)
        if history:
            reporting.plot_curves(history, f"{workdir}/{reporting.CURVES_FILE}",
                                  title=f"{config.optimizer.name} - {workdir}")
    manager.close()
    logging.info("Done: best epoch %d, val accuracy %.4f on %d images.",
                 summary["best_epoch"], summary["val_accuracy"], summary["val_images"])
    return summary


def _flatten(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}


def _warn_about_config_changes(saved_json, config):
    """Resuming with other settings is allowed (e.g. more epochs) but never silent."""
    if not saved_json:
        return
    saved, now = _flatten(json.loads(saved_json)), _flatten(json.loads(config.to_json()))
    changed = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
               if saved.get(k) != now.get(k)}
    if changed:
        logging.warning("Resuming with a config that differs from the one this run started with "
                        "(field: saved -> now): %s", changed)


def _check_finite(host_sums, step, epoch):
    if not np.isfinite(host_sums["loss_sum"]):
        raise NonFiniteLossError(
            f"Training loss became {host_sums['loss_sum']} by step {step} (epoch {epoch + 1}). "
            "Lower --config.optimizer.learning_rate or check the input data; the last good "
            "checkpoint is kept in the workdir.")
