"""A training run's saved split (split.csv), decoded subset by subset, on demand.

Images are decoded through image_cache with its disk cache (one cache entry per subset), so a
second evaluation reads arrays instead of JPEGs. The split is the one training wrote: an image
that no longer decodes is an error, since the numbers would then describe a different set.
"""

import os
from typing import Optional

import numpy as np
import pandas as pd

from fashion_jax import dataset
from fashion_jax import image_cache
from fashion_jax import restore
from fashion_jax import styles

BN_SAMPLE_SEED = 0  # Which training images recalibrate BatchNorm statistics; fixed for repeats.


class EvalData:
    """Lazily decoded subsets of one split, labelled with the run's class indices."""

    def __init__(self, run: restore.Run, split: pd.DataFrame, data_dir: str = "",
                 show_progress: bool = False):
        self.class_names = list(run.class_names)
        self.split = split
        self._run, self._show_progress = run, show_progress
        self._data_dir = data_dir or run.config.data.get("data_dir", "")
        self._subsets, self._train_samples = {}, {}
        unknown = sorted(set(split["label"]) - set(self.class_names))
        if unknown:
            raise styles.DataError(
                f"{run.workdir}/{dataset.SPLIT_FILE} has labels {unknown} that are not among the "
                f"checkpoint's classes {self.class_names}; the workdir is inconsistent.")

    def subset(self, name: str) -> dataset.Subset:
        if name not in self._subsets:
            ids = self.split.loc[self.split["subset"] == name, "id"].to_numpy(np.int64)
            if not len(ids):
                raise styles.DataError(f"The saved split of {self._run.workdir} has no {name!r} "
                                       f"images; choose --subsets among {self.subset_names()}.")
            labels = self.split.loc[self.split["subset"] == name, "label"].map(
                {c: n for n, c in enumerate(self.class_names)}).to_numpy(np.int32)
            self._subsets[name] = dataset.Subset(ids=ids, images=self._decode(ids, name),
                                                 labels=labels)
        return self._subsets[name]

    def subset_names(self) -> list:
        return [s for s in dataset.SUBSETS if (self.split["subset"] == s).any()]

    def train_sample(self, count: int) -> np.ndarray:
        """`count` training images in a fixed random order (all of them if there are fewer)."""
        if count not in self._train_samples:
            ids = self.split.loc[self.split["subset"] == "train", "id"].to_numpy(np.int64)
            ids = np.random.default_rng(BN_SAMPLE_SEED).permutation(ids)[:count]
            self._train_samples[count] = self._decode(ids, "train")
        return self._train_samples[count]

    def _decode(self, ids: np.ndarray, subset: str) -> np.ndarray:
        data_dir = styles.resolve_data_dir(self._data_dir)
        height, width = self._run.image_shape[:2]
        decoded = image_cache.decode_images(
            os.path.join(data_dir, "images"), ids.tolist(), height, width,
            cache_dir=self._run.config.data.get("cache_dir") or None,
            show_progress=self._show_progress)
        if decoded.failed:
            first = ", ".join(f"{i} ({reason})" for i, reason in decoded.failed[:3])
            raise styles.DataError(
                f"{len(decoded.failed)} {subset} images of {self._run.workdir}/"
                f"{dataset.SPLIT_FILE} no longer decode from {data_dir}/images (first: {first}). "
                "The dataset changed since training: restore it, or pass --data_dir=<the data "
                "the run was trained on>.")
        position = decoded.index_of()
        return decoded.images[[position[int(i)] for i in ids]]


def head_split(split: pd.DataFrame, head: str) -> pd.DataFrame:
    """A multi-head run's split seen through one head: the rows that have a value for it
    (split.csv holds "" where a row has none), labelled by it."""
    rows = split[split[head] != ""]
    return rows.assign(label=rows[head]).reset_index(drop=True)


def check_same_split(runs: list, splits: list) -> Optional[str]:
    """None if every run used the same split and classes, else what differs, in words."""
    first, reference = runs[0], splits[0]
    for run, split in zip(runs[1:], splits[1:]):
        if run.heads != first.heads:
            return (f"{first.workdir} has the heads {first.heads and list(first.heads)} but "
                    f"{run.workdir} has {run.heads and list(run.heads)}")
        if tuple(run.class_names) != tuple(first.class_names):
            return (f"{first.workdir} has classes {list(first.class_names)} but {run.workdir} has "
                    f"{list(run.class_names)}")
        if tuple(run.image_shape) != tuple(first.image_shape):
            return (f"{first.workdir} used images of shape {first.image_shape} but {run.workdir} "
                    f"used {run.image_shape}")
        if len(split) != len(reference) or not (split.to_numpy() == reference.to_numpy()).all():
            merged = reference.merge(split, on="id", how="outer", suffixes=("_a", "_b"))
            differing = int((merged["subset_a"] != merged["subset_b"]).sum()
                            + (merged["label_a"] != merged["label_b"]).sum())
            return (f"{first.workdir}/{dataset.SPLIT_FILE} and {run.workdir}/{dataset.SPLIT_FILE} "
                    f"differ ({len(reference)} vs {len(split)} rows; {differing} ids with another "
                    "subset, label or only in one); the runs were trained with different data "
                    "or data config (data.split_seed, split_fractions, max_rows, merge_map)")
    return None
