"""Numbers for one set of predictions on one subset: accuracy, loss, calibration, per class.

All take log-probabilities [N, C] and integer labels [N]; class indices follow `class_names`.
"""

import numpy as np
from sklearn import metrics as sk_metrics


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15
) -> float:
    """ECE: sum over equal-width confidence bins of (bin share) * |accuracy - mean confidence|."""
    if not len(labels):
        return float("nan")
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == labels
    bins = confidence_bins(confidence, num_bins)
    ece = 0.0
    for b in range(num_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def confidence_bins(confidence: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin b holds confidences in (b/num_bins, (b+1)/num_bins]; a confidence of 0 goes to bin 0."""
    return np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)


def top_k_accuracy(log_probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k highest scores (fewer than k classes
    score strictly higher than it, so ties count in its favour)."""
    if not len(labels):
        return float("nan")
    true_score = log_probs[np.arange(len(labels)), labels]
    return float(((log_probs > true_score[:, None]).sum(-1) < k).mean())


def top_classes_accuracy(log_probs: np.ndarray, labels: np.ndarray, top_classes) -> dict:
    """Accuracy on the images of `top_classes` with the argmax restricted to those classes (how
    a model trained on them only would be scored), and how many classes and images it covers."""
    top_classes = np.unique(np.asarray(top_classes, int))
    inside = np.isin(labels, top_classes)
    predicted = top_classes[log_probs[inside][:, top_classes].argmax(-1)]
    return {
        "top_classes_accuracy": float((predicted == labels[inside]).mean())
        if inside.any()
        else float("nan"),
        "top_classes_num_classes": int(len(top_classes)),
        "top_classes_count": int(inside.sum()),
    }


def evaluate(
    log_probs: np.ndarray,
    labels: np.ndarray,
    class_names: list,
    num_bins: int = 15,
    detailed: bool = True,
    top_classes=None,
) -> dict:
    """Accuracy, loss, ECE and macro/weighted F1; top-5 accuracy with more than 5 classes; with
    `top_classes` (class indices), accuracy restricted to them (see top_classes_accuracy); with
    `detailed`, per-class report and matrix."""
    log_probs = np.asarray(log_probs, np.float64)
    predictions = log_probs.argmax(-1)
    probabilities = np.exp(log_probs)
    classes = list(range(len(class_names)))
    report = sk_metrics.classification_report(
        labels,
        predictions,
        labels=classes,
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    result = {
        "count": int(len(labels)),
        "accuracy": float((predictions == labels).mean()),
        "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
        "ece": expected_calibration_error(probabilities, labels, num_bins),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "recall": {name: float(report[name]["recall"]) for name in class_names},
    }
    if len(class_names) > 5:
        result["top5_accuracy"] = top_k_accuracy(log_probs, labels, 5)
    if top_classes is not None:
        result.update(top_classes_accuracy(log_probs, labels, top_classes))
    if detailed:
        result["classification_report"] = {
            name: {
                k.replace("-score", ""): (int(v) if k == "support" else float(v))
                for k, v in report[name].items()
            }
            for name in list(class_names) + ["macro avg", "weighted avg"]
        }
        result["confusion_matrix"] = confusion_matrix(predictions, labels, len(class_names))
    return result


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> list:
    """Row-normalised (each true class sums to 1; a class without images is a row of 0)."""
    matrix = sk_metrics.confusion_matrix(
        labels, predictions, labels=list(range(num_classes)), normalize="true"
    )
    return np.nan_to_num(matrix).tolist()


def most_confident_mistakes(log_probs: np.ndarray, labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of misclassified images, most confident first."""
    predictions = log_probs.argmax(-1)
    wrong = np.flatnonzero(predictions != labels)
    confidence = log_probs[wrong, predictions[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:limit]
