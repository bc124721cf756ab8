"""fashion_jax: JAX/Flax training and evaluation for fashion product photo classification.

from fashion_jax import load_classifier
clf = load_classifier("runs/adam")
print(clf.predict(["photo.jpg"])[0].heads["masterCategory"].label)
"""


def __getattr__(name):
    # Imported on first use, so that `import fashion_jax` (e.g. by the entry points before they
    # preload the allocator) does not import JAX.
    if name == "load_classifier":
        from fashion_jax.inference.classifier import load_classifier

        return load_classifier
    raise AttributeError(f"module 'fashion_jax' has no attribute {name!r}")
