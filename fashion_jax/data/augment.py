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

    @property
    def active(self) -> bool:
        return self.flip or self.max_shift > 0


NO_AUGMENT = AugmentSpec()


def from_config(augment_config) -> AugmentSpec:
    """config.augment -> AugmentSpec; a negative shift is refused, naming the flag."""
    max_shift = int(augment_config.max_shift)
    if max_shift < 0:
        raise errors.ConfigError(f"--config.augment.max_shift={max_shift}: must be >= 0")
    return AugmentSpec(flip=bool(augment_config.flip), max_shift=max_shift)


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
