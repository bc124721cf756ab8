"""What a person watching a run sees: TensorBoard events and scalars.jsonl while it trains, the
resolved config, curves.png at every epoch end, compile time apart from img/s, clean logs."""

import glob
import json
import os
import struct
import subprocess
import sysconfig

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboardX.proto import event_pb2

from fashion_jax.training import metric_writers
from fashion_jax.training import run_files
from fashion_jax.training import run_progress
from fashion_jax.training import train
from tests.conftest import launch_run_train
from tests.conftest import tiny_config
from tests.conftest import write_multi_head_dataset
from tests.conftest import write_synthetic_dataset


def read_events(folder) -> list:
    """(step, tag, value) of every scalar in the TensorBoard event files under `folder`, read
    with the record framing of the format (length, its CRC, data, its CRC) and the Event proto."""
    scalars = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        position = 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position : position + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[position + 12 : position + 12 + length])
            position += 12 + length + 4
            scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return scalars


def test_a_multi_head_run_writes_scalars_per_step_and_per_epoch(tmp_path, cache_dir, monkeypatch):
    data = write_multi_head_dataset(tmp_path / "data")
    monkeypatch.setenv("FASHION_DATA_DIR", str(data))
    config = tiny_config(
        "",
        num_epochs=2,
        log_every_steps=2,
        **{
            "data.head_columns": ("masterCategory", "subCategory", "gender"),
            "data.other_min_count": 2,
        },
    )
    drawn = []
    original = run_files.plot_curves
    monkeypatch.setattr(
        run_files,
        "plot_curves",
        lambda history, *a, **k: drawn.append(len(history)) or original(history, *a, **k),
    )
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))

    assert drawn == [1, 2]  # curves.png is redrawn at every epoch end.
    saved = json.loads((workdir / run_files.CONFIG_FILE).read_text())
    assert saved["data"]["data_dir"] == str(data)  # The folder found via $FASHION_DATA_DIR.
    assert saved["optimizer"]["name"] == "adam"

    history = run_files.read_metrics(str(workdir))
    steps_per_epoch = history[0]["step"]
    events = read_events(workdir / metric_writers.TENSORBOARD_DIR)
    by_tag = {}
    for step, tag, value in events:
        by_tag.setdefault(tag, []).append((step, value))
    train_steps = [s for s, _ in by_tag["train/loss"]]
    # Every log_every_steps and at each epoch end.
    expected = sorted(
        {s for s in range(2, 2 * steps_per_epoch + 1, 2)} | {steps_per_epoch, 2 * steps_per_epoch}
    )
    assert train_steps == expected
    for tag in ("train/accuracy", "train/learning_rate", "train/images_per_second"):
        assert len(by_tag[tag]) == len(expected)
    for tag in ("val/loss", "val/accuracy", "val/accuracy/subCategory", "val/loss/gender"):
        assert [s for s, _ in by_tag[tag]] == [steps_per_epoch, 2 * steps_per_epoch], tag
    assert by_tag["val/accuracy/subCategory"][-1][1] == pytest.approx(
        history[-1]["val_accuracy/subCategory"], abs=1e-6
    )
    jsonl = metric_writers.read_scalars(str(workdir))
    assert [r["step"] for r in jsonl if "train/loss" in r] == expected
    assert sum("val/accuracy" in r for r in jsonl) == 2

    # TensorBoard's own loader (what `tensorboard --logdir runs/` runs) reads the same scalars.
    loaded = event_accumulator.EventAccumulator(
        str(workdir / metric_writers.TENSORBOARD_DIR),
        size_guidance={event_accumulator.SCALARS: 0},
    )
    loaded.Reload()
    assert [e.step for e in loaded.Scalars("train/loss")] == expected
    assert [e.value for e in loaded.Scalars("val/accuracy/subCategory")] == pytest.approx(
        [value for _, value in by_tag["val/accuracy/subCategory"]]
    )


def test_readme_s_tensorboard_command_is_installed_beside_python():
    """README's `tensorboard --logdir runs/` needs the command in the install's bin folder."""
    command = os.path.join(sysconfig.get_path("scripts"), "tensorboard")
    result = subprocess.run([command, "--version_tb"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]


def test_compile_time_is_reported_apart_from_images_per_second(tmp_path, synthetic_data, cache_dir):
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config(synthetic_data, num_epochs=2), str(workdir))
    first, second = run_files.read_metrics(str(workdir))
    assert first["compile_seconds"] > 0 and second["compile_seconds"] == 0
    # img/s leaves the compiling first step out: the rest of the epoch over the rest of its time.
    images = first["step"] * tiny_config(synthetic_data).batch_size
    rest = images - tiny_config(synthetic_data).batch_size
    assert first["images_per_second"] == pytest.approx(
        rest / (first["train_seconds"] - first["compile_seconds"]), rel=1e-6
    )


def test_epoch_record_and_scalars_are_named_by_split_and_head():
    record = run_progress.epoch_record(
        3,
        30,
        {"loss": 0.5, "accuracy": 0.8, "count": 10, "accuracy/gender": 0.7},
        {"loss": 0.6, "accuracy": 0.75, "count": 5, "loss/gender": 0.9},
        1e-3,
        {
            "train_seconds": 2.0,
            "compile_seconds": 0.0,
            "images_per_second": 50.0,
            "resumed_mid_epoch": False,
        },
    )
    assert record["train_accuracy/gender"] == 0.7 and record["val_loss/gender"] == 0.9
    scalars = run_progress.epoch_scalars(record)
    assert scalars["val/loss"] == 0.6 and scalars["val/loss/gender"] == 0.9
    assert scalars["epoch/train_accuracy/gender"] == 0.7
    assert scalars["epoch/images_per_second"] == 50.0
    assert "epoch/resumed_mid_epoch" not in scalars and "epoch/epoch" not in scalars


def test_a_log_file_gets_no_progress_bar_carriage_returns(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data")
    process = launch_run_train(
        tmp_path / "run",
        data,
        tmp_path / "cache",
        "--config.num_epochs=1",
        "--config.progress_bar=true",
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "\r" not in output and "epoch 1:" in output
