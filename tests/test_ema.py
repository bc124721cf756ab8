"""The exponential moving average of parameters (--config.ema_decay)."""

import jax
import numpy as np
import pytest

from fashion_jax import errors
from fashion_jax import models
from fashion_jax import saved_runs
from fashion_jax.training import checkpointing
from fashion_jax.training import config_checks
from fashion_jax.training import optim
from fashion_jax.training import state as state_lib
from fashion_jax.training import steps
from fashion_jax.training import train
from tests.conftest import tiny_config


def _state(config):
    model = models.create_model(config.model, 4)
    return state_lib.create_train_state(
        config, model, optim.create_learning_rate_fn(config.optimizer), (80, 60, 3)
    )


def test_ema_follows_the_parameters_with_warm_up(tmp_path):
    config = tiny_config(tmp_path, ema_decay=0.9, bn_recalibration_batches=2)
    state = _state(config)
    start = jax.device_get(state.params)
    np.testing.assert_array_equal(
        jax.tree.leaves(jax.device_get(state.ema_params))[0], jax.tree.leaves(start)[0]
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (16, 80, 60, 3), dtype=np.uint8),
        "label": rng.integers(0, 4, 16).astype(np.int32),
    }
    step = jax.jit(steps.train_step, donate_argnums=0)
    params = [start]
    for _ in range(3):
        state, _ = step(state, batch, jax.random.key(0))
        params.append(jax.device_get(state.params))
    # The bias-corrected average of steps 1-3 weighs them 0.81, 0.9, 1 (the start not at all).
    weights = np.array([0.0, 0.81, 0.9, 1.0]) / 2.71
    expected = jax.tree.map(lambda *p: sum(w * x for w, x in zip(weights, p)), *params)
    jax.tree.map(
        lambda ema, e: np.testing.assert_allclose(ema, e, rtol=1e-4, atol=1e-6),
        jax.device_get(state.ema_params),
        expected,
    )
    assert not np.allclose(jax.tree.leaves(expected)[0], jax.tree.leaves(params[-1])[0])
    assert state.for_evaluation().params is state.ema_params
    with pytest.raises(errors.ConfigError, match="bn_recalibration_batches"):
        config_checks.check_train_config(tiny_config(tmp_path, ema_decay=0.9))


def test_recalibrated_statistics_go_to_the_evaluated_parameters(tmp_path):
    """Precise BN recomputes statistics for what is evaluated: the average's own statistics when
    there is an average (the raw parameters keep their running ones), else the only ones."""
    for ema_decay in (0.9, 0.0):
        state = _state(tiny_config(tmp_path, ema_decay=ema_decay, bn_recalibration_batches=2))
        new = jax.tree.map(lambda x: x + 1.0, state.batch_stats)
        swapped = state.with_evaluation_batch_stats(new)
        assert swapped.for_evaluation().batch_stats is new
        if ema_decay:
            assert swapped.batch_stats is state.batch_stats
            assert swapped.for_evaluation().params is state.ema_params
        else:
            assert swapped.batch_stats is new and swapped.ema_batch_stats is None


def test_ema_run_is_validated_and_evaluated_with_the_average(tmp_path, synthetic_data, cache_dir):
    config = tiny_config(synthetic_data, ema_decay=0.5, bn_recalibration_batches=2)
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    run = saved_runs.open_run(str(workdir))
    step = saved_runs.select_step(run, "latest")
    saved = jax.device_get(checkpointing.restore_state_on_this_host(run.manager, step))
    loaded = saved_runs.load_variables(run, step)
    for a, b in zip(jax.tree.leaves(loaded["params"]), jax.tree.leaves(saved["ema_params"])):
        np.testing.assert_array_equal(a, b)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(saved["ema_params"]))
    )
    for a, b in zip(
        jax.tree.leaves(loaded["batch_stats"]), jax.tree.leaves(saved["ema_batch_stats"])
    ):
        np.testing.assert_array_equal(a, b)
