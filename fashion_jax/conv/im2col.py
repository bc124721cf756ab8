"""3x3 convolution as im2col: the nine (strided) shifted slices of the input concatenated on
channels, then one matrix product. Any stride; the fallback for strided and 3-channel layers."""

import jax
import jax.numpy as jnp


def conv3x3_valid(x: jax.Array, kernel: jax.Array, strides: int = 1) -> jax.Array:
    """VALID 3x3 convolution of NHWC `x` with an HWIO `kernel`."""
    height = (x.shape[1] - 3) // strides + 1
    width = (x.shape[2] - 3) // strides + 1
    patches = jnp.concatenate(
        [
            x[
                :,
                i : i + strides * (height - 1) + 1 : strides,
                j : j + strides * (width - 1) + 1 : strides,
            ]
            for i in range(3)
            for j in range(3)
        ],
        axis=-1,
    )
    return patches @ kernel.reshape(9 * x.shape[-1], kernel.shape[-1])
