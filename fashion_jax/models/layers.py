"""Layers shared by the models: Keras-style 3x3 convolution, 2x2 max pool, classifier heads."""

from collections.abc import Sequence
import functools

import flax.linen as nn
import jax.numpy as jnp

from fashion_jax.conv import dispatch

keras_kernel_init = nn.initializers.glorot_uniform()


class Conv3x3Valid(nn.Module):
    """A 3x3 VALID convolution, stride 1, with bias; parameters `kernel` [3, 3, Cin, Cout], `bias`.

    `impl`: see conv3x3. `relu`: apply ReLU to the output (inside the kernel with "native").
    The parameters are the same for every impl, so checkpoints move freely between them.
    Parameters stay float32; the computation runs in the input's dtype.
    """

    features: int
    impl: str = "auto"
    relu: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", keras_kernel_init, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return dispatch.conv3x3(
            x, kernel.astype(x.dtype), impl=self.impl, bias=bias.astype(x.dtype), relu=self.relu
        )


def batch_norm_layer(train: bool, momentum: float, epsilon: float, dtype):
    """nn.BatchNorm with the model's settings: batch statistics in training, running ones else."""
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
    )


def max_pool_2x2(x):
    """2x2 max pool, stride 2, VALID (an odd last row/column is dropped, as in Keras)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def classifier_heads(features, num_classes: int, heads: Sequence, dtype):
    """Logits [B, num_classes] from one Dense; or, when `heads` ((name, classes), ...) is given,
    {name: logits [B, classes]} from one Dense per head (named head_<name>)."""
    if not heads:
        logits = nn.Dense(num_classes, kernel_init=keras_kernel_init, dtype=dtype)(features)
        return logits.astype(jnp.float32)
    return {
        name: nn.Dense(classes, kernel_init=keras_kernel_init, dtype=dtype, name=f"head_{name}")(
            features
        ).astype(jnp.float32)
        for name, classes in heads
    }
