"""Classifying new product photos: a folder (recursively) or a CSV with a `path` column.

Images of any size and mode are converted to RGB at the training size. They are streamed: paths
are read lazily, decoded one batch ahead on a thread pool and predicted in fixed-shape batches,
and every batch's rows are written at once, so memory stays flat however many files there are.
A file that cannot be read gets a row with its error and the run goes on. With a review
threshold, a `needs_review` column is 1 where the top-1 probability is below it, else 0 (empty
for a file that could not be read).
"""

from collections.abc import Iterator
import csv
import dataclasses
import os

from tqdm import tqdm

from fashion_jax import errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
PATH_COLUMN = "path"
REVIEW_COLUMN = "needs_review"


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
    raise errors.InputError(
        f"--predict={source} is neither a folder nor a .csv file with a '{PATH_COLUMN}' column."
    )


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
            raise errors.InputError(
                f"{csv_path} has no '{PATH_COLUMN}' column (columns: "
                f"{reader.fieldnames}); add one holding the image paths (relative "
                "paths are read from the CSV's folder)."
            )
        for row in reader:
            path = (row[PATH_COLUMN] or "").strip()
            yield path if os.path.isabs(path) else os.path.join(base, path)


def output_header(top_k: int, review: bool = False, heads=(None,), extra=()) -> list:
    """path, then per head (prefixed by its name when there are several) the top-k labels and
    probabilities, then `extra` columns, needs_review (with `review`) and error."""
    return (
        [PATH_COLUMN]
        + [
            f"{head + '_' if head else ''}top{k}_{field}"
            for head in heads
            for k in range(1, top_k + 1)
            for field in ("label", "probability")
        ]
        + list(extra)
        + [REVIEW_COLUMN] * review
        + ["error"]
    )


def predict_files(
    source: str,
    classifier,
    output_csv: str,
    top_k: int = 3,
    show_progress: bool = True,
    review_threshold: float | None = None,
) -> PredictionCounts:
    """Writes one row per input path of `source` with a classifier.Classifier: per head the
    top-k labels and probabilities (a multi-head model's columns are prefixed by the head, and
    its hierarchy levels get consistent_<head> columns), or the error; with `review_threshold`,
    needs_review (1 where the first head's top-1 probability is below it)."""
    review = review_threshold is not None
    class_names = classifier.class_names
    heads = list(class_names) if len(class_names) > 1 else [None]
    top_k = max(1, min([top_k] + [len(names) for names in class_names.values()]))
    consistent = classifier.consistent_heads
    blank = [""] * (2 * top_k * len(heads) + len(consistent) + review)
    counts = PredictionCounts()
    total = count_inputs(source)
    os.makedirs(os.path.dirname(os.path.abspath(output_csv)), exist_ok=True)
    with (
        open(output_csv, "w", newline="") as f,
        tqdm(
            total=total, desc="predicting", unit="img", disable=not show_progress, mininterval=1
        ) as bar,
    ):
        writer = csv.writer(f)
        writer.writerow(
            output_header(top_k, review, heads, [f"consistent_{h}" for h in consistent])
        )
        for prediction in classifier.predict_iter(iter_inputs(source), review_threshold):
            if prediction.error is not None:
                writer.writerow([prediction.source] + blank + [prediction.error])
                counts.failed += 1
            else:
                cells = []
                for head in heads:
                    result = prediction.heads[head or classifier.heads[0]]
                    cells += [v for label, p in result.top(top_k) for v in (label, f"{p:.6f}")]
                cells += [prediction.heads[h].consistent_label for h in consistent]
                flag = [int(prediction.needs_review)] if review else []
                writer.writerow([prediction.source] + cells + flag + [""])
                counts.predicted += 1
            bar.update(1)
    return counts
