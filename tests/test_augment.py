"""Augmentation (flip, shift) and the optimizer options (cosine schedule, weight decay)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from fashion_jax.data import augment
from fashion_jax.training import optim


def distinct_images(n=64, height=8, width=6):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def test_no_augmentation_returns_the_batch():
    images = distinct_images()
    out = augment.augment_images(jnp.asarray(images), jax.random.key(0), augment.NO_AUGMENT)
    np.testing.assert_array_equal(out, images)


def test_flip_mirrors_some_images_and_keeps_the_others():
    images = distinct_images()
    spec = augment.AugmentSpec(flip=True)
    out = np.asarray(
        jax.jit(augment.augment_images, static_argnums=2)(
            jnp.asarray(images), jax.random.key(1), spec
        )
    )
    assert out.dtype == np.uint8 and out.shape == images.shape
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48  # About half of 64.
    again = augment.augment_images(jnp.asarray(images), jax.random.key(1), spec)
    np.testing.assert_array_equal(again, out)  # Same key, same batch.
    other = augment.augment_images(jnp.asarray(images), jax.random.key(2), spec)
    assert not np.array_equal(other, out)


def test_shift_is_a_crop_of_the_edge_padded_image():
    images = distinct_images()
    s = 2
    out = np.asarray(
        augment.augment_images(
            jnp.asarray(images), jax.random.key(3), augment.AugmentSpec(max_shift=s)
        )
    )
    offsets = set()
    for o, image in zip(out, images):
        padded = np.pad(image, ((s, s), (s, s), (0, 0)), mode="edge")
        matches = [
            (dy, dx)
            for dy in range(2 * s + 1)
            for dx in range(2 * s + 1)
            if np.array_equal(padded[dy : dy + 8, dx : dx + 6], o)
        ]
        assert matches, "an output is not a shifted copy of its input"
        offsets.add(matches[0])
    assert len(offsets) > 10  # Offsets vary from image to image (25 possible).


def test_negative_shift_is_refused():
    config = ml_collections.ConfigDict({"flip": False, "max_shift": -1})
    with pytest.raises(ValueError, match="--config.augment.max_shift=-1"):
        augment.from_config(config)


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_run_end():
    opt = default.get_config().optimizer
    opt.schedule, opt.learning_rate, opt.warmup_steps, opt.decay_steps = "cosine", 2e-3, 10, 0
    opt.decay_examples = 0  # No decay length (configs/default.py's is in examples): the run end.
    lr = optim.create_learning_rate_fn(opt, total_steps=110)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(1e-3)
    assert float(lr(10)) == pytest.approx(2e-3)
    assert float(lr(60)) == pytest.approx(1e-3)  # Half-way through the cosine.
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)
    opt.decay_steps = 5
    with pytest.raises(ValueError, match="must exceed --config.optimizer.warmup_steps=10"):
        optim.create_learning_rate_fn(opt, total_steps=110)
    opt.schedule = "linear"
    with pytest.raises(ValueError, match="--config.optimizer.schedule='linear'"):
        optim.create_learning_rate_fn(opt, total_steps=110)


def test_exponential_schedule_is_the_seeds():
    opt = default.get_config().optimizer
    lr = optim.create_learning_rate_fn(opt, total_steps=123)  # total_steps unused.
    assert float(lr(10000)) == pytest.approx(1e-3 * 0.9)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_weight_decay_shrinks_kernels_only(name):
    opt = default.get_config().optimizer
    opt.name, opt.weight_decay = name, 0.1
    tx = optim.create_optimizer(opt, optim.create_learning_rate_fn(opt))
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # lr 1e-3 * decay 0.1 on the kernel; nothing on the bias and BatchNorm scale.
    np.testing.assert_allclose(updates["kernel"], -1e-4, rtol=1e-5)
    np.testing.assert_array_equal(updates["bias"], 0.0)
    np.testing.assert_array_equal(updates["scale"], 0.0)
    opt.weight_decay = 0.0
    tx = optim.create_optimizer(opt, optim.create_learning_rate_fn(opt))
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["kernel"], 0.0)


def test_cutmix_pastes_a_box_of_the_neighbour_and_says_how_much_is_left():
    n, height, width = 64, 8, 6
    # Image i is all i + 1: every pixel tells which image it came from.
    images = np.broadcast_to(
        np.arange(1, n + 1, dtype=np.uint8)[:, None, None, None], (n, height, width, 3)
    )
    mix = jax.jit(augment.cutmix, static_argnums=2)
    out, own = (np.asarray(a) for a in mix(jnp.asarray(images), jax.random.key(0), 1.0))
    assert out.shape == images.shape and out.dtype == np.uint8
    for i in range(n):
        from_neighbour = out[i, :, :, 0] == images[i - 1, 0, 0, 0]
        assert np.all(from_neighbour | (out[i, :, :, 0] == images[i, 0, 0, 0]))
        assert own[i] == pytest.approx(1.0 - from_neighbour.mean())
        rows, cols = np.nonzero(from_neighbour)
        if len(rows):  # One box: its bounding box is all the neighbour's.
            assert from_neighbour[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert own.min() < 0.3 and own.max() > 0.9  # Box sizes vary.
    assert not np.array_equal(np.asarray(mix(jnp.asarray(images), jax.random.key(1), 1.0)[0]), out)
    kept, all_own = mix(jnp.asarray(images), jax.random.key(0), 0.0)
    np.testing.assert_array_equal(kept, images)
    np.testing.assert_array_equal(all_own, 1.0)
    with pytest.raises(ValueError, match=r"--config.augment.cutmix=1.5: a probability"):
        augment.from_config(ml_collections.ConfigDict({"flip": 0, "max_shift": 0, "cutmix": 1.5}))


def test_a_cutmix_step_trains_on_both_labels():
    """With every label the same, cutmix's mixed loss is the plain loss of the mixed images:
    the step equals a plain step on the images cutmix() made with the step's own key."""
    from fashion_jax.training import steps
    from tests.conftest import make_state
    from tests.conftest import synthetic_batch

    state, batch = make_state(), synthetic_batch()
    rng = jax.random.key(3)
    spec = augment.AugmentSpec(cutmix=1.0)
    step = jax.jit(steps.train_step, static_argnames=("augment",))
    same = {"image": batch["image"], "label": np.zeros_like(batch["label"])}
    mixed_step, _ = step(state, same, rng, augment=spec)
    key = jax.random.fold_in(jax.random.fold_in(rng, state.step), 2)
    images, own = augment.cutmix(jnp.asarray(same["image"]), key, 1.0)
    assert float(own.min()) < 1.0
    plain_step, _ = step(state, {**same, "image": images}, rng)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        mixed_step.params,
        plain_step.params,
    )
    # With the batch's own labels the neighbours' labels change the step.
    labelled, metrics = step(state, batch, rng, augment=spec)
    assert np.isfinite(float(metrics["loss_sum"]))
    unmixed, _ = step(state, {**batch, "image": images}, rng)
    assert not np.allclose(
        labelled.params["Dense_0"]["kernel"], unmixed.params["Dense_0"]["kernel"]
    )
