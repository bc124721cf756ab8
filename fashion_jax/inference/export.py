"""Exporting a classifier (one model, an ensemble or a soup) for serving without this repository.

`export(classifier, folder)` writes:

- `model.onnx`: ONNX (jax2onnx; `pip install -e ".[export]"`), runnable with onnxruntime;
- `model.jax_export`: a serialized `jax.export` artifact, which `jax.export.deserialize` runs
  with nothing but jax installed;
- `labels.json`: the input, the outputs in order, every head's class names, the preprocessing.

Both take uint8 photos [N, 80, 60, 3] (RGB, prepared as labels.json says) and return one
probability array [N, classes] per head, in labels.json's order; an ensemble is one graph that
averages its members' probabilities, a soup one network. Convolutions are XLA's (the native CPU
kernel is a custom call that other runtimes cannot run).
"""

import json
import logging
import os

import jax
import jax.numpy as jnp

from fashion_jax import models

ONNX_FILE = "model.onnx"
JAX_FILE = "model.jax_export"
LABELS_FILE = "labels.json"
INPUT_NAME = "images"


def probabilities_function(classifier):
    """uint8 images -> tuple of probabilities, one per head, as the classifier computes them
    (its members' probabilities averaged with its weights, its test-time augmentation
    included), with XLA's convolution."""
    mixture = classifier.mixture
    members = [(model.clone(conv_impl="xla"), variables) for model, variables in mixture.members]
    weights = [float(w) for w in mixture.weights]
    heads = classifier.heads

    def one_model(model, variables, images):
        logits = models.predict_logits(model.apply, variables, images)
        logits = logits if isinstance(logits, dict) else {heads[0]: logits}
        return {h: jax.nn.softmax(logits[h].astype(jnp.float32)) for h in heads}

    def probabilities(images):
        total = {h: 0.0 for h in heads}
        for (model, variables), weight in zip(members, weights):
            views = [one_model(model, variables, v) for v in models.tta_views(images, mixture.tta)]
            outputs = {h: sum(v[h] for v in views) / len(views) for h in heads}
            total = {h: total[h] + weight * outputs[h] for h in heads}
        return tuple(total[h] for h in heads)

    return probabilities


def output_names(classifier) -> list:
    return [f"probabilities_{head}" for head in classifier.heads]


def labels(classifier) -> dict:
    height, width = classifier.image_shape[:2]
    return {
        "model": classifier.description,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": ["N", height, width, 3],
            "layout": "NHWC, RGB, 0-255 (the model scales to [0, 1] itself)",
        },
        "outputs": [
            {"name": name, "head": head, "shape": ["N", len(classes)], "classes": list(classes)}
            for name, (head, classes) in zip(
                output_names(classifier), classifier.class_names.items()
            )
        ],
        "heads": list(classifier.heads),
        "class_names": {h: list(c) for h, c in classifier.class_names.items()},
        "preprocessing": {
            "resize": classifier.resize,
            "steps": [
                "apply the EXIF orientation",
                "put transparent pixels on white",
                "convert to RGB",
                "resize 'pad': pad to width/height = 3/4 with the median colour of the photo's "
                "outermost pixels, centred; 'stretch': no padding",
                f"resize to {width}x{height} (width x height), bilinear",
            ],
            "reference": "fashion_jax.data.image_cache.to_model_input",
        },
        "test_time_augmentation": classifier.mixture.tta,
    }


def export_jax(classifier, path: str) -> None:
    """A `jax.export` artifact with a symbolic batch size, serialized to `path`."""
    height, width = classifier.image_shape[:2]
    (batch,) = jax.export.symbolic_shape("n")
    exported = jax.export.export(jax.jit(probabilities_function(classifier)))(
        jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8)
    )
    with open(path, "wb") as f:
        f.write(exported.serialize())


def export_onnx(classifier, path: str) -> None:
    """An ONNX model (jax2onnx) with a dynamic batch size, written to `path`."""
    from jax2onnx import to_onnx

    height, width = classifier.image_shape[:2]
    # jax2onnx logs tracebacks of converter plugins for libraries this model does not use.
    converter_log = logging.getLogger("jax2onnx")
    level = converter_log.level
    converter_log.setLevel(logging.CRITICAL)
    try:
        model = to_onnx(
            probabilities_function(classifier),
            [jax.ShapeDtypeStruct(("N", height, width, 3), jnp.uint8)],
            model_name="fashion_jax",
            input_names=[INPUT_NAME],
            output_names=output_names(classifier),
        )
    finally:
        converter_log.setLevel(level)
    # The converter's intermediate shape annotations disagree with its own layout changes
    # (onnxruntime warns and ignores them); the runtime infers them instead.
    del model.graph.value_info[:]
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def export(classifier, folder: str, formats=("onnx", "jax")) -> dict:
    """Writes the requested formats and labels.json into `folder`; returns {kind: path}."""
    os.makedirs(folder, exist_ok=True)
    written = {"labels": os.path.join(folder, LABELS_FILE)}
    with open(written["labels"], "w") as f:
        json.dump(labels(classifier), f, indent=2)
    if "jax" in formats:
        written["jax"] = os.path.join(folder, JAX_FILE)
        export_jax(classifier, written["jax"])
    if "onnx" in formats:
        written["onnx"] = os.path.join(folder, ONNX_FILE)
        export_onnx(classifier, written["onnx"])
    return written
