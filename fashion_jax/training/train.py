"""The training run: `train_and_evaluate(config, workdir)`.

It reads as its steps: check the config, set up (data, model, state, checkpoints, writers, the
compilation cache), resume if the workdir has checkpoints, then per epoch train and end the epoch
(epoch_end.py: precise BN, validate, early stopping, checkpoint, metrics, curves), and summarise. Running it again on the
same workdir resumes from the latest checkpoint and ends with the same parameters as an
uninterrupted run.
"""

import dataclasses
import time

from absl import logging
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from fashion_jax import logging_setup
from fashion_jax import models
from fashion_jax.data import dataset
from fashion_jax.data import host_rows
from fashion_jax.data import input_pipeline
from fashion_jax.training import batch_norm
from fashion_jax.training import checkpointing
from fashion_jax.training import compilation_cache
from fashion_jax.training import config_checks
from fashion_jax.training import distill
from fashion_jax.training import epoch_end
from fashion_jax.training import faults
from fashion_jax.training import health
from fashion_jax.training import lengths
from fashion_jax.training import losses as losses_lib
from fashion_jax.training import metric_writers
from fashion_jax.training import optim
from fashion_jax.training import parallel
from fashion_jax.training import profiling
from fashion_jax.training import run_files
from fashion_jax.training import run_progress
from fashion_jax.training import state as state_lib
from fashion_jax.training import steps


