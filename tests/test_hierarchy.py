"""fashion_jax.evaluation.hierarchy: allowed combinations, consistency, decoding, report.

The crafted example has three heads:
  master:  0 Accessories, 1 Apparel, 2 Footwear
  sub:     0 Bags, 1 Shoes, 2 Topwear
  article: 0 Handbags, 1 Sports Shoes, 2 Tshirts, 3 Casual Shoes
Expected numbers are worked out by hand in the comments.
"""

import numpy as np
import pytest

from fashion_jax.evaluation import hierarchy

# Training labels: duplicates and rows with a missing head ((1, -1, 0) and (-1, 0, 2) would add
# combinations that do not exist if they were not ignored).
TRAIN_LABELS = np.array(
    [[2, 1, 1], [0, 0, 0], [1, 2, 2], [2, 1, 3], [1, 2, 2], [1, -1, 0], [-1, 0, 2]]
)
ALLOWED = np.array([[0, 0, 0], [1, 2, 2], [2, 1, 1], [2, 1, 3]])

PROBS = [  # per head, rows 0..4
    np.array([[0.1, 0.3, 0.6], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]]),
    np.array([[0.2, 0.1, 0.7], [0.1, 0.8, 0.1], [0.4, 0.1, 0.5], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]),
    np.array(
        [
            [0.1, 0.2, 0.6, 0.1],
            [0.1, 0.3, 0.2, 0.4],
            [0.45, 0.05, 0.5, 0.0],
            [0.1, 0.6, 0.2, 0.1],
            [0.1, 0.1, 0.7, 0.1],
        ]
    ),
]
# Independent argmax: (2,2,2) x, (2,1,3) ok, (0,2,2) x, (2,1,1) ok, (1,2,2) ok.
# Row 0 products: (0,0,0) .002, (1,2,2) .126, (2,1,1) .012, (2,1,3) .006 -> (1,2,2).
# Row 2 products: (0,0,0) .126, (1,2,2) .05, (2,1,1) .0005, (2,1,3) 0 -> (0,0,0).
INDEPENDENT = np.array([[2, 2, 2], [2, 1, 3], [0, 2, 2], [2, 1, 1], [1, 2, 2]])
DECODED = np.array([[1, 2, 2], [2, 1, 3], [0, 0, 0], [2, 1, 1], [1, 2, 2]])
# Row 4's true combination (Apparel, Topwear, Handbags) was never seen in training.
LABELS = np.array([[1, 2, 2], [2, 1, 1], [0, 0, -1], [-1, 1, 1], [1, 2, 0]])


def log_probs():
    with np.errstate(divide="ignore"):
        return [np.log(p) for p in PROBS]


def random_log_probs(rng, num_rows, sizes, dtype=np.float64):
    out = []
    for size in sizes:
        logits = rng.normal(size=(num_rows, size)) * 2
        out.append((logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(dtype))
    return out


def random_allowed(rng, sizes, count):
    rows = np.stack([rng.integers(0, s, count) for s in sizes], 1)
    return hierarchy.allowed_combinations(rows)


def test_allowed_combinations_ignores_missing_and_duplicates():
    np.testing.assert_array_equal(hierarchy.allowed_combinations(TRAIN_LABELS), ALLOWED)
    empty = hierarchy.allowed_combinations(np.array([[-1, 0, 1]]))
    assert empty.shape == (0, 3)


def test_is_consistent_and_rate():
    np.testing.assert_array_equal(
        hierarchy.is_consistent(INDEPENDENT, ALLOWED), [False, True, False, True, True]
    )
    assert hierarchy.inconsistency_rate(INDEPENDENT, ALLOWED) == pytest.approx(0.4)
    assert hierarchy.inconsistency_rate(DECODED, ALLOWED) == 0.0
    # A missing value is never part of an allowed combination; large class indices are fine.
    assert not hierarchy.is_consistent(np.array([[0, 0, -1]]), ALLOWED)[0]
    assert not hierarchy.is_consistent(np.array([[0, 0, 500]]), ALLOWED)[0]
    with pytest.raises(ValueError):
        hierarchy.is_consistent(INDEPENDENT[:, :2], ALLOWED)


def test_decode_crafted_example():
    lp = log_probs()
    independent = np.stack([x.argmax(1) for x in lp], 1)
    np.testing.assert_array_equal(independent, INDEPENDENT)
    np.testing.assert_array_equal(hierarchy.decode_consistent(lp, ALLOWED), DECODED)


def test_ties_go_to_lowest_combination_index():
    uniform = [np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 4))]
    np.testing.assert_array_equal(hierarchy.decode_consistent(uniform, ALLOWED), ALLOWED[[0, 0]])
    reordered = ALLOWED[[3, 1, 0, 2]]
    np.testing.assert_array_equal(
        hierarchy.decode_consistent(uniform, reordered), reordered[[0, 0]]
    )


