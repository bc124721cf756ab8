"""The seed study's CNN in Flax Linen, with Keras' layer semantics and initialisers.

Input uint8 or float [B, 80, 60, 3] already scaled to [0, 1]. Three blocks of filters 32, 64, 128:
[Conv 3x3 VALID -> ReLU -> BatchNorm] twice, MaxPool 2x2, Dropout; then Flatten (3072) -> Dropout ->
Dense 1024 + ReLU -> Dropout -> Dense(num_classes) logits.

Two formulations chosen for CPU speed keep the parameters and the maths of the Keras layers:
the 3x3 convolution is an im2col (nine shifted slices concatenated on channels) followed by one
matrix product, and the 2x2 max pool is a reshape and max. On these CPUs XLA's native convolution
and `nn.max_pool` (select-and-scatter backward) were markedly slower (see bench/).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

keras_kernel_init = nn.initializers.glorot_uniform()


def scale_images(images):
    """uint8 [0, 255] -> float32 [0, 1]; runs inside jitted functions, not on the host."""
    return images.astype(jnp.float32) / 255.0


class Conv3x3Valid(nn.Module):
    """A 3x3 VALID convolution, stride 1; parameters `kernel` [3, 3, Cin, Cout] and `bias`.

    `impl`: "im2col" (nine shifted slices concatenated, one matmul: faster on CPU), "xla"
    (lax.conv_general_dilated: cuDNN on GPU) or "auto" (im2col on CPU, xla elsewhere). The
    parameters are the same, so checkpoints move freely between them. Parameters stay float32;
    the computation runs in the input's dtype.
    """
    features: int
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        kernel = self.param("kernel", keras_kernel_init, (3, 3, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        kernel, bias = kernel.astype(x.dtype), bias.astype(x.dtype)
        impl = self.impl if self.impl != "auto" else (
            "im2col" if jax.default_backend() == "cpu" else "xla")
        if impl == "xla":
            return jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
        if impl != "im2col":
            raise ValueError(f"--config.model.conv_impl={impl!r}: use auto, im2col or xla")
        height, width = x.shape[1] - 2, x.shape[2] - 2
        patches = jnp.concatenate(
            [x[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)], axis=-1)
        return patches @ kernel.reshape(9 * cin, self.features) + bias


def max_pool_2x2(x):
    """2x2 max pool, stride 2, VALID (an odd last row/column is dropped, as in Keras)."""
    n, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class SeedCNN(nn.Module):
    num_classes: int
    filters: Sequence[int] = (32, 64, 128)
    dense_units: int = 1024
    dropout_rate: float = 0.02
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    dtype: str = "float32"  # Computation dtype ("bfloat16": mixed precision); params float32.
    conv_impl: str = "auto"  # See Conv3x3Valid.

    @nn.compact
    def __call__(self, x, train: bool = False):
        dtype = jnp.dtype(self.dtype)
        x = x.astype(dtype)
        for features in self.filters:
            for _ in range(2):
                x = nn.relu(Conv3x3Valid(features, self.conv_impl)(x))
                x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=dtype)(x)
            x = max_pool_2x2(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(self.dense_units, kernel_init=keras_kernel_init, dtype=dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, kernel_init=keras_kernel_init, dtype=dtype)(x)
        return logits.astype(jnp.float32)


MODELS = {"seed_cnn": SeedCNN}


def create_model(model_config, num_classes: int) -> nn.Module:
    """Builds the model named by `model_config.name` from the remaining fields."""
    fields = dict(model_config)
    name = fields.pop("name")
    if name not in MODELS:
        raise ValueError(f"--config.model.name={name!r} is unknown; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, **fields)