@dataclasses.dataclass
class _Run:
    """Everything an epoch needs that does not change during the run."""

    config: ml_collections.ConfigDict
    workdir: str
    dp: parallel.DataParallel
    is_main: bool
    data: dataset.FashionData
    model: object
    learning_rate_fn: object
    steps_per_epoch: int
    lengths: lengths.RunLengths
    run_steps: steps.TrainStepRunner
    evaluate: steps.SubsetMetrics
    recalibrate_on_device: batch_norm.DeviceRecalibration | None
    sampling: np.ndarray | None
    manager: object
    rng: jax.Array
    parameter_counts: dict
    writer: metric_writers.NoOpWriter = dataclasses.field(default_factory=metric_writers.NoOpWriter)
    preemption: faults.PreemptionWatch = dataclasses.field(default_factory=faults.PreemptionWatch)
    plotter: epoch_end.CurvePlotter = dataclasses.field(default_factory=epoch_end.CurvePlotter)
    profiler: profiling.StepProfiler = dataclasses.field(default_factory=profiling.StepProfiler)
    compiled: bool = False  # Whether the train step has run (compiled) in this process.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) in `workdir`; returns the summary written to summary.json.

    Holds the workdir's lock throughout; a SIGTERM saves at the current step and raises
    PreemptedError, a full disk raises DiskFullError (faults.py)."""
    config_checks.check_train_config(config, workdir)
    config_checks.check_for_devices(config)  # Here: after run_train.py joined other processes.
    dp = parallel.DataParallel.over_all_devices()
    compilation_cache.configure(config.get("compilation_cache_dir", ""))
    lock = faults.lock_workdir(workdir)
    try:
        with (
            faults.disk_full_stops(workdir),
            faults.peer_loss_stops(workdir),
            faults.PreemptionWatch() as preemption,
        ):
            run, state = _set_up(config, workdir, dp)
            run.preemption = preemption
            try:
                return _train(run, state)
            except BaseException as e:
                if not faults.is_peer_lost(e):  # Saves wait at barriers for every process.
                    faults.finish_saves(run.manager)
                raise
            finally:
                run.plotter.close()
    finally:
        if lock:
            lock.release()


def _train(run: "_Run", state) -> dict:
    state, progress, step = _resume(run, state)
    workdir = run.workdir
    run.writer = metric_writers.create_default_writer(workdir, run.is_main, resumed_step=step)
    if not step:
        run.writer.write_hparams(run_files.flatten_config(run.config))
    run.profiler = profiling.StepProfiler.for_run(run.config, workdir, run.is_main)
    epoch = step // run.steps_per_epoch
    while not progress["early_stopped"] and epoch < run.config.num_epochs:
        state, step, sums, timing = _run_epoch(run, state, progress, step, epoch)
        state = epoch_end.end_epoch(run, state, progress, step, epoch, sums, timing)
        epoch += 1
        more = not progress["early_stopped"] and epoch < run.config.num_epochs
        if more and run.preemption.requested():  # The epoch end has just been saved.
            run.manager.wait_until_finished()
            run.preemption.stop(workdir, step)
    run.profiler.stop(state)  # A trace longer than the run ends with it.
    return _summarise(run, state, progress)


def _set_up(config, workdir: str, dp: parallel.DataParallel):
    """Data, model, loss, schedule, initial state, step runners and the checkpoint manager; the
    resolved config (with the dataset folder actually read) is written into the workdir."""
    is_main = parallel.is_main_process()
    data = dataset.load_data(
        config.data,
        workdir if is_main else None,
        show_progress=logging_setup.progress_bars_wanted(config.progress_bar and is_main),
        in_memory=host_rows.subsets_in_memory(jax.process_count()),  # Several: each its share.
    )
    config = _resolved(config, data)
    train = data.subsets["train"]
    logging.info(
        "Classes %s; images: %s", data.class_names, {k: len(v) for k, v in data.subsets.items()}
    )
    image_shape = train.images.shape[1:]
    model = models.create_model(config.model, models.output_classes(data.class_names, data.heads))
    loss_spec = losses_lib.spec_for_data(config, data)
    steps_per_epoch = input_pipeline.steps_per_epoch(len(train), config.batch_size)
    run_lengths = lengths.resolve(config, len(train), config.batch_size)
    learning_rate_fn = optim.create_learning_rate_fn(
        config.optimizer, config.num_epochs * steps_per_epoch, config.batch_size, len(train)
    )
    logging.info(
        "%s; lengths in steps (%d per epoch): %s.",
        optim.describe_learning_rate(config.optimizer, config.batch_size),
        steps_per_epoch,
        run_lengths,
    )
    # A resumed run takes everything from its own checkpoint, not from --config.init_checkpoint.
    resuming = checkpointing.has_checkpoints(workdir)
    # Data-dependent initial values only for a fresh start: not over a checkpoint's parameters.
    fresh = not resuming and not config.init_checkpoint
    state = state_lib.create_train_state(
        config,
        model,
        learning_rate_fn,
        image_shape,
        dp.replicated,
        not resuming,
        run_lengths.ema_decay,
        models.initial_params(config.model, train.images) if fresh else None,
    )
    parameter_counts = state_lib.count_parameters(state)
    run_steps = steps.TrainStepRunner(
        dp,
        train,
        config,
        loss_spec,
        steps_per_epoch,
        workdir,
        norm_periods=(run_lengths.log_every_steps, steps_per_epoch),  # What the log shows.
        teacher_targets=distill.teacher_targets(config.loss, data, config.eval_batch_size),
    )
    logging.info(
        "Parameters: %s; %s; training data on device: %s; steps per dispatch: %d.",
        parameter_counts,
        dp.mesh,
        run_steps.on_device,
        run_steps.steps_per_dispatch,
    )
    meta = {
        "class_names": data.class_names,
        "model": config.model.to_dict(),
        "image_shape": list(image_shape),
        "label_column": config.data.label_column,
        "heads": data.heads,
        "parameter_counts": parameter_counts,
        "config": config.to_json(),
    }
    if is_main:
        run_files.write_config(workdir, config)
    run = _Run(
        config=config,
        workdir=workdir,
        dp=dp,
        is_main=is_main,
        data=data,
        model=model,
        learning_rate_fn=learning_rate_fn,
        steps_per_epoch=steps_per_epoch,
        lengths=run_lengths,
        run_steps=run_steps,
        evaluate=steps.SubsetMetrics(
            dp,
            config.eval_batch_size,
            loss_spec,
            config.get("val_tta", "none"),
            on_device=run_steps.on_device,
            workdir=workdir,
        ),
        recalibrate_on_device=batch_norm.DeviceRecalibration(model, run_steps.images, dp)
        if run_steps.on_device
        and not run_steps.per_epoch_upload
        and config.bn_recalibration_batches
        else None,
        sampling=input_pipeline.sampling_probabilities(train.labels, config.data.sampling),
        manager=checkpointing.create_manager(workdir, config.checkpoint.keep_epochs, meta),
        rng=jax.jit(lambda: jax.random.key(config.seed), out_shardings=dp.replicated)(),
        parameter_counts=parameter_counts,
    )
    return run, state


def _resolved(config, data: dataset.FashionData) -> ml_collections.ConfigDict:
    """A copy of `config` with the dataset folder that was actually read."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.data_dir = data.data_dir
    return config


