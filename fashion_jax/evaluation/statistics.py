"""How sure a number is: intervals for accuracy, recall and macro F1, and paired tests.

- Accuracy: the Wilson score interval of a binomial proportion (exact enough at these sizes, and
  never outside [0, 1], unlike the normal approximation near 99%).
- Per-class recall and macro F1: a percentile bootstrap over the images (seeded, so a report is
  reproducible): resample the images with replacement, recompute, take the central quantiles.
- Two models on the same images: McNemar's exact test. Only the images exactly one of them gets
  right carry information; under "equally accurate" each such image is a fair coin, so the
  two-sided p-value is that of a binomial test on (only A right) of (only A + only B) at 1/2.
"""

import numpy as np
from scipy import stats


def wilson_interval(successes: int, total: int, level: float = 0.95) -> tuple:
    """(low, high) of the Wilson score interval for successes / total."""
    if total == 0:
        return (float("nan"), float("nan"))
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows true, columns predicted."""
    codes = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def recall_and_macro_f1(counts: np.ndarray) -> tuple:
    """(per-class recall [C], macro F1) from confusion counts; 0 where a class has no images or
    no predictions (scikit-learn's zero_division=0)."""
    true_positive = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, true_positive / support, 0.0)
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return recall, float(f1.mean())


def bootstrap_intervals(
    labels: np.ndarray,
    predictions: np.ndarray,
    num_classes: int,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals over the images: {"macro_f1": (lo, hi), "recall": [C x
    (lo, hi)]}. A class absent from a resample counts as recall 0 there, as in the report."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    rng = np.random.default_rng(seed)
    recalls, f1s = np.empty((samples, num_classes)), np.empty(samples)
    for b in range(samples):
        rows = rng.integers(0, len(labels), len(labels))
        recalls[b], f1s[b] = recall_and_macro_f1(
            confusion_counts(labels[rows], predictions[rows], num_classes)
        )
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {
        "macro_f1": tuple(float(v) for v in np.percentile(f1s, tails)),
        "recall": [
            tuple(float(v) for v in np.percentile(recalls[:, c], tails)) for c in range(num_classes)
        ],
    }


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test of two models' per-image correctness on the same images."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((correct_b & ~correct_a).sum())
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return {
        "images": int(len(correct_a)),
        "only_a_correct": only_a,
        "only_b_correct": only_b,
        "accuracy_difference": float(correct_a.mean() - correct_b.mean())
        if len(correct_a)
        else 0.0,
        "p_value": p_value,
    }
