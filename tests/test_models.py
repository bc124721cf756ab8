"""The seed CNN: parameter count, and the fast layers against Flax's reference layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from fashion_jax import models
from fashion_jax.conv import dispatch
from fashion_jax.models import layers


def test_seed_cnn_parameter_count_matches_keras():
    model = models.create_model(default.get_config().model, num_classes=5)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 80, 60, 3))))
    trainable = sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
    statistics = sum(np.prod(x.shape) for x in jax.tree.leaves(variables["batch_stats"]))
    assert trainable == 3_439_781
    assert statistics == 896
    assert trainable + statistics == 3_440_677
    assert variables["params"]["Dense_0"]["kernel"].shape == (3072, 1024)


@pytest.mark.parametrize("impl", ["im2col", "xla", "auto", "winograd"])
def test_conv_implementations_equal_flax_conv(impl):
    x = jax.random.normal(jax.random.key(1), (2, 11, 9, 5))
    ours = layers.Conv3x3Valid(7, impl)
    params = ours.init(jax.random.key(2), x)
    reference = nn.Conv(7, (3, 3), padding="VALID")
    expected = reference.apply(params, x)  # Same parameter names and shapes.
    np.testing.assert_allclose(ours.apply(params, x), expected, rtol=1e-5, atol=1e-5)
    assert expected.shape == (2, 9, 7, 7)
    with pytest.raises(ValueError, match="conv_impl='cudnn'"):
        layers.Conv3x3Valid(7, "cudnn").init(jax.random.key(2), x)


@pytest.mark.parametrize(
    "height,width,channels,strides,padding",
    [
        (12, 10, 16, 1, 0),  # Even output (10x8): whole Winograd tiles.
        (15, 10, 32, 1, 0),  # Odd output rows (13x8), as in the seed CNN's last block.
        (9, 7, 16, 1, 1),  # Zero padding (SmallResNet).
        (9, 8, 16, 2, 1),  # Strided: falls back to im2col.
    ],
)
def test_winograd_conv_and_its_gradients_equal_xla_conv(height, width, channels, strides, padding):
    x = jax.random.normal(jax.random.key(4), (2, height, width, channels))
    kernel = jax.random.normal(jax.random.key(5), (3, 3, channels, 24)) * 0.2

    def loss(impl):
        return lambda x, k: jnp.sum(jnp.sin(dispatch.conv3x3(x, k, strides, padding, impl)))

    np.testing.assert_allclose(
        dispatch.conv3x3(x, kernel, strides, padding, "winograd"),
        dispatch.conv3x3(x, kernel, strides, padding, "xla"),
        rtol=1e-4,
        atol=1e-4,
    )
    ours = jax.grad(loss("winograd"), argnums=(0, 1))(x, kernel)
    expected = jax.grad(loss("xla"), argnums=(0, 1))(x, kernel)
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def _input(channels, dtype=jnp.float32):
    return jax.ShapeDtypeStruct((2, 9, 9, channels), dtype)


def test_auto_conv_choice_on_cpu(monkeypatch):
    assert jax.default_backend() == "cpu"
    # Without the native kernel: Winograd from 16 input channels, else im2col.
    monkeypatch.setattr(dispatch.native_conv, "available", lambda: False)
    assert dispatch.resolve_impl("auto", _input(3), 1) == "im2col"
    assert dispatch.resolve_impl("auto", _input(16), 1) == "winograd"
    assert dispatch.resolve_impl("auto", _input(32), 2) == "im2col"
    # With it: native for every stride-1 float32 convolution on one device.
    monkeypatch.setattr(dispatch.native_conv, "available", lambda: True)
    assert dispatch.resolve_impl("auto", _input(3), 1) == "native"
    assert dispatch.resolve_impl("auto", _input(32), 2) == "im2col"
    assert dispatch.resolve_impl("auto", _input(32, jnp.bfloat16), 1) == "winograd"
    # Explicit choices.
    assert dispatch.resolve_impl("winograd", _input(32), 2) == "im2col"
    assert dispatch.resolve_impl("native", _input(32), 2) == "im2col"
    assert dispatch.resolve_impl("xla", _input(32), 1) == "xla"
    with pytest.raises(ValueError, match="conv_impl=native computes in float32"):
        dispatch.resolve_impl("native", _input(32, jnp.bfloat16), 1)


def test_max_pool_equals_flax_max_pool_with_odd_sizes():
    x = jax.random.normal(jax.random.key(3), (2, 17, 13, 4))
    expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(layers.max_pool_2x2(x), expected)


def test_unknown_model_name_is_refused():
    config = default.get_config().model
    config.name = "resnet9000"
    try:
        models.create_model(config, 5)
    except ValueError as e:
        assert "resnet9000" in str(e) and "seed_cnn" in str(e)
    else:
        raise AssertionError("unknown model accepted")