def _resume(run: _Run, state):
    """(state, progress, step): the newest readable checkpoint's if the workdir has one, else
    fresh. Unreadable newer ones (a file cut short) are moved aside with a warning."""
    manager = run.manager
    if manager.latest_step() is None:
        return state, run_progress.new_progress(), 0
    run_progress.warn_about_config_changes(
        checkpointing.run_metadata(manager).get("config"), run.config
    )
    step, tree, progress = checkpointing.restore_newest_readable(
        manager, run.workdir, checkpointing.abstract_tree(state_lib.state_tree(state))
    )
    # Early stopping is re-judged with this run's patience and target, so a stopped run can be
    # continued with more patience (and more epochs).
    progress["early_stopped"] = run_progress.should_stop(progress, run.config.early_stopping)
    logging.info("Resumed from checkpoint at step %d (epoch %d).", step, len(progress["history"]))
    return state.replace(**tree), progress, step


def _run_epoch(run: _Run, state, progress: dict, step: int, epoch: int):
    """Trains from `step` to the end of `epoch`: (state, step, metric sums, timing)."""
    config = run.config
    first_step = step % run.steps_per_epoch
    partial = health.with_norm_sums(progress["partial_sums"]) if first_step else None
    sums = run.dp.replicate({k: np.float32(v) for k, v in partial.items()}) if partial else None
    logged_sums, logged_time = dict(partial or {}), time.time()
    bar = tqdm(
        total=run.steps_per_epoch * config.batch_size,
        initial=first_step * config.batch_size,
        desc=f"epoch {epoch + 1}/{config.num_epochs}",
        unit="img",
        unit_scale=True,
        disable=not logging_setup.progress_bars_wanted(config.progress_bar and run.is_main),
        mininterval=1,
        leave=False,
    )
    start, images, compile_seconds, compile_images = time.time(), 0, 0.0, 0
    run.run_steps.start_epoch(epoch, first_step)  # Several processes: each its own rows.
    uncounted = (0.0, 0)  # Compile time and images not yet left out of a logged img/s.
    for chunk_start, indices in input_pipeline.train_indices(
        len(run.data.subsets["train"]),
        config.batch_size,
        config.seed,
        epoch,
        first_step,
        run.dp.process_rows(config.batch_size),
        run.run_steps.steps_per_dispatch,
        run.sampling,
    ):
        call_start = time.time()
        state, sums = run.run_steps(state, sums, indices, run.rng)
        if not run.compiled:  # The first call compiles: timed apart, left out of img/s.
            jax.block_until_ready(sums)
            compile_seconds = time.time() - call_start
            compile_images, run.compiled = len(indices) * config.batch_size, True
            uncounted = (compile_seconds, compile_images)
        previous_step, step = step, step + len(indices)
        run.profiler.after_dispatch(step, sums)
        images += len(indices) * config.batch_size
        bar.update(len(indices) * config.batch_size)
        last_of_epoch = chunk_start + len(indices) == run.steps_per_epoch
        log = _crossed(previous_step, step, run.lengths.log_every_steps) or last_of_epoch
        save = _crossed(previous_step, step, run.lengths.checkpoint_every_steps)
        # A SIGTERM at the epoch's last step is saved by the epoch end.
        stop = not last_of_epoch and run.preemption.requested()
        if log or save or stop:
            host_sums = run.dp.to_host(sums)
            faults.check_finite_loss(host_sums, step, epoch, run.manager)
        if log:
            logged_sums, logged_time = _log_interval(
                run, step, host_sums, logged_sums, logged_time, uncounted
            )
            uncounted = (0.0, 0)
            bar.set_postfix(loss=f"{host_sums['loss_sum'] / host_sums['count']:.4f}")
        if (save or stop) and not last_of_epoch:
            progress["partial_sums"] = {k: float(v) for k, v in host_sums.items()}
            epoch_end.save(run, step, state, progress)
        if stop:
            run.manager.wait_until_finished()
            run.preemption.stop(run.workdir, step)
    bar.close()
    seconds = time.time() - start
    timing = {
        "train_seconds": seconds,
        "compile_seconds": compile_seconds,
        "images_per_second": (images - compile_images) / max(seconds - compile_seconds, 1e-9),
        "resumed_mid_epoch": bool(first_step),
    }
    return state, step, sums, timing


