"""Knowledge distillation: finished runs (the teachers) give soft targets for the training images.

`--config.loss.distill_teachers` names workdirs of finished runs with the same heads, classes and
training rows as this run; their predictions on every training image (with test-time
augmentation `distill_tta`, the probabilities averaged over the teachers, as the prediction-
averaging ensemble does) are computed once, at the start, and each training step adds to every
head's loss the cross-entropy against them:
    (1 - w) * CE(labels) + w * T^2 * CE(softmax(teacher log-probabilities / T), student / T)
(Hinton et al. 2015), w = `distill_weight`, T = `distill_temperature`. So one network learns from
what an ensemble of K, which costs K times the inference, predicts.

Teachers that trained on every training image have all but memorised them: trained with label
smoothing, they give each its label at about 0.9 and little else. Cross-fitted teachers (fold
runs, --config.data.num_folds=K, one per fold) predict each training image as an unseen one: the
image's target is then the mean of the teachers that held it out.

Why the targets are computed once, on the unaugmented images, and not per step on the augmented
batch: the recipes that distil augment only by mirror flips, and a flip-TTA prediction is the same
for an image and its mirror, so the fixed target is the one a per-step teacher would give, at no
cost per step (K teacher passes per step would double a CPU step or more).

Why the training rows must be the teachers' own: a teacher trained on another split has seen some
of this run's val, test or control images, and its targets would carry their labels into training.
"""

import os
import time

from absl import logging
import numpy as np

from fashion_jax import errors
from fashion_jax import models
from fashion_jax import saved_runs
from fashion_jax.data import dataset
from fashion_jax.data import host_rows
from fashion_jax.inference import predictor
from fashion_jax.training import checkpointing
from fashion_jax.training import losses

TARGETS_DTYPE = np.float32


def check_config(loss_config) -> None:
    """A cheap look before any work: the weight, the temperature, the TTA and each teacher
    folder (it holds checkpoints)."""
    teachers = losses.distill_teachers(loss_config)
    if not teachers:
        return
    weight = loss_config.distill_weight
    if not 0.0 < weight <= 1.0:
        raise errors.ConfigError(
            f"--config.loss.distill_weight={weight} must be in (0, 1] when "
            "--config.loss.distill_teachers is set (1: the teachers' targets alone)."
        )
    if loss_config.distill_temperature <= 0:
        raise errors.ConfigError(
            f"--config.loss.distill_temperature={loss_config.distill_temperature} must be "
            "positive (1: the teachers' probabilities as they are)."
        )
    errors.check_choice("--config.loss.distill_tta", loss_config.distill_tta, models.TTA_MODES)
    for workdir in teachers:
        if not os.path.isdir(os.path.join(checkpointing.checkpoint_dir(workdir), "metadata")):
            raise errors.ConfigError(
                f"--config.loss.distill_teachers: {workdir} is not the workdir of a finished "
                "run_train.py run (no checkpoints/metadata); give the --workdir of each teacher."
            )


def teacher_targets(loss_config, data: dataset.FashionData, eval_batch_size: int):
    """Log-probabilities [train images, sum of the heads' classes] of the teachers' ensemble on
    every training image (heads side by side, in head order), or None without teachers.

    Cross-fitted teachers (fold runs, --config.data.num_folds) give each image the mean of the
    teachers that held it out, so that every target is a prediction on an unseen image."""
    teachers = losses.distill_teachers(loss_config)
    if not teachers:
        return None
    train = data.subsets["train"]
    started = time.perf_counter()
    probabilities, counts = 0.0, np.zeros(len(train), np.int64)
    runs = [saved_runs.open_run(workdir) for workdir in teachers]
    held_out = [_check_teacher(run, data) for run in runs]
    if len({h is None for h in held_out}) > 1:
        raise errors.ConfigError(
            "--config.loss.distill_teachers mixes fold runs (--config.data.num_folds) with runs "
            "on every training image: give only fold runs (cross-fitted targets) or only others."
        )
    for run, rows in zip(runs, held_out):
        step = saved_runs.select_step(
            run, loss_config.distill_checkpoint, "--config.loss.distill_checkpoint"
        )
        rows = np.arange(len(train)) if rows is None else np.flatnonzero(rows)
        log_probs = _predict(
            run, step, train.images, rows, eval_batch_size, loss_config.distill_tta
        )
        _log_agreement(run, step, log_probs, train.labels[rows], data)
        full = np.zeros((len(train), log_probs.shape[1]), np.float64)
        full[rows] = np.exp(log_probs)
        probabilities, counts[rows] = probabilities + full, counts[rows] + 1
    _check_every_row_has_a_teacher(counts, runs, held_out)
    logging.info(
        "Distillation targets of %d teachers for %d training images in %.1f s.",
        len(teachers),
        len(train),
        time.perf_counter() - started,
    )
    with np.errstate(divide="ignore"):  # A probability that underflowed to 0: log -inf.
        return np.log(probabilities / counts[:, None]).astype(TARGETS_DTYPE)


