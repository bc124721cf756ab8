"""One training run per workdir: `<workdir>/run.lock` names the run that holds it.

Two runs on one workdir (a re-submitted job) would delete each other's checkpoints, so the second
is refused at once, naming the first's host and process id. The file is created atomically
(O_EXCL) and holds host, pid and start time; the holder touches it every HEARTBEAT_SECONDS. A lock
left by a dead run never blocks for ever: on the same host a pid that is not alive, and on any
host a lock not touched for STALE_SECONDS, is taken over with a warning. In a multi-process run
process 0 holds the lock for the job (train.py shares its verdict with the other processes).
"""

import contextlib
import json
import os
import socket
import threading
import time

from absl import logging

from fashion_jax import errors

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0


def lock_path(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), LOCK_FILE)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Alive, another user's.
        return True
    return True


def _read(path: str) -> dict | None:
    """The lock's contents; {} for a file cut short (its writer died); None when there is none."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {}


def stale_reason(holder: dict, age_seconds: float) -> str:
    """Why the lock of `holder` (touched `age_seconds` ago) is a dead run's, or "" if it may be
    alive."""
    if not holder:
        return "its lock file is empty or cut short"
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return f"process {holder.get('pid')} is no longer running on this host"
    if age_seconds > STALE_SECONDS:
        return (
            f"its lock was last touched {age_seconds:.0f} s ago (stale after {STALE_SECONDS:.0f} s)"
        )
    return ""


class WorkdirLock:
    """Held from `acquire` to `release`; a daemon thread touches the file meanwhile."""

    def __init__(self, path: str):
        self.path = path
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()
        self._thread = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(3):  # A lost race to take over a stale lock is looked at again.
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.mine, f)
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
            return self
        raise errors.WorkdirInUseError(f"{self.path}: could not take the lock; try again.")

    def _take_over_if_stale(self):
        holder = _read(self.path)
        if holder is None:
            return  # Released meanwhile.
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return
        reason = stale_reason(holder, age)
        if not reason:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise errors.WorkdirInUseError(
                f"--workdir={os.path.dirname(self.path)} is in use by another run: host "
                f"{holder.get('host')}, process id {holder.get('pid')}, started {started}. Wait "
                "for it to finish or stop it, or give another --workdir; if that run is dead, "
                f"delete {self.path}."
            )
        logging.warning("Taking over %s of a dead run (%s): %s", self.path, reason, holder)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            # A full or flaky disk must not stop training; the lock just ages.
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self):
        self._stop.set()
        if _read(self.path) == self.mine:  # Never remove a lock another run took over.
            os.remove(self.path)


def acquire(workdir: str) -> WorkdirLock:
    """Takes `workdir`'s lock, or raises WorkdirInUseError naming the run that holds it."""
    return WorkdirLock(lock_path(workdir)).acquire()
