"""SpeedNet: a network for time to accuracy on 80x60 photos, in the manner of the CIFAR-10
speedruns (airbench): downsample at once, then few wide layers.

A 2x2 patch convolution with stride 2 (a reshape and one matmul, cheap on a CPU), or a 3x3
convolution and a 2x2 max pool, takes the photo to 40x30; then blocks of [3x3 conv -> 2x2 max
pool -> BN -> ReLU -> 3x3 conv -> BN -> ReLU] (20x15, 10x7, 5x3), global max pooling (or the
flattened 5x3 grid) and the classifier head(s). With block_features (32, 64, 128) a forward pass
is about 30 M multiply-adds, a quarter of the seed CNN's. convs_per_block=3 adds a [3x3 conv ->
BN -> ReLU] to each block at the pooled resolution (about +26% multiply-adds) and makes the
convolutions after the first a residual branch, as airbench96's blocks.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fashion_jax import errors
from fashion_jax.conv.dispatch import conv3x3
from fashion_jax.models.layers import batch_norm_layer
from fashion_jax.models.layers import classifier_heads
from fashion_jax.models.layers import max_pool_2x2


def patchify_2x2(x):
    """[B, H, W, C] -> [B, H/2, W/2, 4C]: each 2x2 patch on the channels (odd edges dropped)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // 2, w // 2, 4 * c)


def whitening_kernel(images: np.ndarray, epsilon: float = 5e-4) -> np.ndarray:
    """The stem's kernel [4C, 8C] that whitens 2x2 patches of `images` (uint8 [N, H, W, C]):
    the patches' principal directions scaled by 1/sqrt(variance + epsilon), each with its
    negative, so that the ReLU after it keeps both signs (as airbench's first layer)."""
    patches = np.asarray(patchify_2x2(jnp.asarray(images, jnp.float32) / 255.0))
    patches = patches.reshape(-1, patches.shape[-1]).astype(np.float64)
    variances, directions = np.linalg.eigh(np.cov(patches, rowvar=False))
    order = np.argsort(variances)[::-1]
    kernel = directions[:, order] / np.sqrt(variances[order] + epsilon)
    return np.concatenate([kernel, -kernel], axis=1).astype(np.float32)


STEMS = ("patch", "conv")
POOLINGS = ("max", "flatten")


def check_config(model_config) -> None:
    """Refuses an unknown stem, fewer than one convolution per block, and a whitening stem of
    the wrong width or kind."""
    stem = model_config.get("stem", "patch")
    errors.check_choice("--config.model.stem", stem, STEMS)
    errors.check_choice("--config.model.pooling", model_config.get("pooling", "max"), POOLINGS)
    convs = model_config.get("convs_per_block", 2)
    if not isinstance(convs, int) or convs < 1:
        raise errors.ConfigError(
            f"--config.model.convs_per_block={convs}: give a whole number of 3x3 convolutions "
            "per block, at least 1 (2 is the speedrun's)."
        )
    whitening = model_config.get("whiten_stem_images", 0) > 0
    if whitening and (stem != "patch" or model_config.get("stem_features", 32) != 24):
        raise errors.ConfigError(
            "--config.model.whiten_stem_images needs --config.model.stem=patch and "
            "--config.model.stem_features=24 (12 directions of 2x2x3 patches and their "
            f"negatives); got stem={stem}, stem_features={model_config.get('stem_features')}."
        )


def initial_params(model_config, train_images) -> dict:
    """Data-dependent initial values for create_train_state: the whitening stem when asked."""
    count = int(model_config.get("whiten_stem_images", 0))
    if count <= 0:
        return {}
    return {"stem": {"kernel": whitening_kernel(np.asarray(train_images[:count]))}}


class SpeedNet(nn.Module):
    num_classes: int
    # "patch": 2x2 patches with stride 2 (one matmul); "conv": a 3x3 convolution at full
    # resolution, then a 2x2 max pool.
    stem: str = "patch"
    stem_features: int = 32
    # >0 (stem "patch", stem_features = 8 x channels): training starts the stem as a whitening
    # of the 2x2 patches of this many training images (initial_params), not at random.
    whiten_stem_images: int = 0
    block_features: Sequence[int] = (32, 64, 128)
    # 3x3 convolutions per block; from 3 on, those after the first add to its output (residual),
    # so that a deeper block starts close to the shallow one.
    convs_per_block: int = 2
    pooling: str = "max"  # "max": global max pooling; "flatten": every position's features.
    # >0: a hidden Dense layer of this width (+ ReLU) before the heads; cheap next to the convs
    # (1920 x 512 multiply-adds on the flattened 5x3x128 grid) and the seed CNN's main capacity.
    dense_units: int = 0
    dropout_rate: float = 0.0
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    dtype: str = "float32"
    conv_impl: str = "auto"
    heads: Sequence = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        dtype = jnp.dtype(self.dtype)
        batch_norm = batch_norm_layer(train, self.bn_momentum, self.bn_epsilon, dtype)
        x = x.astype(dtype)
        if self.stem == "patch":
            x = nn.Dense(self.stem_features, use_bias=False, dtype=dtype, name="stem")(
                patchify_2x2(x)
            )
            x = nn.relu(batch_norm(name="stem_bn")(x))
        else:
            kernel = self.param(
                "stem_conv", nn.initializers.he_normal(), (3, 3, x.shape[-1], self.stem_features)
            )
            x = conv3x3(x, kernel.astype(dtype), padding=1, impl=self.conv_impl)
            x = max_pool_2x2(nn.relu(batch_norm(name="stem_bn")(x)))
        for block, features in enumerate(self.block_features):
            for layer in range(1, self.convs_per_block + 1):
                name = f"block{block + 1}_conv{layer}"
                kernel = self.param(
                    name, nn.initializers.he_normal(), (3, 3, x.shape[-1], features)
                )
                x = conv3x3(x, kernel.astype(dtype), padding=1, impl=self.conv_impl)
                if layer == 1:
                    x = max_pool_2x2(x)
                x = nn.relu(batch_norm(name=f"block{block + 1}_bn{layer}")(x))
                if layer == 1:
                    shortcut = x
            if self.convs_per_block >= 3:
                x = x + shortcut
        # "flatten" keeps where in the photo a feature was (the seed CNN's head does too).
        x = x.max(axis=(1, 2)) if self.pooling == "max" else x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.dense_units:
            x = nn.relu(nn.Dense(self.dense_units, dtype=dtype, name="hidden")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier_heads(x, self.num_classes, self.heads, dtype)
