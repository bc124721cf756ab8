"""SmallResNet: a residual network sized for 80x60 product photos."""

from collections.abc import Callable
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fashion_jax.conv.dispatch import conv3x3
from fashion_jax.models.layers import batch_norm_layer
from fashion_jax.models.layers import classifier_heads


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
            kernel = self.param(
                name, nn.initializers.he_normal(), (3, 3, y.shape[-1], self.features)
            )
            return conv3x3(
                y,
                kernel.astype(y.dtype),
                self.strides if name == "conv1" else 1,
                padding=1,
                impl=self.impl,
            )

        y = nn.relu(self.batch_norm(name="bn1")(conv(x, "conv1")))
        y = self.batch_norm(name="bn2", scale_init=nn.initializers.zeros)(conv(y, "conv2"))
        if x.shape[-1] != self.features or self.strides != 1:
            x = x[:, :: self.strides, :: self.strides]
            x = nn.Dense(
                self.features,
                use_bias=False,
                dtype=x.dtype,
                kernel_init=nn.initializers.he_normal(),
                name="projection",
            )(x)
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
        batch_norm = batch_norm_layer(train, self.bn_momentum, self.bn_epsilon, dtype)
        x = x.astype(dtype)
        kernel = self.param(
            "stem", nn.initializers.he_normal(), (3, 3, x.shape[-1], self.stem_features)
        )
        x = nn.relu(
            batch_norm(name="stem_bn")(
                conv3x3(x, kernel.astype(dtype), padding=1, impl=self.conv_impl)
            )
        )
        for stage, (features, blocks) in enumerate(zip(self.stage_features, self.stage_blocks)):
            for block in range(blocks):
                x = ResidualBlock(
                    features,
                    2 if block == 0 else 1,
                    batch_norm,
                    self.conv_impl,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x)
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier_heads(x, self.num_classes, self.heads, dtype)
