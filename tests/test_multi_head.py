"""Several heads: masking of missing labels, "Other" folding, class weights, balanced sampling,
the ResNet backbone and a multi-head training run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from fashion_jax import models
from fashion_jax.conv import dispatch
from fashion_jax.data import dataset
from fashion_jax.data import input_pipeline
from fashion_jax.training import losses
from fashion_jax.training import run_files
from fashion_jax.training import state as state_lib
from fashion_jax.training import steps
from fashion_jax.training import train
from tests.conftest import tiny_config
from tests.conftest import write_multi_head_dataset

SPEC = losses.LossSpec(heads=("a", "b"), multi_head=True)


def test_missing_labels_are_masked_for_their_head_only():
    logits = {
        "a": jax.random.normal(jax.random.key(0), (4, 3)),
        "b": jax.random.normal(jax.random.key(1), (4, 5)),
    }
    labels = jnp.array([[0, 4], [1, -1], [2, 3], [1, -1]], jnp.int32)
    total, sums = losses.loss_and_metrics(logits, labels, SPEC)

    def ce(lg, lb):
        return -jax.nn.log_softmax(lg)[jnp.arange(len(lb)), lb]

    expected = (
        ce(logits["a"], labels[:, 0])
        .at[jnp.array([0, 2])]
        .add(ce(logits["b"][jnp.array([0, 2])], labels[jnp.array([0, 2]), 1]))
    )
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    assert float(sums["count/a"]) == 4 and float(sums["count/b"]) == 2
    # The masked rows' logits of head b get no gradient; head a's do.
    grads = jax.grad(lambda lg: losses.loss_and_metrics(lg, labels, SPEC)[0].sum())(logits)
    assert np.all(np.asarray(grads["b"])[[1, 3]] == 0)
    assert np.any(np.asarray(grads["b"])[[0, 2]] != 0)
    assert np.all(np.abs(np.asarray(grads["a"])).sum(-1) > 0)
    # Padding rows (mask 0) count for nothing.
    _, masked = losses.loss_and_metrics(logits, labels, SPEC, jnp.array([1.0, 1.0, 0.0, 0.0]))
    assert float(masked["count"]) == 2 and float(masked["count/b"]) == 1
    summary = losses.summarize(jax.device_get(sums))
    assert summary["accuracy"] == summary["accuracy/a"]
    assert summary["count/b"] == 2
    # A batch where head b has no label at all: no accuracy or loss for b, not a 0.
    _, unlabelled = losses.loss_and_metrics(logits, labels, SPEC, jnp.array([0.0, 1.0, 0.0, 1.0]))
    unlabelled = losses.summarize(jax.device_get(unlabelled))
    assert unlabelled["count/b"] == 0 and "accuracy/b" not in unlabelled
    assert "loss/b" not in unlabelled and unlabelled["count/a"] == 2
    assert summary["loss/b"] == pytest.approx(
        float(
            expected[jnp.array([0, 2])].sum()
            - ce(logits["a"], labels[:, 0])[jnp.array([0, 2])].sum()
        )
        / 2,
        rel=1e-5,
    )


def test_head_weights_and_class_weights_scale_the_loss():
    logits = {"a": jnp.zeros((3, 2)), "b": jnp.zeros((3, 2))}
    labels = jnp.array([[0, 1], [1, 1], [1, 0]], jnp.int32)
    base, _ = losses.loss_and_metrics(logits, labels, SPEC)
    weighted_spec = losses.LossSpec(
        heads=("a", "b"), head_weights=(2.0, 0.5), multi_head=True, class_weights=((1.0, 3.0), None)
    )
    weighted, _ = losses.loss_and_metrics(logits, labels, weighted_spec)
    log2 = np.log(2)
    np.testing.assert_allclose(base, [2 * log2] * 3, rtol=1e-6)
    np.testing.assert_allclose(
        weighted, [2 * log2 + 0.5 * log2, 6 * log2 + 0.5 * log2, 6 * log2 + 0.5 * log2], rtol=1e-6
    )
    weights = losses.class_weights_for(np.array([0] * 6 + [1] * 2 + [-1] * 5), 3, "balanced")
    assert weights == pytest.approx((8 / 18, 8 / 6, 0.0))
    assert losses.class_weights_for(np.array([0, 0, 0, 1]), 2, "sqrt") == pytest.approx(
        (np.sqrt(4 / 6), np.sqrt(2.0))
    )
    assert losses.class_weights_for(np.array([0, 1]), 2, "none") is None


def test_label_smoothing_changes_the_training_loss_only():
    logits = {
        "a": jax.random.normal(jax.random.key(2), (4, 3)),
        "b": jax.random.normal(jax.random.key(3), (4, 5)),
    }
    labels = jnp.array([[0, 4], [1, -1], [2, 3], [1, -1]], jnp.int32)
    smoothed_spec = losses.LossSpec(heads=("a", "b"), multi_head=True, label_smoothing=0.1)
    total, _ = losses.loss_and_metrics(logits, labels, smoothed_spec)

    def smoothed_ce(lg, lb, present):  # -sum_c q_c log p_c, q = 0.9 one-hot + 0.1 / C.
        lg = np.asarray(lg, np.float64)
        log_p = lg - lg.max(-1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
        q = np.full(lg.shape, 0.1 / lg.shape[1])
        q[np.arange(len(lb)), np.maximum(lb, 0)] += 0.9
        return -(q * log_p).sum(-1) * present

    labels_np = np.asarray(labels)
    expected = smoothed_ce(logits["a"], labels_np[:, 0], 1.0) + smoothed_ce(
        logits["b"], labels_np[:, 1], labels_np[:, 1] >= 0
    )
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    assert not np.allclose(total, losses.loss_and_metrics(logits, labels, SPEC)[0])
    # Evaluation drops the smoothing (and class weights): the plain cross-entropy again.
    evaluation = smoothed_spec.for_evaluation()
    assert evaluation.label_smoothing == 0.0 and evaluation.heads == smoothed_spec.heads
    np.testing.assert_allclose(
        losses.loss_and_metrics(logits, labels, evaluation)[0],
        losses.loss_and_metrics(logits, labels, SPEC)[0],
        rtol=1e-6,
    )


def test_rare_classes_fold_into_other_and_missing_stays_missing():
    values = pd.Series(["x", "x", "x", "y", "y", "z", None, "x"])
    folded, classes, rare = dataset.fold_rare_classes(values, 2)
    assert folded.tolist()[:6] == ["x", "x", "x", "y", "y", "Other"] and pd.isna(folded[6])
    assert classes == ["Other", "x", "y"] and rare == {"z": 1}
    _, classes, rare = dataset.fold_rare_classes(values, 0)
    assert classes == ["x", "y", "z"] and rare == {}


def test_multi_head_labels_split_and_heads_file(tmp_path, cache_dir):
    root = write_multi_head_dataset(tmp_path / "data")
    config = tiny_config(
        root,
        **{
            "data.head_columns": ("masterCategory", "subCategory", "gender"),
            "data.other_min_count": 2,
        },
    )
    data = dataset.load_data(config.data, str(tmp_path / "run"), show_progress=False)
    assert list(data.heads) == ["masterCategory", "subCategory", "gender"]
    assert "Other" in data.heads["subCategory"] and "Rare" not in data.heads["subCategory"]
    assert data.heads["gender"] == ["Men", "Women"]
    all_labels = np.concatenate([s.labels for s in data.subsets.values()])
    assert all_labels.shape == (80, 3)
    assert (all_labels[:, 2] == -1).sum() == 8 and (all_labels[:, :2] >= 0).all()
    saved = json.loads((tmp_path / "run" / dataset.HEADS_FILE).read_text())
    assert saved["folding"]["subCategory"]["folded_into_other"] == {"Rare": 1}
    assert saved["folding"]["gender"]["missing_rows"] == 8
    # The same split as a single-head run of the same data.
    single = dataset.load_data(tiny_config(root).data, None, show_progress=False)
    for name in dataset.SUBSETS:
        np.testing.assert_array_equal(single.subsets[name].ids, data.subsets[name].ids)
        np.testing.assert_array_equal(single.subsets[name].labels, data.subsets[name].labels[:, 0])
    split = dataset.read_split(str(tmp_path / "run"))
    assert (split["gender"] == "").sum() == 8
    bad = tiny_config(root, **{"data.head_columns": ("gender", "masterCategory")})
    with pytest.raises(Exception, match="first head the label column"):
        dataset.load_data(bad.data, None, show_progress=False)


def test_class_balanced_sampling_evens_out_classes_and_is_deterministic():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    p = input_pipeline.sampling_probabilities(labels, "class_balanced")
    np.testing.assert_allclose([p[labels == c].sum() for c in range(3)], [1 / 3] * 3)
    order = input_pipeline.epoch_permutation(1000, seed=0, epoch=1, probabilities=p)
    np.testing.assert_array_equal(
        order, input_pipeline.epoch_permutation(1000, seed=0, epoch=1, probabilities=p)
    )
    share = np.bincount(labels[order], minlength=3) / 1000
    assert share.min() > 0.25 and share[0] < 0.4
    sqrt = input_pipeline.sampling_probabilities(labels, "sqrt")
    assert p[labels == 2].sum() > sqrt[labels == 2].sum() > 10 / 1000
    assert input_pipeline.sampling_probabilities(labels, "uniform") is None


@pytest.mark.parametrize("strides,padding", [(1, 0), (1, 1), (2, 1)])
def test_im2col_conv_equals_xla_conv(strides, padding):
    x = jax.random.normal(jax.random.key(0), (2, 11, 8, 5))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 5, 7))
    np.testing.assert_allclose(
        dispatch.conv3x3(x, kernel, strides, padding, "im2col"),
        dispatch.conv3x3(x, kernel, strides, padding, "xla"),
        rtol=1e-5,
        atol=1e-5,
    )


def test_small_resnet_heads_and_train_step_lowers_loss():
    config = tiny_config("unused", **{"model.name": "small_resnet"})
    model = models.SmallResNet(
        num_classes=0,
        heads=(("a", 3), ("b", 4)),
        stem_features=8,
        stage_features=(8, 16),
        stage_blocks=(1, 1),
    )
    state = state_lib.create_train_state(config, model, lambda step: 3e-3, (80, 60, 3))
    out = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, jnp.zeros((2, 80, 60, 3))
    )
    assert {k: v.shape for k, v in out.items()} == {"a": (2, 3), "b": (2, 4)}
    rng = np.random.default_rng(0)
    label_a = rng.integers(0, 3, 16)
    images = label_a[:, None, None, None] * 90 + rng.integers(0, 40, (16, 80, 60, 3))
    batch = {
        "image": images.astype(np.uint8),
        "label": np.stack([label_a, np.where(label_a == 0, -1, label_a + 1)], 1).astype(np.int32),
    }
    step = jax.jit(lambda s, b: steps.train_step(s, b, jax.random.key(0), SPEC))
    losses_seen = []
    for _ in range(10):
        state, metrics = step(state, batch)
        losses_seen.append(float(metrics["loss_sum"]))
    assert losses_seen[-1] < 0.7 * losses_seen[0], losses_seen


def test_multi_head_run_end_to_end(tmp_path, cache_dir):
    root = write_multi_head_dataset(tmp_path / "data")
    config = tiny_config(
        root,
        **{
            "data.head_columns": ("masterCategory", "subCategory", "gender"),
            "data.other_min_count": 2,
            "loss.class_weighting": "sqrt",
            "data.sampling": "class_balanced",
            "loss.label_smoothing": 0.1,
        },
    )
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert set(summary["val_heads"]) >= {"accuracy/subCategory", "loss/gender"}
    history = run_files.read_metrics(str(tmp_path / "run"))
    assert len(history) == 2 and "val_accuracy/gender" in history[-1]
