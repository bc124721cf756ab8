"""Whole runs through run_train.py / train_and_evaluate with tiny configs on CPU."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from fashion_jax import reporting
from fashion_jax import train
from tests.conftest import REPO_ROOT, SHARED_DATA, requires_shared_data, tiny_config


@requires_shared_data
def test_one_epoch_on_a_slice_of_the_real_data(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, FASHION_DATA_DIR=str(SHARED_DATA),
               FASHION_CACHE_DIR=os.environ.get("FASHION_CACHE_DIR", str(tmp_path / "cache")))
    result = subprocess.run(
        [sys.executable, "run_train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
         "--config.num_epochs=1", "--config.data.max_rows=500", "--config.progress_bar=false"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["class_names"] == ["Accessories", "Apparel", "Footwear", "Free Items",
                                      "Personal Care"]
    split = pd.read_csv(workdir / "split.csv")
    assert summary["val_images"] == (split.subset == "val").sum() > 0
    assert summary["train_images"] == (split.subset == "train").sum()
    history = reporting.read_metrics(workdir)
    assert len(history) == 1 and 0.0 <= history[0]["val_accuracy"] <= 1.0
    assert (workdir / "curves.png").stat().st_size > 1000
    assert (workdir / "checkpoints").is_dir()


def test_nan_loss_stops_the_run_with_a_clear_message(synthetic_data, cache_dir, tmp_path):
    config = tiny_config(synthetic_data, **{"optimizer.learning_rate": 1e12,
                                            "optimizer.name": "sgd", "log_every_steps": 1})
    with pytest.raises(train.NonFiniteLossError, match="Lower --config.optimizer.learning_rate"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_missing_dataset_gives_instructions_not_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FASHION_DATA_DIR"}
    result = subprocess.run(
        [sys.executable, "run_train.py", "--config=configs/tiny.py",
         f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={tmp_path / 'nowhere'}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "styles.csv" in result.stderr and "paramaggarwal" in result.stderr


def test_early_stopping_restores_the_best_epoch(synthetic_data, cache_dir, tmp_path):
    config = tiny_config(synthetic_data, **{"num_epochs": 12, "early_stopping.patience": 1,
                                            "optimizer.learning_rate": 3e-2})
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    history = reporting.read_metrics(tmp_path / "run")
    best = min(history, key=lambda r: r["val_loss"])
    assert summary["best_epoch"] == best["epoch"]
    assert summary["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    # Stopped exactly `patience` epochs after the best one (or ran out of epochs).
    assert len(history) == min(best["epoch"] + 1, 12)
