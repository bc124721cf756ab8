"""The seed study's CNN in Flax Linen, with Keras' layer semantics and initialisers.

Input uint8 or float [B, 80, 60, 3] already scaled to [0, 1]. Three blocks of filters 32, 64, 128:
[Conv 3x3 VALID -> ReLU -> BatchNorm] twice, MaxPool 2x2, Dropout; then Flatten (3072) -> Dropout ->
Dense 1024 + ReLU -> Dropout -> Dense(num_classes) logits.

Formulations chosen for CPU speed keep the parameters and the maths of the Keras layers: the 3x3
convolution is a direct AVX-512 / AVX2 kernel compiled on first use (fashion_jax/native_conv.py)
where it can be built, else Winograd's F(2x2, 3x3) (fashion_jax/winograd.py) where the input has 16+
channels, else an im2col (nine shifted slices concatenated on channels) and one matrix product; the
2x2 max pool is a reshape and max. On these CPUs XLA's own convolution and `nn.max_pool`
(select-and-scatter backward) were markedly slower (see bench/).
"""

import dataclasses
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fashion_jax import native_conv
from fashion_jax import winograd

keras_kernel_init = nn.initializers.glorot_uniform()


def scale_images(images):
    """uint8 [0, 255] -> float32 [0, 1]; runs inside jitted functions, not on the host."""
    return images.astype(jnp.float32) / 255.0


CONV_IMPLS = ("auto", "native", "winograd", "im2col", "xla")
WINOGRAD_MIN_CHANNELS = 16  # Below this (the 3-channel input) im2col is faster on CPU.


def _resolve_impl(impl: str, x, strides: int) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"--config.model.conv_impl={impl!r}: use one of {', '.join(CONV_IMPLS)}")
    if impl == "auto":
        if jax.default_backend() != "cpu":
            return "xla"
        # The FFI kernels have no sharding rule: one CPU device, float32 only.
        if (x.dtype == jnp.float32 and strides == 1 and jax.device_count() == 1
                and native_conv.available()):
            return "native"
        impl = "winograd" if x.shape[-1] >= WINOGRAD_MIN_CHANNELS else "im2col"
    if impl == "native" and x.dtype != jnp.float32:
        raise ValueError(f"--config.model.conv_impl=native computes in float32, not {x.dtype}; "
                         "use auto or winograd with --config.model.dtype")
    return "im2col" if impl in ("winograd", "native") and strides != 1 else impl