def _log_interval(run: _Run, step, host_sums, logged_sums, logged_time, uncounted):
    """Writes train/* scalars of the steps since the last log (img/s without the compiling
    step, `uncounted` = (its seconds, its images)); returns the new reference point."""
    now = time.time()
    interval = {k: float(v) - float(logged_sums.get(k, 0.0)) for k, v in host_sums.items()}
    if interval["count"] > 0:
        numbers = losses_lib.summarize(interval)
        seconds = now - logged_time - uncounted[0]
        images = interval["count"] - uncounted[1]
        run.writer.write_scalars(
            step,
            {
                "train/loss": numbers["loss"],
                "train/accuracy": numbers["accuracy"],
                "train/learning_rate": epoch_end.learning_rate(run, step),
                "train/images_per_second": images / seconds if images > 0 else 0.0,
                **health.interval_scalars(interval),
            },
        )
    return {k: float(v) for k, v in host_sums.items()}, now


def _summarise(run: _Run, state, progress: dict) -> dict:
    """Restores the best epoch (if asked), validates it and writes summary.json."""
    config, manager = run.config, run.manager
    manager.wait_until_finished()
    final_step = manager.latest_step()
    if config.early_stopping.restore_best and progress["best_step"] >= 0:
        final_step = progress["best_step"]
        state = state.replace(
            **checkpointing.restore_state(
                manager, final_step, checkpointing.abstract_tree(state_lib.state_tree(state))
            )
        )
    final_val = run.evaluate(state.for_evaluation(), run.data.subsets["val"])
    history = progress["history"]
    summary = {
        "final_step": final_step,
        "best_epoch": progress["best_epoch"],
        "epochs_run": len(history),
        "monitor": config.early_stopping.monitor,
        "val_loss": final_val["loss"],
        "val_accuracy": final_val["accuracy"],
        "val_images": final_val["count"],
        "train_images": len(run.data.subsets["train"]),
        "train_subsets": list(dataset.trained_subsets(config.data)),  # val too: not held out.
        "val_heads": {k: v for k, v in final_val.items() if "/" in k},
        "train_seconds": sum(r["train_seconds"] for r in history),
        "images_per_second_median": float(np.median([r["images_per_second"] for r in history]))
        if history
        else None,
        "parameter_counts": run.parameter_counts,
        "class_names": run.data.class_names,
        "skipped_rows": len(run.data.skipped),
        "data_dir": run.data.data_dir,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
    }
    if run.is_main:
        run_files.write_json(run.workdir, run_files.SUMMARY_FILE, summary)
    run.writer.close()
    manager.close()
    logging.info(
        "Done: best epoch %d, val accuracy %.4f on %d images.",
        summary["best_epoch"],
        summary["val_accuracy"],
        summary["val_images"],
    )
    return summary


def _crossed(previous_step: int, step: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (previous_step, step]."""
    return step // every > previous_step // every
