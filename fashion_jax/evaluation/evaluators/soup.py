"""Model soups: averaging the parameters of fine-tuned models (Wortsman et al., 2022).

- Uniform soup: the mean of every ingredient's parameters.
- Greedy soup: ingredients sorted by validation accuracy, best first; each is added only if the
  soup's validation accuracy does not drop. It starts as the best ingredient itself (its own
  statistics), so it is never worse on validation than that ingredient. Validation is the
  held-out data the ingredients are chosen on, as in the paper; test and control are not used.

BatchNorm running statistics of an averaged network are not the average of the ingredients'
statistics, so every soup of two or more ingredients has them recomputed on training images: the
mean over full batches of each batch's statistics (PyTorch's `update_bn`), with the network in
training mode without dropout.

Memory does not grow with the number of ingredients K: ingredients are read from disk one at a
time (each is first predicted on every subset, for its own report row and its validation
accuracy), the uniform soup is a running sum, and the greedy soup keeps the running sum of the
chosen ingredients and one candidate, so at most two models' variables are held at once, plus
one batch of activations.

Soups work when the ingredients share an initialisation (checkpoints of one run, or runs started
from one --config.init_checkpoint or --config.init_seed); a warning says when they do not.
"""

from collections.abc import Callable
import dataclasses

import jax
import numpy as np

from fashion_jax import errors
from fashion_jax import saved_runs
from fashion_jax.evaluation import config_checks
from fashion_jax.evaluation.evaluators import base
from fashion_jax.evaluation.evaluators import single
from fashion_jax.inference import predictor
from fashion_jax.training import batch_norm

SOUP_KINDS = ("uniform", "greedy")
INGREDIENT_CHOICES = ("auto", "workdirs", "last_epochs")


@dataclasses.dataclass
class Soup:
    kind: str  # "uniform" or "greedy"
    variables: dict
    details: dict  # What a reader needs to judge it: ingredients, choices, accuracies.


def load_copy(checkpoint: saved_runs.Checkpoint) -> dict:
    """An ingredient's variables as writable float32 host arrays (summed in place)."""
    return jax.tree.map(lambda x: np.array(x, np.float32), checkpoint.load())


def add_into(total: dict, tree: dict, scale: float = 1.0) -> dict:
    """total = (total + tree) * scale, in place in `total`'s arrays."""

    def add(t, x):
        np.add(t, x, out=t)
        if scale != 1.0:
            np.multiply(t, scale, out=t)
        return t

    return jax.tree.map(add, total, tree)


def scaled(tree: dict, scale: float) -> dict:
    """tree * scale, in place."""
    return jax.tree.map(lambda t: np.multiply(t, scale, out=t), tree)


def uniform_soup(ingredients: list, load: Callable) -> dict:
    """The mean of the ingredients' variables, read one at a time (a running sum)."""
    total = None
    for checkpoint in ingredients:
        tree = load(checkpoint)
        total = tree if total is None else add_into(total, tree)
        del tree
    return scaled(total, 1.0 / len(ingredients))


def greedy_soup(
    ingredients: list,
    load: Callable,
    val_accuracies: list,
    evaluate: Callable[[dict], float],
    recalibrate: Callable[[dict], dict],
) -> Soup:
    """Greedy soup: add ingredients, best first, while validation accuracy does not drop.

    Holds the sum of the chosen ingredients and one candidate; the candidate is formed in the
    candidate's own arrays, and on acceptance turned back into the new sum in place.
    """
    names = [c.name for c in ingredients]
    order = sorted(range(len(ingredients)), key=lambda i: -val_accuracies[i])
    best = order[0]
    chosen, accuracy = [best], val_accuracies[best]
    chosen_sum = load(ingredients[best])
    steps = [
        {
            "ingredient": names[best],
            "ingredient_val_accuracy": accuracy,
            "soup_val_accuracy": accuracy,
            "added": True,
        }
    ]
    for i in order[1:]:
        n = len(chosen)
        candidate = add_into(load(ingredients[i]), chosen_sum, 1.0 / (n + 1))
        candidate_accuracy = evaluate(recalibrate(candidate))
        added = candidate_accuracy >= accuracy
        steps.append(
            {
                "ingredient": names[i],
                "ingredient_val_accuracy": val_accuracies[i],
                "soup_val_accuracy": candidate_accuracy,
                "added": added,
            }
        )
        if added:
            chosen.append(i)
            accuracy = candidate_accuracy
            chosen_sum = scaled(candidate, float(n + 1))
        del candidate
    if len(chosen) == 1:  # The best ingredient itself, with its own statistics.
        variables = load(ingredients[best])
    else:
        variables = recalibrate(scaled(chosen_sum, 1.0 / len(chosen)))
    return Soup(
        "greedy",
        variables,
        {
            "ingredients": [names[i] for i in chosen],
            "val_accuracy": accuracy,
            "best_ingredient": names[best],
            "best_ingredient_val_accuracy": val_accuracies[best],
            "steps": steps,
        },
    )


