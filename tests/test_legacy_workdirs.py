"""Workdirs written before the package was reorganised still evaluate and resume.

tests/fixtures/legacy_workdirs/ holds two one-epoch runs made by the earlier layout (see its
README.md); their synthetic datasets are written again here (they are deterministic).
"""

import json
import shutil

import numpy as np
import pytest

from fashion_jax import saved_runs
from fashion_jax.evaluation import runner
from fashion_jax.training import train
from tests.conftest import REPO_ROOT
from tests.conftest import eval_config
from tests.conftest import tiny_config
from tests.conftest import write_multi_head_dataset
from tests.conftest import write_synthetic_dataset

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "legacy_workdirs"
HEADS = ("masterCategory", "subCategory", "gender")


@pytest.fixture
def legacy(tmp_path, cache_dir):
    shutil.copytree(FIXTURES, tmp_path / "runs")
    return {
        "single_head": (
            tmp_path / "runs" / "single_head",
            write_synthetic_dataset(tmp_path / "data_single", rows_per_class=24),
        ),
        "multi_head": (
            tmp_path / "runs" / "multi_head",
            write_multi_head_dataset(tmp_path / "data_multi"),
        ),
    }


def test_legacy_workdirs_evaluate(legacy, tmp_path):
    workdir, data = legacy["single_head"]
    config = eval_config(evaluators="single", batch_size=16, data_dir=str(data))
    report = runner.evaluate([str(workdir)], config, str(tmp_path / "eval_single"))
    numbers = report["results"][0]["metrics"]["val"]
    assert numbers["count"] == 9 and 0 <= numbers["accuracy"] <= 1
    # The checkpoint's own validation accuracy, recorded by the old code, is reproduced.
    recorded = json.loads((workdir / "summary.json").read_text())
    assert numbers["accuracy"] == pytest.approx(recorded["val_accuracy"])

    workdir, data = legacy["multi_head"]
    config = eval_config(evaluators="single", batch_size=16, data_dir=str(data))
    reports = runner.evaluate([str(workdir)], config, str(tmp_path / "eval_multi"))
    assert list(reports) == list(HEADS)
    recorded = json.loads((workdir / "summary.json").read_text())
    for head in HEADS:
        assert reports[head]["results"][0]["metrics"]["val"]["accuracy"] == pytest.approx(
            recorded["val_heads"][f"accuracy/{head}"]
        )
    # The weight average is what is evaluated (the checkpoint has ema_params).
    run = saved_runs.open_run(str(workdir))
    variables = saved_runs.checkpoint_at(run, saved_runs.select_step(run, "best")).load()
    assert set(variables) == {"params", "batch_stats"}


# The settings the fixtures were trained with (README.md there), with one more epoch.
SETTINGS = {
    "single_head": {},
    "multi_head": {
        "ema_decay": 0.9,
        "bn_recalibration_batches": 2,
        "data.head_columns": HEADS,
        "data.other_min_count": 2,
    },
}


@pytest.mark.parametrize("name", ["single_head", "multi_head"])
def test_legacy_workdirs_resume(legacy, name):
    workdir, data = legacy[name]
    config = tiny_config(
        data,
        num_epochs=2,
        init_seed=0,
        **{
            "early_stopping.patience": 100,
            "checkpoint.every_steps": 1000,
            "checkpoint.keep_epochs": 2,
        },
        **SETTINGS[name],
    )
    before = saved_runs.open_run(str(workdir)).manager.latest_step()
    summary = train.train_and_evaluate(config, str(workdir))
    assert summary["epochs_run"] == 2 and summary["final_step"] >= before
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["step"] == 2 * history[0]["step"] == 2 * before
    assert np.isfinite(history[1]["val_loss"])
