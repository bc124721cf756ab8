"""Errors whose message is written for the person who ran the command.

Each names the flag, file or row at fault and what to do; the entry points print it on one line
and exit non-zero, without a traceback. Anything else that is raised is a bug.
"""


class UserError(ValueError):
    """Bad input from the user: a flag, a config value, a file."""


class ConfigError(UserError):
    """A config value or flag that is unknown, out of range or inconsistent with another."""


class DataError(UserError):
    """Bad or missing input data; the message says which file/row and what to do."""


class RestoreError(UserError):
    """A workdir or checkpoint that cannot be used; the message says which and what to do."""


class EvalError(UserError):
    """Workdirs that cannot be evaluated together, or an impossible evaluation request."""


class SoupError(EvalError):
    """Ingredients that cannot be averaged; the message names the difference."""


class InputError(UserError):
    """Photos to classify given in a form that cannot be read (not a folder, no path column)."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss or state became NaN or infinite; the last good checkpoint is kept."""


class WorkdirInUseError(UserError):
    """Another live run holds the workdir's lock; the message names its host and process id."""


class DiskFullError(UserError, OSError):
    """A write into the workdir found no space; the message names the folder and the space
    needed, and the step the same command resumes from."""


class PreemptedError(UserError):
    """The run was asked to stop (SIGTERM) and saved a checkpoint at the current step; the same
    command resumes from it. run_train.py exits with PREEMPTED_EXIT_CODE."""


class PeerLostError(UserError):
    """A process of a multi-process run lost contact with the others (one died); the message
    says to start them all again, and from which step they resume."""


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what a shell reports for a process it ended.


def check_choice(flag: str, value, choices) -> None:
    """Raises ConfigError naming `flag`, the value given and the valid `choices`."""
    if value not in choices:
        raise ConfigError(
            f"{flag}={value!r} is not a valid choice; choose one of: "
            + ", ".join(map(str, choices))
            + "."
        )
