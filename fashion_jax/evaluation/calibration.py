"""Calibration (temperature scaling, reliability bins) and selective prediction.

Like metrics.py, everything works from log-probabilities [N, C] and integer labels [N], whatever
head produced them. A prediction's confidence is its top-1 probability, computed in float64 from
the float32 log-probabilities by `top1_confidence` everywhere (evaluation and --predict), so a
threshold found here selects the same images when it is given back as --review_threshold.
"""

import numpy as np
from scipy import optimize
from scipy import special

from fashion_jax.evaluation import metrics

TEMPERATURE_BOUNDS = (0.05, 20.0)


def top1_confidence(log_probs: np.ndarray) -> np.ndarray:
    """Top-1 probability per row, float64."""
    return np.exp(np.asarray(log_probs, np.float64).max(-1))


def _nll(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of softmax(log_probs) (renormalised)."""
    return float(
        (special.logsumexp(log_probs, axis=-1) - log_probs[np.arange(len(labels)), labels]).mean()
    )


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(log_probs / T), searched over log T in
    [log 0.05, log 20] (bounded Brent; the NLL is convex in 1/T, hence unimodal in log T)."""
    log_probs = np.asarray(log_probs, np.float64)
    labels = np.asarray(labels)
    if not len(labels):
        raise ValueError("fit_temperature needs at least one labelled prediction.")
    result = optimize.minimize_scalar(
        lambda log_t: _nll(log_probs / np.exp(log_t), labels),
        method="bounded",
        bounds=tuple(np.log(TEMPERATURE_BOUNDS)),
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def apply_temperature(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """log_softmax(log_probs / T), in the input's float dtype (argmax is unchanged)."""
    log_probs = np.asarray(log_probs)
    scaled = np.asarray(log_probs, np.float64) / temperature
    scaled = scaled - special.logsumexp(scaled, axis=-1, keepdims=True)
    return scaled.astype(log_probs.dtype if log_probs.dtype.kind == "f" else np.float64)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> dict:
    """Per equal-width confidence bin (bin b holds (b/n, (b+1)/n], as in
    metrics.expected_calibration_error): image count, mean confidence and accuracy (NaN when
    empty), plus the bin edges. ECE = sum(count / N * |accuracy - confidence|)."""
    probabilities = np.asarray(probabilities, np.float64)
    confidence, correct = probabilities.max(-1), probabilities.argmax(-1) == labels
    bins = metrics.confidence_bins(confidence, num_bins)
    count = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, confidence, num_bins) / count
        accuracy = np.bincount(bins, correct.astype(np.float64), num_bins) / count
    return {
        "count": count,
        "confidence": mean_confidence,
        "accuracy": accuracy,
        "edges": np.linspace(0.0, 1.0, num_bins + 1),
    }


def threshold_for_precision(
    log_probs: np.ndarray, labels: np.ndarray, target_precision: float
) -> dict:
    """The confidence threshold t giving the largest coverage whose accepted set (top-1
    probability >= t) has precision >= target; t is then the smallest such threshold.

    Precision is not monotone in t, so every cut is tried: sort by confidence descending, take
    the last position where the cumulative precision reaches the target, counting only cuts at
    the end of a group of equal confidences (ties are accepted or rejected together). Returns
    {threshold, coverage, precision, accepted, count, target_precision}; threshold and precision
    are None (coverage 0) when no threshold reaches the target.
    """
    confidence = top1_confidence(log_probs)
    correct = np.asarray(log_probs).argmax(-1) == np.asarray(labels)
    count = len(confidence)
    result = {
        "target_precision": float(target_precision),
        "threshold": None,
        "coverage": 0.0,
        "precision": None,
        "accepted": 0,
        "count": int(count),
    }
    if not count:
        return result
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    precision = np.cumsum(correct) / np.arange(1, count + 1)
    group_end = np.append(confidence[:-1] > confidence[1:], True)
    valid = np.flatnonzero(group_end & (precision >= target_precision))
    if not len(valid):
        return result
    last = int(valid[-1])
    return dict(
        result,
        threshold=float(confidence[last]),
        coverage=(last + 1) / count,
        precision=float(precision[last]),
        accepted=last + 1,
    )


def selective_metrics(log_probs: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict:
    """Accept predictions whose top-1 probability is >= threshold (None accepts none):
    {coverage, precision (None if none accepted), accepted, count}."""
    confidence = top1_confidence(log_probs)
    count = len(confidence)
    accepted = np.zeros(count, bool) if threshold is None else confidence >= threshold
    correct = np.asarray(log_probs).argmax(-1) == np.asarray(labels)
    n = int(accepted.sum())
    return {
        "coverage": n / count if count else 0.0,
        "precision": float(correct[accepted].mean()) if n else None,
        "accepted": n,
        "count": int(count),
    }


def calibration_summary(
    log_probs: np.ndarray, labels: np.ndarray, temperature: float | None, num_bins: int = 15
) -> dict:
    """ECE and NLL before and after scaling by `temperature` (None: before only), with the
    reliability bins of each (as JSON-able lists, None for an empty bin)."""

    def numbers(lp):
        probabilities = np.exp(np.asarray(lp, np.float64))
        bins = reliability_bins(probabilities, labels, num_bins)
        return (
            metrics.expected_calibration_error(probabilities, labels, num_bins),
            _nll(np.asarray(lp, np.float64), labels) if len(labels) else float("nan"),
            {
                k: [None if v != v else (int(v) if k == "count" else float(v)) for v in values]
                for k, values in bins.items()
                if k != "edges"
            },
        )

    ece, loss, bins = numbers(log_probs)
    summary = {
        "ece": ece,
        "loss": loss,
        "ece_scaled": None,
        "loss_scaled": None,
        "reliability": {"before": bins},
    }
    if temperature is not None:
        ece, loss, bins = numbers(apply_temperature(log_probs, temperature))
        summary.update(ece_scaled=ece, loss_scaled=loss)
        summary["reliability"]["after"] = bins
    return summary
