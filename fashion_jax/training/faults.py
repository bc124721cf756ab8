"""What a training run does when something outside it goes wrong: another run on its workdir,
a NaN, a SIGTERM, a full disk. Each ends the run with one message that says what was kept and
what to do; docs/results.md ("Faults") lists them with the tests that inject them.
"""

import contextlib
import errno
import os
import shutil
import signal

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from fashion_jax import errors
from fashion_jax.training import checkpointing
from fashion_jax.training import parallel
from fashion_jax.training import workdir_lock


def _all_processes_agree(flag: bool) -> bool:
    """Whether `flag` is true on any process (itself on one process): a collective, so that
    every process takes the same branch."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def lock_workdir(workdir: str) -> workdir_lock.WorkdirLock | None:
    """Process 0 takes the workdir's lock for the whole job; every process of a refused job
    stops, the others pointing at process 0's message. None on processes other than 0."""
    lock, refusal = None, None
    if jax.process_index() == 0:
        try:
            lock = workdir_lock.acquire(workdir)
        except errors.WorkdirInUseError as e:
            refusal = e
    if _all_processes_agree(refusal is not None):
        if lock:
            lock.release()
        raise refusal or errors.WorkdirInUseError(
            f"--workdir={workdir} is in use by another run (process 0 says which)."
        )
    return lock


@jax.jit
def _finite_leaves(tree):
    return [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]


def check_finite_state(state_tree, step: int, manager) -> None:
    """Raises NonFiniteLossError naming `step` if any float in the state is NaN or infinite: run
    before every save, so that no such state becomes a checkpoint."""
    floats = jax.tree.map(lambda x: x if jnp.issubdtype(x.dtype, jnp.inexact) else None, state_tree)
    flags = [bool(f) for f in parallel.DataParallel.to_host(_finite_leaves(floats))]
    if all(flags):
        return
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(floats)[0]]
    bad = [p for p, ok in zip(paths, flags) if not ok]
    raise errors.NonFiniteLossError(
        f"The training state holds NaN or infinite values at step {step} ({', '.join(bad[:3])}"
        f"{' ...' if len(bad) > 3 else ''}); it was not saved. {_advice(manager)}"
    )


def finish_saves(manager):
    """Lets a save in flight complete before the run stops on an error, so that the step a
    message names as the latest is on disk; its own failure is not the first one to report."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        logging.warning("A checkpoint save in flight failed too: %s", str(e).splitlines()[0])


def check_finite_loss(host_sums: dict, step: int, epoch: int, manager) -> None:
    if not np.isfinite(host_sums["loss_sum"]):
        raise errors.NonFiniteLossError(
            f"Training loss became {host_sums['loss_sum']} by step {step} (epoch {epoch + 1}); "
            f"the state was not saved. {_advice(manager)}"
        )


def _advice(manager) -> str:
    """Where the run stands: the newest checkpoint on disk once saves in flight are done."""
    # A failure of that save is reported by the run's own end; here only the disk matters.
    with contextlib.suppress(Exception):
        manager.wait_until_finished()
    workdir = os.path.dirname(str(manager.directory))
    step = checkpointing.newest_step_on_disk(workdir)
    kept = f"the latest checkpoint (step {step})" if step is not None else "no checkpoint"
    return (
        "Lower --config.optimizer.learning_rate or check the input data; "
        f"{kept} is kept in {workdir}."
    )


class PreemptionWatch:
    """SIGTERM (a scheduler's preemption) sets a flag; the training loop asks `requested()`
    between dispatches, saves at the current step and stops. The previous handler comes back
    on exit. Outside the main thread (no signal handlers there) it watches nothing."""

    def __init__(self):
        self.signalled = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread.
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.signalled = True
        logging.warning("SIGTERM: saving a checkpoint at the current step, then stopping.")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def requested(self) -> bool:
        return _all_processes_agree(self.signalled)

    @staticmethod
    def stop(workdir: str, step: int):
        raise errors.PreemptedError(
            f"Stopped by SIGTERM; checkpoint saved at step {step} in {workdir}. Run the same "
            "command again to resume from it."
        )


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` or one it came from is ENOSPC (an OSError from Python, or TensorStore's
    ValueError with the system's message)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def disk_full_stops(workdir: str):
    """Turns a full disk anywhere in the run (checkpoint, metrics, TensorBoard) into one
    DiskFullError naming the workdir, its free space and what a checkpoint needs."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e) or isinstance(e, errors.DiskFullError):
            raise
        raise errors.DiskFullError(_disk_full_message(workdir)) from e


def _disk_full_message(workdir: str) -> str:
    free = shutil.disk_usage(workdir).free
    step = checkpointing.newest_step_on_disk(workdir)
    if step is None:
        return (
            f"The disk of --workdir={workdir} is full ({_mib(free)} free) before the first "
            "checkpoint was written; free space (at least the size of the model and its "
            "optimizer state) and run the same command again."
        )
    needed = _folder_bytes(os.path.join(checkpointing.checkpoint_dir(workdir), str(step)))
    return (
        f"The disk of --workdir={workdir} is full: {_mib(free)} free, a checkpoint needs about "
        f"{_mib(needed)} (give it twice that to be safe). Free space and run the same command "
        f"again: it resumes from step {step}, the last checkpoint fully written."
    )


# What a collective (gloo, NCCL) or JAX's coordination service says when a peer is gone.
_PEER_LOST_SIGNS = (
    "Gloo",
    "Connection reset by peer",
    "Connection refused",
    "Broken pipe",
    "heartbeat",
    "coordination service",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
)


def is_peer_lost(error: BaseException) -> bool:
    """Whether `error` (or one it came from) is a multi-process run losing one of its processes."""
    if jax.process_count() == 1 or isinstance(error, errors.UserError):
        return False
    while error is not None:
        if any(sign in str(error) for sign in _PEER_LOST_SIGNS):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def peer_loss_stops(workdir: str):
    """Turns a collective that failed because another process died into one PeerLostError
    saying to start every process again; run_train.py then exits at once (JAX's own exit would
    wait for the dead process and abort)."""
    try:
        yield
    except Exception as e:
        if not is_peer_lost(e):
            raise
        step = checkpointing.newest_step_on_disk(workdir)
        where = f"from step {step}, the last checkpoint fully written" if step else "from the start"
        raise errors.PeerLostError(
            f"Process {jax.process_index()} of {jax.process_count()} lost contact with the "
            f"others ({str(e).strip().splitlines()[0][:200]}): one of them died. Start all "
            f"{jax.process_count()} processes again with the same command; they resume {where}."
        ) from e


def _folder_bytes(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(folder)
        for name in files
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
