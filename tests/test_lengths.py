"""Lengths in steps, epochs or examples, and the learning rate's batch-size rule: the shipped
recipes keep today's schedule at batch 32 and mean the same images at any other batch size.
Pure functions only: no dataset, no training."""

import importlib.util
import json
import math

import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from fashion_jax import errors
from fashion_jax.training import config_checks
from fashion_jax.training import lengths
from fashion_jax.training import optim
from fashion_jax.training import run_progress
from tests.conftest import REPO_ROOT
from tests.conftest import override
from tests.conftest import tiny_config

TRAIN_EXAMPLES = 29_455  # About the real train split; 921 steps per epoch at batch 32.


def shipped_config(name: str, batch_size: int = 32):
    spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO_ROOT / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.batch_size = batch_size
    return config


def with_length(length: str, **units):
    """configs/default.py with `length` set only by `units` (e.g. examples=100)."""
    unset = {f"{length}_{unit}": 0.0 if unit == "epochs" else 0 for unit in lengths.UNITS}
    config = override(default.get_config(), **unset)
    return override(config, **{f"{length}_{unit}": value for unit, value in units.items()})


@pytest.mark.parametrize(
    "units,train_examples,batch_size,steps",
    [
        ({"steps": 7}, 1000, 32, 7),
        ({"examples": 320_000}, 1000, 32, 10_000),
        ({"examples": 320_000}, 1000, 256, 1_250),
        ({"examples": 96}, 1000, 64, 2),  # 1.5 steps: halves round up.
        ({"examples": 95}, 1000, 64, 1),  # 1.48 steps.
        ({"examples": 10}, 1000, 64, 1),  # 0.16 steps: a length that is set is at least 1 step.
        ({"epochs": 1.0}, 1000, 32, 32),  # ceil(1000 / 32) steps, the loop's epoch.
        ({"epochs": 1.5}, 1000, 32, 48),
        ({"epochs": 0.5}, 1056, 32, 17),  # 33 steps per epoch: 16.5 rounds up.
        ({"epochs": 0.25}, 1056, 32, 8),  # 8.25.
        ({"epochs": 0.001}, 1000, 32, 1),
        ({}, 1000, 32, 0),  # Not set.
    ],
)
def test_lengths_in_steps(units, train_examples, batch_size, steps):
    config = with_length("optimizer.warmup", **units)
    assert lengths.to_steps(config, "optimizer.warmup", train_examples, batch_size) == steps


def test_epochs_need_the_data_size():
    config = with_length("checkpoint.every", epochs=2.0)
    with pytest.raises(ValueError, match="checkpoint.every_epochs"):
        lengths.to_steps(config, "checkpoint.every", None, 32)


# Today's (before lengths had units) schedules, EMA decays and intervals of every shipped
# config at its own batch size, 32: (warm-up, decay, EMA decay, checkpoint, log) in steps.
TODAY = {
    "default.py": (0, 10_000, 0.0, 500, 100),
    "adam.py": (0, 10_000, 0.9995, 500, 100),
    "sgd.py": (0, 10_000, 0.0, 500, 100),
    "tiny.py": (0, 10_000, 0.0, 5, 5),
    "multi_head.py": (0, 10_000, 0.9995, 500, 100),
    "multi_head_resnet.py": (0, 10_000, 0.9995, 500, 100),
    "multi_head_resnet_aug.py": (920, 0, 0.9995, 500, 100),
    "multi_head_resnet_sub.py": (920, 0, 0.9995, 500, 100),
    "audit_fold.py": (300, 0, 0.9995, 500, 100),
    "finetune.py": (300, 0, 0.9995, 500, 100),
}


@pytest.mark.parametrize("name", sorted(TODAY))
def test_shipped_configs_keep_todays_lengths_at_batch_32(name):
    config = shipped_config(name)
    resolved = lengths.resolve(config, TRAIN_EXAMPLES, 32)
    warmup, decay, ema_decay, checkpoint_every, log_every = TODAY[name]
    assert resolved == lengths.RunLengths(warmup, decay, checkpoint_every, log_every, ema_decay)
    assert np.float32(resolved.ema_decay) == np.float32(ema_decay)  # As the train step sees it.
    assert optim.scaled_learning_rate(config.optimizer, 32) == config.optimizer.learning_rate


