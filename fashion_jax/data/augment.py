"""Training-time image augmentation, inside the jitted train step (uint8 in, uint8 out).

Product photos are centred on a white background, so a mirror image and a shift of a few pixels
(the border pixels repeated into the gap) are still the same product with the same attributes.
Every draw comes from the step's key, so runs stay deterministic and a resumed run sees the same
augmented batches; the random bits do not depend on how the batch is sharded.
"""

import dataclasses

import jax
import jax.numpy as jnp

from fashion_jax import errors


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """Static (hashable) description of the augmentation; the default does nothing."""

    flip: bool = False  # Mirror left-right with probability 1/2.
    max_shift: int = 0  # Translate by up to this many pixels, independently in y and x.
    cutmix: float = 0.0  # Probability that an image gets a box of its batch neighbour (cutmix()).

    @property
    def active(self) -> bool:
        return self.flip or self.max_shift > 0


NO_AUGMENT = AugmentSpec()


def from_config(augment_config) -> AugmentSpec:
    """config.augment -> AugmentSpec; a negative shift is refused, naming the flag."""
    max_shift = int(augment_config.max_shift)
    if max_shift < 0:
        raise errors.ConfigError(f"--config.augment.max_shift={max_shift}: must be >= 0")
    cutmix_probability = float(augment_config.cutmix)
    if not 0.0 <= cutmix_probability <= 1.0:
        raise errors.ConfigError(
            f"--config.augment.cutmix={cutmix_probability}: a probability, in [0, 1] (0: off)"
        )
    return AugmentSpec(
        flip=bool(augment_config.flip), max_shift=max_shift, cutmix=cutmix_probability
    )


def augment_images(images: jax.Array, rng: jax.Array, spec: AugmentSpec) -> jax.Array:
    """images [B, H, W, C] -> same shape and dtype, each image flipped/shifted on its own."""
    if not spec.active:
        return images
    flip_rng, shift_rng = jax.random.split(rng)
    if spec.flip:
        flip = jax.random.bernoulli(flip_rng, 0.5, (images.shape[0],))
        images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
    if spec.max_shift:
        images = _shift(images, shift_rng, spec.max_shift)
    return images


def _shift(images, rng, max_shift):
    """Per-image translation by (dy, dx) in [-max_shift, max_shift], edge pixels repeated."""
    s = max_shift
    _, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (s, s), (s, s), (0, 0)), mode="edge")
    offsets = jax.random.randint(rng, (images.shape[0], 2), 0, 2 * s + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def cutmix(images: jax.Array, rng: jax.Array, probability: float):
    """CutMix (Yun et al. 2019) with each image's neighbour in the batch (a roll by one, so no
    gather across shards is drawn at random): with `probability`, a box of the neighbour's image
    replaces the same box of the image. The box's area share is uniform in [0, 1) (Beta(1, 1)),
    its centre uniform, clipped at the edges. Returns (images, own [B]): the share of each
    image's pixels that are still its own, which weighs its label against the neighbour's."""
    batch, height, width, _ = images.shape
    side_rng, y_rng, x_rng, apply_rng = jax.random.split(rng, 4)
    side = jnp.sqrt(jax.random.uniform(side_rng, (batch,)))  # Area share side**2 ~ U(0, 1).
    box_h = jnp.round(side * height).astype(jnp.int32)
    box_w = jnp.round(side * width).astype(jnp.int32)
    centre_y = jax.random.randint(y_rng, (batch,), 0, height)
    centre_x = jax.random.randint(x_rng, (batch,), 0, width)
    y0 = jnp.clip(centre_y - box_h // 2, 0, height)
    y1 = jnp.clip(centre_y - box_h // 2 + box_h, 0, height)
    x0 = jnp.clip(centre_x - box_w // 2, 0, width)
    x1 = jnp.clip(centre_x - box_w // 2 + box_w, 0, width)
    applied = jax.random.bernoulli(apply_rng, probability, (batch,))
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    inside = (
        (rows >= y0[:, None, None])
        & (rows < y1[:, None, None])
        & (cols >= x0[:, None, None])
        & (cols < x1[:, None, None])
        & applied[:, None, None]
    )
    mixed = jnp.where(inside[..., None], jnp.roll(images, 1, axis=0), images)
    own = 1.0 - inside.astype(jnp.float32).mean((1, 2))
    return mixed, own
