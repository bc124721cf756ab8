"""Training health in the logs: the global gradient, parameter and update norms of the logged
steps (training/health.py), and --config.profile_steps' trace (training/profiling.py)."""

import math

import jax
import numpy as np
import optax
import pytest

from fashion_jax.training import health
from fashion_jax.training import metric_writers
from fashion_jax.training import steps
from tests import tiny_runs
from tests.conftest import make_state
from tests.conftest import synthetic_batch


def test_one_sgd_step_s_update_is_the_learning_rate_times_the_gradient():
    learning_rate = 0.05  # Plain SGD: no momentum, no weight decay, no schedule at step 0.
    state = make_state(optimizer="sgd", learning_rate=learning_rate)
    before = jax.device_get(state.params)
    new_state, metrics = jax.jit(steps.train_step)(state, synthetic_batch(), jax.random.key(0))
    metrics = jax.device_get(metrics)
    assert metrics[health.STEPS] == 1.0
    assert metrics["grad_norm_sum"] > 0
    np.testing.assert_allclose(
        metrics["update_norm_sum"], learning_rate * metrics["grad_norm_sum"], rtol=1e-3
    )
    after = jax.device_get(new_state.params)
    np.testing.assert_allclose(metrics["param_norm_sum"], optax.tree.norm(after), rtol=1e-5)
    change = jax.tree.map(np.subtract, after, before)
    np.testing.assert_allclose(metrics["update_norm_sum"], optax.tree.norm(change), rtol=1e-4)


def test_the_log_divides_the_summed_norms_by_the_steps():
    sums = {"grad_norm_sum": 6.0, "param_norm_sum": 30.0, "update_norm_sum": 0.3, "steps": 3.0}
    assert health.interval_scalars(sums) == pytest.approx(
        {"train/grad_norm": 2.0, "train/param_norm": 10.0, "train/update_norm": 0.1}
    )
    older = {"loss_sum": 1.0, "count": 4.0, "correct": 2.0}  # Partial sums saved before norms.
    assert health.interval_scalars(older) == {}
    resumed = health.with_norm_sums(older)
    assert resumed == {
        **older,
        "grad_norm_sum": 0.0,
        "param_norm_sum": 0.0,
        "update_norm_sum": 0.0,
        "steps": 0.0,
    }
    assert health.with_norm_sums(sums) == sums and health.with_norm_sums(None) is None


def _tensorboard_scalars(workdir) -> dict:
    """{tag: [values]} of the run's TensorBoard event files (tensorboardX writes simple values)."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(workdir / metric_writers.TENSORBOARD_DIR), size_guidance={"scalars": 0}
    )
    accumulator.Reload()
    return {
        tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def test_a_run_logs_finite_positive_norms_and_writes_its_profile(tmp_path_factory):
    runs = tiny_runs.train_once(tmp_path_factory)
    for name in ("adam", "sgd"):
        logged = [r for r in metric_writers.read_scalars(str(runs[name])) if "train/loss" in r]
        assert logged, name
        for record in logged:
            for norm in health.NORMS:
                value = record[f"train/{norm}"]
                assert math.isfinite(value) and value > 0, (name, record)
            assert record["train/update_norm"] < record["train/param_norm"]
        board = _tensorboard_scalars(runs[name])
        for norm in health.NORMS:
            assert len(board[f"train/{norm}"]) == len(logged), (name, sorted(board))
    # Plain SGD: each step's update is the learning rate times its gradient, and the rate hardly
    # moves within a log interval (its decay is over 320,000 images), so the means are too.
    for record in metric_writers.read_scalars(str(runs["sgd"])):
        if "train/grad_norm" in record:
            assert record["train/update_norm"] == pytest.approx(
                record["train/learning_rate"] * record["train/grad_norm"], rel=1e-3
            )
    # The sgd run traced 2 steps (tiny_runs.py): TensorBoard's profile plugin and Perfetto files.
    traces = sorted(p.name for p in (runs["sgd"] / "profile").rglob("*") if p.is_file())
    assert any(n.endswith(".xplane.pb") for n in traces), traces
    assert "perfetto_trace.json.gz" in traces, traces
    assert not (runs["adam"] / "profile").exists()
