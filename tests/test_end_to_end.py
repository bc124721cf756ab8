"""Whole runs through run_train.py / train_and_evaluate with tiny configs on CPU."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from fashion_jax import errors
from fashion_jax.training import run_files
from fashion_jax.training import train
from tests.conftest import REAL_DATA
from tests.conftest import REPO_ROOT
from tests.conftest import requires_real_data
from tests.conftest import tiny_config


@requires_real_data
def test_the_smoke_config_learns_on_real_photos_found_without_a_flag(tmp_path):
    """configs/tiny.py as a new user runs it: no data flag (the dataset is found by the same
    rule as the tests found it), and it ends clearly above always answering the largest class."""
    workdir = tmp_path / "run"
    env = dict(os.environ)
    env.setdefault("FASHION_CACHE_DIR", str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "run_train.py", "--config=configs/tiny.py", f"--workdir={workdir}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["class_names"] == [
        "Accessories",
        "Apparel",
        "Footwear",
        "Free Items",
        "Personal Care",
    ]
    assert summary["data_dir"] == str(REAL_DATA)
    split = pd.read_csv(workdir / "split.csv")
    val = split[split.subset == "val"]
    assert summary["val_images"] == len(val) > 50
    majority = val["label"].value_counts().max() / len(val)
    assert majority < 0.3 and summary["val_accuracy"] >= 0.5, (majority, summary)
    history = run_files.read_metrics(workdir)
    assert len(history) == 3
    assert (workdir / "curves.png").stat().st_size > 1000


def test_nan_loss_stops_the_run_with_a_clear_message(synthetic_data, cache_dir, tmp_path):
    config = tiny_config(
        synthetic_data,
        **{"optimizer.learning_rate": 1e12, "optimizer.name": "sgd", "log_every_steps": 1},
    )
    with pytest.raises(errors.NonFiniteLossError, match="Lower --config.optimizer.learning_rate"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_missing_dataset_gives_instructions_not_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FASHION_DATA_DIR"}
    result = subprocess.run(
        [
            sys.executable,
            "run_train.py",
            "--config=configs/tiny.py",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.data_dir={tmp_path / 'nowhere'}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "run_train.py: --config.data.data_dir=" in result.stderr
    assert "does not hold the dataset: no such folder" in result.stderr
    assert "styles.csv and images/" in result.stderr


def test_early_stopping_restores_the_best_epoch(synthetic_data, cache_dir, tmp_path):
    config = tiny_config(
        synthetic_data,
        **{"num_epochs": 12, "early_stopping.patience": 1, "optimizer.learning_rate": 3e-2},
    )
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    history = run_files.read_metrics(tmp_path / "run")
    best = min(history, key=lambda r: r["val_loss"])
    assert summary["best_epoch"] == best["epoch"]
    assert summary["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    # Stopped exactly `patience` epochs after the best one (or ran out of epochs).
    assert len(history) == min(best["epoch"] + 1, 12)


def saves_by_the_rule(steps_per_dispatch, every_steps, epoch_ends):
    """Where checkpoints are due: at the end of each dispatch (a chunk of steps) that crosses a
    multiple of every_steps, and at every epoch end."""
    saves, start = [], 0
    for end_of_epoch in epoch_ends:
        for first in range(start, end_of_epoch, steps_per_dispatch):
            last = min(first + steps_per_dispatch, end_of_epoch)
            if last == end_of_epoch or last // every_steps > first // every_steps:
                saves.append(last)
        start = end_of_epoch
    return saves


def test_device_data_with_several_steps_per_dispatch_matches_host_data(
    synthetic_data, cache_dir, tmp_path, monkeypatch
):
    from fashion_jax.training import checkpointing

    saved = []
    save = checkpointing.save

    def recording_save(manager, step, *args, **kwargs):
        saved.append((os.path.basename(os.path.dirname(str(manager.directory))), step))
        return save(manager, step, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "save", recording_save)
    common = {
        "num_epochs": 2,
        "checkpoint.every_steps": 3,
        "early_stopping.restore_best": False,
        "bn_recalibration_batches": 2,  # On device: gathered and averaged there.
    }
    host = train.train_and_evaluate(tiny_config(synthetic_data, **common), str(tmp_path / "host"))
    device = train.train_and_evaluate(
        tiny_config(synthetic_data, data_on_device="true", steps_per_dispatch=2, **common),
        str(tmp_path / "device"),
    )
    assert device["final_step"] == host["final_step"]
    assert device["val_loss"] == pytest.approx(host["val_loss"], rel=1e-4)
    history_host = run_files.read_metrics(tmp_path / "host")
    history_device = run_files.read_metrics(tmp_path / "device")
    for a, b in zip(history_host, history_device, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 1 / host["val_images"]
    # Checkpoints due inside a chunk are written at its end (the state exists only there), as
    # they happen: mid-epoch ones are deleted at the epoch end, so a final listing cannot show it.
    epoch_ends = [r["step"] for r in history_host]
    host_saves = [step for run, step in saved if run == "host"]
    device_saves = [step for run, step in saved if run == "device"]
    assert host_saves == saves_by_the_rule(1, 3, epoch_ends)
    assert device_saves == saves_by_the_rule(2, 3, epoch_ends)
    assert len(device_saves) > len(epoch_ends) and device_saves != host_saves


def test_precise_batch_norm_stores_recalibrated_statistics(synthetic_data, cache_dir, tmp_path):
    import jax
    import numpy as np

    from fashion_jax import models
    from fashion_jax.data import dataset
    from fashion_jax.training import batch_norm
    from tests.conftest import final_params

    config = tiny_config(synthetic_data, num_epochs=1, bn_recalibration_batches=3)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    _, state = final_params(tmp_path / "run")
    images = dataset.load_data(config.data, None, show_progress=False).subsets["train"].images
    rows = np.sort(np.random.default_rng([config.seed, 0, 1]).permutation(len(images))[:48])
    model = models.create_model(config.model, 4)
    expected = batch_norm.recalibrate_batch_norm(
        model, {"params": state["params"], "batch_stats": state["batch_stats"]}, images[rows], 16
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        jax.device_get(expected["batch_stats"]),
        state["batch_stats"],
    )


def test_an_early_stopped_run_continues_with_more_patience(synthetic_data, cache_dir, tmp_path):
    workdir = str(tmp_path / "run")
    stopped = tiny_config(
        synthetic_data,
        num_epochs=12,
        **{"early_stopping.patience": 1, "optimizer.learning_rate": 3e-2},
    )
    first = train.train_and_evaluate(stopped, workdir)
    assert first["epochs_run"] < 12
    again = train.train_and_evaluate(stopped, workdir)  # Same patience: nothing more to do.
    assert again["epochs_run"] == first["epochs_run"]
    patient = tiny_config(
        synthetic_data,
        num_epochs=first["epochs_run"] + 2,
        **{"early_stopping.patience": 100, "optimizer.learning_rate": 3e-2},
    )
    more = train.train_and_evaluate(patient, workdir)
    assert more["epochs_run"] == first["epochs_run"] + 2
    assert [r["epoch"] for r in run_files.read_metrics(workdir)] == list(
        range(1, first["epochs_run"] + 3)
    )
