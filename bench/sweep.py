r"""Accuracy sweeps: variants of a recipe, several seeds each, scored on val for every head.

  python bench/sweep.py --variant="base=configs/speedrun.py" \
      --variant="e8=configs/speedrun.py --config.num_epochs=8" --seeds=3 --output=sweep.json
  python bench/sweep.py --variant="tiny=configs/speedrun.py --config.num_epochs=1" --seeds=1 \
      --max_rows=600   # a smoke run

Each (variant, seed) is its own `run_train.py` process, the variants in turns seed by seed (so
that a machine whose speed drifts slows them alike), then `run_eval.py` on the last checkpoint
with the test-time augmentation the run validated with. Only --subsets (val by default) are
evaluated: control is for the one recipe a sweep chooses, looked at once, at the end. Reported
per variant: the mean +- standard deviation over seeds of every head's accuracy on each subset,
and of the training seconds (training plus epoch ends) and the wall seconds.
"""

import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speedrun  # noqa: E402  (bench/ is not a package; shares the run and cache helpers)

from fashion_jax import errors  # noqa: E402
from fashion_jax.data import dataset  # noqa: E402

FLAGS = flags.FLAGS
RESERVED = {"seed": "--seeds", "data.max_rows": "--max_rows"}  # Fields the sweep sets itself.


def define_flags():
    """The command line (defined when run, so that tests can import the functions)."""
    flags.DEFINE_multi_string(
        "variant",
        [],
        'A variant: "<name>=<config file> [--config.<field>=<value> ...]" (split at spaces, '
        "values without them); repeat the flag.",
    )
    flags.DEFINE_integer("seeds", 3, "Seeds per variant (--config.seed), each a process.")
    flags.DEFINE_integer("first_seed", 0, "The first seed.")
    flags.DEFINE_list("subsets", ["val"], "Subsets to evaluate (control: only at the end).")
    flags.DEFINE_integer(
        "max_rows", 0, "--config.data.max_rows for every run (0: the whole dataset)."
    )
    flags.DEFINE_string("root", "sweep_runs", "Folder for the workdirs and evaluations.")
    flags.DEFINE_string("output", "", "Optional JSON file for the results.")


def parse_variants(items: list) -> dict:
    """{name: (config file, [overrides])} from --variant values, refused before any run."""
    variants = {}
    for item in items:
        name, _, command = item.partition("=")
        words = command.split()  # Values without spaces: quotes stay, for tuples.
        if not name.isidentifier() or not words or not words[0].endswith(".py"):
            raise app.UsageError(
                f"--variant={item!r}: expected <name>=<config file> [--config.<field>=<value> ...]"
            )
        if not os.path.isfile(os.path.join(speedrun.REPO_ROOT, words[0])):
            raise app.UsageError(f"--variant={item!r}: no config file {words[0]} in the checkout")
        bad = [w for w in words[1:] if not w.startswith("--config.")]
        if bad or name in variants:
            raise app.UsageError(
                f"--variant={item!r}: "
                + (f"{bad} are not --config.<field>=<value>" if bad else f"{name} given twice")
            )
        for word in words[1:]:
            for field, flag in RESERVED.items():
                if word.startswith(f"--config.{field}="):
                    raise app.UsageError(f"--variant={item!r}: --config.{field} is set by {flag}")
        variants[name] = (words[0], words[1:])
    if not variants:
        raise app.UsageError("--variant: give at least one")
    return variants


def parse_subsets(items: list) -> list:
    """--subsets, refused before any run unless each is a subset of the saved split."""
    if not items or not set(items) <= set(dataset.SUBSETS):
        raise app.UsageError(
            f"--subsets={','.join(items)}: choose among {', '.join(dataset.SUBSETS)}"
        )
    return items


