"""The 2020 study's CNN in Flax Linen, with Keras' layer semantics and initialisers.

Input [B, 80, 60, 3] already scaled to [0, 1]. Three blocks of filters 32, 64, 128:
[Conv 3x3 VALID -> ReLU -> BatchNorm] twice, MaxPool 2x2, Dropout; then Flatten (3072) -> Dropout ->
Dense 1024 + ReLU -> Dropout -> Dense(num_classes) logits (or one Dense per head).

The 3x3 convolution and the pool keep the Keras layers' parameters and maths in formulations chosen
for speed (fashion_jax/conv/); the 2x2 max pool is a reshape and max.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fashion_jax.models.layers import Conv3x3Valid
from fashion_jax.models.layers import classifier_heads
from fashion_jax.models.layers import keras_kernel_init
from fashion_jax.models.layers import max_pool_2x2


class SeedCNN(nn.Module):
    num_classes: int
    filters: Sequence[int] = (32, 64, 128)
    dense_units: int = 1024
    dropout_rate: float = 0.02
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    dtype: str = "float32"  # Computation dtype ("bfloat16": mixed precision); params float32.
    conv_impl: str = "auto"  # See Conv3x3Valid.
    heads: Sequence = ()  # ((name, num_classes), ...): one output per head; see classifier_heads.

    @nn.compact
    def __call__(self, x, train: bool = False):
        dtype = jnp.dtype(self.dtype)
        x = x.astype(dtype)
        for features in self.filters:
            for _ in range(2):
                x = Conv3x3Valid(features, self.conv_impl, relu=True)(x)
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=self.bn_momentum,
                    epsilon=self.bn_epsilon,
                    dtype=dtype,
                )(x)
            x = max_pool_2x2(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(self.dense_units, kernel_init=keras_kernel_init, dtype=dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier_heads(x, self.num_classes, self.heads, dtype)
