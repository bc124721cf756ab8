"""From styles.csv and decoded images to labelled, stratified train/val/test/control arrays.

Every row that is not used is accounted for in a skip report (written into the workdir): malformed
CSV lines, rows whose image is missing or does not decode, rows without a label, and rows of
classes below the configured minimum count.
"""

import csv
import dataclasses
import json
import logging
import os

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold
from sklearn.model_selection import train_test_split

from fashion_jax import errors
from fashion_jax.data import host_rows
from fashion_jax.data import image_cache
from fashion_jax.data import input_pipeline
from fashion_jax.data import locate
from fashion_jax.data import styles

SUBSETS = ("train", "val", "test", "control")
SPLIT_FILE = "split.csv"
SKIPPED_FILE = "skipped_rows.csv"
HEADS_FILE = "heads.json"
OTHER = "Other"
FOLD_COLUMN = "fold"  # Cross-fitting runs: each train row's fold (-1 for the other subsets).


@dataclasses.dataclass
class Subset:
    ids: np.ndarray  # int64 [N]
    images: np.ndarray  # uint8 [N, H, W, 3], or host_rows.CachedRows (read when indexed)
    labels: np.ndarray  # int32 [N]; with several heads [N, num_heads], -1 where missing

    def __len__(self):
        return len(self.ids)


@dataclasses.dataclass
class FashionData:
    class_names: list  # The primary head's classes (the only head of a single-head run).
    subsets: dict  # name -> Subset
    skipped: list  # (id or "line N", reason)
    split: pd.DataFrame  # columns id, subset, label (+ one column per head of a multi-head run)
    heads: dict | None = None  # Multi-head runs: head -> class names, in head order.
    folding: dict | None = None  # Multi-head runs: per head, what was folded into "Other".
    data_dir: str = ""  # The dataset folder that was read.


LABEL_COLUMNS = styles.STYLE_COLUMNS[1:-1]  # Every column but id and productDisplayName.


def check_config(data_config) -> None:
    """Refuses label and head columns that styles.csv does not have, a first head that is not the
    label column, split fractions that do not make four subsets, training subsets without train
    or with control, and impossible folds."""
    errors.check_choice("--config.data.label_column", data_config.label_column, LABEL_COLUMNS)
    head_columns = tuple(data_config.head_columns)
    for column in head_columns:
        errors.check_choice("--config.data.head_columns", column, LABEL_COLUMNS)
    if head_columns and head_columns[0] != data_config.label_column:
        raise errors.ConfigError(
            f"--config.data.head_columns starts with {head_columns[0]!r} but the primary label "
            f"--config.data.label_column is {data_config.label_column!r}: make the first head "
            "the label column (it is what the split is stratified by)."
        )
    errors.check_choice(
        "--config.data.sampling", data_config.sampling, input_pipeline.SAMPLING_MODES
    )
    fractions = tuple(data_config.split_fractions)
    if len(fractions) != len(SUBSETS) or min(fractions) <= 0 or not np.isclose(sum(fractions), 1):
        raise errors.ConfigError(
            f"--config.data.split_fractions={fractions}: give {len(SUBSETS)} positive fractions "
            f"for {', '.join(SUBSETS)} that sum to 1, e.g. (0.7, 0.1, 0.1, 0.1)."
        )
    for field in ("max_rows", "min_class_count", "other_min_count"):
        if data_config[field] < 0:
            raise errors.ConfigError(f"--config.data.{field}={data_config[field]} must be >= 0.")
    trained = trained_subsets(data_config)
    if (
        "train" not in trained
        or not set(trained) <= set(SUBSETS[:-1])
        or len(set(trained)) < len(trained)
    ):
        raise errors.ConfigError(
            f'--config.data.train_subsets={trained}: give "train" and, to refit a chosen '
            f"recipe on more images, any of {SUBSETS[1:-1]}, each once, e.g. ('train', 'val'). "
            f"{SUBSETS[-1]!r} is never trained on: it is the subset results are reported on."
        )
    folds, fold = data_config.num_folds, data_config.fold
    if folds and trained != ("train",):
        raise errors.ConfigError(
            f"--config.data.num_folds={folds} with --config.data.train_subsets={trained}: "
            "cross-fitting folds the train subset alone; leave train_subsets at ('train',)."
        )
    if folds == 1 or folds < 0 or (folds and not 0 <= fold < folds) or (not folds and fold):
        raise errors.ConfigError(
            f"--config.data.fold={fold} with --config.data.num_folds={folds}: cross-fitting needs "
            "num_folds >= 2 and 0 <= fold < num_folds (num_folds=0: no folds, fold must be 0)."
        )


def trained_subsets(data_config) -> tuple:
    """The subsets a run trains on (runs from before the field existed: train alone)."""
    return tuple(data_config.get("train_subsets", ("train",)))


def subsets_not_held_out(data_config) -> tuple:
    """The subsets a run trains on besides train (a refit), in any order they were given."""
    return tuple(s for s in trained_subsets(data_config) if s != "train")


