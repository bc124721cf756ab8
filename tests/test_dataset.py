"""Labels, merge map, rare classes, the stratified split and the skip report."""

import numpy as np
import pandas as pd
import pytest

from fashion_jax import errors
from fashion_jax.data import dataset
from tests.conftest import tiny_config
from tests.conftest import write_synthetic_dataset


def test_split_sizes_stratification_disjointness_and_determinism():
    labels = np.repeat(np.arange(5), [1000, 500, 200, 60, 40])
    fractions = dict(zip(dataset.SUBSETS, (0.7, 0.1, 0.1, 0.1)))
    assignment = dataset.stratified_split(labels, fractions, seed=3)
    assert set(assignment) == set(dataset.SUBSETS)  # Every index assigned exactly once.
    for label, total in zip(range(5), [1000, 500, 200, 60, 40]):
        counts = pd.Series(assignment[labels == label]).value_counts()
        assert abs(counts["train"] - 0.7 * total) <= 1, (label, counts)
        for subset in ("val", "test", "control"):
            assert abs(counts[subset] - 0.1 * total) <= 1, (label, subset, counts)
    np.testing.assert_array_equal(assignment, dataset.stratified_split(labels, fractions, seed=3))
    assert (assignment != dataset.stratified_split(labels, fractions, seed=4)).any()


def test_split_refuses_classes_too_small_to_stratify():
    labels = np.array([0] * 50 + [1] * 2)
    with pytest.raises(errors.DataError, match="min_class_count"):
        dataset.stratified_split(labels, dict(a=0.7, b=0.1, c=0.1, d=0.1), seed=0)


def test_merge_map_and_min_class_count():
    rows = pd.DataFrame(
        {
            "id": range(8),
            "masterCategory": [
                "Apparel",
                "Apparel",
                "Home",
                "Sporting Goods",
                "Free Items",
                "Rare",
                None,
                "Apparel",
            ],
        }
    )
    labelled, skipped = dataset.apply_label_rules(
        rows, "masterCategory", {"Home": "Free Items", "Sporting Goods": "Free Items"}, 2
    )
    assert labelled["label"].tolist() == [
        "Apparel",
        "Apparel",
        "Free Items",
        "Free Items",
        "Free Items",
        "Apparel",
    ]
    assert [i for i, _ in skipped] == [6, 5]
    assert "no value" in skipped[0][1] and "min_class_count=2" in skipped[1][1]


def test_load_data_accounts_for_every_row(tmp_path, cache_dir):
    root = write_synthetic_dataset(
        tmp_path / "data",
        rows_per_class=20,
        classes=["Apparel", "Footwear", "Home", "Sporting Goods"],
    )
    (root / "images" / "1001.jpg").unlink()  # Missing image.
    (root / "images" / "1022.jpg").write_bytes(b"corrupt")  # Undecodable image.
    with open(root / "styles.csv", "a") as f:
        f.write("bad line,with,too few fields\n")
    config = tiny_config(root).data
    workdir = tmp_path / "run"
    data = dataset.load_data(config, str(workdir), show_progress=False)
    assert data.class_names == ["Apparel", "Footwear", "Free Items"]
    used = sum(len(s) for s in data.subsets.values())
    assert used + len(data.skipped) == 80 + 1
    assert {str(i) for i, _ in data.skipped} == {"1001", "1022", "line 82"}
    for name, subset in data.subsets.items():
        assert subset.images.shape == (len(subset), 80, 60, 3)
        assert set(subset.ids) == set(data.split.loc[data.split.subset == name, "id"])
    # Images are stored with their own rows: Free Items images are cyan.
    train = data.subsets["train"]
    free = train.images[train.labels == 2]
    assert free[..., 0].mean() < 100 and free[..., 2].mean() > 150
    split = dataset.read_split(str(workdir))
    assert len(split) == used and split["id"].is_unique
    skipped_file = pd.read_csv(workdir / dataset.SKIPPED_FILE, dtype=str)
    assert len(skipped_file) == 3

    # Same config -> same split, accepted on the same workdir; a different split is refused.
    again = dataset.load_data(config, str(workdir), show_progress=False)
    np.testing.assert_array_equal(again.subsets["val"].ids, data.subsets["val"].ids)
    config.split_seed = 1
    with pytest.raises(errors.DataError, match="different split"):
        dataset.load_data(config, str(workdir), show_progress=False)
