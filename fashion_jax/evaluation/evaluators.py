"""Evaluators by name: each takes the shared context and yields named prediction sets (entries).

An evaluator has one job (score each model, average predictions, average parameters) and knows
nothing of the others or of the report; metrics and files are made from its entries afterwards.
To add one, write a function `(ctx) -> iterator of Entry` and decorate it with `@register(name)`.
"""

import dataclasses
from typing import Callable, Iterator

from fashion_jax.evaluation import context as context_lib
from fashion_jax.evaluation import predictor
from fashion_jax.evaluation import soup as soup_lib

Evaluator = Callable[[context_lib.Context], Iterator["Entry"]]
EVALUATORS: dict = {}


@dataclasses.dataclass
class Entry:
    """One row of the report: a named predictor's log-probabilities on each evaluated subset."""
    name: str
    kind: str                       # "single", "ensemble", "soup ingredient", "uniform soup", ...
    log_probs: dict                 # subset -> float32 [N, num_classes]
    details: dict = dataclasses.field(default_factory=dict)
    detailed: bool = True           # False: summary numbers only (no per-class tables or PNGs).


def register(name: str):
    def decorate(function: Evaluator) -> Evaluator:
        if name in EVALUATORS:
            raise ValueError(f"An evaluator named {name!r} is already registered.")
        EVALUATORS[name] = function
        return function
    return decorate


def resolve(names, num_runs: int) -> list:
    """--evaluators as a list of registered names; "auto" picks what fits the runs given."""
    names = [n.strip() for n in names if n.strip()]
    if names in ([], ["auto"]):
        names = ["single"] + (["ensemble"] if num_runs > 1 else []) + ["soup"]
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise context_lib.EvalError(
            f"--evaluators: {unknown} unknown; choose from {sorted(EVALUATORS)}.")
    return list(dict.fromkeys(names))


def _checkpoint_details(checkpoint) -> dict:
    return {"workdir": checkpoint.run.workdir, "step": checkpoint.step, "epoch": checkpoint.epoch,
            "optimizer": checkpoint.run.optimizer}


@register("single")
def single(ctx: context_lib.Context) -> Iterator[Entry]:
    """Each run's chosen checkpoint on its own."""
    for checkpoint in ctx.checkpoints:
        yield Entry(checkpoint.name, "single",
                    {s: ctx.checkpoint_log_probs(checkpoint, s) for s in ctx.options.subsets},
                    _checkpoint_details(checkpoint))


@register("ensemble")
def ensemble(ctx: context_lib.Context) -> Iterator[Entry]:
    """The (weighted) mean of the runs' predicted probabilities."""
    weights = predictor.normalized_weights(ctx.options.ensemble_weights, len(ctx.checkpoints))
    members = [c.name for c in ctx.checkpoints]
    log_probs = {s: predictor.mix([ctx.checkpoint_log_probs(c, s) for c in ctx.checkpoints],
                                  weights) for s in ctx.options.subsets}
    name = "ensemble (" + " + ".join(members) + ")"
    yield Entry(name, "ensemble", log_probs,
                {"members": members, "weights": [float(w) for w in weights]})


@register("soup")
def soup(ctx: context_lib.Context) -> Iterator[Entry]:
    """Each ingredient (summary only) and each soup of their parameters."""
    ingredients, accuracies, soups = soup_lib.cook(ctx, ctx.options.soups)
    for checkpoint, accuracy in zip(ingredients, accuracies):
        yield Entry(checkpoint.name, "soup ingredient",
                    {s: ctx.checkpoint_log_probs(checkpoint, s) for s in ctx.options.subsets},
                    dict(_checkpoint_details(checkpoint), val_accuracy=accuracy), detailed=False)
    model = ingredients[0].run.model
    for result in soups:
        name = f"{result.kind} soup ({len(result.details['ingredients'])} of {len(ingredients)})"
        yield Entry(name, f"{result.kind} soup",
                    {s: ctx.log_probs(model, result.variables, s, key=name)
                     for s in ctx.options.subsets}, result.details)