def apply_label_rules(rows: pd.DataFrame, label_column: str, merge_map: dict, min_class_count: int):
    """Returns (rows with a `label` column, skipped list); class names are sorted."""
    skipped = [
        (int(i), f"no value in column {label_column}")
        for i in rows.loc[rows[label_column].isna(), "id"]
    ]
    rows = rows[rows[label_column].notna()].copy()
    rows["label"] = rows[label_column].map(lambda v: merge_map.get(v, v))
    counts = rows["label"].value_counts()
    rare = sorted(counts[counts < max(min_class_count, 1)].index)
    if rare:
        for i, label in rows.loc[rows["label"].isin(rare), ["id", "label"]].itertuples(index=False):
            skipped.append(
                (
                    int(i),
                    f"class {label!r} has {counts[label]} rows, below "
                    f"min_class_count={min_class_count}",
                )
            )
        rows = rows[~rows["label"].isin(rare)]
    return rows, skipped


def fold_rare_classes(values: pd.Series, min_count: int):
    """Classes with fewer than `min_count` rows become OTHER; missing values (NaN) stay missing.

    Returns (folded values, sorted class names, {folded class: row count}).
    """
    counts = values.value_counts()
    rare = counts[counts < min_count]
    folded = values.where(~values.isin(rare.index) | values.isna(), OTHER)
    return folded, sorted(folded.dropna().unique()), {k: int(v) for k, v in rare.items()}


def head_labels(rows: pd.DataFrame, head_columns: tuple, data_config):
    """Labels [N, num_heads] (-1 where a row has no value), head -> classes, and the folding.

    The first head is the primary label (`rows["label"]`, merge map and min_class_count already
    applied); every other head folds classes rarer than data_config.other_min_count into OTHER.
    """
    labels = np.full((len(rows), len(head_columns)), -1, np.int32)
    heads, folding = {}, {}
    for n, column in enumerate(head_columns):
        if n == 0:
            values, classes, folded = rows["label"], sorted(rows["label"].unique()), {}
        else:
            values, classes, folded = fold_rare_classes(rows[column], data_config.other_min_count)
        index = {name: i for i, name in enumerate(classes)}
        labels[:, n] = values.map(
            lambda v, index=index: index.get(v, -1) if isinstance(v, str) else -1
        )
        heads[column] = classes
        folding[column] = {
            "classes": len(classes),
            "missing_rows": int(values.isna().sum()),
            "folded_into_other": folded,
        }
        if folded:
            logging.info(
                "Head %s: %d classes with fewer than %d rows folded into %r: %s",
                column,
                len(folded),
                data_config.other_min_count,
                OTHER,
                folded,
            )
    return labels, heads, folding


def train_folds(
    labels: np.ndarray, train_mask: np.ndarray, num_folds: int, seed: int
) -> np.ndarray:
    """Fold numbers 0..num_folds-1 for the train rows, stratified by label (-1 elsewhere);
    reproducible for `seed`, so every fold run of a cross-fitting job agrees on them."""
    folds = np.full(len(labels), -1, np.int64)
    train = np.flatnonzero(train_mask)
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(train, labels[train])):
        folds[train[held_out]] = fold
    return folds


def stratified_split(labels: np.ndarray, fractions: dict, seed: int) -> np.ndarray:
    """Assigns each index to a subset name, stratified by label, reproducible for `seed`."""
    names = list(fractions)
    counts = pd.Series(labels).value_counts()
    too_small = counts[counts < len(names)]
    if len(too_small):
        raise errors.DataError(
            f"Classes {dict(too_small)} have fewer rows than there are subsets ({len(names)}), "
            "so a stratified split is impossible; raise --config.data.min_class_count."
        )
    assignment = np.empty(len(labels), dtype=object)
    remaining, remaining_fraction = np.arange(len(labels)), 1.0
    for n, name in enumerate(names[:-1]):
        share = fractions[name] / remaining_fraction
        taken, remaining = train_test_split(
            remaining, train_size=share, stratify=labels[remaining], random_state=seed + n
        )
        assignment[taken] = name
        remaining_fraction -= fractions[name]
    assignment[remaining] = names[-1]
    return assignment


