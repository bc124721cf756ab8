"""Flags are checked before any work: unknown names and impossible mixes are one line naming the
flag and the valid choices, a non-zero exit and no traceback, for each entry point."""

import importlib.util
import os
import subprocess
import sys

import pytest

from fashion_jax import errors
from fashion_jax.evaluation import config_checks as eval_checks
from fashion_jax.training import config_checks as train_checks
from tests.conftest import REPO_ROOT
from tests.conftest import eval_config
from tests.conftest import override
from tests.conftest import tiny_config

CONFIGS = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_passes(name):
    spec = importlib.util.spec_from_file_location(
        f"configs_{name[:-3]}", REPO_ROOT / "configs" / name
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.init_checkpoint = ""  # finetune.py's start (runs/start) is a run the user makes first.
    train_checks.check_train_config(config)


TRAIN_CASES = [
    (
        {"model.name": "resnet"},
        "--config.model.name='resnet' is not a valid choice; choose one of: seed_cnn, small_resnet",
    ),
    ({"model.conv_impl": "cudnn"}, "--config.model.conv_impl='cudnn'"),
    ({"model.dtype": "float16"}, "--config.model.dtype='float16'"),
    ({"model.conv_impl": "native", "model.dtype": "bfloat16"}, "native computes in float32"),
    (
        {"optimizer.name": "adagrad"},
        "--config.optimizer.name='adagrad' is not a valid choice; choose one of: adam, sgd, rmsprop",
    ),
    ({"optimizer.schedule": "linear"}, "--config.optimizer.schedule='linear'"),
    ({"optimizer.learning_rate": 0.0}, "--config.optimizer.learning_rate=0.0 must be positive"),
    (
        {"optimizer.schedule": "cosine", "optimizer.warmup_steps": 10, "optimizer.decay_steps": 5},
        "must exceed --config.optimizer.warmup_steps=10",
    ),
    (
        {"data.sampling": "balanced"},
        "--config.data.sampling='balanced' is not a valid choice; choose one of: uniform, class_balanced, sqrt",
    ),
    ({"data.label_column": "colour"}, "--config.data.label_column='colour'"),
    ({"data.head_columns": ("gender", "masterCategory")}, "make the first head the label column"),
    ({"data.head_columns": ("masterCategory", "colour")}, "--config.data.head_columns='colour'"),
    ({"data.split_fractions": (0.8, 0.1, 0.1)}, "--config.data.split_fractions=(0.8, 0.1, 0.1)"),
    ({"data.num_folds": 1}, "cross-fitting needs num_folds >= 2"),
    ({"data.num_folds": 4, "data.fold": 4}, "0 <= fold < num_folds"),
    ({"loss.class_weighting": "inverse"}, "--config.loss.class_weighting='inverse'"),
    ({"loss.label_smoothing": 1.0}, "--config.loss.label_smoothing=1.0 must be in [0, 1)"),
    ({"loss.head_weights": (1.0, 2.0)}, "give one non-negative weight per head (1"),
    ({"early_stopping.monitor": "val_accuracy"}, "--config.early_stopping.monitor='val_accuracy'"),
    ({"data_on_device": "maybe"}, "--config.data_on_device='maybe'"),
    ({"augment.max_shift": -1}, "--config.augment.max_shift=-1"),
    ({"val_tta": "rotate"}, "--config.val_tta='rotate'"),
    ({"early_stopping.target_accuracy": 98.85}, "target_accuracy=98.85 must be in [0, 1]"),
    ({"batch_size": 0}, "--config.batch_size=0 must be at least 1"),
    ({"ema_decay": 0.999}, "--config.ema_decay needs --config.bn_recalibration_batches > 0"),
    ({"ema_decay": 1.5, "bn_recalibration_batches": 2}, "--config.ema_decay=1.5 must be in [0, 1)"),
    (
        {"init_checkpoint": "/nonexistent/run"},
        "--config.init_checkpoint=/nonexistent/run is not a training workdir",
    ),
    (
        {"model.stem_features": 48},
        "--config.model.stem_features=48 is a field of small_resnet, speed_net, not of "
        "--config.model.name=seed_cnn, which would ignore it; leave it at its default (24 or 32)",
    ),
    (  # The tests' narrow seed CNN (TEST_RUN) made a SmallResNet: its widths would be ignored.
        {"model.name": "small_resnet", "model.dense_units": 1024},
        "--config.model.filters=(8, 8, 8) is a field of seed_cnn, not of "
        "--config.model.name=small_resnet",
    ),
    ({"steps_per_dispatch": -1}, "--config.steps_per_dispatch=-1 must be 0 or more"),
    ({"bn_recalibration_batches": -2}, "--config.bn_recalibration_batches=-2 must be 0 or more"),
    ({"checkpoint.keep_epochs": -1}, "--config.checkpoint.keep_epochs=-1 must be 0 or more"),
    ({"profile_steps": -1}, "--config.profile_steps=-1 must be 0 or more (0: no profile)"),
]


def test_fields_another_model_has_at_their_defaults_pass():
    """What a config cannot drop from the command line: configs/default.py's seed_cnn widths in
    a SmallResNet run, SmallResNet's fields in a seed_cnn run made from its config."""
    from configs import multi_head_resnet

    config = multi_head_resnet.get_config()
    train_checks.check_train_config(config)
    config.model.name = "seed_cnn"
    train_checks.check_train_config(config)
    config.model.stage_blocks = (1, 1, 1, 1)
    with pytest.raises(errors.ConfigError, match="--config.model.stage_blocks=.1, 1, 1, 1. is a"):
        train_checks.check_train_config(config)


@pytest.mark.parametrize("overrides,message", TRAIN_CASES)
def test_training_config_refusals(tmp_path, overrides, message):
    config = tiny_config(tmp_path, **overrides)
    with pytest.raises(errors.ConfigError) as raised:
        train_checks.check_train_config(config)
    assert message in str(raised.value)


EVAL_CASES = [
    (
        {"evaluators": "singl"},
        1,
        False,
        "--config.evaluators='singl' is not a valid choice; choose one of: audit, ensemble, single, soup, auto",
    ),
    (
        {"subsets": "val,tset"},
        1,
        False,
        "--config.subsets='tset' is not a valid choice; choose one of: train, val, test, control",
    ),
    ({"subsets": ""}, 1, False, "--config.subsets is empty"),
    ({"checkpoint": "newest"}, 1, False, "--config.checkpoint='newest'"),
    ({"tta": "rotate"}, 1, False, "--config.tta='rotate'"),
    ({"evals.soup.kinds": "uniform,gready"}, 1, False, "--config.evals.soup.kinds='gready'"),
    ({"evals.soup.ingredients": "runs"}, 1, False, "--config.evals.soup.ingredients='runs'"),
    (
        {"evals.soup.bn_batches": -1},
        1,
        False,
        "--config.evals.soup.bn_batches=-1 must be at least 0",
    ),
    (
        {"evaluators": "ensemble", "evals.ensemble.weights": "0.6,0.4"},
        3,
        False,
        "--config.evals.ensemble.weights=0.6,0.4: give 3 non-negative numbers",
    ),
    (
        {"evaluators": "ensemble", "evals.ensemble.weights": "a,b"},
        2,
        False,
        "--config.evals.ensemble.weights=a,b",
    ),
    (
        {"report.target_precision": 0.0},
        1,
        False,
        "--config.report.target_precision=0.0 must be a probability",
    ),
    (
        {"report.bootstrap_samples": 0},
        1,
        False,
        "--config.report.bootstrap_samples=0 must be at least 1",
    ),
    (
        {"predict.combine": "single"},
        2,
        True,
        "--config.predict.combine=single needs one workdir, got 2",
    ),
    ({"predict.combine": "average"}, 1, True, "--config.predict.combine='average'"),
    (
        {"predict.resize": "crop"},
        1,
        True,
        "--config.predict.resize='crop' is not a valid choice; choose one of: stretch, pad",
    ),
    (
        {"predict.combine": "greedy_soup", "evals.soup.kinds": "x"},
        1,
        True,
        "--config.evals.soup.kinds='x'",
    ),
    ({}, 0, False, "Pass at least one training workdir with --workdirs"),
]


@pytest.mark.parametrize("overrides,workdirs,predicting,message", EVAL_CASES)
def test_evaluation_config_refusals(overrides, workdirs, predicting, message):
    with pytest.raises(errors.ConfigError) as raised:
        eval_checks.check_eval_config(eval_config(**overrides), workdirs, predicting)
    assert message in str(raised.value)


def test_the_default_evaluation_config_passes():
    eval_checks.check_eval_config(eval_config(), 2)
    eval_checks.check_eval_config(eval_config(), 1, predicting=True)
    eval_checks.check_eval_config(
        override(eval_config(evaluators="ensemble"), **{"evals.ensemble.weights": "1,3"}), 2
    )


def run(script, *args):
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "FASHION_DATA_DIR"}
        | {"JAX_PLATFORMS": "cpu"},
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("--config.model.name=resnet",),
            "run_train.py: --config.model.name='resnet' is not a valid choice",
        ),
        (("--config.optimizer.name=adamw",), "run_train.py: --config.optimizer.name='adamw'"),
        (("--config.data.sampling=balanced",), "run_train.py: --config.data.sampling='balanced'"),
        (("--config.optimizer.schedule=step",), "run_train.py: --config.optimizer.schedule='step'"),
    ],
)
def test_run_train_refuses_before_reading_data(tmp_path, args, message):
    # The dataset folder does not exist: a refusal that names the flag came before any data work.
    result = run(
        "run_train.py",
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tmp_path / 'no_data'}",
        *args,
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("--config.evaluators=singl", "--output_dir=out"),
            "run_eval.py: --config.evaluators='singl'",
        ),
        (("--config.subsets=val,tset", "--output_dir=out"), "run_eval.py: --config.subsets='tset'"),
        (
            ("--config.evals.soup.kinds=gready", "--output_dir=out"),
            "--config.evals.soup.kinds='gready'",
        ),
        (
            ("--predict=photos", "--config.predict.combine=mix"),
            "run_eval.py: --config.predict.combine='mix'",
        ),
        (("--config.tta=rotate",), "run_eval.py: --config.tta='rotate'"),
    ],
)
def test_run_eval_refuses_before_opening_any_workdir(tmp_path, args, message):
    # The workdir does not exist either: the flag was judged first.
    result = run("run_eval.py", f"--workdirs={tmp_path / 'missing_run'}", *args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_run_eval_names_its_own_dataset_flag(tmp_path):
    result = run(
        "run_eval.py",
        f"--workdirs={REPO_ROOT / 'tests/fixtures/legacy_workdirs/single_head'}",
        f"--output_dir={tmp_path / 'out'}",
        f"--config.data_dir={tmp_path / 'nowhere'}",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "run_eval.py: --config.data_dir=" in result.stderr and "no such folder" in result.stderr


# Judged against the devices (config_checks.check_for_devices), after a multi-process run has
# joined the others; an accelerator is acted by replacing the function that names the backend.


def test_the_native_cpu_convolution_is_refused_on_an_accelerator(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, **{"model.conv_impl": "native"})
    train_checks.check_for_devices(config)  # On CPU it is the fast kernel.
    monkeypatch.setattr(train_checks, "backend", lambda: "gpu")
    with pytest.raises(errors.ConfigError) as raised:
        train_checks.check_for_devices(config)
    message = str(raised.value)
    assert "--config.model.conv_impl=native" in message and "cannot run on gpu" in message
    assert "--config.model.conv_impl=auto" in message
    train_checks.check_for_devices(tiny_config(tmp_path))  # auto: XLA's convolution there.


def test_bfloat16_on_cpu_warns_with_the_measured_slowdown(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(
        train_checks.logging, "warning", lambda message, *args: warnings.append(message % args)
    )
    train_checks.check_for_devices(tiny_config(tmp_path))
    assert warnings == []
    bfloat16 = tiny_config(tmp_path, **{"model.dtype": "bfloat16"})
    train_checks.check_for_devices(bfloat16)
    (warning,) = warnings
    assert "--config.model.dtype=bfloat16 on CPU" in warning
    assert "x slower than float32" in warning and "Intel Xeon" in warning
    monkeypatch.setattr(train_checks, "backend", lambda: "gpu")
    train_checks.check_for_devices(bfloat16)
    assert len(warnings) == 1  # Where bfloat16 is the fast path, nothing is said.


@pytest.mark.parametrize(
    "batches,message",
    [
        ({"batch_size": 16}, "--config.batch_size=16 must divide by the number of devices (3)"),
        (
            {"batch_size": 18, "eval_batch_size": 64},
            "--config.eval_batch_size=64 must divide by the number of devices (3); use a "
            "multiple of 3",
        ),
    ],
)
def test_batches_that_do_not_split_over_the_devices_stop_the_run_before_any_data_is_read(
    tmp_path, monkeypatch, batches, message
):
    from fashion_jax.training import train
    from tests.conftest import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", rows_per_class=1)
    monkeypatch.setattr(train_checks, "device_count", lambda: 3)

    def no_data_reads(*args, **kwargs):
        raise AssertionError("the data was read before the batch sizes were checked")

    monkeypatch.setattr(train.dataset, "load_data", no_data_reads)
    workdir = tmp_path / "run"
    with pytest.raises(errors.ConfigError) as raised:
        train.train_and_evaluate(tiny_config(data, **batches), str(workdir))
    assert message in str(raised.value)
    assert not workdir.exists()
