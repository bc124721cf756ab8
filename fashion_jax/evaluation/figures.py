"""PNG figures of an evaluation: confusion-matrix heatmaps, misclassified-image galleries and
reliability diagrams."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save_with_title(fig, path: str, title: str):
    """Saves and closes a figure, with `title` above all its panels."""
    if title:
        fig.suptitle(title, fontsize=10)
    # Leaves the top 0.45 inch to the title, which tight_layout alone would overlap.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()) if title else None)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(matrix, class_names: list, path: str, title: str = ""):
    """Row-normalised confusion matrix with class names and each cell's value."""
    matrix = np.asarray(matrix, np.float64)
    size = max(4.5, 0.9 * len(class_names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=class_names)
    for (row, column), value in np.ndenumerate(matrix):
        ax.text(
            column,
            row,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=9,
            color="white" if value > 0.5 else "black",
        )
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_misclassified(
    images: np.ndarray, captions: list, path: str, title: str = "", columns: int = 8
):
    """A grid of images (uint8 [N, H, W, 3]) with a caption each; a note if there are none."""
    count = len(images)
    rows = max(1, math.ceil(count / columns))
    width = min(columns, max(count, 1))
    fig, axes = plt.subplots(
        rows, width, figsize=(1.9 * width + 0.4, 2.9 * rows + 0.6), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    if not count:
        axes[0, 0].text(0.5, 0.5, "No misclassified images", ha="center", va="center")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7)
    _save_with_title(fig, path, title)


def plot_reliability(curves: dict, path: str, title: str = ""):
    """Reliability diagram: accuracy against mean confidence per bin (left) and the share of
    images per bin (right), one line per curve. `curves`: label -> calibration.reliability_bins
    output (count, confidence, accuracy; NaN or None for an empty bin)."""
    fig, (ax, share_ax) = plt.subplots(1, 2, figsize=(10, 4.5))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect calibration")
    for (label, bins), marker in zip(curves.items(), "os^d"):
        count = np.asarray(bins["count"], np.float64)
        confidence = np.asarray(bins["confidence"], np.float64)
        accuracy = np.asarray(bins["accuracy"], np.float64)
        used = count > 0
        ax.plot(confidence[used], accuracy[used], marker=marker, label=label)
        edges = np.linspace(0.0, 1.0, len(count) + 1)
        share_ax.stairs(count / max(count.sum(), 1), edges, label=label)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="mean confidence (top-1 probability)",
        ylabel="accuracy",
        title="reliability",
    )
    ax.legend(loc="upper left", fontsize=8)
    share_ax.set(
        yscale="log",
        xlim=(0, 1),
        xlabel="confidence bin",
        ylabel="share of images",
        title="images per bin",
    )
    share_ax.set_ylim(top=3.0)  # Room above a bin holding every image for the legend.
    share_ax.legend(loc="upper left", fontsize=8)
    _save_with_title(fig, path, title)
