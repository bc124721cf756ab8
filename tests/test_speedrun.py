"""The time-to-accuracy recipe: SpeedNet's shapes, a tiny version of configs/speedrun.py that
learns, and bench/speedrun.py's time to target and summary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import speedrun
from fashion_jax import models
from fashion_jax.models import speed_net
from fashion_jax.training import run_files
from fashion_jax.training import run_progress
from fashion_jax.training import train
from tests.conftest import load_script
from tests.conftest import override
from tests.conftest import write_synthetic_dataset


def load_speedrun_bench():
    return load_script("bench/speedrun.py")


def test_patchify_puts_each_2x2_patch_on_the_channels():
    x = jnp.arange(2 * 5 * 4 * 3, dtype=jnp.float32).reshape(2, 5, 4, 3)
    patches = speed_net.patchify_2x2(x)
    assert patches.shape == (2, 2, 2, 12)
    # Patch (1, 0) of image 1: rows 2-3, columns 0-1, in (row, column, channel) order.
    expected = np.asarray(x[1, 2:4, 0:2, :]).reshape(12)
    np.testing.assert_array_equal(np.asarray(patches[1, 1, 0]), expected)


def test_speed_net_gives_logits_per_head_at_80x60():
    model = models.create_model(
        override(speedrun.get_config().model, conv_impl="xla"),
        {"masterCategory": 5, "gender": 3},
    )
    variables = model.init(jax.random.key(0), jnp.zeros((2, 80, 60, 3)))
    out = model.apply(variables, jnp.zeros((2, 80, 60, 3)))
    assert {k: v.shape for k, v in out.items()} == {"masterCategory": (2, 5), "gender": (2, 3)}


def speed_net_variables(convs_per_block: int, classes: int = 5):
    model = models.create_model(
        override(speedrun.get_config().model, conv_impl="xla", convs_per_block=convs_per_block),
        classes,
    )
    return model, model.init(jax.random.key(0), jnp.zeros((2, 80, 60, 3)))


def test_deeper_blocks_add_convolutions_at_the_pooled_resolution_and_the_default_keeps_two():
    _, shallow = speed_net_variables(2)
    _, deep = speed_net_variables(3)
    added = set(deep["params"]) - set(shallow["params"])
    assert added == {f"block{b}_{kind}3" for b in (1, 2, 3) for kind in ("conv", "bn")}
    assert not set(shallow["params"]) - set(deep["params"])
    assert {b: deep["params"][f"block{b}_conv3"].shape for b in (1, 2, 3)} == {
        1: (3, 3, 32, 32),
        2: (3, 3, 64, 64),
        3: (3, 3, 128, 128),
    }


def test_the_convolutions_after_a_blocks_first_are_a_residual_branch():
    """With their kernels at zero, a 3-convolution block passes its first convolution's output
    on unchanged (BatchNorm and ReLU of zeros are zero): the network equals the one-convolution
    network with the same other parameters."""
    one_model, one = speed_net_variables(1)
    deep_model, deep = speed_net_variables(3)
    params = jax.tree.map(lambda x: x, deep["params"])  # A copy to edit.
    for name in one["params"]:
        params[name] = one["params"][name]
    for b in (1, 2, 3):
        for layer in (2, 3):
            params[f"block{b}_conv{layer}"] = jnp.zeros_like(params[f"block{b}_conv{layer}"])
    images = jax.random.uniform(jax.random.key(1), (4, 80, 60, 3))
    expected = one_model.apply(one, images)
    got = deep_model.apply({**deep, "params": params}, images)
    assert float(jnp.abs(expected).max()) > 0
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_fewer_than_one_convolution_per_block_is_refused_naming_the_flag():
    from fashion_jax import errors

    for bad in (0, -1):
        config = override(speedrun.get_config().model, convs_per_block=bad)
        with pytest.raises(errors.ConfigError, match="--config.model.convs_per_block"):
            models.check_config(config)


def tiny_speedrun(tmp_path, rows_per_class: int, **fields):
    """configs/speedrun.py at batch 16 on a synthetic dataset of four colour-coded classes."""
    data = write_synthetic_dataset(tmp_path / "data", rows_per_class=rows_per_class)
    return override(
        speedrun.get_config(),
        **{
            "data.data_dir": str(data),
            "batch_size": 16,
            "optimizer.reference_batch_size": 16,
            "progress_bar": False,
            **fields,
        },
    )


def test_a_tiny_speedrun_learns(tmp_path, cache_dir):
    config = tiny_speedrun(tmp_path, 80, num_epochs=5, bn_recalibration_batches=4)
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    # Four colour-coded classes: chance is 25%.
    assert summary["val_accuracy"] >= 0.75, summary
    assert summary["epochs_run"] == 5


def test_a_run_stops_after_the_first_epoch_reaching_its_target_accuracy(tmp_path, cache_dir):
    """early_stopping.target_accuracy, with the validation's flip test-time augmentation on."""
    config = tiny_speedrun(
        tmp_path,
        40,
        num_epochs=8,
        bn_recalibration_batches=2,
        val_tta="flip",
        **{"early_stopping.target_accuracy": 0.6},
    )
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    val = [r["val_accuracy"] for r in run_files.read_metrics(tmp_path / "run")]
    assert summary["epochs_run"] == len(val) < 8, val
    assert val[-1] >= 0.6 and max(val[:-1], default=0.0) < 0.6, val


