"""Jitted train and eval steps on CPU with synthetic batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fashion_jax import errors
from fashion_jax import models
from fashion_jax.data import input_pipeline
from fashion_jax.training import faults
from fashion_jax.training import optim
from fashion_jax.training import state as state_lib
from fashion_jax.training import steps
from tests.conftest import make_state
from tests.conftest import synthetic_batch
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    "optimizer,learning_rate",
    [("adam", 1e-3), ("sgd", 1e-2), ("rmsprop", 1e-3), ("muon", 1e-3)],
)
def test_jitted_train_step_lowers_the_loss(optimizer, learning_rate):
    state = make_state(optimizer=optimizer, learning_rate=learning_rate)
    batch = synthetic_batch()
    step = jax.jit(steps.train_step, donate_argnums=(0,))
    rng = jax.random.key(0)
    losses = []
    for _ in range(15):
        state, metrics = step(state, batch, rng)
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    assert int(state.step) == 15
    assert losses[-1] < 0.5 * losses[0], losses


def test_same_seed_same_parameters_different_seed_different():
    batch = synthetic_batch()
    step = jax.jit(steps.train_step)

    def run(seed):
        state = make_state(seed=seed)
        for _ in range(3):
            state, _ = step(state, batch, jax.random.key(seed))
        return jax.device_get(state.params)

    a, b, c = run(0), run(0), run(1)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["Dense_0"]["kernel"], c["Dense_0"]["kernel"])


def test_eval_counts_every_image_once_with_padding():
    state = make_state()
    batch = synthetic_batch(n=37)
    step = jax.jit(steps.eval_step)
    sums = [
        jax.device_get(step(state, b))
        for b in input_pipeline.eval_batches(batch["image"], batch["label"], 16)
    ]
    assert [s["count"] for s in sums] == [16, 16, 5]
    logits = models.predict_logits(
        state.apply_fn, {"params": state.params, "batch_stats": state.batch_stats}, batch["image"]
    )
    expected_correct = int((np.asarray(logits).argmax(-1) == batch["label"]).sum())
    assert sum(s["correct"] for s in sums) == expected_correct


def test_eval_with_flip_tta_scores_the_mean_of_photo_and_mirror_probabilities():
    state = make_state()
    batch = synthetic_batch(n=32)
    batch = {**batch, "mask": np.ones(32, np.float32)}
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def probabilities(images):
        return np.asarray(jax.nn.softmax(models.predict_logits(state.apply_fn, variables, images)))

    mean = (probabilities(batch["image"]) + probabilities(batch["image"][:, :, ::-1])) / 2
    plain = jax.device_get(steps.eval_step(state, batch))
    flipped = jax.device_get(steps.eval_step(state, batch, tta="flip"))
    assert flipped["correct"] == int((mean.argmax(-1) == batch["label"]).sum())
    expected_loss = -np.log(mean[np.arange(32), batch["label"]]).sum()
    np.testing.assert_allclose(flipped["loss_sum"], expected_loss, rtol=1e-5)
    assert abs(flipped["loss_sum"] - plain["loss_sum"]) > 1e-3  # The mirror changed something.
    with pytest.raises(errors.ConfigError, match="tta='rotate'"):
        steps.eval_step(state, batch, tta="rotate")


def test_flip_shift_tta_averages_six_views_moved_by_one_pixel_with_edges_repeated():
    images = np.arange(2 * 4 * 3 * 1, dtype=np.uint8).reshape(2, 4, 3, 1)
    views = [np.asarray(v) for v in models.tta_views(images, "flip_shift")]
    assert len(views) == 6
    np.testing.assert_array_equal(views[1], images[:, :, ::-1])
    down_right = views[2]
    np.testing.assert_array_equal(down_right[:, 1:, 1:], images[:, :-1, :-1])
    np.testing.assert_array_equal(down_right[:, 0, 1:], images[:, 0, :-1])  # Top row repeated.
    np.testing.assert_array_equal(down_right[:, 1:, 0], images[:, :-1, 0])  # Left column too.
    np.testing.assert_array_equal(views[4][:, :-1, :-1], images[:, 1:, 1:])  # Up-left.
    np.testing.assert_array_equal(views[5], views[4][:, :, ::-1])

    state = make_state()
    batch = synthetic_batch(n=8)["image"]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    probabilities = [
        np.asarray(jax.nn.softmax(models.predict_logits(state.apply_fn, variables, v)))
        for v in models.tta_views(batch, "flip_shift")
    ]
    got = models.predict_log_probabilities(state.apply_fn, variables, batch, "flip_shift")
    np.testing.assert_allclose(np.exp(got), np.mean(probabilities, axis=0), rtol=1e-5)
    flip = models.predict_log_probabilities(state.apply_fn, variables, batch, "flip")
    assert np.abs(np.asarray(got) - np.asarray(flip)).max() > 1e-4  # The shifts count.


def test_train_indices_cover_the_epoch_with_fixed_shapes():
    chunks = list(input_pipeline.train_indices(10, 4, seed=0, epoch=0))
    assert [s for s, _ in chunks] == [0, 1, 2]
    seen = np.concatenate([indices[0] for _, indices in chunks])
    assert len(seen) == 12 and set(seen) == set(range(10))
    assert all(indices.shape == (1, 4) for _, indices in chunks)
    again = list(input_pipeline.train_indices(10, 4, seed=0, epoch=0, first_step=1))
    np.testing.assert_array_equal(again[0][1], chunks[1][1])
    other_epoch = np.concatenate([i[0] for _, i in input_pipeline.train_indices(10, 4, 0, 1)])
    assert not np.array_equal(seen, other_epoch)
    rows = list(input_pipeline.train_indices(10, 4, seed=0, epoch=0, rows=slice(2, 4)))
    np.testing.assert_array_equal(rows[0][1], chunks[0][1][:, 2:4])  # A process's part.
    chunked = list(input_pipeline.train_indices(10, 4, seed=0, epoch=0, steps_per_chunk=2))
    assert [i.shape for _, i in chunked] == [(2, 4), (1, 4)]


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    class NoSaves:  # A manager with nothing on disk.
        directory = tmp_path / "checkpoints"

        def wait_until_finished(self):
            pass

    with pytest.raises(errors.NonFiniteLossError, match="step 7 .*learning_rate.*no checkpoint"):
        faults.check_finite_loss(
            {"loss_sum": np.float32(np.nan), "count": 1.0}, step=7, epoch=0, manager=NoSaves()
        )


def test_bfloat16_compute_tracks_float32_and_keeps_float32_parameters():
    batch = synthetic_batch(n=32, seed=1)
    step = jax.jit(steps.train_step)

    def run(dtype):
        # A small step: at large ones a few steps of this tiny net are chaotic in any dtype.
        config = tiny_config("unused", **{"model.dtype": dtype, "optimizer.learning_rate": 1e-4})
        model = models.create_model(config.model, 4)
        state = state_lib.create_train_state(
            config, model, optim.create_learning_rate_fn(config.optimizer), (80, 60, 3)
        )
        losses = []
        for _ in range(6):
            state, metrics = step(state, batch, jax.random.key(0))
            losses.append(float(metrics["loss_sum"] / metrics["count"]))
        return state, np.array(losses)

    state32, losses32 = run("float32")
    state16, losses16 = run("bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state16.params))
    assert all(
        x.dtype == jnp.float32
        for x in jax.tree.leaves(state16.opt_state)
        if hasattr(x, "dtype") and x.ndim
    )
    np.testing.assert_allclose(losses16, losses32, rtol=0.05, atol=0.02)
    kernel16 = np.asarray(state16.params["Dense_1"]["kernel"])
    kernel32 = np.asarray(state32.params["Dense_1"]["kernel"])
    assert np.abs(kernel16 - kernel32).max() < 0.1 * np.abs(kernel32).max()
    assert not np.array_equal(kernel16, kernel32)  # bf16 really was used.


def test_steps_in_one_dispatch_equal_steps_one_by_one():
    images = synthetic_batch(n=40, seed=2)
    indices = np.random.default_rng(0).integers(0, 40, (3, 16))
    rng = jax.random.key(5)
    one_by_one = make_state()
    step = jax.jit(steps.train_step)
    expected_loss = 0.0
    for row in indices:
        one_by_one, metrics = step(
            one_by_one, {"image": images["image"][row], "label": images["label"][row]}, rng
        )
        expected_loss += float(metrics["loss_sum"])
    state = make_state()
    arrays = (images["image"], images["label"], indices)
    zeros = steps.zero_train_sums(state, {k: v[:16] for k, v in images.items()}, rng)
    chunked, sums = jax.jit(steps.train_steps_on_device_data)(
        state, zeros, *arrays, np.ones(3, bool), rng
    )
    assert int(chunked.step) == 3 and float(sums["count"]) == 48
    np.testing.assert_allclose(float(sums["loss_sum"]), expected_loss, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        jax.device_get(chunked.params),
        jax.device_get(one_by_one.params),
    )


def test_train_indices_chunks_match_single_steps():
    singles = np.concatenate([i for _, i in input_pipeline.train_indices(37, 8, 0, 2)])
    chunks = list(input_pipeline.train_indices(37, 8, 0, 2, steps_per_chunk=2))
    assert [s for s, _ in chunks] == [0, 2, 4] and [len(i) for _, i in chunks] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([i for _, i in chunks]), singles)
    rows = list(input_pipeline.train_indices(37, 8, 0, 2, rows=slice(4, 8)))
    np.testing.assert_array_equal(np.concatenate([i for _, i in rows]), singles[:, 4:8])
