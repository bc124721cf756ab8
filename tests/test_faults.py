"""Faults from outside a run, each injected: a second run on the workdir, a dead run's lock, a NaN
between logging steps, a corrupt latest checkpoint, a full disk. (SIGTERM: with the kill -9 test
in test_checkpoint_resume.py, whose unbroken run it shares.)

The in-process tests share one unbroken 2-epoch run (`base`: epoch ends at steps 5 and 10) and
work on copies of it."""

import errno
import logging
import os
import re
import shutil
import socket
import time

import jax
import numpy as np
import pytest

from fashion_jax import errors
from fashion_jax import saved_runs
from fashion_jax.training import checkpointing
from fashion_jax.training import train
from fashion_jax.training import workdir_lock
from tests.conftest import final_params
from tests.conftest import launch_run_train
from tests.conftest import tiny_config
from tests.conftest import write_synthetic_dataset

COMMON = {"early_stopping.patience": 100}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(data, cache, config, workdir) of an unbroken run; tests copy the workdir."""
    root = tmp_path_factory.mktemp("faults")
    data = write_synthetic_dataset(root / "data")
    config = tiny_config(data, **COMMON, **{"data.cache_dir": str(root / "cache")})
    train.train_and_evaluate(config, str(root / "base"))
    assert checkpointing.create_manager(str(root / "base"), read_only=True).all_steps() == [5, 10]
    return data, root / "cache", config, root / "base"


def copy_of(base_workdir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(base_workdir, target)
    return target


def assert_same_state(a, b):
    step_a, state_a = final_params(a)
    step_b, state_b = final_params(b)
    assert step_a == step_b
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)


def all_finite(workdir):
    step, state = final_params(workdir)
    leaves = [x for x in jax.tree.leaves(state) if np.issubdtype(np.asarray(x).dtype, np.inexact)]
    return step, all(np.isfinite(x).all() for x in leaves)


# A second run on a workdir in use; a dead run's lock.


def test_a_second_run_is_refused_naming_the_first_and_a_dead_runs_lock_is_taken_over(
    tmp_path, caplog
):
    data = write_synthetic_dataset(tmp_path / "data")
    workdir = tmp_path / "run"
    lock = workdir / workdir_lock.LOCK_FILE
    first = launch_run_train(workdir, data, tmp_path / "cache", "--config.num_epochs=50")
    try:
        deadline = time.time() + 120
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert lock.exists(), "the first run never took the lock"
        start = time.time()
        second = launch_run_train(workdir, data, tmp_path / "cache")
        output, _ = second.communicate(timeout=120)
        seconds = time.time() - start
        assert first.poll() is None, "the first run ended before the second was tried"
    finally:
        first.kill()  # SIGKILL: its lock stays behind, as after a crash.
        first.wait(timeout=60)
    assert second.returncode == 1, output
    assert f"host {socket.gethostname()}, process id {first.pid}" in output, output
    assert "run_train.py: --workdir=" in output and "Traceback" not in output
    assert "Parameters:" not in output  # Refused before any set-up.
    print(f"second run refused in {seconds:.1f} s")

    assert lock.exists()  # The dead run's leftover does not block.
    with caplog.at_level(logging.WARNING):
        taken = workdir_lock.acquire(str(workdir))
    assert f"process {first.pid} is no longer running" in caplog.text
    taken.release()
    assert not lock.exists()


def test_a_lock_of_another_host_is_refused_until_it_is_stale(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    path = workdir / workdir_lock.LOCK_FILE
    path.write_text('{"host": "node-7", "pid": 1234, "started": 0}')
    with pytest.raises(errors.WorkdirInUseError, match="host node-7, process id 1234"):
        workdir_lock.acquire(str(workdir))
    old = time.time() - workdir_lock.STALE_SECONDS - 60
    os.utime(path, (old, old))  # Not touched by its heartbeat for longer than STALE_SECONDS.
    workdir_lock.acquire(str(workdir)).release()
    path.write_text('{"host": "no')  # Cut short by a crash while it was written.
    workdir_lock.acquire(str(workdir)).release()


def test_the_lock_is_touched_while_held_and_released_only_by_its_holder(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.05)
    held = workdir_lock.acquire(str(tmp_path))
    path = tmp_path / workdir_lock.LOCK_FILE
    os.utime(path, (0, 0))
    deadline = time.time() + 10
    while path.stat().st_mtime == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert path.stat().st_mtime > 0
    path.write_text('{"host": "other", "pid": 1, "started": 0}')  # Taken over meanwhile.
    held.release()
    assert path.exists()


# A NaN between logging steps.


def test_a_nan_between_logging_steps_is_never_saved(base, tmp_path):
    """Resumed with a learning rate that blows up, saving every 2 steps and logging every 100:
    the loss is checked only at logging steps before, so a non-finite state became the latest
    checkpoint."""
    _, _, config, base_workdir = base
    workdir = copy_of(base_workdir, tmp_path)
    config = tiny_config(
        config.data.data_dir,
        **COMMON,
        **{
            "data.cache_dir": config.data.cache_dir,
            "num_epochs": 3,
            "optimizer.learning_rate": 1e12,
            "checkpoint.every_steps": 2,
            "log_every_steps": 100,
        },
    )
    with pytest.raises(errors.NonFiniteLossError) as e:
        train.train_and_evaluate(config, str(workdir))
    stopped_at = int(re.search(r"(?:at|by) step (\d+)", str(e.value)).group(1))
    step, finite = all_finite(workdir)
    assert finite, f"the latest checkpoint (step {step}) holds NaN or inf"
    assert f"the latest checkpoint (step {step})" in str(e.value)
    assert 10 <= step < stopped_at <= 15


# A corrupt or truncated latest checkpoint.


def truncate_largest_file(step_dir):
    files = [os.path.join(r, n) for r, _, names in os.walk(step_dir) for n in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 3)
    return largest


def test_a_truncated_latest_checkpoint_gives_way_to_the_one_before(base, tmp_path, caplog):
    _, _, config, base_workdir = base
    workdir = copy_of(base_workdir, tmp_path)
    truncate_largest_file(workdir / "checkpoints" / "10")

    # Evaluation (read-only): the newest readable step, named in a warning; nothing moved.
    run = saved_runs.open_run(str(workdir))
    with caplog.at_level(logging.WARNING):
        assert saved_runs.select_step(run, "latest") == 5
        assert saved_runs.select_step(run, "best") == 5
    assert "Checkpoint step 10 of" in caplog.text and "using step 5" in caplog.text
    assert (workdir / "checkpoints" / "10").is_dir()
    with pytest.raises(errors.RestoreError, match="step 10 .* cannot be read"):
        saved_runs.select_step(run, "10")

    # Training: resumes from step 5, moves step 10 aside (kept), ends as the unbroken run.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(config, str(workdir))
    assert "Checkpoint step 10 of" in caplog.text and "cannot be read" in caplog.text
    assert (workdir / checkpointing.UNREADABLE_DIR / "10" / "state").is_dir()
    assert_same_state(base_workdir, workdir)


# A full disk during a save.


def test_a_full_disk_during_a_save_stops_with_one_message_and_the_rerun_resumes(
    base, tmp_path, monkeypatch
):
    """ENOSPC injected where orbax writes the step-10 checkpoint (its async save thread)."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    _, _, config, base_workdir = base
    workdir = tmp_path / "run"
    write = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def full_at_step_10(self, x, directory):
        if f"{os.sep}10." in str(directory):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return await write(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full_at_step_10)
    with pytest.raises(errors.DiskFullError) as e:
        train.train_and_evaluate(config, str(workdir))
    message = str(e.value)
    assert f"--workdir={workdir} is full" in message
    assert "MiB free, a checkpoint needs about" in message and "resumes from step 5" in message
    assert checkpointing.newest_step_on_disk(str(workdir)) == 5
    step, finite = all_finite(workdir)  # The previous checkpoint restores.
    assert step == 5 and finite

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", write)
    train.train_and_evaluate(config, str(workdir))  # Space freed: the same command.
    assert_same_state(base_workdir, workdir)
