"""Data parallelism: 8 CPU devices and two processes (gloo) match one device."""

import json
import socket

import jax
import numpy as np
import pandas as pd
import pytest

from tests.conftest import final_params, launch_run_train, write_synthetic_dataset

# Augmentation on: its random flips and shifts must not depend on how the batch is sharded.
# One convolution for every device count: "auto" picks the native kernel only on one CPU device.
FLAGS = ("--config.num_epochs=2", "--config.batch_size=16", "--config.eval_batch_size=48",
         "--config.early_stopping.restore_best=false", "--config.augment.flip=true",
         "--config.augment.max_shift=2", "--config.model.conv_impl=im2col")


@pytest.fixture(scope="module")
def data_and_reference(tmp_path_factory):
    """A synthetic dataset and a one-device, one-process reference run on it."""
    root = tmp_path_factory.mktemp("parallel")
    data_dir = write_synthetic_dataset(root / "data", rows_per_class=30)
    reference = root / "one_device"
    process = launch_run_train(reference, data_dir, root / "cache", *FLAGS,
                               env={"JAX_NUM_CPU_DEVICES": "1"})
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return root, data_dir, reference


def assert_same_run(reference, other, val_images):
    step_a, state_a = final_params(reference)
    step_b, state_b = final_params(other)
    assert step_a == step_b > 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                 state_a["params"], state_b["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                 state_a["batch_stats"], state_b["batch_stats"])
    summary_a = json.loads((reference / "summary.json").read_text())
    summary_b = json.loads((other / "summary.json").read_text())
    # Val does not divide by the eval batch (48): padding is masked, each image counted once.
    assert summary_a["val_images"] == summary_b["val_images"] == val_images
    assert summary_b["val_loss"] == pytest.approx(summary_a["val_loss"], rel=1e-4)


def test_eight_devices_match_one(data_and_reference):
    root, data_dir, reference = data_and_reference
    workdir = root / "eight_devices"
    process = launch_run_train(workdir, data_dir, root / "cache", *FLAGS,
                               env={"JAX_NUM_CPU_DEVICES": "8"})
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert json.loads((workdir / "summary.json").read_text())["devices"] == 8
    val_images = (pd.read_csv(reference / "split.csv").subset == "val").sum()
    assert val_images % 48 != 0
    assert_same_run(reference, workdir, val_images)


def test_batch_size_must_divide_by_devices(data_and_reference, tmp_path):
    root, data_dir, _ = data_and_reference
    process = launch_run_train(tmp_path / "run", data_dir, root / "cache",
                               "--config.batch_size=12", env={"JAX_NUM_CPU_DEVICES": "8"})
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "--config.batch_size=12 must divide by the number of devices (8)" in output


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(data_and_reference):
    root, data_dir, reference = data_and_reference
    workdir = root / "two_processes"
    address = f"127.0.0.1:{free_port()}"
    processes = [launch_run_train(workdir, data_dir, root / "cache", *FLAGS,
                                  f"--coordinator_address={address}", "--num_processes=2",
                                  f"--process_id={i}", env={"JAX_NUM_CPU_DEVICES": "1"})
                 for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["devices"] == 2
    val_images = (pd.read_csv(reference / "split.csv").subset == "val").sum()
    assert_same_run(reference, workdir, val_images)
