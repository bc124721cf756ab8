"""Process start-up for the entry points, before JAX is imported: the memory allocator.

XLA on CPU frees and reallocates the same large buffers at every train step. glibc's malloc
hands such blocks back to the system (munmap) and the next step faults every page in again, so
a step spends much of its time in the kernel. An allocator that keeps freed memory for reuse
avoids that: `maybe_reexec_with_fast_allocator()` re-executes the current command once with
LD_PRELOAD set to mimalloc, which `pip install` brings (the cmeel-mimalloc wheel, Linux x86-64
and aarch64), with purging of freed memory turned off (MIMALLOC_PURGE_DELAY=-1).

FASHION_JAX_ALLOCATOR chooses: "mimalloc" (default), "tcmalloc" (the system's
libtcmalloc-minimal4, when installed) or "system" (glibc's malloc, no preload).
"""

import importlib.metadata
import os
import pathlib
import sys

ENV_VARIABLE = "FASHION_JAX_ALLOCATOR"
CHOICES = ("mimalloc", "tcmalloc", "system")
TCMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)
# Names of the preloadable allocators as they appear in a process's memory map.
_LIBRARY_NAMES = {"mimalloc": "libmimalloc", "tcmalloc": "libtcmalloc"}


def mimalloc_path() -> str | None:
    """The mimalloc shared library installed with the package (cmeel-mimalloc), or None."""
    try:
        files = importlib.metadata.files("cmeel-mimalloc") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name.startswith("libmimalloc.so"):
            path = pathlib.Path(file.locate())
            if path.exists():
                return str(path)
    return None


def tcmalloc_path() -> str | None:
    return next((p for p in TCMALLOC_PATHS if os.path.exists(p)), None)


def chosen_allocator() -> str:
    """FASHION_JAX_ALLOCATOR's value (default mimalloc); an unknown value stops the command."""
    choice = os.environ.get(ENV_VARIABLE, "mimalloc").strip().lower() or "mimalloc"
    if choice not in CHOICES:
        sys.exit(f"{ENV_VARIABLE}={choice!r} is not one of {', '.join(CHOICES)}.")
    return choice


def maybe_reexec_with_fast_allocator() -> None:
    """Re-executes this command with the chosen allocator preloaded (Linux only; once: an
    allocator already in LD_PRELOAD, or one that is not installed, leaves the process as it is)."""
    choice = chosen_allocator()
    if choice == "system" or not sys.platform.startswith("linux"):
        return
    preloaded = os.environ.get("LD_PRELOAD", "")
    if any(name in preloaded for name in _LIBRARY_NAMES.values()):
        return
    path = mimalloc_path() if choice == "mimalloc" else tcmalloc_path()
    if not path:
        return
    env = dict(os.environ, LD_PRELOAD=" ".join(filter(None, [path, preloaded])))
    if choice == "mimalloc":
        # Keep freed pages for reuse instead of returning them to the system after 10 ms.
        env.setdefault("MIMALLOC_PURGE_DELAY", "-1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def active_allocator() -> str:
    """The allocator this process runs with: "mimalloc", "tcmalloc" or "system" (from the
    libraries mapped into it, so it tells what happened, not what was asked)."""
    try:
        maps = pathlib.Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown (no /proc/self/maps)"
    for name, library in _LIBRARY_NAMES.items():
        if library in maps:
            return name
    return "system"
