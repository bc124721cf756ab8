"""Training data on the device (--config.data_on_device=true, the accelerators' default), on CPU:
padded chunks, precise BN and validation in one dispatch each, no implicit transfer, one compile
per function, and the persistent compilation cache."""

import collections
import logging
import re

import jax
import numpy as np
import pytest

from fashion_jax import models
from fashion_jax.data import dataset
from fashion_jax.training import batch_norm
from fashion_jax.training import compilation_cache
from fashion_jax.training import epoch_end
from fashion_jax.training import parallel
from fashion_jax.training import run_files
from fashion_jax.training import steps
from fashion_jax.training import train
from tests.conftest import launch_run_train
from tests.conftest import make_state
from tests.conftest import synthetic_batch
from tests.conftest import tiny_config


def test_padding_steps_change_neither_state_nor_sums():
    state = make_state()
    batch = synthetic_batch(n=24)
    run = jax.jit(steps.train_steps_on_device_data)
    indices = np.arange(16, dtype=np.int32).reshape(2, 8)
    args = (batch["image"], batch["label"], indices)
    rng = jax.random.key(0)
    zeros = steps.zero_train_sums(state, {k: v[:8] for k, v in batch.items()}, rng)
    sums = jax.tree.map(lambda z: z + 3, zeros)  # As if 3 were summed before.
    before = jax.device_get((state, sums))
    padded, padded_sums = run(state, sums, *args, np.array([True, False]), rng)
    one, one_sums = run(state, sums, *args[:2], indices[:1], np.array([True]), rng)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(padded), jax.device_get(one))
    jax.tree.map(
        np.testing.assert_array_equal, jax.device_get(padded_sums), jax.device_get(one_sums)
    )
    assert int(padded.step) == 1 and float(padded_sums["count"]) == 3 + 8
    unchanged, unchanged_sums = run(state, sums, *args, np.array([False, False]), rng)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(unchanged), before[0])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(unchanged_sums), before[1])


def test_precise_batch_norm_and_validation_on_device_match_the_host_ones():
    dp = parallel.DataParallel.over_all_devices()
    state = make_state()
    batch = synthetic_batch(n=70, seed=3)
    model = models.create_model(tiny_config("unused").model, 4)
    images = dp.replicate(batch["image"])
    on_host = batch_norm.recalibrate_train_state(state, model, batch["image"], 3, 16, 0, 2, dp)
    on_device = batch_norm.DeviceRecalibration(model, images, dp)(state, 3, 16, 0, 2)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        jax.device_get(on_host.batch_stats),
        jax.device_get(on_device.batch_stats),
    )
    assert not np.allclose(  # Recalibrated: not the initial statistics.
        jax.device_get(on_device.batch_stats["BatchNorm_0"]["mean"]),
        jax.device_get(state.batch_stats["BatchNorm_0"]["mean"]),
    )
    subset = dataset.Subset(ids=np.arange(70), images=batch["image"], labels=batch["label"])
    host = steps.SubsetMetrics(dp, 32)(on_device, subset)
    device_metrics = steps.SubsetMetrics(dp, 32, on_device=True)
    device = device_metrics(on_device, subset)
    assert host["count"] == device["count"] == 70  # 32 + 32 + 6 and padding.
    assert device["loss"] == pytest.approx(host["loss"], rel=1e-6)
    assert device["accuracy"] == host["accuracy"]
    assert device_metrics(on_host, subset)["loss"] == pytest.approx(device["loss"], rel=1e-4)


def jax_compilations(records) -> collections.Counter:
    """{"jit(name)": how many times it was compiled} from jax.log_compiles' log records."""
    text = "\n".join(r.getMessage() for r in records)
    return collections.Counter(re.findall(r"Finished XLA compilation of (\S+) in", text))


def test_a_device_data_run_transfers_only_explicitly_and_compiles_each_step_once(
    synthetic_data, cache_dir, tmp_path, caplog
):
    """The whole run under transfer_guard("disallow"): numpy into a jitted function or a
    float() of a device value would raise. 5 steps an epoch in chunks of 2: the last chunk is
    short, and reuses the compiled scan."""
    config = tiny_config(
        synthetic_data,
        data_on_device="true",
        steps_per_dispatch=2,
        bn_recalibration_batches=2,
        compilation_cache_dir="none",  # Compiles, not cache loads, are counted.
    )
    with (
        caplog.at_level(logging.WARNING, logger="jax"),
        jax.log_compiles(True),
        jax.transfer_guard("disallow"),
    ):
        summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    history = run_files.read_metrics(tmp_path / "run")
    assert [r["step"] for r in history] == [5, 10] and summary["final_step"] == 10
    compiled = jax_compilations(caplog.records)
    for name in ("train_steps_on_device_data", "eval_on_device_data", "mean_batch_statistics"):
        assert compiled[f"jit({name})"] == 1, compiled
    assert not compiled["jit(train_step)"] and not compiled["jit(eval_step)"], compiled


def test_a_curve_that_cannot_be_drawn_is_logged_not_raised(tmp_path, caplog):
    plotter = epoch_end.CurvePlotter()
    record = {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1}  # No accuracies: KeyError.
    plotter.draw([record], str(tmp_path / "curves.png"))
    plotter.close()
    assert "curves.png was not redrawn: KeyError" in caplog.text
    assert not (tmp_path / "curves.png").exists()


def test_compilation_cache_setting():
    assert compilation_cache.folder("none") is None
    assert compilation_cache.folder("/x/y") == "/x/y"
    assert compilation_cache.folder("").endswith("jax_compilation")


def test_a_second_run_loads_its_compiled_steps_from_the_cache(synthetic_data, tmp_path):
    """Two processes, one (the default) cache folder: the second compiles no train or eval step
    again (it loads them), and its first step, which compiled in the first run, takes less time.
    (Tiny helpers near the cache's minimum compile time may be cached in either run.)"""
    folder = tmp_path / "cache" / compilation_cache.FOLDER_NAME
    runs = []
    for name in ("first", "second"):
        process = launch_run_train(
            tmp_path / name, synthetic_data, tmp_path / "cache", "--config.num_epochs=1"
        )
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
        runs.append(
            (
                sorted(p.name for p in folder.iterdir()),
                run_files.read_metrics(tmp_path / name)[0],
            )
        )
    (first_entries, first), (second_entries, second) = runs
    steps = ("jit_train_step-", "jit_eval_step-")
    assert sum(name.startswith(steps) for name in first_entries) == 2, first_entries
    assert set(first_entries) <= set(second_entries)
    assert not [n for n in set(second_entries) - set(first_entries) if n.startswith(steps)]
    assert second["val_loss"] == first["val_loss"]
    assert second["compile_seconds"] < first["compile_seconds"]
