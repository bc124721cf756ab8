"""A run's progress besides its state: the epoch history, early stopping counters and the partial
sums of an interrupted epoch, saved as JSON with every checkpoint so that a resumed run continues
exactly where it stopped."""

import json
import math

from absl import logging

from fashion_jax.training import run_files


def new_progress() -> dict:
    """Everything besides the state that a resumed run needs (stored as JSON with checkpoints)."""
    return {
        "history": [],
        "best_monitored": math.inf,
        "best_epoch": -1,
        "best_step": -1,
        "epochs_without_improvement": 0,
        "early_stopped": False,
        "partial_sums": None,
    }


def should_stop(progress: dict, early_stopping) -> bool:
    """config.early_stopping's verdict on the epochs so far: `patience` epochs without a better
    monitored value, or a val accuracy that reached `target_accuracy` (when > 0)."""
    target = early_stopping.get("target_accuracy", 0.0)
    history = progress["history"]
    reached = bool(target and history and history[-1]["val_accuracy"] >= target)
    return reached or progress["epochs_without_improvement"] >= early_stopping.patience


def record_epoch(progress: dict, record: dict, early_stopping):
    """Appends the epoch's record and updates the early-stopping counters in place."""
    progress["history"].append(record)
    monitor = early_stopping.monitor
    if record[monitor] < progress["best_monitored"]:
        progress.update(
            best_monitored=record[monitor],
            best_epoch=record["epoch"],
            best_step=record["step"],
            epochs_without_improvement=0,
        )
    else:
        progress["epochs_without_improvement"] += 1
    progress["early_stopped"] = should_stop(progress, early_stopping)
    progress["partial_sums"] = None


def epoch_record(
    epoch: int,
    step: int,
    train_metrics: dict,
    val_metrics: dict,
    learning_rate: float,
    timing: dict,
) -> dict:
    """One line of metrics.jsonl: the epoch's train and validation numbers (per head too, as
    train_accuracy/<head>, val_loss/<head>), its learning rate and timing."""
    record = {
        "epoch": epoch,
        "step": step,
        "train_loss": train_metrics["loss"],
        "train_accuracy": train_metrics["accuracy"],
        "val_loss": val_metrics["loss"],
        "val_accuracy": val_metrics["accuracy"],
        "learning_rate": learning_rate,
        **timing,
    }
    record.update(
        {
            f"{prefix}_{key}": value
            for prefix, metrics in (("train", train_metrics), ("val", val_metrics))
            for key, value in metrics.items()
            if "/" in key
        }
    )
    return record


def epoch_scalars(record: dict) -> dict:
    """The epoch record as slash-namespaced scalars: val/loss, val/accuracy/<head>,
    epoch/train_loss, epoch/images_per_second, ..."""
    scalars = {}
    for key, value in record.items():
        if (
            key in ("epoch", "step")
            or isinstance(value, bool)
            or not isinstance(value, (int, float))
        ):
            continue
        prefix, _, rest = key.partition("_")
        if prefix == "val":
            scalars[f"val/{rest}"] = value
        else:
            scalars[f"epoch/{key}"] = value
    return scalars


def warn_about_config_changes(saved_json, config):
    """Resuming with other settings is allowed (e.g. more epochs) but never silent. A field added
    since the run started (such as a length in examples) counts only when it is set: unset (0,
    None, "") it cannot change what the run does."""
    if not saved_json:
        return
    saved = run_files.flatten_config(json.loads(saved_json))
    now = run_files.flatten_config(json.loads(config.to_json()))
    changed = {
        k: (saved.get(k), now.get(k))
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k) and (k in saved or now.get(k) not in (0, None, "", []))
    }
    if changed:
        logging.warning(
            "Resuming with a config that differs from the one this run started with "
            "(field: saved -> now): %s",
            changed,
        )