def test_stopping_at_a_target_is_judged_on_the_last_epoch_and_after_patience():
    rule = override(
        speedrun.get_config().early_stopping,
        **{"monitor": "val_loss", "patience": 3, "target_accuracy": 0.9},
    )
    progress = run_progress.new_progress()
    for epoch, (loss, accuracy) in enumerate([(0.5, 0.80), (0.4, 0.85), (0.3, 0.91)], 1):
        run_progress.record_epoch(
            progress,
            {"epoch": epoch, "step": epoch, "val_loss": loss, "val_accuracy": accuracy},
            rule,
        )
        assert progress["early_stopped"] == (accuracy >= 0.9)
    assert not run_progress.should_stop(progress, override(rule, target_accuracy=0.95))
    assert not run_progress.should_stop(progress, override(rule, target_accuracy=0.0))


def test_time_to_target_counts_training_and_epoch_ends_until_the_first_epoch_reaching_it():
    bench = load_speedrun_bench()
    history = [
        {"epoch": 1, "train_seconds": 10.0, "epoch_end_seconds": 1.0, "val_accuracy": 0.97},
        {"epoch": 2, "train_seconds": 8.0, "epoch_end_seconds": 1.0, "val_accuracy": 0.9885},
        {"epoch": 3, "train_seconds": 8.0, "epoch_end_seconds": 1.0, "val_accuracy": 0.99},
    ]
    assert bench.time_to_target(history, 0.9885) == (20.0, 2)
    assert bench.time_to_target(history, 0.995) == (None, None)


def test_recipes_take_turns_seed_by_seed_each_with_its_own_number_of_seeds():
    bench = load_speedrun_bench()
    order = bench.run_order(["speedrun", "adam"], 3, ["adam=2"], 10, "seed")
    assert order == [
        ("speedrun", 10),
        ("adam", 10),
        ("speedrun", 11),
        ("adam", 11),
        ("speedrun", 12),
    ]
    by_recipe = bench.run_order(["speedrun", "adam"], 3, ["adam=2"], 10, "recipe")
    assert by_recipe == sorted(order, key=lambda pair: pair[0] == "adam")
    with pytest.raises(bench.app.UsageError, match="--recipe_seeds=study=2"):
        bench.run_order(["speedrun", "adam"], 3, ["study=2"], 0, "seed")
    assert bench.parse_targets(["0.981", "1"]) == [0.981, 1.0]
    for bad in (["98.1"], ["x"]):
        with pytest.raises(bench.app.UsageError, match="--extra_targets="):
            bench.parse_targets(bad)