def check_compatible(ingredients: list):
    """Refuses checkpoints of different architectures or class lists, naming the difference
    (from the saved configs and the models' shapes: nothing is read from the checkpoints)."""
    first = ingredients[0]
    for other in ingredients[1:]:
        if tuple(other.run.class_names) != tuple(first.run.class_names):
            raise errors.SoupError(
                f"Cannot average {first.name} and {other.name}: their class lists differ "
                f"({list(first.run.class_names)} vs {list(other.run.class_names)})."
            )
        keys = sorted(set(first.run.model_config) | set(other.run.model_config))
        differing = [
            f"model.{k}={first.run.model_config.get(k)!r} vs {other.run.model_config.get(k)!r}"
            for k in keys
            if first.run.model_config.get(k) != other.run.model_config.get(k)
        ]
        differing += saved_runs.tree_differences(
            saved_runs.model_shapes(first.run.model, first.run.image_shape),
            saved_runs.model_shapes(other.run.model, other.run.image_shape),
            names=(first.name, other.name),
        )
        if differing:
            raise errors.SoupError(
                f"Cannot average {first.name} and {other.name}: different "
                f"architectures ({'; '.join(differing[:5])})."
            )


def initialisations(ingredients: list) -> dict:
    """{initialisation: [ingredient names]}; more than one key means a soup will likely fail."""
    found = {}
    for checkpoint in ingredients:
        found.setdefault(saved_runs.init_identity(checkpoint.run.config), []).append(
            checkpoint.name
        )
    return found


def gather_ingredients(ctx, section) -> list:
    """The checkpoints to average, per config.evals.soup.ingredients and last_epochs."""
    mode = section.ingredients
    if mode == "auto":
        mode = "last_epochs" if len(ctx.runs) == 1 else "workdirs"
    if mode == "workdirs":
        return list(ctx.checkpoints)
    ingredients = []
    for run in ctx.runs:
        epochs = saved_runs.epoch_end_steps(run)
        steps = sorted(epochs)
        if section.last_epochs > 0:
            steps = steps[-section.last_epochs :]
        ingredients += [saved_runs.Checkpoint(run, s, epochs[s]) for s in steps]
    return ingredients


def cook(ctx, section, kinds=SOUP_KINDS):
    """(ingredients, their val accuracies, soups) for the soup kinds asked for."""
    ingredients = gather_ingredients(ctx, section)
    check_compatible(ingredients)
    inits = initialisations(ingredients)
    if len(inits) > 1:
        ctx.warn(
            "Soup ingredients start from different initialisations ("
            + "; ".join(f"{init}: {', '.join(names)}" for init, names in inits.items())
            + "). Averaging independently initialised networks usually gives a poor model; "
            "train the runs from one --config.init_checkpoint (or one --config.init_seed)."
        )
    if len(ingredients) == 1:
        ctx.warn(
            f"The soup has a single ingredient ({ingredients[0].name}); it equals that "
            "checkpoint. Keep more epoch-end checkpoints or pass more --workdirs."
        )
    model = ingredients[0].run.model
    names = [c.name for c in ingredients]
    accuracies = [ctx.accuracy(ctx.checkpoint_log_probs(c, "val"), "val") for c in ingredients]
    recalibrate, bn_details = _recalibration(ctx, section, ingredients[0])

    def evaluate(variables):
        return ctx.accuracy(ctx.log_probs(model, jax.device_put(variables), "val"), "val")

    soups = []
    if "uniform" in kinds:
        averaged = uniform_soup(ingredients, load_copy)
        averaged_accuracy = evaluate(averaged)
        variables = recalibrate(averaged) if len(ingredients) > 1 else averaged
        soups.append(
            Soup(
                "uniform",
                variables,
                {
                    "ingredients": names,
                    "val_accuracy": evaluate(variables),
                    "val_accuracy_with_averaged_batch_norm_statistics": averaged_accuracy,
                },
            )
        )
        del averaged
    if "greedy" in kinds:
        soups.append(greedy_soup(ingredients, load_copy, accuracies, evaluate, recalibrate))
    for soup in soups:
        soup.details["batch_norm_recalibration"] = bn_details
    return ingredients, accuracies, soups


