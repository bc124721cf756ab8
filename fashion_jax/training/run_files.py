"""What a person reads in a workdir: the resolved config, metrics.jsonl, curves.png (redrawn at
every epoch end, in the background) and summary.json."""

import json
import os

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
SUMMARY_FILE = "summary.json"


def flatten_config(tree, prefix: str = "") -> dict:
    """A (JSON-loaded) config as {"optimizer.learning_rate": 0.001, ...}."""
    if hasattr(tree, "to_dict"):
        tree = tree.to_dict()
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {
        k: v for key, sub in tree.items() for k, v in flatten_config(sub, f"{prefix}{key}.").items()
    }


def write_config(workdir: str, config):
    """The run's resolved config (the dataset folder actually read included), readable JSON."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def write_metrics(workdir: str, history: list):
    """Rewrites metrics.jsonl from the epoch history (exact after a resume)."""
    path = os.path.join(workdir, METRICS_FILE)
    with open(path + ".tmp", "w") as f:
        for record in history:
            f.write(json.dumps(record) + "\n")
    os.replace(path + ".tmp", path)


def read_metrics(workdir: str) -> list:
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(workdir: str, name: str, value: dict):
    with open(os.path.join(workdir, name), "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)


def plot_curves(history: list, path: str, title: str = ""):
    """Loss and accuracy per epoch, train and validation, in one PNG, replaced whole. Without
    pyplot's global state, so that it can draw in a background thread."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, label=split)
        ax_acc.plot(epochs, [100 * r[f"{split}_accuracy"] for r in history], style, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path + ".tmp", dpi=100, format="png")
    os.replace(path + ".tmp", path)