@pytest.mark.parametrize("name,peak", [("adam.py", 1e-3), ("sgd.py", 1e-2)])
def test_study_schedules_are_todays_at_batch_32(name, peak):
    config = shipped_config(name)
    learning_rate = optim.create_learning_rate_fn(
        config.optimizer, 50 * 921, batch_size=32, train_examples=TRAIN_EXAMPLES
    )
    todays = optax.exponential_decay(peak, transition_steps=10_000, decay_rate=0.9)
    for step in (0, 1, 500, 9_999, 10_000, 12_345, 46_050):
        assert np.float32(learning_rate(step)) == np.float32(todays(step))  # Bit for bit.
        assert float(learning_rate(step)) == pytest.approx(peak * 0.9 ** (step / 10_000), 1e-6)


def test_adam_at_batch_256_covers_the_same_images_with_a_sqrt_scaled_rate():
    small, large = shipped_config("adam.py", 32), shipped_config("adam.py", 256)
    rate_32 = optim.create_learning_rate_fn(small.optimizer, 0, 32, TRAIN_EXAMPLES)
    rate_256 = optim.create_learning_rate_fn(large.optimizer, 0, 256, TRAIN_EXAMPLES)
    assert float(rate_256(0)) == pytest.approx(1e-3 * math.sqrt(8), rel=1e-6)
    # The same decay per image: after 320,000 images (10,000 or 1,250 steps) a factor 0.9.
    for images in (0, 64_000, 320_000, 960_000):  # Whole steps at both batch sizes.
        assert float(rate_256(images // 256) / rate_256(0)) == pytest.approx(
            float(rate_32(images // 32) / rate_32(0)), rel=1e-5
        )
    assert float(rate_256(1_250) / rate_256(0)) == pytest.approx(0.9, rel=1e-5)
    # The same averaging horizon in images, 64,000 (not 8 x 64,000): 250 steps, decay 0.996.
    ema_32 = lengths.ema_decay(small, TRAIN_EXAMPLES, 32)
    ema_256 = lengths.ema_decay(large, TRAIN_EXAMPLES, 256)
    assert ema_256 == pytest.approx(0.996)
    assert 256 / (1 - ema_256) == pytest.approx(32 / (1 - ema_32)) == pytest.approx(64_000)


def test_sgd_at_batch_256_scales_its_rate_linearly():
    config = shipped_config("sgd.py", 256)
    rate = optim.create_learning_rate_fn(config.optimizer, 0, 256, TRAIN_EXAMPLES)
    assert float(rate(0)) == pytest.approx(8e-2, rel=1e-6)
    assert float(rate(1_250)) == pytest.approx(8e-2 * 0.9, rel=1e-5)


@pytest.mark.parametrize(
    "name,rule,reference,batch_size,expected",
    [
        ("adam", "auto", 32, 128, 2e-3),  # sqrt for Adam-type optimizers.
        ("rmsprop", "auto", 32, 8, 5e-4),
        ("sgd", "auto", 32, 128, 4e-3),  # linear for SGD.
        ("adam", "linear", 32, 64, 2e-3),
        ("sgd", "sqrt", 32, 512, 4e-3),
        ("sgd", "none", 32, 512, 1e-3),
        ("adam", "sqrt", 0, 512, 1e-3),  # No reference batch: no scaling.
    ],
)
def test_learning_rate_rule(name, rule, reference, batch_size, expected):
    opt = ml_collections.ConfigDict(
        {
            "name": name,
            "learning_rate": 1e-3,
            "batch_scaling": rule,
            "reference_batch_size": reference,
        }
    )
    assert optim.scaled_learning_rate(opt, batch_size) == pytest.approx(expected, rel=1e-12)


def test_an_older_config_keeps_its_steps_and_rate():
    """A config written before units and scaling existed (e.g. a saved run's config.json)."""
    old = ml_collections.ConfigDict(
        {
            "batch_size": 64,
            "ema_decay": 0.999,
            "log_every_steps": 10,
            "checkpoint": {"every_steps": 50},
            "optimizer": {"name": "adam", "learning_rate": 1e-3, "warmup_steps": 3},
        }
    )
    old.optimizer.decay_steps = 200
    lengths.check_config(old)
    assert lengths.resolve(old, 1000, 64) == lengths.RunLengths(3, 200, 50, 10, 0.999)
    assert optim.scaled_learning_rate(old.optimizer, 64) == 1e-3


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"optimizer.decay_steps": 5000},
            "--config.optimizer.decay_steps=5000 and --config.optimizer.decay_examples=320000 "
            "are both set",
        ),
        (
            {"optimizer.warmup_steps": 10, "optimizer.warmup_epochs": 0.5},
            "--config.optimizer.warmup_steps=10 and --config.optimizer.warmup_epochs=0.5",
        ),
        (
            {"checkpoint.every_epochs": 1.0},
            "--config.checkpoint.every_steps=5 and --config.checkpoint.every_epochs=1.0",
        ),
        ({"log_every_examples": 640}, "--config.log_every_steps=5 and --config.log_every_examples"),
        (
            {"ema_horizon_steps": 100, "ema_horizon_examples": 3200},
            "--config.ema_horizon_steps=100 and --config.ema_horizon_examples=3200",
        ),
        (
            {"ema_decay": 0.999, "ema_horizon_examples": 3200, "bn_recalibration_batches": 2},
            "--config.ema_decay=0.999 and --config.ema_horizon_examples=3200 are both set",
        ),
        (
            {"ema_horizon_examples": 16, "bn_recalibration_batches": 2},
            "--config.ema_horizon_examples=16 is 1 step at batch 16",
        ),
        ({"ema_horizon_epochs": 2.0}, "--config.ema_horizon_epochs=2.0 needs --config.bn_recal"),
        ({"optimizer.decay_examples": -1}, "--config.optimizer.decay_examples=-1 must not be neg"),
        ({"checkpoint.every_steps": 0}, "--config.checkpoint.every_steps=0 must be at least 1"),
        (
            {"optimizer.batch_scaling": "cubic"},
            "--config.optimizer.batch_scaling='cubic' is not a valid choice; choose one of: auto, "
            "linear, sqrt, none",
        ),
        (
            {"optimizer.reference_batch_size": -32},
            "--config.optimizer.reference_batch_size=-32 must not be negative",
        ),
        (
            {
                "optimizer.schedule": "cosine",
                "optimizer.warmup_examples": 6400,
                "optimizer.decay_examples": 3200,
            },
            "--config.optimizer.decay_examples=3200 must exceed "
            "--config.optimizer.warmup_examples=6400",
        ),
    ],
)
def test_config_checks_refuse_before_any_work(tmp_path, overrides, message):
    config = tiny_config(tmp_path, **overrides)
    with pytest.raises(errors.ConfigError) as raised:
        config_checks.check_train_config(config)
    assert message in str(raised.value)