def test_decoding_is_the_best_allowed_combination():
    rng = np.random.default_rng(0)
    sizes = (4, 7, 11)
    allowed = random_allowed(rng, sizes, 30)
    lp = random_log_probs(rng, 200, sizes)
    decoded = hierarchy.decode_consistent(lp, allowed)
    assert hierarchy.is_consistent(decoded, allowed).all()
    for i in range(len(decoded)):  # brute force, one row at a time
        scores = [sum(lp[h][i, c[h]] for h in range(3)) for c in allowed]
        np.testing.assert_array_equal(decoded[i], allowed[int(np.argmax(scores))])


def test_chunked_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(1)
    sizes = (5, 9, 23)
    allowed = random_allowed(rng, sizes, 120)
    lp = random_log_probs(rng, 1001, sizes, np.float32)
    scores = sum(lp[h][:, allowed[:, h]].astype(np.float64) for h in range(3))  # [N, K]
    whole = allowed[scores.argmax(1)]
    np.testing.assert_array_equal(hierarchy.decode_consistent(lp, allowed, len(lp[0])), whole)
    for chunk_size in (1, 7, 256, 5000):
        np.testing.assert_array_equal(hierarchy.decode_consistent(lp, allowed, chunk_size), whole)
    monkeypatch.setattr(hierarchy, "_CHUNK_ELEMENTS", 1000)  # default: 8 rows per chunk
    np.testing.assert_array_equal(hierarchy.decode_consistent(lp, allowed), whole)


def test_consistent_argmax_is_unchanged():
    rng = np.random.default_rng(2)
    sizes = (3, 6, 10)
    lp = random_log_probs(rng, 300, sizes)
    independent = np.stack([x.argmax(1) for x in lp], 1)
    allowed = hierarchy.allowed_combinations(
        np.concatenate([independent, np.stack([rng.integers(0, s, 40) for s in sizes], 1)])
    )
    np.testing.assert_array_equal(hierarchy.decode_consistent(lp, allowed), independent)


def test_decode_rejects_bad_input():
    with pytest.raises(ValueError):
        hierarchy.decode_consistent(log_probs()[:2], ALLOWED)
    with pytest.raises(ValueError):
        hierarchy.decode_consistent(log_probs(), np.zeros((0, 3), int))
    with pytest.raises(ValueError):  # class 3 does not exist in the master head
        hierarchy.decode_consistent(log_probs(), np.array([[3, 0, 0]]))


def test_report_crafted_example():
    report = hierarchy.hierarchy_report(
        log_probs(), LABELS, ALLOWED, ["masterCategory", "subCategory", "articleType"]
    )
    heads = report["heads"]
    # master: rows 0,1,2,4 labelled; independent wrong on row 0.
    # Paired: one image only the decoding gets right, none only the independent argmax (p = 1).
    paired = {"only_independent_correct": 0, "only_decoded_correct": 1, "p_value": 1.0}
    assert heads["masterCategory"] == {
        "count": 4,
        "independent_accuracy": 0.75,
        "decoded_accuracy": 1.0,
        **paired,
    }
    # sub: all rows labelled; independent wrong on row 2.
    assert heads["subCategory"] == {
        "count": 5,
        "independent_accuracy": 0.8,
        "decoded_accuracy": 1.0,
        **paired,
    }
    # article: rows 0,1,3,4 labelled; both wrong on rows 1 and 4 (row 2, missing, not counted).
    assert heads["articleType"] == {
        "count": 4,
        "independent_accuracy": 0.5,
        "decoded_accuracy": 0.5,
        "only_independent_correct": 0,
        "only_decoded_correct": 0,
        "p_value": 1.0,
    }
    assert report["count"] == 5 and report["num_allowed"] == 4
    assert report["independent_inconsistency_rate"] == pytest.approx(0.4)
    assert report["decoded_inconsistency_rate"] == 0.0
    # Complete rows 0, 1, 4: independent gets none exactly right, decoded gets row 0.
    assert report["complete_count"] == 3
    assert report["independent_exact_match"] == 0.0
    assert report["decoded_exact_match"] == pytest.approx(1 / 3)
    assert report["unseen_label_combinations"] == 1
    assert report["changed_rows"] == 2


def test_report_without_labels_gives_nan():
    labels = np.full((5, 3), -1)
    report = hierarchy.hierarchy_report(log_probs(), labels, ALLOWED, ["m", "s", "a"])
    assert report["heads"]["m"]["count"] == 0
    assert np.isnan(report["heads"]["m"]["independent_accuracy"])
    assert report["complete_count"] == 0 and np.isnan(report["decoded_exact_match"])
    assert report["changed_rows"] == 2


def test_the_paired_test_counts_the_images_only_one_way_gets_right():
    # Row 0 ten times (only the decoding right on master) and row 3 once (both right).
    rows = [0] * 10 + [3]
    lp = [x[rows] for x in log_probs()]
    labels = np.array([[1, 2, 2]] * 10 + [[2, 1, 1]])
    master = hierarchy.hierarchy_report(lp, labels, ALLOWED, ["m", "s", "a"])["heads"]["m"]
    assert (master["only_independent_correct"], master["only_decoded_correct"]) == (0, 10)
    assert master["p_value"] == pytest.approx(2 * 0.5**10)