def greedy_members_ensemble(ctx, ingredients: list, greedy: Soup):
    """The Entry of the prediction ensemble of the greedy soup's ingredients (the paper's
    comparison at K times the inference cost), or None when greedy kept one or all of them (the
    best ingredient itself, or the ensemble of all)."""
    chosen = greedy.details["ingredients"]
    if not 1 < len(chosen) < len(ingredients):
        return None
    members = [c for c in ingredients if c.name in chosen]
    return base.Entry(
        f"ensemble of the greedy soup's {len(members)} ingredients",
        "ensemble",
        {
            s: predictor.mix([ctx.checkpoint_log_probs(c, s) for c in members], None)
            for s in ctx.subsets
        },
        {"members": chosen, "weights": [1 / len(members)] * len(members)},
    )


def _recalibration(ctx, section, reference):
    """The recalibrate function per bn_batches / bn_batch_size, and its description. It returns
    new variables (the same params, new statistics) and leaves its argument as it is."""
    if section.bn_batches <= 0:
        ctx.warn(
            f"{base.flag('soup', 'bn_batches')}=0: soups keep the average of their ingredients' "
            "BatchNorm statistics, which do not describe the averaged network."
        )
        return (lambda variables: variables), {"batches": 0}
    batch_size = section.bn_batch_size or reference.run.config.batch_size
    images = ctx.data.train_sample(section.bn_batches * batch_size)
    details = {
        "batches": len(images) // min(batch_size, len(images)),
        "batch_size": min(batch_size, len(images)),
        "train_images": len(images),
    }

    def recalibrate(variables):
        new = batch_norm.recalibrate_batch_norm(reference.run.model, variables, images, batch_size)
        return {"params": variables["params"], "batch_stats": jax.device_get(new["batch_stats"])}

    return recalibrate, details


@base.register
class SoupEvaluator(base.Evaluator):
    """Each ingredient (summary only) and each soup of their parameters."""

    name = "soup"

    @classmethod
    def check_section(cls, section, num_runs: int) -> None:
        errors.check_choice(
            base.flag("soup", "ingredients"), section.ingredients, INGREDIENT_CHOICES
        )
        kinds = config_checks.names(section.kinds)
        if not kinds:
            raise errors.ConfigError(f"{base.flag('soup', 'kinds')} is empty; use uniform,greedy.")
        for kind in kinds:
            errors.check_choice(base.flag("soup", "kinds"), kind, SOUP_KINDS)
        base.check_at_least("soup", section, 0, "last_epochs", "bn_batches", "bn_batch_size")

    def run(self, ctx):
        ingredients, accuracies, soups = cook(
            ctx, self.section, config_checks.names(self.section.kinds)
        )
        for checkpoint, accuracy in zip(ingredients, accuracies):
            yield base.Entry(
                checkpoint.name,
                "soup ingredient",
                {s: ctx.checkpoint_log_probs(checkpoint, s) for s in ctx.subsets},
                dict(single.checkpoint_details(checkpoint), val_accuracy=accuracy),
                detailed=False,
            )
        model = ingredients[0].run.model
        for result in soups:
            name = (
                f"{result.kind} soup ({len(result.details['ingredients'])} of {len(ingredients)})"
            )
            variables = jax.device_put(result.variables)
            yield base.Entry(
                name,
                f"{result.kind} soup",
                {s: ctx.log_probs(model, variables, s, key=name) for s in ctx.subsets},
                result.details,
            )
            if result.kind == "greedy":
                ensemble = greedy_members_ensemble(ctx, ingredients, result)
                if ensemble is not None:
                    yield ensemble
