"""The one jitted predict function, batched over image arrays, and mixtures of predictions.

Predictions are log-probabilities [N, num_classes] (float32): the loss stays finite for confident
mistakes, and an ensemble is the exact log of its weighted mean of probabilities. A multi-head
model gives one such array per head ({head: [N, C_h]}), or only the `head` asked for.

Test-time augmentation (`tta`, models.TTA_MODES): each image's prediction is the mean of the
probabilities of its views: "flip" the image and its mirror image, for models trained with
--config.augment.flip; "flip_shift" those and both moved by one pixel (six views).
"""

import functools

import jax
import numpy as np

from fashion_jax import models
from fashion_jax.data import input_pipeline

TTA_MODES = models.TTA_MODES


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def log_probabilities(model, variables, images, head=None, tta="none"):
    """Eval-mode log-softmax for a uint8 batch; compiled once per model config and batch shape.
    Multi-head models: {head: log-probs}, or only `head`'s."""
    log_probs = models.predict_log_probabilities(model.apply, variables, images, tta)
    return log_probs[head] if isinstance(log_probs, dict) and head is not None else log_probs


def predict_array(
    model, variables, images: np.ndarray, batch_size: int, head=None, tta: str = "none"
):
    """Log-probabilities for every image, in padded batches of one shape (no recompilation)."""
    outputs, masks = [], []
    for batch in input_pipeline.eval_batches(images, None, batch_size):
        outputs.append(log_probabilities(model, variables, batch["image"], head, tta))
        masks.append(batch["mask"] > 0)
    if not outputs:
        shapes = jax.eval_shape(
            log_probabilities,
            model,
            variables,
            np.zeros((1,) + images.shape[1:], np.uint8),
            head,
            tta,
        )
        return jax.tree.map(lambda s: np.zeros((0,) + s.shape[1:], np.float32), shapes)
    outputs = jax.device_get(outputs)
    return jax.tree.map(
        lambda *parts: np.concatenate([p[m] for p, m in zip(parts, masks)]), *outputs
    )


def normalized_weights(weights, count: int, flag: str = "weights") -> np.ndarray:
    """Weights (default uniform) as non-negative floats summing to one."""
    if weights is None or len(weights) == 0:
        return np.full(count, 1.0 / count)
    weights = np.asarray(weights, np.float64)
    if len(weights) != count or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            f"{flag}={','.join(map(str, weights))} must give {count} non-negative "
            "weights, one per model, not all zero."
        )
    return weights / weights.sum()


def mix(log_probs: list, weights) -> np.ndarray:
    """log(sum_i w_i p_i): the weighted average of the members' probabilities, as log-probs."""
    weights = normalized_weights(weights, len(log_probs))
    stacked = np.stack([np.asarray(lp, np.float64) for lp in log_probs])
    with np.errstate(divide="ignore"):  # A zero weight is log 0 = -inf: that member drops out.
        weighted = stacked + np.log(weights)[:, None, None]
    top = weighted.max(axis=0)  # Finite: some weight is positive and log-softmax is finite.
    return (top + np.log(np.exp(weighted - top).sum(axis=0))).astype(np.float32)


class Mixture:
    """A predict function for batches of new images: one model, an ensemble or a soup."""

    def __init__(self, members: list, weights=None, tta: str = "none"):
        self.members = members  # (flax module, variables) pairs; their classes must agree.
        self.weights = normalized_weights(weights, len(members))
        self.tta = tta

    def __call__(self, images: np.ndarray):
        """Log-probs [N, C], or {head: [N, C_h]} for multi-head models."""
        outputs = jax.device_get(
            [
                log_probabilities(model, variables, images, None, self.tta)
                for model, variables in self.members
            ]
        )
        if isinstance(outputs[0], dict):
            return {
                head: mix([np.asarray(o[head]) for o in outputs], self.weights)
                for head in outputs[0]
            }
        return mix([np.asarray(o) for o in outputs], self.weights)
