"""A run's progress besides its state: the epoch history, early stopping counters and the partial
sums of an interrupted epoch, saved as JSON with every checkpoint so that a resumed run continues
exactly where it stopped."""

import json
import math

from absl import logging


def new_progress() -> dict:
    """Everything besides the state that a resumed run needs (stored as JSON with checkpoints)."""
    return {"history": [], "best_monitored": math.inf, "best_epoch": -1, "best_step": -1,
            "epochs_without_improvement": 0, "early_stopped": False, "partial_sums": None}


def record_epoch(progress: dict, record: dict, monitor: str, patience: int):
    """Appends the epoch's record and updates the early-stopping counters in place."""
    progress["history"].append(record)
    if record[monitor] < progress["best_monitored"]:
        progress.update(best_monitored=record[monitor], best_epoch=record["epoch"],
                        best_step=record["step"], epochs_without_improvement=0)
    else:
        progress["epochs_without_improvement"] += 1
    progress["early_stopped"] = progress["epochs_without_improvement"] >= patience
    progress["partial_sums"] = None


def _flatten(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}


def warn_about_config_changes(saved_json, config):
    """Resuming with other settings is allowed (e.g. more epochs) but never silent."""
    if not saved_json:
        return
    saved, now = _flatten(json.loads(saved_json)), _flatten(json.loads(config.to_json()))
    changed = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
               if saved.get(k) != now.get(k)}
    if changed:
        logging.warning("Resuming with a config that differs from the one this run started with "
                        "(field: saved -> now): %s", changed)
