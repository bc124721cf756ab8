"""Consistency of per-head predictions with the catalogue hierarchy (master > sub > article).

Heads are predicted independently, so their argmaxes can disagree (articleType "Tshirts" with
masterCategory "Footwear"). Here the allowed combinations are the label combinations observed in
the training subset (in the label space after merging and folding into "Other"), and decoding
picks, per image, the allowed combination with the highest summed log-probability.

Labels and predictions are integer class indices [N, H], one column per head in a fixed order;
-1 means missing. numpy, and scipy for the paired test (statistics.py).
"""

import numpy as np

from fashion_jax.evaluation import statistics

# Score elements ([rows, K]) computed at once by decode_consistent when chunk_size is not given.
_CHUNK_ELEMENTS = 1 << 22


def _as_2d_int(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array [N, H], got {array.dtype} {array.shape}")
    if (array < -1).any():
        raise ValueError(f"{name} has values below -1")
    return array.astype(np.int64)


def _codes(rows: np.ndarray, dims: tuple) -> np.ndarray:
    """One integer per row (-1 allowed), equal iff the rows are equal."""
    return np.ravel_multi_index(tuple((rows + 1).T), dims)


def allowed_combinations(labels: np.ndarray) -> np.ndarray:
    """Unique label combinations [K, H] (sorted), ignoring rows where any head is -1."""
    labels = _as_2d_int(labels, "labels")
    return np.unique(labels[(labels >= 0).all(1)], axis=0).reshape(-1, labels.shape[1])


def is_consistent(predictions: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """bool [N]: whether each row's combination is one of `allowed` [K, H]."""
    predictions = _as_2d_int(predictions, "predictions")
    allowed = _as_2d_int(allowed, "allowed")
    if predictions.shape[1] != allowed.shape[1]:
        raise ValueError(f"{predictions.shape[1]} heads in predictions, {allowed.shape[1]} allowed")
    if not len(predictions) or not len(allowed):
        return np.zeros(len(predictions), bool)
    dims = tuple(int(d) + 2 for d in np.maximum(predictions.max(0), allowed.max(0)))
    return np.isin(_codes(predictions, dims), _codes(allowed, dims))


def inconsistency_rate(predictions: np.ndarray, allowed: np.ndarray) -> float:
    """Share of rows whose combination is not allowed (nan for no rows)."""
    consistent = is_consistent(predictions, allowed)
    return float(1.0 - consistent.mean()) if len(consistent) else float("nan")


def decode_consistent(log_probs: list, allowed: np.ndarray, chunk_size: int = None) -> np.ndarray:
    """Per row, the allowed combination [H] maximising the sum over heads of log-probabilities.

    log_probs: H arrays [N, C_h]. Scores [rows, K] are gathered `chunk_size` rows at a time
    (default: about 4M scores per chunk). Ties go to the lowest index into `allowed`, so a
    consistent independent argmax is kept unless another allowed combination scores exactly
    the same.
    """
    allowed = _as_2d_int(allowed, "allowed")
    log_probs = [np.asarray(lp) for lp in log_probs]
    if len(log_probs) != allowed.shape[1]:
        raise ValueError(f"{len(log_probs)} heads of log-probabilities, {allowed.shape[1]} allowed")
    if not len(allowed):
        raise ValueError("no allowed combinations")
    num_rows = len(log_probs[0])
    for h, lp in enumerate(log_probs):
        if lp.ndim != 2 or len(lp) != num_rows:
            raise ValueError(f"head {h}: log-probabilities {lp.shape}, expected [{num_rows}, C]")
        if allowed[:, h].min() < 0 or allowed[:, h].max() >= lp.shape[1]:
            raise ValueError(f"head {h}: allowed classes outside 0..{lp.shape[1] - 1}")
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // len(allowed))
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    best = np.full(num_rows, -1, np.int64)
    for start in range(0, num_rows, chunk_size):
        rows = slice(start, start + chunk_size)
        scores = log_probs[0][rows][:, allowed[:, 0]].astype(np.float64)
        for h in range(1, len(log_probs)):
            scores += log_probs[h][rows][:, allowed[:, h]]
        best[rows] = scores.argmax(1)  # first maximum: lowest combination index
    return allowed[best]


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def hierarchy_report(
    log_probs: list,
    labels: np.ndarray,
    allowed: np.ndarray,
    head_names: list,
    chunk_size: int = None,
    decoded: np.ndarray = None,
) -> dict:
    """Independent argmax versus consistent decoding: accuracies, McNemar's exact test of the
    two on each head, inconsistency, exact matches (`decoded`: decode_consistent's result, when
    already computed).

    Per-head accuracy and the paired test use the rows where that head's label is present; exact
    match (all heads right) and `unseen_label_combinations` (true combination not in `allowed`,
    so decoding cannot get it right) use the rows where every label is present. Undefined shares
    are nan.
    """
    labels = _as_2d_int(labels, "labels")
    if not len(head_names) == len(log_probs) == labels.shape[1]:
        raise ValueError("head_names, log_probs and labels disagree on the number of heads")
    independent = np.stack([np.asarray(lp).argmax(1) for lp in log_probs], 1).astype(np.int64)
    if decoded is None:
        decoded = decode_consistent(log_probs, allowed, chunk_size)
    if independent.shape != labels.shape:
        raise ValueError(f"predictions {independent.shape} but labels {labels.shape}")
    present = labels >= 0
    complete = present.all(1)
    heads = {}
    for h, name in enumerate(head_names):
        rows = present[:, h]
        independent_right = independent[rows, h] == labels[rows, h]
        decoded_right = decoded[rows, h] == labels[rows, h]
        paired = statistics.mcnemar_exact(independent_right, decoded_right)
        heads[name] = {
            "count": int(rows.sum()),
            "independent_accuracy": _share(independent_right),
            "decoded_accuracy": _share(decoded_right),
            "only_independent_correct": paired["only_a_correct"],
            "only_decoded_correct": paired["only_b_correct"],
            "p_value": paired["p_value"],
        }
    return {
        "count": int(len(labels)),
        "num_allowed": int(len(allowed)),
        "heads": heads,
        "independent_inconsistency_rate": inconsistency_rate(independent, allowed),
        "decoded_inconsistency_rate": inconsistency_rate(decoded, allowed),
        "complete_count": int(complete.sum()),
        "independent_exact_match": _share((independent[complete] == labels[complete]).all(1)),
        "decoded_exact_match": _share((decoded[complete] == labels[complete]).all(1)),
        "unseen_label_combinations": int((~is_consistent(labels[complete], allowed)).sum()),
        "changed_rows": int((independent != decoded).any(1).sum()),
    }
