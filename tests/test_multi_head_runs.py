"""Multi-head runs through run_train.py: 8 CPU devices match one, and a run continued from its
checkpoint ends with the parameters of one that was never stopped."""

import json

import jax
import numpy as np
import pandas as pd
import pytest

from tests.conftest import assert_same_run
from tests.conftest import final_params
from tests.conftest import launch_run_train
from tests.conftest import write_multi_head_dataset

FLAGS = (
    "--config.batch_size=16",
    "--config.eval_batch_size=48",
    "--config.early_stopping.restore_best=false",
    "--config.data.head_columns=('masterCategory','subCategory','gender')",
    "--config.data.other_min_count=2",
    "--config.loss.class_weighting=sqrt",
    # One convolution for every device count ("auto" is native on one CPU device only).
    "--config.model.conv_impl=im2col",
)


def _run(workdir, data_dir, cache, *extra, devices="1"):
    process = launch_run_train(
        workdir, data_dir, cache, *FLAGS, *extra, env={"JAX_NUM_CPU_DEVICES": devices}
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi_head_runs")
    data_dir = write_multi_head_dataset(root / "data")
    _run(root / "one_device", data_dir, root / "cache", "--config.num_epochs=2")
    return root, data_dir


def test_multi_head_eight_devices_match_one(reference):
    root, data_dir = reference
    _run(root / "eight", data_dir, root / "cache", "--config.num_epochs=2", devices="8")
    val_images = (pd.read_csv(root / "one_device" / "split.csv").subset == "val").sum()
    assert_same_run(root / "one_device", root / "eight", val_images)
    summary = json.loads((root / "eight" / "summary.json").read_text())
    assert summary["devices"] == 8 and "accuracy/gender" in summary["val_heads"]


def test_multi_head_run_continued_from_its_checkpoint_matches(reference):
    root, data_dir = reference
    _run(root / "continued", data_dir, root / "cache", "--config.num_epochs=1")
    output = _run(root / "continued", data_dir, root / "cache", "--config.num_epochs=2")
    assert "Resumed from checkpoint" in output
    step_a, state_a = final_params(root / "one_device")
    step_b, state_b = final_params(root / "continued")
    assert step_a == step_b
    for name in ("params", "batch_stats", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, state_a[name], state_b[name])
