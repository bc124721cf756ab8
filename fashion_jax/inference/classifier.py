"""A trained model as a Python object: one run, the ensemble of several, or a soup.

    from fashion_jax import load_classifier
    clf = load_classifier(["runs/adam", "runs/sgd"], checkpoint="best", combine="ensemble")
    for p in clf.predict(["a.jpg", pil_image, uint8_array]):
        print(p.source, p.error or p.heads["masterCategory"].label)

Inputs may be paths, PIL images or uint8 arrays ([H, W], [H, W, 3] or [H, W, 4]) of any size and
mode; each becomes the model's input as data/image_cache.to_model_input describes (EXIF
orientation, transparency on white, `resize` "pad" or "stretch"). An input that cannot be read
gets a Prediction with its `error`; the others are predicted. Batches have one shape (padded),
so the jitted function compiles once. `run_eval.py --predict` writes its CSV through this class.
"""

import concurrent.futures
import dataclasses
import os

import jax
import ml_collections
import numpy as np
from PIL import Image

from fashion_jax import errors
from fashion_jax import saved_runs
from fashion_jax.data import image_cache
from fashion_jax.evaluation import config_checks
from fashion_jax.evaluation import default_config
from fashion_jax.evaluation import heads as heads_lib
from fashion_jax.evaluation import runner
from fashion_jax.evaluation.evaluators import ensemble as ensemble_lib
from fashion_jax.evaluation.evaluators import soup as soup_lib
from fashion_jax.inference import predictor


@dataclasses.dataclass
class HeadPrediction:
    label: str  # The most probable class.
    probability: float  # Its probability.
    probabilities: dict  # Every class -> probability, in the model's class order.
    consistent_label: str | None = None  # Hierarchy levels: the label of the consistent decoding.

    def top(self, k: int) -> list:
        """The k most probable (label, probability) pairs."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


@dataclasses.dataclass
class Prediction:
    source: str  # The path, or "<input N>" for an image given in memory.
    heads: dict = dataclasses.field(default_factory=dict)  # head -> HeadPrediction
    needs_review: bool | None = None  # With a review threshold: first head's top-1 below it.
    error: str | None = None  # Why the input could not be read (then `heads` is empty).


class Classifier:
    """Predicts every head of a model, an ensemble or a soup (see load_classifier)."""

    def __init__(
        self,
        mixture: predictor.Mixture,
        class_names: dict,
        image_shape: tuple,
        resize: str,
        batch_size: int = 256,
        description: str = "",
        consistent=None,
    ):
        self.mixture, self._class_names = mixture, {h: tuple(c) for h, c in class_names.items()}
        self.image_shape, self.resize, self.batch_size = tuple(image_shape), resize, batch_size
        self.description = description
        self._consistent = consistent  # (column names, decode function) or None.

    @property
    def heads(self) -> tuple:
        """The label columns predicted, the primary one first."""
        return tuple(self._class_names)

    @property
    def consistent_heads(self) -> tuple:
        """The hierarchy levels that get a consistent label (multi-head runs), else ()."""
        if not self._consistent:
            return ()
        return tuple(c.removeprefix("consistent_") for c in self._consistent[0])

    @property
    def class_names(self) -> dict:
        """{head: class names}, in the order of the probabilities."""
        return dict(self._class_names)

    def log_probabilities(self, images: np.ndarray) -> dict:
        """{head: float32 [N, C]} for uint8 images [N, H, W, 3] at the model's size."""
        images = np.asarray(images, np.uint8)
        if images.shape[1:] != self.image_shape:
            raise errors.InputError(
                f"images of shape {images.shape[1:]}; the model takes {self.image_shape} (use "
                "predict() for photos of other sizes)"
            )
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            padded = np.zeros((self.batch_size, *self.image_shape), np.uint8)
            padded[: len(batch)] = batch
            out = self.mixture(padded)
            out = out if isinstance(out, dict) else {self.heads[0]: out}
            parts.append({h: np.asarray(v[: len(batch)]) for h, v in out.items()})
        if not parts:
            return {h: np.zeros((0, len(c)), np.float32) for h, c in self._class_names.items()}
        return {h: np.concatenate([p[h] for p in parts]) for h in self.heads}

    def predict(self, inputs, review_threshold: float | None = None) -> list:
        """One Prediction per input, in order."""
        return list(self.predict_iter(inputs, review_threshold))

    def predict_iter(self, inputs, review_threshold: float | None = None, num_threads: int = 0):
        """Predictions of an iterable of inputs, streamed: inputs are read lazily and decoded one
        batch ahead on a thread pool, so memory stays flat however many there are."""
        threads = num_threads or max(2, os.cpu_count() or 2)
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            pending = None
            for batch in _batched(enumerate(inputs), self.batch_size):
                futures = [pool.submit(self._load, n, item) for n, item in batch]
                if pending is not None:
                    yield from self._predict_decoded(pending, review_threshold)
                pending = futures
            if pending is not None:
                yield from self._predict_decoded(pending, review_threshold)

    def _load(self, n: int, item):
        source = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<input {n}>"
        height, width = self.image_shape[:2]
        try:
            return source, as_model_input(item, height, width, self.resize), None
        except image_cache.ImageDecodeError as e:
            return source, None, str(e)
        except OSError as e:  # E.g. a folder or unreadable entry named like an image.
            return source, None, f"{type(e).__name__}: {e}"

    def _predict_decoded(self, futures, review_threshold):
        loaded = [f.result() for f in futures]
        good = [image for _, image, error in loaded if error is None]
        log_probs = self.log_probabilities(np.stack(good)) if good else None
        consistent = None
        if self._consistent and good:
            consistent = dict(zip(self._consistent[0], zip(*self._consistent[1](log_probs))))
        row = 0
        for source, _, error in loaded:
            if error is not None:
                yield Prediction(source, error=error)
                continue
            heads = {}
            for head, names in self._class_names.items():
                probabilities = np.exp(log_probs[head][row].astype(np.float64))
                best = int(np.argmax(probabilities))
                column = f"consistent_{head}"
                heads[head] = HeadPrediction(
                    names[best],
                    float(probabilities[best]),
                    dict(zip(names, probabilities.tolist())),
                    consistent[column][row] if consistent and column in consistent else None,
                )
            review = None
            if review_threshold is not None:
                review = heads[self.heads[0]].probability < review_threshold
            yield Prediction(source, heads, review)
            row += 1


