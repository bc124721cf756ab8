"""Evaluators, chosen by name (--config.evaluators), each built from its own config section
(--config.evals.<name>.<field>, as big_vision's config.evals).

  single.py    each run's chosen checkpoint on its own
  ensemble.py  the (weighted) mean of the runs' predicted probabilities
  soup.py      averaged parameters: uniform and greedy soups (Wortsman et al. 2022)
  audit.py     catalogue rows whose label is probably wrong (cleanlab, cross-fitting)

An evaluator has one job and knows nothing of the others or of the report: it takes the shared
context (fashion_jax/evaluation/context.py) and yields named prediction sets (base.Entry), from
which the report computes every number. To add one, subclass base.Evaluator in a module here,
decorate it with @base.register, import the module below and give it a section in
fashion_jax/evaluation/default_config.py.
"""

from fashion_jax import errors
from fashion_jax.evaluation.evaluators import audit  # noqa: F401  (registers itself)
from fashion_jax.evaluation.evaluators import base
from fashion_jax.evaluation.evaluators import ensemble  # noqa: F401  (registers itself)
from fashion_jax.evaluation.evaluators import single  # noqa: F401  (registers itself)
from fashion_jax.evaluation.evaluators import soup  # noqa: F401  (registers itself)


def resolve(value, num_runs: int) -> list:
    """--config.evaluators as registered names; "auto" picks what fits the number of runs."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in parts if n.strip()]
    if names in ([], ["auto"]):
        names = ["single"] + (["ensemble"] if num_runs > 1 else []) + ["soup"]
    for name in names:
        errors.check_choice("--config.evaluators", name, sorted(base.REGISTRY) + ["auto"])
    return list(dict.fromkeys(names))


def check_section(name: str, section, num_runs: int) -> None:
    base.REGISTRY[name].check_section(section, num_runs)


def check(config, num_runs: int) -> None:
    """Every chosen evaluator's section, before any work."""
    for name in resolve(config.evaluators, num_runs):
        if name not in config.evals:
            raise errors.ConfigError(f"--config.evals has no section for the evaluator {name!r}.")
        check_section(name, config.evals[name], num_runs)


def build(name: str, config) -> base.Evaluator:
    return base.REGISTRY[name](config.evals[name])
