"""Calibration, selective prediction and top-k metrics (evaluation/calibration.py, metrics.py),
their place in the report, and --predict's needs_review column."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
from PIL import Image
import pytest

from fashion_jax import errors
from fashion_jax.evaluation import calibration
from fashion_jax.evaluation import config_checks
from fashion_jax.evaluation import markdown as md_lib
from fashion_jax.evaluation import metrics
from fashion_jax.evaluation import report_markdown
from fashion_jax.evaluation import runner
from fashion_jax.inference import classifier
from fashion_jax.inference import predict_files
from tests import tiny_runs
from tests.conftest import REPO_ROOT
from tests.conftest import eval_config


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return tiny_runs.train_once(tmp_path_factory)


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# ---- Temperature scaling ---------------------------------------------------------------------


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_temperature_recovers_the_temperature_labels_were_sampled_with(true_temperature):
    rng = np.random.default_rng(0)
    logits = 3.0 * rng.normal(size=(20000, 10))
    p = np.exp(log_softmax(logits / true_temperature))
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    log_probs = log_softmax(logits).astype(np.float32)
    fitted = calibration.fit_temperature(log_probs, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    # Shifting the logits per row does not matter: raw logits give the same temperature.
    assert calibration.fit_temperature(logits + 7.0, labels) == pytest.approx(fitted, rel=1e-4)
    # The fitted temperature lowers the log-loss below both T=1 and the neighbours of T.
    nll = lambda t: -log_softmax(logits / t)[np.arange(len(labels)), labels].mean()  # noqa: E731
    assert nll(fitted) <= min(nll(1.0), nll(0.9 * fitted), nll(1.1 * fitted))


def test_apply_temperature_renormalises_and_keeps_the_argmax():
    rng = np.random.default_rng(1)
    log_probs = log_softmax(4 * rng.normal(size=(200, 6))).astype(np.float32)
    for temperature in (0.3, 1.0, 3.0):
        scaled = calibration.apply_temperature(log_probs, temperature)
        assert scaled.dtype == np.float32
        np.testing.assert_array_equal(scaled.argmax(1), log_probs.argmax(1))
        np.testing.assert_allclose(np.exp(scaled.astype(np.float64)).sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(scaled, log_softmax(log_probs / temperature), atol=1e-5)
    hot = np.exp(calibration.apply_temperature(log_probs, 3.0)).max(1)
    assert (hot < np.exp(log_probs).max(1) + 1e-6).all()  # T > 1 softens.


def test_reliability_bins_by_hand_and_consistent_with_ece():
    probabilities = np.array(
        [
            [0.25, 0.25, 0.25, 0.25],  # 0.25 -> bin 0 (0, .25], correct
            [0.5, 0.3, 0.2, 0.0],  # 0.5 -> bin 1, wrong
            [0.1, 0.6, 0.3, 0.0],  # 0.6 -> bin 2, correct
            [0.0, 0.0, 0.7, 0.3],  # 0.7 -> bin 2, wrong
            [1.0, 0.0, 0.0, 0.0],
        ]
    )  # 1.0 -> bin 3, correct
    labels = np.array([0, 1, 1, 3, 0])
    bins = calibration.reliability_bins(probabilities, labels, 4)
    np.testing.assert_array_equal(bins["count"], [1, 1, 2, 1])
    np.testing.assert_allclose(bins["confidence"], [0.25, 0.5, 0.65, 1.0])
    np.testing.assert_allclose(bins["accuracy"], [1.0, 0.0, 0.5, 1.0])
    ece = metrics.expected_calibration_error(probabilities, labels, 4)
    assert ece == pytest.approx(0.75 / 5 + 0.5 / 5 + 2 * 0.15 / 5)
    many = calibration.reliability_bins(probabilities, labels, 10)
    assert many["count"].sum() == 5 and np.isnan(many["accuracy"][0])  # Bin 0 is empty.
    used = many["count"] > 0
    assert np.sum(
        many["count"][used] / 5 * abs(many["accuracy"][used] - many["confidence"][used])
    ) == pytest.approx(metrics.expected_calibration_error(probabilities, labels, 10))


# ---- Selective prediction --------------------------------------------------------------------

# (top-1 probability, correct), best first. Cumulative precision at the end of each group of
# equal confidences: 0.99 -> 1/1, 0.95 -> 2/3, 0.90 -> 4/5, 0.80 -> 5/7, 0.70 -> 5/8. Within the
# 0.80 tie, 5/6 would pass 0.8, but the tie can only be taken whole.
CRAFTED = [
    (0.99, True),
    (0.95, False),
    (0.95, True),
    (0.90, True),
    (0.90, True),
    (0.80, True),
    (0.80, False),
    (0.70, False),
]


def crafted(rows=CRAFTED, seed=0):
    """Shuffled log-probabilities over 3 classes with the given top-1 probabilities."""
    log_probs, labels = [], []
    for n, (confidence, correct) in enumerate(rows):
        predicted = n % 3
        p = np.full(3, (1 - confidence) / 2)
        p[predicted] = confidence
        log_probs.append(np.log(p))
        labels.append(predicted if correct else (predicted + 1) % 3)
    order = np.random.default_rng(seed).permutation(len(rows))
    return np.array(log_probs, np.float32)[order], np.array(labels)[order]


@pytest.mark.parametrize(
    "target, threshold, accepted, precision",
    [
        (0.9, 0.99, 1, 1.0),
        (0.8, 0.90, 5, 0.8),  # Not 0.80 (6 of a tie of 7); not stopped by the 0.95 dip.
        (0.7, 0.80, 7, 5 / 7),  # Non-monotone: the 0.95 and 0.90 cuts give 2/3 and 0.8.
        (0.6, 0.70, 8, 5 / 8),  # Everything.
    ],
)
def test_threshold_for_precision_takes_the_largest_coverage_reaching_the_target(
    target, threshold, accepted, precision
):
    for seed in range(8):  # Row orders put a tie's right and wrong predictions either way.
        log_probs, labels = crafted(seed=seed)
        found = calibration.threshold_for_precision(log_probs, labels, target)
        assert found["threshold"] == pytest.approx(threshold, abs=1e-6)
        assert (found["accepted"], found["count"]) == (accepted, 8)
        assert found["coverage"] == accepted / 8
        assert found["precision"] == pytest.approx(precision)
        assert found["precision"] >= target
        again = calibration.selective_metrics(log_probs, labels, found["threshold"])
        assert again == {
            "coverage": accepted / 8,
            "precision": found["precision"],
            "accepted": accepted,
            "count": 8,
        }


def test_threshold_for_precision_reports_an_unreachable_target():
    rows = [(0.99, False)] + CRAFTED[1:]  # The most confident prediction is wrong: 0, 0, 1/3...
    log_probs, labels = crafted(rows)
    found = calibration.threshold_for_precision(log_probs, labels, 0.9)
    assert found["threshold"] is None and found["precision"] is None
    assert (found["coverage"], found["accepted"], found["count"]) == (0.0, 0, 8)
    assert calibration.threshold_for_precision(log_probs[:0], labels[:0], 0.9)["threshold"] is None


def test_selective_metrics():
    log_probs, labels = crafted()
    assert calibration.selective_metrics(log_probs, labels, 0.85) == {
        "coverage": 5 / 8,
        "precision": 0.8,
        "accepted": 5,
        "count": 8,
    }
    assert calibration.selective_metrics(log_probs, labels, 0.0)["coverage"] == 1.0
    assert calibration.selective_metrics(log_probs, labels, 0.999) == {
        "coverage": 0.0,
        "precision": None,
        "accepted": 0,
        "count": 8,
    }
    assert calibration.selective_metrics(log_probs, labels, None)["accepted"] == 0


# ---- Top-k and top-classes accuracy ----------------------------------------------------------


def test_top5_accuracy_with_more_than_five_classes():
    orders = [
        [0, 1, 2, 3, 4, 5, 6],  # label 0 first: top-1 and top-5
        [0, 1, 2, 3, 4, 5, 6],  # label 6 last: neither
        [3, 2, 1, 0, 4, 5, 6],  # label 4 fifth: top-5
        [6, 5, 4, 3, 2, 1, 0],
    ]  # label 1 sixth: neither
    scores = np.zeros((5, 7))
    for row, order in enumerate(orders):
        scores[row, order] = -np.arange(7, dtype=float)
    labels = np.array([0, 6, 4, 1, 3])  # Row 4: all scores tied, counted in the top 5.
    log_probs = log_softmax(scores).astype(np.float32)
    assert metrics.top_k_accuracy(log_probs, labels, 5) == pytest.approx(3 / 5)
    assert metrics.top_k_accuracy(log_probs, labels, 1) == pytest.approx(2 / 5)
    result = metrics.evaluate(log_probs, labels, list("abcdefg"), detailed=False)
    assert result["top5_accuracy"] == pytest.approx(3 / 5)
    assert result["accuracy"] == pytest.approx(1 / 5)  # Row 4's argmax is class 0.
    five = metrics.evaluate(
        log_probs[:, :5], np.array([0, 1, 4, 1, 3]), list("abcde"), detailed=False
    )
    assert "top5_accuracy" not in five and "top_classes_accuracy" not in five


def test_top_classes_accuracy_restricts_images_and_argmax():
    probabilities = np.array(
        [
            [0.2, 0.5, 0.1, 0.2],  # label 0: argmax 1, among {0, 2}: 0 -> ok
            [0.3, 0.1, 0.4, 0.2],  # label 2: 2 -> ok
            [0.5, 0.1, 0.3, 0.1],  # label 2: 0 -> wrong
            [0.1, 0.7, 0.1, 0.1],  # label 1: not among the top classes
            [0.1, 0.1, 0.1, 0.7],
        ]
    )  # label 3: neither
    labels = np.array([0, 2, 2, 1, 3])
    log_probs = np.log(probabilities).astype(np.float32)
    result = metrics.evaluate(log_probs, labels, list("abcd"), top_classes=[2, 0])
    assert result["top_classes_accuracy"] == pytest.approx(2 / 3)
    assert (result["top_classes_num_classes"], result["top_classes_count"]) == (2, 3)
    assert result["accuracy"] == pytest.approx(3 / 5)  # Unrestricted accuracy is unchanged.
    none = metrics.top_classes_accuracy(log_probs[3:], labels[3:], [0, 2])  # No image of theirs.
    assert np.isnan(none["top_classes_accuracy"]) and none["top_classes_count"] == 0


# ---- In the report, and in --predict ---------------------------------------------------------


def own_ece_at(log_probs, labels, temperature, bins=15):
    p = np.exp(log_softmax(np.asarray(log_probs, np.float64) / temperature))
    confidence, correct = p.max(1), p.argmax(1) == labels
    total = 0.0
    for low, high in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_report_has_temperature_ece_and_review_threshold_fitted_on_val(runs, tmp_path):
    config = eval_config(
        evaluators="single",
        subsets="val,test",
        batch_size=16,
        **{"report.gallery_size": 2, "report.target_precision": 0.9},
    )
    out = tmp_path / "eval"
    report = runner.evaluate([str(runs["adam"])], config, str(out))
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    (result,) = report["results"]
    ctx = runner.Evaluation([str(runs["adam"])], config).context()
    log_probs = {s: ctx.checkpoint_log_probs(ctx.checkpoints[0], s) for s in ("val", "test")}
    labels = {s: ctx.labels(s) for s in ("val", "test")}

    cal = result["calibration"]
    temperature = calibration.fit_temperature(log_probs["val"], labels["val"])
    assert cal["fitted_on"] == "val" and cal["skipped"] is None
    assert cal["temperature"] == pytest.approx(temperature, rel=1e-6)
    for subset in ("val", "test"):
        numbers = cal["subsets"][subset]
        assert numbers["ece"] == pytest.approx(result["metrics"][subset]["ece"])
        assert numbers["ece_scaled"] == pytest.approx(
            own_ece_at(log_probs[subset], labels[subset], temperature), abs=1e-5
        )
        assert sum(numbers["reliability"]["after"]["count"]) == len(labels[subset])
        with Image.open(out / result["files"][subset]["reliability.png"]) as image:
            assert image.format == "PNG" and image.width > 300

    sel = result["selective"]
    found = calibration.threshold_for_precision(log_probs["val"], labels["val"], 0.9)
    assert (sel["target_precision"], sel["threshold"]) == (0.9, found["threshold"])
    assert sel["subsets"]["val"]["coverage"] == found["coverage"]
    assert sel["subsets"]["test"] == calibration.selective_metrics(
        log_probs["test"], labels["test"], found["threshold"]
    )

    markdown = (out / "report.md").read_text()
    assert "## Calibration: temperature scaling" in markdown
    assert f"| {result['name']} | {cal['temperature']:.3f} |" in markdown
    assert "## Selective prediction: review threshold" in markdown
    test = sel["subsets"]["test"]
    assert md_lib.pct(test["coverage"]) + f" ({md_lib.pct(test['precision'])})" in markdown
    assert "reliability.png)" in markdown
    summary = report_markdown.summary_table(report)
    assert "Review threshold" in summary
    if found["threshold"] is not None:
        assert repr(found["threshold"]) in summary

    no_val = runner.evaluate(
        [str(runs["adam"])],
        eval_config(
            evaluators="single", subsets="test", batch_size=16, **{"report.gallery_size": 0}
        ),
        str(tmp_path / "no_val"),
    )["results"][0]
    assert no_val["calibration"]["temperature"] is None and no_val["calibration"]["skipped"]
    assert no_val["selective"]["threshold"] is None and no_val["selective"]["subsets"] == {}
    assert no_val["calibration"]["subsets"]["test"]["ece_scaled"] is None
    assert "val is not among --config.subsets" in (tmp_path / "no_val" / "report.md").read_text()
    assert os.path.exists(tmp_path / "no_val" / no_val["files"]["test"]["reliability.png"])


def test_predict_flags_rows_below_the_review_threshold(runs, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for n, colour in enumerate([(200, 40, 40), (40, 200, 40), (120, 120, 120), (120, 40, 120)]):
        pixels = np.array(colour, np.float32) + rng.normal(0, 30, (80, 60, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{n}.jpg")
    (folder / "9_corrupt.jpg").write_bytes(b"not a jpeg")
    clf = classifier.load_classifier(str(runs["adam"]), batch_size=4)

    plain = tmp_path / "plain.csv"
    predict_files.predict_files(str(folder), clf, str(plain), top_k=2)
    assert "needs_review" not in pd.read_csv(plain).columns
    top1 = pd.read_csv(plain)["top1_probability"].to_numpy()[:4]
    threshold = float((top1.min() + top1.max()) / 2)

    flagged = tmp_path / "flagged.csv"
    counts = predict_files.predict_files(
        str(folder), clf, str(flagged), top_k=2, review_threshold=threshold
    )
    rows = pd.read_csv(flagged, keep_default_na=False)
    assert (counts.predicted, counts.failed) == (4, 1)
    assert list(rows.columns) == [
        "path",
        "top1_label",
        "top1_probability",
        "top2_label",
        "top2_probability",
        "needs_review",
        "error",
    ]
    readable = rows.iloc[:4]
    assert list(readable["needs_review"].astype(int)) == [int(p < threshold) for p in top1]
    if top1.min() < top1.max():
        assert set(readable["needs_review"].astype(int)) == {0, 1}
    assert rows.loc[4, "needs_review"] == "" and rows.loc[4, "error"] != ""
    predict_files.predict_files(str(folder), clf, str(flagged), review_threshold=0.0)
    assert (pd.read_csv(flagged)["needs_review"].iloc[:4] == 0).all()
    with pytest.raises(errors.ConfigError, match="review_threshold"):
        config_checks.check_eval_config(
            eval_config(**{"predict.review_threshold": 1.5}), 1, predicting=True
        )
    with pytest.raises(errors.ConfigError, match="target_precision"):
        config_checks.check_eval_config(eval_config(**{"report.target_precision": 0.0}), 1)


def test_command_line_prints_the_threshold_and_writes_needs_review(runs, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    common = [
        sys.executable,
        "run_eval.py",
        f"--workdirs={runs['adam']}",
        "--config.progress_bar=false",
        "--config.batch_size=16",
    ]
    out = tmp_path / "cli"
    evaluate = subprocess.run(
        common
        + [
            "--config.evaluators=single",
            "--config.subsets=val",
            "--config.report.target_precision=0.5",
            "--config.report.gallery_size=0",
            f"--output_dir={out}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stderr
    report = json.loads((out / "report.json").read_text())
    selective = report["results"][0]["selective"]
    assert report["target_precision"] == 0.5 and selective["target_precision"] == 0.5
    assert selective["threshold"] is not None  # The tiny model is far above 50% on val.
    assert f"{selective['threshold']!r}" in evaluate.stdout

    photo = tmp_path / "photos" / "a.jpg"
    photo.parent.mkdir()
    Image.fromarray(np.full((80, 60, 3), 128, np.uint8)).save(photo)
    predictions = tmp_path / "predictions.csv"
    predict = subprocess.run(
        common
        + [
            f"--predict={photo.parent}",
            f"--output={predictions}",
            "--config.predict.review_threshold=0.5",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predict.returncode == 0, predict.stderr
    rows = pd.read_csv(predictions)
    assert list(rows["needs_review"]) == [int(rows.loc[0, "top1_probability"] < 0.5)]
