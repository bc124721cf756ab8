"""--config.data.train_subsets: a refit on train and val keeps the split, trains on both, is
flagged wherever its numbers are not held out, and cannot leak val into another run."""

import pandas as pd
import pytest

from fashion_jax import errors
from fashion_jax.data import dataset
from fashion_jax.evaluation import runner
from fashion_jax.training import config_checks
from fashion_jax.training import run_files
from fashion_jax.training import train
from tests.conftest import eval_config
from tests.conftest import tiny_config
from tests.conftest import write_synthetic_dataset

REFIT = ("train", "val")
NO_CHOICE_ON_VAL = {"early_stopping.restore_best": False, "early_stopping.patience": 100}


@pytest.mark.parametrize(
    "subsets, fields, message",
    [
        (("val",), {}, 'give "train"'),
        (("train", "control"), {}, "'control' is never trained on"),
        (("train", "val", "val"), {}, "each once"),
        (REFIT, {"data.num_folds": 2}, "cross-fitting folds the train subset alone"),
        (REFIT, {}, "early stopping would choose on it"),
        (REFIT, {"early_stopping.restore_best": False, "num_epochs": 4}, "patience 3 of 4 epochs"),
        (REFIT, {**NO_CHOICE_ON_VAL, "early_stopping.target_accuracy": 0.9}, "target_accuracy"),
    ],
)
def test_training_subsets_that_cannot_work_are_refused_before_any_work(
    tmp_path, subsets, fields, message
):
    config = tiny_config(tmp_path, **{"data.train_subsets": subsets, **fields})
    with pytest.raises(errors.ConfigError, match=message) as refused:
        config_checks.check_train_config(config)
    assert "--config." in str(refused.value)


def test_a_refit_on_train_and_val_is_accepted_when_nothing_is_chosen_on_val(tmp_path):
    config = tiny_config(tmp_path, **{"data.train_subsets": REFIT, **NO_CHOICE_ON_VAL})
    config_checks.check_train_config(config)  # Raises if refused.
    config.early_stopping.monitor, config.early_stopping.patience = "train_loss", 1
    config.early_stopping.restore_best = True
    config_checks.check_train_config(config)


@pytest.mark.parametrize(
    "subsets, held_in",
    [(("train",), ()), (REFIT, ("val",)), (("val", "test", "train"), ("val", "test"))],
)
def test_the_subsets_not_held_out_are_those_besides_train_in_any_order(tmp_path, subsets, held_in):
    config = tiny_config(tmp_path, **{"data.train_subsets": subsets, **NO_CHOICE_ON_VAL})
    config_checks.check_train_config(config)  # Any order is accepted.
    assert dataset.subsets_not_held_out(config.data) == held_in


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """(root, {"plain": workdir, "refit": workdir}, {name: summary}): the same tiny config and
    seed on train alone and on train and val."""
    root = tmp_path_factory.mktemp("train_subsets")
    data_dir = write_synthetic_dataset(root / "data")
    runs, summaries = {}, {}
    for name, subsets in (("plain", ("train",)), ("refit", REFIT)):
        fields = {
            "data.train_subsets": subsets,
            "data.cache_dir": str(root / "cache"),
            **NO_CHOICE_ON_VAL,
        }
        runs[name] = root / name
        config = tiny_config(data_dir, **fields)
        summaries[name] = train.train_and_evaluate(config, str(runs[name]))
    return root, runs, summaries


def test_a_refit_trains_on_train_and_val_of_the_same_split(two_runs):
    _, runs, summaries = two_runs
    plain_split = pd.read_csv(runs["plain"] / dataset.SPLIT_FILE)
    refit_split = pd.read_csv(runs["refit"] / dataset.SPLIT_FILE)
    # The four subsets stay as assigned, so both runs can be compared image by image.
    pd.testing.assert_frame_equal(plain_split, refit_split)
    counts = plain_split["subset"].value_counts()
    assert summaries["plain"]["train_images"] == counts["train"]
    assert summaries["refit"]["train_images"] == counts["train"] + counts["val"]
    assert summaries["refit"]["train_subsets"] == list(REFIT)
    plain, refit = (run_files.read_metrics(runs[name]) for name in ("plain", "refit"))
    assert len(plain) == len(refit) == 2  # Both ran the full length: nothing stopped on val.
    assert plain[0]["train_loss"] != pytest.approx(refit[0]["train_loss"], rel=1e-4)


def test_evaluation_flags_a_refit_and_fits_nothing_on_its_val(two_runs):
    root, runs, _ = two_runs
    config = eval_config(
        evaluators="single,ensemble",
        subsets="val,test",
        batch_size=64,
        **{"report.gallery_size": 0},
    )
    report = runner.evaluate([str(runs["plain"]), str(runs["refit"])], config, str(root / "eval"))
    assert any(
        str(runs["refit"]) in w and "not held out" in w and "val" in w for w in report["warnings"]
    )
    assert not any(str(runs["plain"]) in w for w in report["warnings"])
    # Both runs are on one split: the ensemble and the paired test on test are allowed.
    assert any(r["kind"] == "ensemble" for r in report["results"])
    assert report["paired_tests"]["test"]
    for result in report["results"]:
        if result["detailed"]:
            assert result["calibration"]["temperature"] is None
            assert "trained on val" in result["calibration"]["skipped"]
    markdown = (root / "eval" / "report.md").read_text()
    assert "## Warnings" in markdown and "not held out" in markdown

    alone = runner.evaluate([str(runs["plain"])], config, str(root / "eval_plain"))
    assert alone["warnings"] == []
    assert alone["results"][0]["calibration"]["fitted_on"] == "val"


def test_a_teacher_refit_on_val_cannot_teach_a_run_that_holds_val_out(two_runs, tmp_path):
    root, runs, _ = two_runs
    data_dir = root / "data"
    student = tiny_config(
        data_dir,
        **{
            "data.cache_dir": str(root / "cache"),
            "loss.distill_teachers": (str(runs["refit"]),),
            **NO_CHOICE_ON_VAL,
        },
    )
    with pytest.raises(errors.ConfigError, match="trained on other rows.*train_subsets"):
        train.train_and_evaluate(student, str(tmp_path / "student"))