def conv3x3(x, kernel, strides: int = 1, padding: int = 0, impl: str = "auto", bias=None,
            relu: bool = False):
    """3x3 convolution of NHWC `x` with an HWIO `kernel`, zero `padding` on each side, then
    + `bias` and ReLU when given (in the kernel's registers with "native").

    "native": the direct AVX-512 / AVX2 kernel of native_conv (CPU, float32, stride 1; strided
    convolutions use im2col); "winograd": F(2x2, 3x3) (stride 1 only, likewise); "im2col": the
    nine (strided) shifted slices concatenated on channels and one matmul; "xla":
    lax.conv_general_dilated (cuDNN on GPU); "auto": on CPU native where it can be built and there
    is one device, else winograd when the input has 16+ channels, else im2col; elsewhere xla.
    """
    impl = _resolve_impl(impl, x, strides)
    if padding and impl != "xla":
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if impl == "native":
        return native_conv.conv3x3_valid(x, kernel, bias, relu)
    if impl == "xla":
        y = jax.lax.conv_general_dilated(
            x, kernel, (strides, strides), [(padding, padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    elif impl == "winograd":
        y = winograd.conv3x3_valid(x, kernel)
    else:
        height = (x.shape[1] - 3) // strides + 1
        width = (x.shape[2] - 3) // strides + 1
        patches = jnp.concatenate(
            [x[:, i:i + strides * (height - 1) + 1:strides,
               j:j + strides * (width - 1) + 1:strides] for i in range(3) for j in range(3)],
            axis=-1)
        y = patches @ kernel.reshape(9 * x.shape[-1], kernel.shape[-1])
    if bias is not None:
        y = y + bias
    return nn.relu(y) if relu else y


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
        return conv3x3(x, kernel.astype(x.dtype), impl=self.impl, bias=bias.astype(x.dtype),
                       relu=self.relu)


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
    heads: Sequence = ()  # ((name, num_classes), ...): one output per head; see classifier_heads.

    @nn.compact
    def __call__(self, x, train: bool = False):
        dtype = jnp.dtype(self.dtype)
        x = x.astype(dtype)
        for features in self.filters:
            for _ in range(2):
                x = Conv3x3Valid(features, self.conv_impl, relu=True)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=dtype)(x)
            x = max_pool_2x2(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(self.dense_units, kernel_init=keras_kernel_init, dtype=dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier_heads(x, self.num_classes, self.heads, dtype)


def classifier_heads(features, num_classes: int, heads: Sequence, dtype):
    """Logits [B, num_classes] from one Dense; or, when `heads` ((name, classes), ...) is given,
    {name: logits [B, classes]} from one Dense per head (named head_<name>)."""
    if not heads:
        logits = nn.Dense(num_classes, kernel_init=keras_kernel_init, dtype=dtype)(features)
        return logits.astype(jnp.float32)
    return {name: nn.Dense(classes, kernel_init=keras_kernel_init, dtype=dtype,
                           name=f"head_{name}")(features).astype(jnp.float32)
            for name, classes in heads}


class ResidualBlock(nn.Module):
    """Basic ResNet block: [3x3 conv -> BN -> ReLU] -> 3x3 conv -> BN, plus the shortcut (a
    strided 1x1 projection + BN when the shape changes), then ReLU. The last BN starts at zero
    scale, so each block starts as the identity."""
    features: int
    strides: int
    batch_norm: Callable
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        def conv(y, name):
            kernel = self.param(name, nn.initializers.he_normal(),
                                (3, 3, y.shape[-1], self.features))
            return conv3x3(y, kernel.astype(y.dtype), self.strides if name == "conv1" else 1,
                           padding=1, impl=self.impl)
        y = nn.relu(self.batch_norm(name="bn1")(conv(x, "conv1")))
        y = self.batch_norm(name="bn2", scale_init=nn.initializers.zeros)(conv(y, "conv2"))
        if x.shape[-1] != self.features or self.strides != 1:
            x = x[:, ::self.strides, ::self.strides]
            x = nn.Dense(self.features, use_bias=False, dtype=x.dtype,
                         kernel_init=nn.initializers.he_normal(), name="projection")(x)
            x = self.batch_norm(name="projection_bn")(x)
        return nn.relu(x + y)


class SmallResNet(nn.Module):
    """A ResNet for 80x60 images: a 3x3 stem (no downsampling), stages of basic blocks (the first
    block of every stage strides by 2: 40x30, 20x15, 10x8, 5x4), global average pooling, dropout
    and the classifier head(s). About as many FLOPs per image as the seed CNN."""
    num_classes: int
    stem_features: int = 24
    stage_features: Sequence[int] = (32, 64, 128, 256)
    stage_blocks: Sequence[int] = (1, 2, 2, 2)
    dropout_rate: float = 0.02
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    dtype: str = "float32"
    conv_impl: str = "auto"
    heads: Sequence = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        dtype = jnp.dtype(self.dtype)
        batch_norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                                       momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                       dtype=dtype)
        x = x.astype(dtype)
        kernel = self.param("stem", nn.initializers.he_normal(),
                            (3, 3, x.shape[-1], self.stem_features))
        x = nn.relu(batch_norm(name="stem_bn")(
            conv3x3(x, kernel.astype(dtype), padding=1, impl=self.conv_impl)))
        for stage, (features, blocks) in enumerate(zip(self.stage_features, self.stage_blocks)):
            for block in range(blocks):
                x = ResidualBlock(features, 2 if block == 0 else 1, batch_norm, self.conv_impl,
                                  name=f"stage{stage + 1}_block{block + 1}")(x)
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier_heads(x, self.num_classes, self.heads, dtype)


MODELS = {"seed_cnn": SeedCNN, "small_resnet": SmallResNet}
# Model fields of config.model; a field that only another model has is ignored.
MODEL_FIELDS = {f.name for model in MODELS.values() for f in dataclasses.fields(model)}


def output_classes(class_names, heads=None):
    """create_model's `num_classes` for a run: {head: class count} with several heads, else the
    number of `class_names`."""
    return {h: len(c) for h, c in heads.items()} if heads else len(class_names)


def create_model(model_config, num_classes) -> nn.Module:
    """Builds the model named by `model_config.name` from the remaining fields.

    `num_classes`: an int (one head), or {head: number of classes} in head order (several heads).
    """
    fields = dict(model_config)
    name = fields.pop("name")
    if name not in MODELS:
        raise ValueError(f"--config.model.name={name!r} is unknown; choose one of {sorted(MODELS)}")
    model_class = MODELS[name]
    known = {f.name for f in dataclasses.fields(model_class)}
    fields = {k: v for k, v in fields.items() if k in known or k not in MODEL_FIELDS}
    if isinstance(num_classes, dict):
        return model_class(num_classes=0, heads=tuple(num_classes.items()), **fields)
    return model_class(num_classes=num_classes, **fields)
