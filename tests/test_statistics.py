"""Intervals and paired tests (evaluation/statistics.py) against direct computations."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn import metrics as sk_metrics

from fashion_jax.evaluation import statistics


@pytest.mark.parametrize("successes,total", [(4157, 4208), (0, 12), (12, 12), (5, 9)])
def test_wilson_interval_matches_scipy(successes, total):
    expected = scipy_stats.binomtest(successes, total).proportion_ci(0.95, method="wilson")
    low, high = statistics.wilson_interval(successes, total, 0.95)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


def test_mcnemar_exact_counts_the_discordant_images_and_sums_the_binomial():
    a = np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 1, 0, 1, 0, 0], bool)
    result = statistics.mcnemar_exact(a, b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (4, 1)
    # Two-sided exact: twice the tail P(X <= 1) for X ~ Binomial(5, 1/2), capped at 1.
    tail = sum(math.comb(5, k) for k in (0, 1)) / 2**5
    assert result["p_value"] == pytest.approx(min(1.0, 2 * tail))
    assert result["accuracy_difference"] == pytest.approx(0.3)
    assert statistics.mcnemar_exact(a, a)["p_value"] == 1.0


def test_bootstrap_recomputes_recall_and_macro_f1_on_resampled_images():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 200)
    predictions = np.where(rng.random(200) < 0.8, labels, rng.integers(0, 3, 200))
    counts = statistics.confusion_counts(labels, predictions, 3)
    recall, macro_f1 = statistics.recall_and_macro_f1(counts)
    assert macro_f1 == pytest.approx(sk_metrics.f1_score(labels, predictions, average="macro"))
    np.testing.assert_allclose(recall, sk_metrics.recall_score(labels, predictions, average=None))
    found = statistics.bootstrap_intervals(labels, predictions, 3, samples=200, seed=5)
    # The same resamples drawn here, scored by scikit-learn.
    draws = np.random.default_rng(5)
    f1s, recalls = [], []
    for _ in range(200):
        rows = draws.integers(0, 200, 200)
        f1s.append(
            sk_metrics.f1_score(
                labels[rows], predictions[rows], average="macro", labels=[0, 1, 2], zero_division=0
            )
        )
        recalls.append(
            sk_metrics.recall_score(
                labels[rows], predictions[rows], average=None, labels=[0, 1, 2], zero_division=0
            )
        )
    assert found["macro_f1"] == pytest.approx(tuple(np.percentile(f1s, [2.5, 97.5])))
    for c in range(3):
        assert found["recall"][c] == pytest.approx(
            tuple(np.percentile(np.array(recalls)[:, c], [2.5, 97.5]))
        )
    assert found["macro_f1"][0] < macro_f1 < found["macro_f1"][1]
