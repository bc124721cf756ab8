"""The one entry point for 3x3 convolutions: picks a formulation, pads, adds bias and ReLU.

Every formulation takes the same HWIO kernel and computes the same maths, so checkpoints move
freely between them; "auto" picks the fastest that applies where the code runs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fashion_jax import errors
from fashion_jax.conv import im2col
from fashion_jax.conv import native_conv
from fashion_jax.conv import winograd

CONV_IMPLS = ("auto", "native", "winograd", "im2col", "xla")
WINOGRAD_MIN_CHANNELS = 16  # Below this (the 3-channel input) im2col is faster on CPU.


def check_impl(impl: str, dtype) -> None:
    """Refuses an unknown formulation, and the native kernel (float32 only) in another dtype."""
    errors.check_choice("--config.model.conv_impl", impl, CONV_IMPLS)
    if impl == "native" and jnp.dtype(dtype) != jnp.float32:
        raise errors.ConfigError(
            f"--config.model.conv_impl=native computes in float32, not {jnp.dtype(dtype)}; "
            "use --config.model.conv_impl=auto or winograd with --config.model.dtype"
        )


def resolve_impl(impl: str, x, strides: int) -> str:
    """The formulation that `impl` means for input `x` and `strides` on this backend."""
    check_impl(impl, x.dtype)
    if impl == "auto":
        if jax.default_backend() != "cpu":
            return "xla"
        # The FFI kernels have no sharding rule: one CPU device, float32 only.
        if (
            x.dtype == jnp.float32
            and strides == 1
            and jax.device_count() == 1
            and native_conv.available()
        ):
            return "native"
        impl = "winograd" if x.shape[-1] >= WINOGRAD_MIN_CHANNELS else "im2col"
    return "im2col" if impl in ("winograd", "native") and strides != 1 else impl


def conv3x3(
    x, kernel, strides: int = 1, padding: int = 0, impl: str = "auto", bias=None, relu: bool = False
):
    """3x3 convolution of NHWC `x` with an HWIO `kernel`, zero `padding` on each side, then
    + `bias` and ReLU when given (in the kernel's registers with "native").

    "native": the direct AVX-512 / AVX2 kernel of native_conv (CPU, float32, stride 1; strided
    convolutions use im2col); "winograd": F(2x2, 3x3) (stride 1 only, likewise); "im2col": the
    nine (strided) shifted slices concatenated on channels and one matmul; "xla":
    lax.conv_general_dilated (cuDNN on GPU); "auto": on CPU native where it can be built and there
    is one device, else winograd when the input has 16+ channels, else im2col; elsewhere xla.
    """
    impl = resolve_impl(impl, x, strides)
    if padding and impl != "xla":
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if impl == "native":
        return native_conv.conv3x3_valid(x, kernel, bias, relu)
    if impl == "xla":
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            (strides, strides),
            [(padding, padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    elif impl == "winograd":
        y = winograd.conv3x3_valid(x, kernel)
    else:
        y = im2col.conv3x3_valid(x, kernel, strides)
    if bias is not None:
        y = y + bias
    return nn.relu(y) if relu else y
