"""Model soups: averaging the parameters of fine-tuned models (Wortsman et al., 2022).

- Uniform soup: the mean of every ingredient's parameters.
- Greedy soup: ingredients sorted by validation accuracy, best first; each is added only if the
  soup's validation accuracy does not drop. It starts as the best ingredient itself (its own
  statistics), so it is never worse on validation than that ingredient.

BatchNorm running statistics of an averaged network are not the average of the ingredients'
statistics, so every soup of two or more ingredients has them recomputed on training images: the
mean over full batches of each batch's statistics (PyTorch's `update_bn`), with the network in
training mode without dropout.

Soups work when the ingredients share an initialisation (checkpoints of one run, or runs started
with the same --config.init_seed or --config.init_checkpoint); a warning says when they do not.
"""

import dataclasses
from typing import Callable

import jax
import numpy as np

from fashion_jax import restore
from fashion_jax.batch_norm import recalibrate_batch_norm  # noqa: F401  (re-exported)

SOUP_KINDS = ("uniform", "greedy")


class SoupError(ValueError):
    """Ingredients that cannot be averaged; the message names the difference."""


@dataclasses.dataclass
class Soup:
    kind: str          # "uniform" or "greedy"
    variables: dict
    details: dict      # What a reader needs to judge it: ingredients, choices, accuracies.


# ------------------------------------------------------------------------------------------------
# Pure pieces.
# ------------------------------------------------------------------------------------------------

def average_variables(trees: list) -> dict:
    """The element-wise mean of variable trees (float64 accumulation, original dtypes)."""
    host = jax.device_get(trees)
    mean = jax.tree.map(lambda *xs: np.mean(np.stack(xs).astype(np.float64), axis=0).astype(
        np.asarray(xs[0]).dtype), *host)
    return jax.device_put(mean)


def greedy_soup(names: list, trees: list, val_accuracies: list,
                evaluate: Callable[[dict], float], recalibrate: Callable[[dict], dict]) -> Soup:
    """Greedy soup: add ingredients, best first, while validation accuracy does not drop."""
    order = sorted(range(len(names)), key=lambda i: -val_accuracies[i])
    chosen, best = [order[0]], order[0]
    variables, accuracy = trees[best], val_accuracies[best]
    steps = [{"ingredient": names[best], "ingredient_val_accuracy": accuracy,
              "soup_val_accuracy": accuracy, "added": True}]
    for i in order[1:]:
        candidate = recalibrate(average_variables([trees[j] for j in chosen + [i]]))
        candidate_accuracy = evaluate(candidate)
        added = candidate_accuracy >= accuracy
        steps.append({"ingredient": names[i], "ingredient_val_accuracy": val_accuracies[i],
                      "soup_val_accuracy": candidate_accuracy, "added": added})
        if added:
            chosen.append(i)
            variables, accuracy = candidate, candidate_accuracy
    return Soup("greedy", variables, {
        "ingredients": [names[i] for i in chosen], "val_accuracy": accuracy,
        "best_ingredient": names[best], "best_ingredient_val_accuracy": val_accuracies[best],
        "steps": steps})


def check_compatible(ingredients: list):
    """Refuses checkpoints of different architectures or class lists, naming the difference."""
    first = ingredients[0]
    for other in ingredients[1:]:
        if tuple(other.run.class_names) != tuple(first.run.class_names):
            raise SoupError(
                f"Cannot average {first.name} and {other.name}: their class lists differ "
                f"({list(first.run.class_names)} vs {list(other.run.class_names)}).")
        keys = sorted(set(first.run.model_config) | set(other.run.model_config))
        differing = [f"model.{k}={first.run.model_config.get(k)!r} vs "
                     f"{other.run.model_config.get(k)!r}" for k in keys
                     if first.run.model_config.get(k) != other.run.model_config.get(k)]
        differing += restore.tree_differences(first.variables, other.variables,
                                              names=(first.name, other.name))
        if differing:
            raise SoupError(f"Cannot average {first.name} and {other.name}: different "
                            f"architectures ({'; '.join(differing[:5])}).")


