"""Classifying new product photos: a folder (recursively) or a CSV with a `path` column.

Images of any size and mode are converted to RGB at the training size. They are streamed: paths
are read lazily, decoded one batch ahead on a thread pool and predicted in fixed-shape batches,
and every batch's rows are written at once, so memory stays flat however many files there are.
A file that cannot be read gets a row with its error and the run goes on. With a review
threshold, a `needs_review` column is 1 where the top-1 probability is below it, else 0 (empty
for a file that could not be read).
"""

import concurrent.futures
import csv
import dataclasses
import os
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from fashion_jax import image_cache
from fashion_jax.evaluation import calibration

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
PATH_COLUMN = "path"
REVIEW_COLUMN = "needs_review"


class InputError(ValueError):
    """--predict names something that is not a folder or a CSV of image paths."""


@dataclasses.dataclass
class PredictionCounts:
    predicted: int = 0
    failed: int = 0

    @property
    def exit_code(self) -> int:
        """Non-zero only when nothing could be read."""
        return 0 if self.predicted else 1


def count_inputs(source: str) -> int:
    """How many paths `iter_inputs(source)` yields (one cheap pass, for the progress bar)."""
    return sum(1 for _ in iter_inputs(source))


def iter_inputs(source: str) -> Iterator[str]:
    """Image paths listed in a CSV's `path` column, or under a folder, recursively (each
    folder's files by name, then its subfolders by name)."""
    if os.path.isdir(source):
        return _iter_folder(source)
    if os.path.isfile(source) and source.lower().endswith(".csv"):
        return _iter_csv(source)
    raise InputError(f"--predict={source} is neither a folder nor a .csv file with a "
                            f"'{PATH_COLUMN}' column.")


def _iter_folder(folder: str) -> Iterator[str]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                yield os.path.join(root, name)


def _iter_csv(csv_path: str) -> Iterator[str]:
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if PATH_COLUMN not in (reader.fieldnames or []):
            raise InputError(f"{csv_path} has no '{PATH_COLUMN}' column (columns: "
                             f"{reader.fieldnames}); add one holding the image paths (relative "
                             "paths are read from the CSV's folder).")
        for row in reader:
            path = (row[PATH_COLUMN] or "").strip()
            yield path if os.path.isabs(path) else os.path.join(base, path)


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load(path: str, height: int, width: int):
    try:
        return image_cache.load_image(path, height, width), None
    except image_cache.ImageDecodeError as e:
        return None, str(e)
    except OSError as e:  # E.g. a folder or unreadable entry named like an image.
        return None, f"{type(e).__name__}: {e}"


def decoded_batches(paths: Iterable[str], batch_size: int, height: int, width: int,
                    pool: concurrent.futures.Executor) -> Iterator[tuple]:
    """(paths, uint8 [batch_size, H, W, 3] zero-padded, errors) per batch, decoding one ahead."""
    def collect(batch_paths, futures):
        images = np.zeros((batch_size, height, width, 3), np.uint8)
        errors = []
        for n, future in enumerate(futures):
            image, error = future.result()
            if image is not None:
                images[n] = image
            errors.append(error)
        return batch_paths, images, errors

    pending = None
    for batch_paths in _batched(paths, batch_size):
        futures = [pool.submit(_load, p, height, width) for p in batch_paths]
        if pending is not None:
            yield collect(*pending)
        pending = (batch_paths, futures)
    if pending is not None:
        yield collect(*pending)


def output_header(top_k: int, review: bool = False, heads=(None,), extra=()) -> list:
    """path, then per head (prefixed by its name when there are several) the top-k labels and
    probabilities, then `extra` columns, needs_review (with `review`) and error."""
    return ([PATH_COLUMN] + [f"{head + '_' if head else ''}top{k}_{field}" for head in heads
                             for k in range(1, top_k + 1) for field in ("label", "probability")]
            + list(extra) + [REVIEW_COLUMN] * review + ["error"])


def predict_files(source: str, predict: Callable, class_names, image_shape: tuple,
                  output_csv: str, batch_size: int = 256, top_k: int = 3,
                  show_progress: bool = True, num_threads: int = 0,
                  review_threshold: Optional[float] = None,
                  extra_columns: Optional[tuple] = None) -> PredictionCounts:
    """Writes one row per input path: the top-k labels and probabilities, or the error; with
    `review_threshold`, also needs_review (top-1 probability below it).

    Multi-head models: `class_names` is {head: names} and `predict` returns {head: log-probs};
    each head gets its group of columns and the review flag looks at the first head.
    `extra_columns`: (names, function of the batch's log-probs -> [rows][len(names)] values),
    e.g. the hierarchy-consistent decoding.
    """
    review = review_threshold is not None
    heads = list(class_names) if isinstance(class_names, dict) else [None]
    names_of = class_names if isinstance(class_names, dict) else {None: class_names}
    top_k = max(1, min([top_k] + [len(names) for names in names_of.values()]))
    extra_names, extra_function = extra_columns or ((), None)
    height, width = image_shape[:2]
    counts = PredictionCounts()
    total = count_inputs(source)
    os.makedirs(os.path.dirname(os.path.abspath(output_csv)), exist_ok=True)
    threads = num_threads or max(2, os.cpu_count() or 2)
    with open(output_csv, "w", newline="") as f, \
            concurrent.futures.ThreadPoolExecutor(threads) as pool, \
            tqdm(total=total, desc="predicting", unit="img", disable=not show_progress,
                 mininterval=1) as bar:
        writer = csv.writer(f)
        writer.writerow(output_header(top_k, review, heads, extra_names))
        blank = [""] * (2 * top_k * len(heads) + len(extra_names) + review)
        for paths, images, errors in decoded_batches(iter_inputs(source), batch_size, height,
                                                     width, pool):
            ok = [e is None for e in errors]
            log_probs = predict(images) if any(ok) else None
            if log_probs is not None and not isinstance(log_probs, dict):
                log_probs = {None: log_probs}
            extra = extra_function(log_probs) if extra_function and log_probs else None
            # Reviewed on the float64 top-1 probability that evaluation's thresholds come from.
            confidence = None if log_probs is None else calibration.top1_confidence(
                log_probs[heads[0]])
            for n, (path, error) in enumerate(zip(paths, errors)):
                if error is not None:
                    writer.writerow([path] + blank + [error])
                    counts.failed += 1
                    continue
                cells = []
                for head in heads:
                    probabilities = np.exp(log_probs[head][n])
                    best = np.argsort(-probabilities, kind="stable")[:top_k]
                    cells += [value for k in best
                              for value in (names_of[head][k], f"{probabilities[k]:.6f}")]
                cells += list(extra[n]) if extra is not None else []
                flag = [int(confidence[n] < review_threshold)] if review else []
                writer.writerow([path] + cells + flag + [""])
                counts.predicted += 1
            f.flush()
            bar.update(len(paths))
    return counts