def load_data(
    data_config, workdir: str | None = None, show_progress: bool = True, in_memory=SUBSETS
) -> FashionData:
    """Reads, decodes, labels and splits the dataset; writes split and skip report to workdir.

    The images of the subsets named in `in_memory` are copied into memory; the others are
    host_rows.CachedRows, read from the image cache only where indexed (host_rows.py).

    With data_config.num_folds = K > 0 (cross-fitting), the train rows are also divided into K
    stratified folds (split.csv's `fold` column) and the run trains on every fold but
    data_config.fold; val, test and control stay as they are.
    """
    check_config(data_config)
    data_dir = locate.find_dataset(data_config.data_dir, "--config.data.data_dir")
    csv_path = os.path.join(data_dir, "styles.csv")
    table = styles.read_styles(csv_path)
    skipped = [(f"line {line}", reason) for line, _, reason in table.skipped]
    rows, label_skips = apply_label_rules(
        table.rows,
        data_config.label_column,
        dict(data_config.merge_map),
        data_config.min_class_count,
    )
    skipped += label_skips
    if data_config.max_rows:  # A deterministic, stratification-preserving slice for smoke runs.
        rows = rows.sample(frac=1.0, random_state=data_config.split_seed)
        rows = rows.groupby("label", group_keys=False).head(
            max(4, data_config.max_rows // rows["label"].nunique())
        )

    decoded = image_cache.decode_images(
        os.path.join(data_dir, "images"),
        rows["id"].tolist(),
        data_config.image_height,
        data_config.image_width,
        cache_dir=data_config.cache_dir or None,
        show_progress=show_progress,
    )
    skipped += [(i, reason) for i, reason in decoded.failed]
    position = decoded.index_of()
    rows = rows[rows["id"].map(lambda i: i in position)].sort_values("id")

    class_names = sorted(rows["label"].unique())
    label_ids = rows["label"].map({name: n for n, name in enumerate(class_names)}).to_numpy()
    fractions = dict(zip(SUBSETS, data_config.split_fractions))
    # Stratified by the primary label alone, so single- and multi-head runs share one split.
    assignment = stratified_split(label_ids, fractions, data_config.split_seed)
    split = pd.DataFrame(
        {"id": rows["id"].to_numpy(), "subset": assignment, "label": rows["label"].to_numpy()}
    )
    labels, heads, folding = label_ids.astype(np.int32), None, None
    head_columns = tuple(data_config.head_columns)
    if head_columns:
        labels, heads, folding = head_labels(rows, head_columns, data_config)
        for head in head_columns:
            split[head] = [
                heads[head][i] if i >= 0 else "" for i in labels[:, head_columns.index(head)]
            ]
    trained = trained_subsets(data_config)
    train_mask = np.isin(assignment, trained)
    if held_in := subsets_not_held_out(data_config):
        logging.warning(
            "Training on %s (--config.data.train_subsets): %d images; this run's numbers on "
            "%s are not held out.",
            "+".join(trained),
            train_mask.sum(),
            ", ".join(held_in),
        )
    if data_config.num_folds:
        folds = train_folds(label_ids, train_mask, data_config.num_folds, data_config.split_seed)
        split[FOLD_COLUMN] = folds
        train_mask = train_mask & (folds != data_config.fold)
        logging.info(
            "Cross-fitting: fold %d of %d held out; training on %d of %d train images.",
            data_config.fold,
            data_config.num_folds,
            train_mask.sum(),
            (assignment == "train").sum(),
        )
    subsets = {}
    for name in SUBSETS:
        mask = train_mask if name == "train" else assignment == name
        ids = split["id"].to_numpy()[mask]
        rows = np.asarray([position[i] for i in ids], np.int64)
        images = (
            decoded.images[rows]
            if name in in_memory
            else host_rows.CachedRows(decoded.images, rows)
        )
        subsets[name] = Subset(ids=ids, images=images, labels=labels[mask])
    _log_skips(skipped, csv_path)
    data = FashionData(class_names, subsets, skipped, split, heads, folding, data_dir)
    if workdir:
        write_split(data, workdir)
    return data


def _log_skips(skipped, csv_path):
    if not skipped:
        return
    by_reason = pd.Series([_reason_kind(r) for _, r in skipped]).value_counts()
    logging.warning(
        "%d rows of %s are not used: %s. First: %s. Full list in %s.",
        len(skipped),
        csv_path,
        {k: int(v) for k, v in by_reason.items()},
        ", ".join(f"{i} ({r})" for i, r in skipped[:5]),
        SKIPPED_FILE,
    )


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0].split(" (")[0] if "min_class_count" not in reason else "rare class"


def write_split(data: FashionData, workdir: str):
    """Writes split.csv (refusing to overwrite a different one) and skipped_rows.csv."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, SPLIT_FILE)
    if os.path.exists(path):
        previous = read_split(workdir)
        same = (
            list(previous.columns) == list(data.split.columns)
            and len(previous) == len(data.split)
            and (previous.to_numpy() == data.split.to_numpy()).all()
        )
        if not same:
            raise errors.DataError(
                f"{path} holds a different split than this config and dataset produce (the data "
                "or the data config changed). Use a new --workdir, or restore the original data."
            )
    else:
        data.split.to_csv(path, index=False)
    if data.heads:
        with open(os.path.join(workdir, HEADS_FILE), "w") as f:
            json.dump({"heads": data.heads, "folding": data.folding}, f, indent=1)
    with open(os.path.join(workdir, SKIPPED_FILE), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id_or_line", "reason"])
        writer.writerows(data.skipped)


def read_split(workdir: str) -> pd.DataFrame:
    split = pd.read_csv(os.path.join(workdir, SPLIT_FILE), dtype=str, keep_default_na=False)
    return split.astype({"id": "int64"}).astype({c: object for c in split.columns if c != "id"})