def _check_every_row_has_a_teacher(counts: np.ndarray, runs: list, held_out: list) -> None:
    if counts.min() > 0:
        return
    folds = {int(r.config.data.fold) for r, h in zip(runs, held_out) if h is not None}
    every = set(range(int(runs[0].config.data.num_folds)))
    raise errors.ConfigError(
        f"--config.loss.distill_teachers: {int((counts == 0).sum())} training images are held "
        f"out by none of the fold runs given (folds {sorted(folds)}); add the runs of "
        f"--config.data.fold={sorted(every - folds)} so that every image has a target."
    )


def _check_teacher(run: saved_runs.Run, data: dataset.FashionData):
    """The same heads and classes, in the same order, the same image shape and the same training
    rows as this run; else a ConfigError that says what differs. Returns, for a fold run, which
    of this run's training images it held out (bool [N]), else None."""
    flag = f"--config.loss.distill_teachers: {run.workdir}"
    mine = {h: tuple(c) for h, c in data.heads.items()} if data.heads else None
    if (run.heads or None) != mine or (not mine and run.class_names != tuple(data.class_names)):
        raise errors.ConfigError(
            f"{flag} predicts {run.heads or {run.config.data.label_column: run.class_names}}, "
            f"this run {mine or {'label': tuple(data.class_names)}}: a teacher needs the same "
            "heads and classes (the same --config.data.head_columns, label_column and "
            "other_min_count)."
        )
    train = data.subsets["train"]
    if tuple(run.image_shape) != tuple(train.images.shape[1:]):
        raise errors.ConfigError(
            f"{flag} takes images of shape {run.image_shape}, this run {train.images.shape[1:]}."
        )
    split = saved_runs.read_split(run)
    trained = split["subset"].isin(dataset.trained_subsets(run.config.data))
    theirs = np.sort(split["id"][trained].to_numpy())
    ours = np.sort(train.ids)
    if not np.array_equal(theirs, ours):
        differ = len(np.setxor1d(theirs, ours))
        raise errors.ConfigError(
            f"{flag} was trained on other rows: of its {len(theirs)} training images and this "
            f"run's {len(ours)}, {differ} are in one set only (another split_seed, data folder, "
            "max_rows or train_subsets?). Its targets would carry labels of this run's val, "
            "test or control images into training: distil only from runs on the same split."
        )
    if not run.config.data.get("num_folds"):
        return None
    folds = split.set_index("id")[dataset.FOLD_COLUMN].reindex(train.ids).astype(int)
    return folds.to_numpy() == int(run.config.data.fold)


def _images_of(images, rows: np.ndarray):
    """images[rows] (rows sorted and unique, so as many rows as images means all of them);
    cached rows stay lazy, in a CachedRows of their own, so that training's record of what it
    read (host_rows.write_record) stays what training itself held."""
    if isinstance(images, host_rows.CachedRows):
        return host_rows.CachedRows(images.cache, images.positions[rows])
    return images if len(rows) == len(images) else images[rows]


def _predict(run, step: int, images, rows: np.ndarray, batch_size: int, tta: str) -> np.ndarray:
    """The run's log-probabilities [len(rows), sum of classes] on images[rows], heads side by
    side."""
    variables = saved_runs.load_variables(run, step)
    log_probs = predictor.predict_array(
        run.model, variables, _images_of(images, rows), batch_size, tta=tta
    )
    return np.concatenate([log_probs[h] for h in run.heads] if run.heads else [log_probs], -1)


def _log_agreement(run, step: int, log_probs: np.ndarray, labels: np.ndarray, data) -> None:
    """Logs how many training labels the teacher gets right, head by head: near 100% on images
    it trained on, out-of-sample accuracy on those it held out."""
    labels = labels[:, None] if labels.ndim == 1 else labels
    names = list(data.heads) if data.heads else ["label"]
    sizes = [len(c) for c in data.heads.values()] if data.heads else [len(data.class_names)]
    offsets = np.cumsum([0] + sizes)
    parts = []
    for n, name in enumerate(names):
        present = labels[:, n] >= 0
        predicted = log_probs[:, offsets[n] : offsets[n + 1]].argmax(-1)
        parts.append(f"{name} {np.mean(predicted[present] == labels[present, n]):.2%}")
    held_out = run.config.data.get("num_folds")
    logging.info(
        "Teacher %s (step %d): accuracy on the %straining images: %s.",
        run.workdir,
        step,
        "held-out " if held_out else "",
        ", ".join(parts),
    )
