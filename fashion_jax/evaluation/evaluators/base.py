"""What every evaluator shares: the entries it yields and the registry it is chosen from."""

import dataclasses

from fashion_jax import errors

REGISTRY: dict = {}  # name -> evaluator class


@dataclasses.dataclass
class Entry:
    """One row of the report: a named predictor's log-probabilities on each evaluated subset."""

    name: str
    kind: str  # "single", "ensemble", "soup ingredient", "uniform soup", ...
    log_probs: dict  # subset -> float32 [N, num_classes]
    details: dict = dataclasses.field(default_factory=dict)
    detailed: bool = True  # False: summary numbers only (no per-class tables or PNGs).


class Evaluator:
    """Built from its own section, config.evals.<name>; `run(ctx)` yields Entries.

    `check_section` validates that section before any work, raising ConfigError with the flag.
    """

    name = ""

    def __init__(self, section):
        self.section = section

    @classmethod
    def check_section(cls, section, num_runs: int) -> None:
        """Refuses values of config.evals.<name> that cannot work; nothing by default."""

    def run(self, ctx):
        raise NotImplementedError

    def write_files(self, ctx, output_dir: str) -> list:
        """Files of its own, after run(); returns lines for report.md. Nothing by default."""
        return []


def register(cls):
    """Class decorator: makes an Evaluator subclass choosable by its `name`."""
    if cls.name in REGISTRY:
        raise ValueError(f"An evaluator named {cls.name!r} is already registered.")
    REGISTRY[cls.name] = cls
    return cls


def flag(name: str, field: str) -> str:
    return f"--config.evals.{name}.{field}"


def check_at_least(name: str, section, minimum: int, *fields) -> None:
    for field in fields:
        if section[field] < minimum:
            raise errors.ConfigError(
                f"{flag(name, field)}={section[field]} must be at least {minimum}."
            )
