"""The seed CNN: parameter count, and the fast layers against Flax's reference layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from fashion_jax import models


def test_seed_cnn_parameter_count_matches_keras():
    model = models.create_model(default.get_config().model, num_classes=5)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 80, 60, 3))))
    trainable = sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
    statistics = sum(np.prod(x.shape) for x in jax.tree.leaves(variables["batch_stats"]))
    assert trainable == 3_439_781
    assert statistics == 896
    assert trainable + statistics == 3_440_677
    assert variables["params"]["Dense_0"]["kernel"].shape == (3072, 1024)


def test_im2col_conv_equals_flax_conv():
    x = jax.random.normal(jax.random.key(1), (2, 11, 9, 5))
    ours = models.Conv3x3Valid(7)
    params = ours.init(jax.random.key(2), x)
    reference = nn.Conv(7, (3, 3), padding="VALID")
    expected = reference.apply(params, x)  # Same parameter names and shapes.
    np.testing.assert_allclose(ours.apply(params, x), expected, rtol=1e-5, atol=1e-5)
    assert expected.shape == (2, 9, 7, 7)


def test_max_pool_equals_flax_max_pool_with_odd_sizes():
    x = jax.random.normal(jax.random.key(3), (2, 17, 13, 4))
    expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(models.max_pool_2x2(x), expected)


def test_unknown_model_name_is_refused():
    config = default.get_config().model
    config.name = "resnet9000"
    try:
        models.create_model(config, 5)
    except ValueError as e:
        assert "resnet9000" in str(e) and "seed_cnn" in str(e)
    else:
        raise AssertionError("unknown model accepted")
