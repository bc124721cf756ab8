"""The catalogue audit: cross-fitting folds, confident learning on out-of-sample probabilities,
hierarchy contradictions, and the rows that could not be audited."""

import json

import numpy as np
import pandas as pd
import pytest

from fashion_jax.data import dataset
from fashion_jax.evaluation import runner
from fashion_jax.evaluation.evaluators import audit
from fashion_jax.training import train
from tests.conftest import eval_config
from tests.conftest import tiny_config
from tests.conftest import write_multi_head_dataset

# Ids 1001-1030 are Accessories photos, 1031-1060 Apparel, 1061-1090 Footwear, 1091-1120 Personal Care.
FLIPPED = {1003: "Footwear", 1025: "Personal Care", 1047: "Accessories", 1069: "Apparel"}
HEADS = ("masterCategory", "subCategory", "articleType")


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """Two cross-fitting runs on a dataset with four catalogue labels changed on purpose (the
    photo's colour says one masterCategory, the label another) and one row without a photo."""
    root = tmp_path_factory.mktemp("audit")
    data = write_multi_head_dataset(root / "data", rows_per_class=30)
    styles = (data / "styles.csv").read_text().splitlines()
    lines = [styles[0]]
    for line in styles[1:]:
        fields = line.split(",")
        if int(fields[0]) in FLIPPED:
            fields[2] = FLIPPED[int(fields[0])]
        lines.append(",".join(fields))
    lines.append("9999,Men,Apparel,ApparelSub,ApparelType0,Blue,Summer,2012,Casual,No photo")
    (data / "styles.csv").write_text("\n".join(lines) + "\n")
    for fold in (0, 1):
        config = tiny_config(
            data,
            num_epochs=4,
            **{
                "data.head_columns": HEADS,
                "data.other_min_count": 2,
                "data.num_folds": 2,
                "data.fold": fold,
                "data.cache_dir": str(root / "cache"),
                "optimizer.learning_rate": 3e-3,
                # Running BatchNorm statistics that catch up within a few dozen steps.
                "model.bn_momentum": 0.5,
            },
        )
        train.train_and_evaluate(config, str(root / f"fold_{fold}"))
    return root


def test_folds_divide_the_train_rows_and_leave_the_other_subsets(folds):
    split = dataset.read_split(str(folds / "fold_0"))
    assert (split == dataset.read_split(str(folds / "fold_1"))).all().all()
    train_rows = split[split["subset"] == "train"]
    assert set(train_rows[dataset.FOLD_COLUMN]) == {"0", "1"}
    assert (split.loc[split["subset"] != "train", dataset.FOLD_COLUMN] == "-1").all()
    summaries = [json.loads((folds / f"fold_{k}" / "summary.json").read_text()) for k in (0, 1)]
    held_out = [int((train_rows[dataset.FOLD_COLUMN] == str(k)).sum()) for k in (0, 1)]
    # Fold k's run trained on the other fold's rows only.
    assert [s["train_images"] for s in summaries] == [held_out[1], held_out[0]]


def test_audit_finds_the_changed_labels_and_the_contradictions(folds, tmp_path):
    # About 20 train rows per subCategory here: one wrong row is 5% of them.
    config = eval_config(
        evaluators="audit",
        batch_size=16,
        **{"evals.audit.gallery_size": 4, "evals.audit.contradiction_share": 0.1},
    )
    out = tmp_path / "eval"
    runner.evaluate([str(folds / "fold_0"), str(folds / "fold_1")], config, str(out))
    rows = pd.read_csv(out / audit.AUDIT_CSV, keep_default_na=False)
    assert list(rows.columns) == list(audit.COLUMNS)
    master = rows[(rows["head"] == "masterCategory") & rows["reason"].str.startswith("confident")]
    top = master.sort_values("rank").head(8)
    found = set(top["id"]) & set(FLIPPED)
    assert len(found) >= 3, top
    for row in top[top["id"].isin(FLIPPED)].itertuples():
        assert row.given_label == FLIPPED[row.id] and row.suggested_label != row.given_label
        assert row.given_probability < row.suggested_probability
    contradictions = rows[rows["reason"].str.startswith("hierarchy")]
    assert set(FLIPPED) <= set(contradictions["id"])
    assert "in training subCategory=" in contradictions["reason"].iloc[0]
    not_audited = pd.read_csv(out / "masterCategory" / audit.NOT_AUDITED_CSV)
    assert "9999" in set(not_audited["id_or_line"].astype(str))
    assert "image file missing" in not_audited["reason"].iloc[-1]
    report = (out / "masterCategory" / "report.md").read_text()
    assert "## Audit of the masterCategory labels" in report
    assert (out / "masterCategory" / "audit_masterCategory.png").stat().st_size > 1000


def test_one_run_audited_beside_single_is_reported_once(folds, tmp_path):
    config = eval_config(evaluators="single,audit", subsets="val", batch_size=16)
    runner.evaluate([str(folds / "fold_0")], config, str(tmp_path / "eval"))
    report = json.loads((tmp_path / "eval" / "masterCategory" / "report.json").read_text())
    # The audit's combination of one run is that run, which the single evaluator reports.
    assert [entry["kind"] for entry in report["results"]] == ["single"]
    assert (tmp_path / "eval" / audit.AUDIT_CSV).exists()


def test_hierarchy_contradictions_use_the_training_rows():
    split = pd.DataFrame(
        {
            "id": range(8),
            "subset": ["train"] * 6 + ["val", "val"],
            "masterCategory": ["Apparel"] * 5 + ["Footwear", "Footwear", "Apparel"],
            "subCategory": ["Topwear"] * 6 + ["Topwear", "Shoes"],
        }
    )
    found = audit.hierarchy_contradictions(split, ["masterCategory", "subCategory"], 0.2)
    assert [(i, given, suggested) for i, _, given, suggested, _ in found] == [
        (5, "Footwear", "Apparel"),
        (6, "Footwear", "Apparel"),
    ]  # Shoes has no training rows, so row 7 is not judged.


def test_confident_learning_ranks_a_confidently_contradicted_label_first():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probabilities = np.full((300, 3), 0.05)
    probabilities[np.arange(300), labels] = 0.9
    labels[17] = (labels[17] + 1) % 3  # The model is sure of another class.
    assert audit.confident_learning(labels, probabilities)[0] == 17
