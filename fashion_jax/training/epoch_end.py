"""The end of each training epoch: precise BN, validation, early stopping, the checkpoint, and
what a person watches (metrics.jsonl, TensorBoard, the log line, curves.png).

With the data on the device, precise BN and validation each run as one compiled dispatch over
device-resident images (batch_norm.DeviceRecalibration, steps.SubsetMetrics); the host reads
back only the numbers it writes. curves.png is drawn in a background thread (CurvePlotter).
"""

import concurrent.futures
import os
import time

from absl import logging
import jax

from fashion_jax.training import batch_norm
from fashion_jax.training import checkpointing
from fashion_jax.training import faults
from fashion_jax.training import losses as losses_lib
from fashion_jax.training import run_files
from fashion_jax.training import run_progress
from fashion_jax.training import state as state_lib


def end_epoch(run, state, progress: dict, step: int, epoch: int, sums, timing: dict):
    """Precise BN (for the evaluated parameters), validation, early stopping, checkpoint, and
    everything a person watches. `run`: train._Run. Returns the state with its evaluated
    BatchNorm statistics recalibrated (if asked)."""
    config = run.config
    end_start = time.time()
    if config.bn_recalibration_batches:
        state = state.with_evaluation_batch_stats(_recalibrate(run, state, epoch).batch_stats)
    train_metrics = losses_lib.summarize(run.dp.to_host(sums))
    val_metrics = run.evaluate(state.for_evaluation(), run.data.subsets["val"])
    # Precise BN and validation, so that time to accuracy counts what it takes to know it.
    timing = dict(timing, epoch_end_seconds=time.time() - end_start)
    record = run_progress.epoch_record(
        epoch + 1, step, train_metrics, val_metrics, learning_rate(run, step), timing
    )
    run_progress.record_epoch(progress, record, config.early_stopping)
    save(
        run,
        step,
        state,
        progress,
        metrics={"monitored": record[config.early_stopping.monitor], "epoch": epoch + 1},
    )
    run.writer.write_scalars(step, run_progress.epoch_scalars(record))
    run.writer.flush()
    if run.is_main:
        run_files.write_metrics(run.workdir, progress["history"])
        run.plotter.draw(
            progress["history"],
            os.path.join(run.workdir, run_files.CURVES_FILE),
            title=f"{config.optimizer.name} - {run.workdir}",
        )
    logging.info(
        "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s "
        "(first step %.1f s)%s",
        epoch + 1,
        record["train_loss"],
        record["train_accuracy"],
        record["val_loss"],
        record["val_accuracy"],
        record["images_per_second"],
        record["compile_seconds"],
        " | early stop" if progress["early_stopped"] else "",
    )
    return state


def _recalibrate(run, state, epoch: int):
    """The evaluated state with batch_stats from bn_recalibration_batches training batches."""
    config = run.config
    if run.recalibrate_on_device:
        return run.recalibrate_on_device(
            state.for_evaluation(),
            config.bn_recalibration_batches,
            config.batch_size,
            config.seed,
            epoch,
        )
    return batch_norm.recalibrate_train_state(
        state.for_evaluation(),
        run.model,
        run.data.subsets["train"].images,
        config.bn_recalibration_batches,
        config.batch_size,
        config.seed,
        epoch,
        run.dp,
    )


def learning_rate(run, step: int) -> float:
    """The schedule's rate at `step`: optax's jnp ops on host scalars, allowed here by name
    (a run on device data may be under jax.transfer_guard("disallow"))."""
    with jax.transfer_guard("allow"):
        return float(run.learning_rate_fn(step))


def save(run, step: int, state, progress: dict, metrics: dict | None = None):
    """Every checkpoint goes through here: a state with a NaN or inf is never saved."""
    tree = state_lib.state_tree(state)
    faults.check_finite_state(tree, step, run.manager)
    checkpointing.save(run.manager, step, tree, progress, metrics=metrics)


class CurvePlotter:
    """Redraws curves.png in one background thread, in order, so that training does not wait for
    matplotlib. `close` waits for the drawings; a failed one is logged, not raised: the figure
    only shows what metrics.jsonl holds."""

    def __init__(self):
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="curves")

    def draw(self, history: list, path: str, title: str = ""):
        self._executor.submit(_draw, [dict(r) for r in history], path, title)

    def close(self):
        self._executor.shutdown(wait=True)


def _draw(history: list, path: str, title: str):
    try:
        run_files.plot_curves(history, path, title=title)
    except Exception as e:  # noqa: BLE001 (any failure of a figure leaves the run going)
        logging.warning("%s was not redrawn: %s: %s", path, type(e).__name__, e)