def initialisations(ingredients: list) -> dict:
    """{initialisation: [ingredient names]}; more than one key means a soup will likely fail."""
    found = {}
    for checkpoint in ingredients:
        found.setdefault(restore.init_identity(checkpoint.run.config), []).append(checkpoint.name)
    return found


# ------------------------------------------------------------------------------------------------
# Soups of a context's runs (used by the soup evaluator and by --predict_with=*_soup).
# ------------------------------------------------------------------------------------------------

def gather_ingredients(ctx) -> list:
    """The checkpoints to average, per --soup_ingredients."""
    mode = ctx.options.soup_ingredients
    if mode == "auto":
        mode = "last_epochs" if len(ctx.runs) == 1 else "workdirs"
    if mode == "workdirs":
        return list(ctx.checkpoints)
    loaded = {(c.run.workdir, c.step): c for c in ctx.checkpoints}
    ingredients = []
    for run in ctx.runs:
        steps = sorted(restore.epoch_end_steps(run))
        if ctx.options.soup_last_epochs > 0:
            steps = steps[-ctx.options.soup_last_epochs:]
        ingredients += [loaded.get((run.workdir, s)) or restore.load_checkpoint(run, s)
                        for s in steps]
    return ingredients


def cook(ctx, kinds=SOUP_KINDS):
    """(ingredients, their val accuracies, soups) for the soup kinds asked for."""
    ingredients = gather_ingredients(ctx)
    check_compatible(ingredients)
    inits = initialisations(ingredients)
    if len(inits) > 1:
        ctx.warn("Soup ingredients start from different initialisations ("
                 + "; ".join(f"{init}: {', '.join(names)}" for init, names in inits.items())
                 + "). Averaging independently initialised networks usually gives a poor model; "
                 "train the runs with one --config.init_seed or --config.init_checkpoint.")
    if len(ingredients) == 1:
        ctx.warn(f"The soup has a single ingredient ({ingredients[0].name}); it equals that "
                 "checkpoint. Keep more epoch-end checkpoints or pass more --workdirs.")
    model = ingredients[0].run.model
    names = [c.name for c in ingredients]
    accuracies = [ctx.accuracy(ctx.checkpoint_log_probs(c, "val"), "val") for c in ingredients]
    recalibrate, bn_details = _recalibration(ctx, ingredients[0])

    def evaluate(variables):
        return ctx.accuracy(ctx.log_probs(model, variables, "val"), "val")

    soups = []
    if "uniform" in kinds:
        averaged = average_variables([c.variables for c in ingredients])
        variables = recalibrate(averaged) if len(ingredients) > 1 else averaged
        soups.append(Soup("uniform", variables, {
            "ingredients": names, "val_accuracy": evaluate(variables),
            "val_accuracy_with_averaged_batch_norm_statistics": evaluate(averaged)}))
    if "greedy" in kinds:
        soups.append(greedy_soup(names, [c.variables for c in ingredients], accuracies,
                                 evaluate, recalibrate))
    for soup in soups:
        soup.details["batch_norm_recalibration"] = bn_details
    return ingredients, accuracies, soups


def _recalibration(ctx, reference):
    """The recalibrate function per --bn_batches/--bn_batch_size, and its description."""
    batches = ctx.options.bn_batches
    if batches <= 0:
        ctx.warn("--bn_batches=0: soups keep the average of their ingredients' BatchNorm "
                 "statistics, which do not describe the averaged network.")
        return (lambda variables: variables), {"batches": 0}
    batch_size = ctx.options.bn_batch_size or reference.run.config.batch_size
    images = ctx.data.train_sample(batches * batch_size)
    details = {"batches": len(images) // min(batch_size, len(images)),
               "batch_size": min(batch_size, len(images)), "train_images": len(images)}
    return (lambda variables: recalibrate_batch_norm(
        reference.run.model, variables, images, batch_size)), details
