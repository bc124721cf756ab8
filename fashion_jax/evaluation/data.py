"""A training run's saved split (split.csv), decoded subset by subset, on demand.

Images are decoded through image_cache with its disk cache (one cache entry per subset), so a
second evaluation reads arrays instead of JPEGs. The split is the one training wrote: an image
that no longer decodes is an error, since the numbers would then describe a different set.
"""

import os

import numpy as np
import pandas as pd

from fashion_jax import errors
from fashion_jax import saved_runs
from fashion_jax.data import dataset
from fashion_jax.data import image_cache
from fashion_jax.data import locate

DATA_DIR_FLAG = "--config.data_dir"  # run_eval.py's flag for the dataset folder.
BN_SAMPLE_SEED = 0  # Which training images recalibrate BatchNorm statistics; fixed for repeats.


class EvalData:
    """Lazily decoded subsets of one split, labelled with the run's class indices."""

    def __init__(
        self,
        run: saved_runs.Run,
        split: pd.DataFrame,
        data_dir: str = "",
        show_progress: bool = False,
        images_from: "EvalData | None" = None,
    ):
        """`images_from`: an EvalData of a split holding these rows, whose decoded images are
        reused (a multi-head run's heads see subsets of one split)."""
        self.class_names = list(run.class_names)
        self.split = split
        self._run, self._show_progress, self._images_from = run, show_progress, images_from
        self._data_dir_flag, self._data_dir = data_dir, None
        self._subsets, self._train_samples = {}, {}
        unknown = sorted(set(split["label"]) - set(self.class_names))
        if unknown:
            raise errors.DataError(
                f"{run.workdir}/{dataset.SPLIT_FILE} has labels {unknown} that are not among the "
                f"checkpoint's classes {self.class_names}; the workdir is inconsistent."
            )

    def subset(self, name: str) -> dataset.Subset:
        if name not in self._subsets:
            ids = self.split.loc[self.split["subset"] == name, "id"].to_numpy(np.int64)
            if not len(ids):
                raise errors.DataError(
                    f"The saved split of {self._run.workdir} has no {name!r} "
                    f"images; choose --config.subsets among {self.subset_names()}."
                )
            labels = (
                self.split.loc[self.split["subset"] == name, "label"]
                .map({c: n for n, c in enumerate(self.class_names)})
                .to_numpy(np.int32)
            )
            if self._images_from is not None:
                whole = self._images_from.subset(name)
                images = whole.images[np.isin(whole.ids, ids)]
            else:
                images = self._decode(ids, name)
            self._subsets[name] = dataset.Subset(ids=ids, images=images, labels=labels)
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

    def dataset_dir(self) -> str:
        """The dataset folder (found once, by data/locate.py's rule)."""
        if self._data_dir is None:
            self._data_dir = locate.find_dataset(
                self._data_dir_flag, DATA_DIR_FLAG, recorded=self._run.config.data.get("data_dir")
            )
        return self._data_dir

    def _decode(self, ids: np.ndarray, subset: str) -> np.ndarray:
        data_dir = self.dataset_dir()
        height, width = self._run.image_shape[:2]
        decoded = image_cache.decode_images(
            os.path.join(data_dir, "images"),
            ids.tolist(),
            height,
            width,
            cache_dir=self._run.config.data.get("cache_dir") or None,
            show_progress=self._show_progress,
        )
        if decoded.failed:
            first = ", ".join(f"{i} ({reason})" for i, reason in decoded.failed[:3])
            raise errors.DataError(
                f"{len(decoded.failed)} {subset} images of {self._run.workdir}/"
                f"{dataset.SPLIT_FILE} no longer decode from {data_dir}/images (first: {first}). "
                "The dataset changed since training: restore it, or pass "
                f"{DATA_DIR_FLAG}=<the data the run was trained on>."
            )
        position = decoded.index_of()
        return decoded.images[[position[int(i)] for i in ids]]


def head_split(split: pd.DataFrame, head: str) -> pd.DataFrame:
    """A multi-head run's split seen through one head: the rows that have a value for it
    (split.csv holds "" where a row has none), labelled by it."""
    rows = split[split[head] != ""]
    return rows.assign(label=rows[head]).reset_index(drop=True)


def check_same_split(runs: list, splits: list) -> str | None:
    """None if every run used the same split and classes, else what differs, in words. The
    cross-fitting fold column is left out: fold runs and full runs share val, test and control."""
    splits = [s.drop(columns=[dataset.FOLD_COLUMN], errors="ignore") for s in splits]
    first, reference = runs[0], splits[0]
    for run, split in zip(runs[1:], splits[1:]):
        if run.heads != first.heads:
            return (
                f"{first.workdir} has the heads {first.heads and list(first.heads)} but "
                f"{run.workdir} has {run.heads and list(run.heads)}"
            )
        if tuple(run.class_names) != tuple(first.class_names):
            return (
                f"{first.workdir} has classes {list(first.class_names)} but {run.workdir} has "
                f"{list(run.class_names)}"
            )
        if tuple(run.image_shape) != tuple(first.image_shape):
            return (
                f"{first.workdir} used images of shape {first.image_shape} but {run.workdir} "
                f"used {run.image_shape}"
            )
        if len(split) != len(reference) or not (split.to_numpy() == reference.to_numpy()).all():
            merged = reference.merge(split, on="id", how="outer", suffixes=("_a", "_b"))
            differing = int(
                (merged["subset_a"] != merged["subset_b"]).sum()
                + (merged["label_a"] != merged["label_b"]).sum()
            )
            return (
                f"{first.workdir}/{dataset.SPLIT_FILE} and {run.workdir}/{dataset.SPLIT_FILE} "
                f"differ ({len(reference)} vs {len(split)} rows; {differing} ids with another "
                "subset, label or only in one); the runs were trained with different data "
                "or data config (data.split_seed, split_fractions, max_rows, merge_map)"
            )
    return None
