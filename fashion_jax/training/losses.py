"""Classification losses and metric sums for one head or several.

A single-head model returns logits [B, C] and is trained on labels [B]. A multi-head model returns
{head: logits [B, C_h]} and is trained on labels [B, H] (columns in head order), where -1 marks a
row without a value for that head: such a row adds nothing to that head's loss or metrics.
The loss is the weighted sum over heads of each head's cross-entropy, averaged over the batch.
Optional per-class weights (for imbalanced classes) multiply each example's cross-entropy, and
optional label smoothing mixes the one-hot target with the uniform distribution. Both are for the
training loss only: evaluation uses `spec.for_evaluation()`, the plain cross-entropy.
"""

import dataclasses

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fashion_jax import errors

MISSING = -1
CLASS_WEIGHTINGS = ("none", "balanced", "sqrt")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Static description of the heads (hashable, so it can be closed over by jitted steps)."""

    heads: tuple[str, ...]  # Head (column) names; the first is the primary one.
    head_weights: tuple[float, ...] = ()  # Default: 1 for every head.
    multi_head: bool = False  # False: logits [B, C] and labels [B].
    class_weights: tuple[tuple[float, ...] | None, ...] | None = None  # Per head.
    label_smoothing: float = 0.0  # Target (1 - e) one-hot + e uniform, every head.
    # Distillation (training/distill.py): the teachers' share w of each head's loss, their
    # temperature, and each head's class count (the columns of the batch's "teacher" targets).
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    head_sizes: tuple[int, ...] = ()

    def weight(self, n: int) -> float:
        return self.head_weights[n] if self.head_weights else 1.0

    def for_evaluation(self) -> "LossSpec":
        """The same heads and head weights with the plain cross-entropy."""
        return dataclasses.replace(
            self, class_weights=None, label_smoothing=0.0, distill_weight=0.0
        )


def check_config(loss_config, num_heads: int) -> None:
    """Refuses an unknown class weighting, smoothing outside [0, 1) and head weights that do not
    give one non-negative number per head."""
    errors.check_choice(
        "--config.loss.class_weighting", loss_config.class_weighting, CLASS_WEIGHTINGS
    )
    if not 0.0 <= loss_config.label_smoothing < 1.0:
        raise errors.ConfigError(
            f"--config.loss.label_smoothing={loss_config.label_smoothing} must be in [0, 1)."
        )
    weights = tuple(loss_config.head_weights)
    if weights and (len(weights) != num_heads or min(weights) < 0):
        raise errors.ConfigError(
            f"--config.loss.head_weights={weights}: give one non-negative weight per head "
            f"({num_heads}, as in --config.data.head_columns), or none for 1 each."
        )


def distill_teachers(loss_config) -> tuple:
    """The workdirs of --config.loss.distill_teachers (none for configs without the field)."""
    return tuple(loss_config.get("distill_teachers", ()) or ())


def class_weights_for(labels: np.ndarray, num_classes: int, mode: str) -> tuple | None:
    """Per-class loss weights from training label counts (labels < 0 ignored).

    "none": None. "balanced": N / (C * count_c) (scikit-learn's "balanced"), "sqrt": its square
    root (a milder correction). A class without training images gets weight 0.
    """
    if mode == "none":
        return None
    exponent = {"balanced": 1.0, "sqrt": 0.5}[mode]
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, len(labels) / (num_classes * counts), 0.0) ** exponent
    return tuple(float(w) for w in weights)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Per-example cross-entropy [B] against (1 - e) one-hot(labels) + e / C."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if label_smoothing:
        uniform = -jax.nn.log_softmax(logits.astype(jnp.float32)).mean(-1)
        losses = (1.0 - label_smoothing) * losses + label_smoothing * uniform
    return losses


def soft_cross_entropy(logits, teacher_log_probs, temperature: float = 1.0):
    """Per-example T^2 CE(softmax(teacher / T), log_softmax(logits / T)) [B] (Hinton et al.
    2015: T^2 keeps the gradients' scale as T changes)."""
    targets = jax.nn.softmax(teacher_log_probs.astype(jnp.float32) / temperature)
    log_student = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature)
    return -(targets * log_student).sum(-1) * temperature**2


def _teacher_columns(teacher, spec: LossSpec) -> list:
    """The batch's teacher targets [B, sum of classes] cut into one [B, C] per head."""
    if teacher is None:
        return [None] * len(spec.heads)
    offsets = np.cumsum((0,) + tuple(spec.head_sizes))
    return [teacher[:, offsets[n] : offsets[n + 1]] for n in range(len(spec.heads))]


def _per_head(logits, labels, spec: LossSpec):
    """(name, logits [B, C], labels [B]) for each head."""
    if not spec.multi_head:
        return [(spec.heads[0], logits, labels)]
    return [(name, logits[name], labels[:, n]) for n, name in enumerate(spec.heads)]


def loss_and_metrics(logits, labels, spec: LossSpec, mask=None, teacher=None):
    """Per-example weighted loss [B] and metric sums.

    `teacher` [B, sum of classes]: the teachers' log-probabilities, mixed into each head's loss
    with spec.distill_weight (the metrics stay those of the labels).
    Sums: loss_sum, correct and count of the primary head's batch (count = real examples);
    with several heads also loss_sum/<head>, correct/<head>, count/<head> over labelled rows.
    `mask` [B] (1 real, 0 padding) excludes padded evaluation rows.
    """
    batch = labels.shape[0]
    mask = jnp.ones((batch,), jnp.float32) if mask is None else mask
    total = jnp.zeros((batch,), jnp.float32)
    sums = {}
    distilling = spec.distill_weight > 0
    if distilling and teacher is None:
        raise ValueError("a distilling loss needs the batch's teacher targets")
    per_head = zip(_per_head(logits, labels, spec), _teacher_columns(teacher, spec))
    for n, ((name, head_logits, head_labels), head_teacher) in enumerate(per_head):
        present = (head_labels != MISSING).astype(jnp.float32) * mask
        safe_labels = jnp.maximum(head_labels, 0)
        losses = cross_entropy(head_logits, safe_labels, spec.label_smoothing)
        if spec.class_weights is not None and spec.class_weights[n] is not None:
            losses = losses * jnp.asarray(spec.class_weights[n], jnp.float32)[safe_labels]
        if distilling:
            soft = soft_cross_entropy(head_logits, head_teacher, spec.distill_temperature)
            losses = (1.0 - spec.distill_weight) * losses + spec.distill_weight * soft
        losses = losses * present
        correct = (head_logits.argmax(-1) == head_labels).astype(jnp.float32) * present
        total = total + spec.weight(n) * losses
        if n == 0:
            sums["correct"] = correct.sum()
        if spec.multi_head:
            sums.update(
                {
                    f"loss_sum/{name}": losses.sum(),
                    f"correct/{name}": correct.sum(),
                    f"count/{name}": present.sum(),
                }
            )
    sums["loss_sum"] = total.sum()
    sums["count"] = mask.sum()
    return total, sums


def summarize(sums: dict) -> dict:
    """Host metric sums -> loss, accuracy (primary head), count, and per-head numbers: count/<head>
    (its labelled rows) and, when there are any, accuracy/<head> and loss/<head> (a head without
    labelled rows gets no number rather than a made-up 0)."""
    count = float(sums["count"])
    result = {
        "loss": float(sums["loss_sum"]) / count,
        "accuracy": float(sums["correct"]) / count,
        "count": int(count),
    }
    for key in sums:
        if key.startswith("correct/"):
            head = key.split("/", 1)[1]
            labelled = float(sums[f"count/{head}"])
            result[f"count/{head}"] = int(labelled)
            if labelled > 0:
                result[f"accuracy/{head}"] = float(sums[key]) / labelled
                result[f"loss/{head}"] = float(sums[f"loss_sum/{head}"]) / labelled
    return result


def spec_for_data(config, data) -> "LossSpec":
    """The training loss of a run: heads, their loss weights and (optional) class weights from
    the training labels of `data` (dataset.FashionData)."""
    heads = tuple(data.heads) if data.heads else (config.data.label_column,)
    labels = data.subsets["train"].labels
    labels = labels[:, None] if labels.ndim == 1 else labels
    sizes = [len(c) for c in data.heads.values()] if data.heads else [len(data.class_names)]
    class_weights = tuple(
        class_weights_for(labels[:, n], size, config.loss.class_weighting)
        for n, size in enumerate(sizes)
    )
    distilling = bool(distill_teachers(config.loss))
    if all(w is None for w in class_weights):
        class_weights = None
    else:
        logging.info(
            "Class weights of the training loss (%s): %s",
            config.loss.class_weighting,
            class_weights[0],
        )
    return LossSpec(
        heads=heads,
        head_weights=tuple(config.loss.head_weights),
        multi_head=bool(data.heads),
        class_weights=class_weights,
        label_smoothing=float(config.loss.label_smoothing),
        distill_weight=float(config.loss.distill_weight) if distilling else 0.0,
        distill_temperature=float(config.loss.distill_temperature),
        head_sizes=tuple(sizes),
    )
