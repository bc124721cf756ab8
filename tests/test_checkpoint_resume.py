"""Orbax save/restore, and runs killed with SIGKILL or stopped by SIGTERM that resume to the
same parameters as one unbroken run (shared by both)."""

import json
import os
import re
import signal
import time

import jax
import numpy as np
import pytest

from fashion_jax import errors
from fashion_jax import models
from fashion_jax.training import checkpointing
from fashion_jax.training import run_files
from fashion_jax.training import state as state_lib
from fashion_jax.training import steps
from tests.conftest import final_params
from tests.conftest import launch_run_train
from tests.conftest import make_state
from tests.conftest import synthetic_batch
from tests.conftest import write_synthetic_dataset


def test_save_then_restore_gives_identical_predictions(tmp_path):
    state = make_state()
    batch = synthetic_batch()
    state, _ = jax.jit(steps.train_step)(state, batch, jax.random.key(0))
    manager = checkpointing.create_manager(str(tmp_path), run_metadata={"class_names": ["a"]})
    checkpointing.save(
        manager,
        1,
        state_lib.state_tree(state),
        {"history": []},
        metrics={"monitored": 0.5, "epoch": 1},
    )
    manager.wait_until_finished()

    reader = checkpointing.create_manager(str(tmp_path), read_only=True)
    resumer = checkpointing.create_manager(str(tmp_path))  # As a resumed run opens it.
    fresh = make_state(seed=99)
    tree, progress = checkpointing.restore(
        resumer, 1, checkpointing.abstract_tree(state_lib.state_tree(fresh))
    )
    restored = fresh.replace(**tree)
    assert progress == {"history": []}
    assert checkpointing.run_metadata(reader)["class_names"] == ["a"]
    assert int(restored.step) == 1

    def predict(s):
        return np.asarray(
            models.predict_logits(
                s.apply_fn, {"params": s.params, "batch_stats": s.batch_stats}, batch["image"]
            )
        )

    np.testing.assert_array_equal(predict(restored), predict(state))
    assert not np.array_equal(predict(fresh), predict(state))


def test_manager_keeps_latest_best_and_last_epochs(tmp_path):
    manager = checkpointing.create_manager(str(tmp_path), keep_epochs=2)
    tree = {"w": np.zeros(3, np.float32)}
    for step, loss in [(10, 0.5), (20, 0.3), (30, 0.4), (40, 0.6), (45, None), (50, 0.7)]:
        metrics = None if loss is None else {"monitored": loss, "epoch": step // 10}
        checkpointing.save(manager, step, tree, {}, metrics=metrics)
        manager.wait_until_finished()
    # Best (20), the last two epoch ends (40, 50), latest (50); the mid-epoch 45 is gone.
    assert manager.all_steps() == [20, 40, 50]
    assert manager.latest_step() == 50
    assert manager.best_step() == 20


def finished_steps(workdir):
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


RESUME_FLAGS = (
    "--config.num_epochs=3",
    "--config.early_stopping.patience=100",
    "--config.checkpoint.every_steps=2",
)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """(data, cache, workdir) of the run the interrupted ones must end equal to."""
    root = tmp_path_factory.mktemp("resume")
    data_dir = write_synthetic_dataset(root / "data", rows_per_class=40)
    process = launch_run_train(root / "reference", data_dir, root / "cache", *RESUME_FLAGS)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return data_dir, root / "cache", root / "reference"


def assert_same_run_as(reference, interrupted):
    """Bit-equal final state, and the same epoch records and summary."""
    step_a, state_a = final_params(reference)
    step_b, state_b = final_params(interrupted)
    assert step_a == step_b
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
    keys = ("epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    history_a = [{k: r[k] for k in keys} for r in run_files.read_metrics(reference)]
    history_b = [{k: r[k] for k in keys} for r in run_files.read_metrics(interrupted)]
    assert history_a == history_b and len(history_a) == 3
    summary_a = json.loads((reference / "summary.json").read_text())
    summary_b = json.loads((interrupted / "summary.json").read_text())
    assert summary_a["val_accuracy"] == summary_b["val_accuracy"]
    assert summary_a["final_step"] == summary_b["final_step"]


@pytest.mark.parametrize("kill_after_steps", [(11,)])  # Mid-epoch 2 of 3: 7 steps an epoch.
def test_sigkill_and_resume_gives_the_same_parameters(unbroken, tmp_path, kill_after_steps):
    data_dir, cache_dir, reference = unbroken
    interrupted = tmp_path / "interrupted"
    kills = 0
    for threshold in kill_after_steps:
        process = launch_run_train(interrupted, data_dir, cache_dir, *RESUME_FLAGS)
        deadline = time.time() + 300
        while process.poll() is None and time.time() < deadline:
            steps = finished_steps(interrupted)
            if steps and steps[-1] >= threshold:
                process.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        process.wait(timeout=60)
    assert kills >= 1, "the run finished before it could be killed; make it longer"
    process = launch_run_train(interrupted, data_dir, cache_dir, *RESUME_FLAGS)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "Resumed from checkpoint" in output
    assert_same_run_as(reference, interrupted)


def test_sigterm_saves_at_the_current_step_and_the_same_command_resumes(unbroken, tmp_path):
    """A scheduler's preemption: SIGTERM once training is under way (a checkpoint exists); the
    run saves at the step it is at, says so and exits with 143 within seconds."""
    data_dir, cache_dir, reference = unbroken
    interrupted = tmp_path / "interrupted"
    process = launch_run_train(interrupted, data_dir, cache_dir, *RESUME_FLAGS)
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline and not finished_steps(interrupted):
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before SIGTERM; make it longer"
    signalled = time.time()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    seconds = time.time() - signalled
    assert process.returncode == errors.PREEMPTED_EXIT_CODE, output
    saved = int(re.search(r"checkpoint saved at step (\d+)", output).group(1))
    assert finished_steps(interrupted)[-1] == saved < finished_steps(reference)[-1]
    assert seconds < 30, f"{seconds:.1f} s from SIGTERM to exit"
    print(f"SIGTERM to exit: {seconds:.1f} s, saved at step {saved}")

    process = launch_run_train(interrupted, data_dir, cache_dir, *RESUME_FLAGS)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert f"Resumed from checkpoint at step {saved}" in output
    assert_same_run_as(reference, interrupted)