def test_intervals_in_other_units_pass_the_checks(tmp_path):
    config = tiny_config(
        tmp_path,
        log_every_steps=0,
        log_every_epochs=0.5,
        **{"checkpoint.every_steps": 0, "checkpoint.every_examples": 3200},
    )
    config_checks.check_train_config(config)
    resolved = lengths.resolve(config, 1000, 16)  # 63 steps per epoch.
    assert (resolved.log_every_steps, resolved.checkpoint_every_steps) == (32, 200)


def test_the_study_recipe_flag_still_turns_the_average_off(tmp_path):
    config = tiny_config(tmp_path, ema_decay=0.0, bn_recalibration_batches=0)
    config.ema_horizon_examples = 64_000  # As configs/adam.py.
    config_checks.check_train_config(config)
    assert lengths.ema_decay(config, 1000, 32) == 0.0
    config.ema_decay = None
    assert lengths.ema_decay(config, 1000, 32) == 1 - 1 / 2000


def test_a_cosine_decay_in_other_units_must_end_after_its_warm_up():
    opt = with_length("optimizer.decay", examples=3200).optimizer
    opt.schedule, opt.warmup_epochs = "cosine", 1.0
    optim.create_learning_rate_fn(opt, 0, batch_size=32, train_examples=3000)  # 94 < 100 steps.
    with pytest.raises(errors.ConfigError) as raised:
        optim.create_learning_rate_fn(opt, 0, batch_size=32, train_examples=3300)  # 104 steps.
    assert "--config.optimizer.decay_examples=3200 (100 steps" in str(raised.value)
    assert "must exceed --config.optimizer.warmup_epochs=1.0 (104 steps at batch 32)" in str(
        raised.value
    )


def test_resuming_warns_about_set_fields_only(monkeypatch):
    now = default.get_config()
    saved = json.loads(now.to_json())
    del saved["optimizer"]["decay_examples"], saved["optimizer"]["warmup_examples"]
    del saved["ema_horizon_steps"]
    saved["optimizer"]["decay_steps"] = 10_000
    warnings = []
    monkeypatch.setattr(run_progress.logging, "warning", lambda *a: warnings.append(a[-1]))
    run_progress.warn_about_config_changes(json.dumps(saved), now)
    (changed,) = warnings
    assert changed == {
        "optimizer.decay_examples": (None, 320_000),
        "optimizer.decay_steps": (10_000, 0),
    }
