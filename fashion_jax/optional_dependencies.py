"""Optional parts and the pip extras that install them.

A command that needs an optional package checks for it before any checkpoint is read or data is
loaded, and stops with one line naming the package and the install command.
"""

import importlib.util
import sys

from fashion_jax import errors

# Import name -> the extra of pyproject.toml that installs it.
EXTRAS = {"jax2onnx": "export", "onnxruntime": "export", "kagglehub": "kaggle"}


class MissingDependencyError(errors.UserError):
    """An optional package that the requested work needs is not installed."""


def is_installed(module: str) -> bool:
    if module in sys.modules:  # Imported already (None: marked as not importable).
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # A broken or half-removed install counts as missing.
        return False


def install_command(modules) -> str:
    extras = ",".join(sorted({EXTRAS[m] for m in modules}))
    return f'pip install -e ".[{extras}]"'


def require(modules, purpose: str) -> None:
    """Raises MissingDependencyError naming the missing `modules` (import names) and the extra
    that installs them; `purpose` says what needs them (e.g. "--export")."""
    missing = [m for m in modules if not is_installed(m)]
    if missing:
        names = " and ".join(missing)
        raise MissingDependencyError(
            f"{purpose} needs {names}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: run {install_command(missing)} (in the checkout) and try again."
        )