def variant_config(config_file: str, overrides: list):
    """A variant's config as run_train.py reads it: ml_collections' config-file flag over its file
    and its --config.<field> overrides; one that training could not apply is refused here."""
    if speedrun.REPO_ROOT not in sys.path:
        sys.path.insert(0, speedrun.REPO_ROOT)  # Config files import each other (configs.<name>).
    argv = ["sweep", "--config=" + os.path.join(speedrun.REPO_ROOT, config_file), *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    try:
        flag_values(argv)
    except flags.Error as error:  # A value the field's type cannot parse.
        reason = str(error)
    except (AttributeError, KeyError):  # ml_collections' words for a missing field.
        reason = "a field it names is not in the config"
    else:
        return flag_values.config
    raise app.UsageError(
        f"--variant with {config_file} {' '.join(overrides)}: training would refuse it: {reason}"
    )


def subsets_trained_on(config_file: str, overrides: list) -> tuple:
    """The subsets a variant trains on besides train, refused as training would refuse them."""
    data_config = variant_config(config_file, overrides).data
    try:
        dataset.check_config(data_config)
    except errors.ConfigError as error:
        raise app.UsageError(f"--variant with {config_file}: {error}") from None
    return dataset.subsets_not_held_out(data_config)


def check_held_out(variants: dict, subsets: list):
    """Refuses, before any run, to score a variant on a subset it trains on (a refit): its mean
    would count training images as held out."""
    for name, (config_file, overrides) in variants.items():
        held_in = subsets_trained_on(config_file, overrides)
        trained = [s for s in subsets if s in held_in]
        if trained:
            raise app.UsageError(
                f"--variant={name} trains on {', '.join(trained)} (--config.data.train_subsets), "
                f"so --subsets={','.join(subsets)} would score it on images it trained on: "
                "score it on what it holds out, --subsets="
                + ",".join(s for s in dataset.SUBSETS[1:] if s not in held_in)
                + "."
            )


def report_scores(report: dict) -> dict:
    """{score: {subset: value}} of a report's single model: its head's accuracy; the accuracy on
    its most frequent classes when the report has it ("articleType top20"); macro F1 for
    masterCategory (the study's five classes)."""
    head = report["label_column"]
    metrics = speedrun.single_metrics(report)
    scores = {head: {subset: m["accuracy"] for subset, m in metrics.items()}}
    some = next(iter(metrics.values()))
    if "top_classes_accuracy" in some:
        name = f"{head} top{some['top_classes_num_classes']}"
        scores[name] = {subset: m["top_classes_accuracy"] for subset, m in metrics.items()}
    if head == "masterCategory":
        scores[f"{head} macro F1"] = {subset: m["macro_f1"] for subset, m in metrics.items()}
    return scores


def head_scores(output_dir: str) -> dict:
    """report_scores of run_eval.py's single model in `output_dir` (one report, or one per head
    in <output_dir>/<head>/ for a multi-head run), merged."""
    top = os.path.join(output_dir, "report.json")
    paths = (
        [top]
        if os.path.isfile(top)
        else [
            os.path.join(output_dir, head, "report.json") for head in sorted(os.listdir(output_dir))
        ]
    )
    scores = {}
    for path in paths:
        if os.path.isfile(path):
            with open(path) as f:
                scores.update(report_scores(json.load(f)))
    return scores


def run_variant_seed(name: str, config: str, overrides: list, seed: int) -> dict:
    workdir = os.path.abspath(os.path.join(FLAGS.root, f"{name}_seed{seed}"))
    wall, history = speedrun.train_and_evaluate(
        config,
        workdir,
        [
            *overrides,
            f"--config.seed={seed}",
            f"--config.data.max_rows={FLAGS.max_rows}",
            "--config.progress_bar=False",
        ],
        parse_subsets(FLAGS.subsets),
    )
    return {
        "variant": name,
        "seed": seed,
        "workdir": workdir,
        "wall_seconds": wall,
        "train_seconds": sum(r["train_seconds"] + r.get("epoch_end_seconds", 0.0) for r in history),
        "epochs": len(history),
        "accuracy": head_scores(workdir + "_eval"),
    }


def summarise(runs: list) -> dict:
    """Per variant: mean +- sd over seeds of each head's accuracy per subset, and of the
    seconds."""
    summary = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        row = {
            f"{head}/{subset}": speedrun.mean_and_spread(
                [r["accuracy"][head][subset] for r in mine]
            )
            for head, subsets in mine[0]["accuracy"].items()
            for subset in subsets
        }
        for key in ("train_seconds", "wall_seconds"):
            row[key] = speedrun.mean_and_spread([r[key] for r in mine])
        summary[name] = row
    return summary


def main(argv):
    del argv
    variants = parse_variants(FLAGS.variant)
    check_held_out(variants, parse_subsets(FLAGS.subsets))
    os.makedirs(FLAGS.root, exist_ok=True)
    speedrun.warm_image_cache(FLAGS.root, FLAGS.max_rows)
    runs = []
    for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
        for name, (config, overrides) in variants.items():
            runs.append(run_variant_seed(name, config, overrides, seed))
            print(json.dumps(runs[-1]), flush=True)
    summary = summarise(runs)
    print(json.dumps(summary, indent=2))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump({"summary": summary, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