def as_model_input(item, height: int, width: int, resize: str) -> np.ndarray:
    """A path, PIL image or uint8 array as uint8 [height, width, 3]."""
    if isinstance(item, (str, os.PathLike)):
        return image_cache.load_image(item, height, width, resize)
    if isinstance(item, np.ndarray):
        if (
            item.dtype != np.uint8
            or item.ndim not in (2, 3)
            or (item.ndim == 3 and item.shape[-1] not in (1, 3, 4))
        ):
            raise image_cache.ImageDecodeError(
                f"an array of dtype {item.dtype} and shape {item.shape}; give uint8 [H, W], "
                "[H, W, 3] (RGB) or [H, W, 4] (RGBA)"
            )
        item = Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item)
    if isinstance(item, Image.Image):
        return image_cache.to_model_input(item, height, width, resize)
    raise image_cache.ImageDecodeError(
        f"a {type(item).__name__}; give a path, a PIL image or a uint8 array"
    )


def _batched(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_classifier(
    workdirs,
    checkpoint: str = "best",
    combine: str = "auto",
    weights=None,
    tta: str = "none",
    resize: str | None = None,
    batch_size: int = 256,
    data_dir: str = "",
    config: ml_collections.ConfigDict | None = None,
) -> Classifier:
    """A Classifier from training workdirs (read-only).

    `combine`: "single" (one workdir), "ensemble" (mean of probabilities, optional `weights`),
    "uniform_soup" or "greedy_soup" (averaged parameters; these read val and training images
    from the dataset, found as run_eval.py finds it, or in `data_dir`); "auto": single for one
    workdir, else ensemble. `config`: a full run_eval.py config instead of the other arguments.
    """
    workdirs = [workdirs] if isinstance(workdirs, (str, os.PathLike)) else list(workdirs)
    workdirs = [os.fspath(w) for w in workdirs]
    if config is None:
        config = default_config.get_config()
        config.checkpoint, config.tta, config.batch_size = str(checkpoint), tta, batch_size
        config.data_dir, config.predict.combine = data_dir, combine
        if resize is not None:  # Else the default of run_eval.py's --config.predict.resize.
            config.predict.resize = resize
        if weights is not None:
            config.evals.ensemble.weights = ",".join(str(float(w)) for w in weights)
    config_checks.check_eval_config(config, len(workdirs), predicting=True)
    evaluation = runner.Evaluation(workdirs, config)
    combine = config.predict.combine
    if combine == "auto":
        combine = "single" if len(workdirs) == 1 else "ensemble"
    checkpoints = evaluation.checkpoints
    if combine in ("single", "ensemble"):
        members = [(c.run.model, jax.device_put(c.load())) for c in checkpoints]
        member_weights = ensemble_lib.weights(config.evals.ensemble, len(members))
        description = ("ensemble of " if combine == "ensemble" else "") + ", ".join(
            c.name for c in checkpoints
        )
    else:
        kind = combine.removesuffix("_soup")
        ingredients, _, soups = soup_lib.cook(evaluation.context(), config.evals.soup, (kind,))
        members = [(ingredients[0].run.model, jax.device_put(soups[0].variables))]
        member_weights = None
        description = f"{kind} soup of " + ", ".join(soups[0].details["ingredients"])
    run = checkpoints[0].run
    class_names = dict(run.heads) if run.heads else {run.config.data.label_column: run.class_names}
    consistent = (
        heads_lib.consistent_columns(run, saved_runs.read_split(run), config.hierarchy)
        if run.heads
        else None
    )
    return Classifier(
        predictor.Mixture(members, member_weights, config.tta),
        class_names,
        run.image_shape,
        config.predict.resize,
        config.batch_size,
        description,
        consistent,
    )
