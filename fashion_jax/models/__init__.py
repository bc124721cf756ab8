"""Model architectures, chosen by `config.model.name`, and what every model shares.

  seed_cnn.py      the 2020 study's CNN ("seed_cnn")
  small_resnet.py  a residual network for 80x60 images ("small_resnet")
  speed_net.py     a network for time to accuracy: downsampled at once, few wide layers
  layers.py        3x3 convolution layer, max pool, one or several classifier heads

A model maps images scaled to [0, 1] to logits [B, classes], or {head: logits} with several heads.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fashion_jax import errors
from fashion_jax.conv import dispatch
from fashion_jax.models import speed_net
from fashion_jax.models.seed_cnn import SeedCNN
from fashion_jax.models.small_resnet import SmallResNet
from fashion_jax.models.speed_net import SpeedNet


def scale_images(images):
    """uint8 [0, 255] -> float32 [0, 1]; runs inside jitted functions, not on the host."""
    return images.astype(jnp.float32) / 255.0


def predict_logits(apply_fn, variables, images):
    """Eval-mode logits of uint8 `images` (BatchNorm running statistics, no dropout)."""
    return apply_fn(variables, scale_images(images), train=False)


# Test-time augmentation: the mean of the probabilities over views of each image. "flip": the
# image and its mirror (for models trained with --config.augment.flip); "flip_shift": those two
# and both moved by one pixel down-right and up-left (edge pixels repeated), as airbench's
# multi-crop TTA, six views.
TTA_MODES = ("none", "flip", "flip_shift")
TTA_SHIFTS = ((1, 1), (-1, -1))


def _moved(images, step: int, axis: int):
    """`images` moved by `step` in {-1, 0, 1} along `axis`, the edge repeated into the gap
    (slices and a concatenation: an edge-mode pad does not convert to ONNX correctly)."""
    n = images.shape[axis]

    def part(start, stop):
        return jax.lax.slice_in_dim(images, start, stop, axis=axis)

    if step > 0:
        return jnp.concatenate([part(0, 1), part(0, n - 1)], axis)
    if step < 0:
        return jnp.concatenate([part(1, n), part(n - 1, n)], axis)
    return images


def tta_views(images, tta: str) -> list:
    """The views of uint8 `images` [B, H, W, C] whose probabilities test-time augmentation
    `tta` averages (the images themselves first)."""
    errors.check_choice("tta", tta, TTA_MODES)
    views = [images]
    if tta == "none":
        return views
    views.append(images[:, :, ::-1])
    if tta == "flip_shift":
        for dy, dx in TTA_SHIFTS:
            moved = _moved(_moved(images, dy, 1), dx, 2)
            views += [moved, moved[:, :, ::-1]]
    return views


def predict_log_probabilities(apply_fn, variables, images, tta: str = "none"):
    """Eval-mode log-softmax of uint8 `images` [B, H, W, C] ({head: ...} with several heads),
    with test-time augmentation `tta`: the log of the mean probability over its views."""
    views = tta_views(images, tta)

    def predict(batch):
        return jax.tree.map(jax.nn.log_softmax, predict_logits(apply_fn, variables, batch))

    if len(views) == 1:
        return predict(images)
    per_view = [predict(view) for view in views]
    return jax.tree.map(
        lambda *logs: jax.nn.logsumexp(jnp.stack(logs), axis=0) - jnp.log(float(len(logs))),
        *per_view,
    )


MODELS = {"seed_cnn": SeedCNN, "small_resnet": SmallResNet, "speed_net": SpeedNet}
# Model fields of config.model; a field that only another model has is ignored.
MODEL_FIELDS = {f.name for model in MODELS.values() for f in dataclasses.fields(model)}


def output_classes(class_names, heads=None):
    """create_model's `num_classes` for a run: {head: class count} with several heads, else the
    number of `class_names`."""
    return {h: len(c) for h, c in heads.items()} if heads else len(class_names)


DTYPES = ("float32", "bfloat16")


def check_config(model_config) -> None:
    """Refuses an unknown model, convolution or dtype, and native convolution in bfloat16."""
    errors.check_choice("--config.model.name", model_config.name, sorted(MODELS))
    errors.check_choice("--config.model.dtype", model_config.dtype, DTYPES)
    dispatch.check_impl(model_config.conv_impl, model_config.dtype)
    if model_config.name == "speed_net":
        speed_net.check_config(model_config)


def initial_params(model_config, train_images) -> dict:
    """Data-dependent initial values of the model's parameters ({module: {name: value}}, for
    create_train_state), or {} where the model starts at random."""
    if model_config.name == "speed_net":
        return speed_net.initial_params(model_config, train_images)
    return {}


def create_model(model_config, num_classes) -> nn.Module:
    """Builds the model named by `model_config.name` from the remaining fields.

    `num_classes`: an int (one head), or {head: number of classes} in head order (several heads).
    """
    check_config(model_config)
    fields = dict(model_config)
    name = fields.pop("name")
    model_class = MODELS[name]
    known = {f.name for f in dataclasses.fields(model_class)}
    fields = {k: v for k, v in fields.items() if k in known or k not in MODEL_FIELDS}
    if isinstance(num_classes, dict):
        return model_class(num_classes=0, heads=tuple(num_classes.items()), **fields)
    return model_class(num_classes=num_classes, **fields)