def test_the_summary_is_the_mean_and_spread_over_seeds_and_says_who_missed():
    bench = load_speedrun_bench()
    k = "seconds_to_0.981"
    runs = [
        {"recipe": "speedrun", "val_accuracy": 0.99, "seconds_to_target": 100.0, k: 10.0},
        {"recipe": "speedrun", "val_accuracy": 0.98, "seconds_to_target": None, k: 30.0},
        {"recipe": "speedrun", "val_accuracy": 0.985, "seconds_to_target": 120.0, k: 20.0},
    ]
    row = bench.summarise(runs, 0.9885, 0.0)["speedrun"]
    assert row["val_accuracy"] == "0.9850 +- 0.0050 (n=3)"
    assert row[k] == "20.0000 +- 10.0000 (n=3)"  # An --extra_targets time.
    assert row["seeds_reaching_target"] == "2 of 3 (val >= 0.9885)"
    assert row["mean_seconds_to_target"] == pytest.approx(110.0)


def test_the_study_in_tf_keras_is_its_epochs_to_target_times_keras_epoch_time():
    bench = load_speedrun_bench()
    study = [
        {"recipe": "study", "epochs": 7, "epochs_to_target": 7, "seconds_to_target": 1.0},
        {"recipe": "study", "epochs": 9, "epochs_to_target": 9, "seconds_to_target": 1.0},
    ]
    row = bench.summarise(study, 0.9885, 100.0, train_images=1000)["study_in_tf_keras"]
    assert row["mean_seconds_to_target"] == pytest.approx(8 * 1000 / 100.0)
    assert not row["lower_bound"]
    study[1].update(epochs=12, epochs_to_target=None, seconds_to_target=None)
    row = bench.summarise(study, 0.9885, 100.0, train_images=1000)["study_in_tf_keras"]
    assert row["mean_seconds_to_target"] == pytest.approx(9.5 * 1000 / 100.0)
    assert row["lower_bound"]


def test_the_whitening_stem_makes_the_patches_uncorrelated_with_unit_variance():
    rng = np.random.default_rng(0)
    # Correlated channels and neighbours, as in photos: a smooth base plus noise.
    base = rng.integers(0, 200, (64, 20, 15, 1)).repeat(4, axis=1).repeat(4, axis=2)
    images = (base + rng.integers(0, 40, (64, 80, 60, 3))).clip(0, 255).astype(np.uint8)
    kernel = speed_net.whitening_kernel(images, epsilon=0.0)
    assert kernel.shape == (12, 24)
    np.testing.assert_array_equal(kernel[:, 12:], -kernel[:, :12])
    patches = np.asarray(speed_net.patchify_2x2(jnp.asarray(images, jnp.float32) / 255.0))
    whitened = patches.reshape(-1, 12) @ kernel[:, :12]
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(12), atol=1e-3)


def test_training_starts_from_the_whitening_stem_and_refuses_it_where_it_cannot_apply(
    tmp_path, cache_dir
):
    from fashion_jax import errors

    config = speedrun.get_config()
    config.model.whiten_stem_images = 100
    config.model.stem_features = 32
    with pytest.raises(errors.ConfigError, match="--config.model.stem_features=24"):
        models.check_config(config.model)
    config.model.stem_features = 24
    images = np.random.default_rng(1).integers(0, 256, (300, 80, 60, 3), dtype=np.uint8)
    values = models.initial_params(config.model, images)
    np.testing.assert_array_equal(
        values["stem"]["kernel"], speed_net.whitening_kernel(images[:100])
    )
    from fashion_jax.training import optim
    from fashion_jax.training import state as state_lib

    model = models.create_model(override(config.model, conv_impl="xla"), 5)
    state = state_lib.create_train_state(
        config,
        model,
        optim.create_learning_rate_fn(config.optimizer, 100, 128, 1000),
        (80, 60, 3),
        ema_decay=0.9,
        initial_params=values,
    )
    np.testing.assert_array_equal(
        np.asarray(state.params["stem"]["kernel"]), values["stem"]["kernel"]
    )
    np.testing.assert_array_equal(
        np.asarray(state.ema_params["stem"]["kernel"]), values["stem"]["kernel"]
    )
