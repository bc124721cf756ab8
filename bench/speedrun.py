r"""Time to accuracy: train recipes from scratch for several seeds and report the mean and spread.

  python bench/speedrun.py --recipes=speedrun --seeds=5 --output=speedrun.json
  python bench/speedrun.py --recipes=speedrun,adam,study --seeds=5 --keras_images_per_second=155
  python bench/speedrun.py --recipes=speedrun --seeds=1 --max_rows=600 --target=0.5   # a smoke run
  python bench/speedrun.py --recipes=speedrun,adam --seeds=5 --recipe_seeds=adam=3 \
      --stop_at_target=adam --extra_targets=0.981   # in turns: speedrun 0, adam 0, speedrun 1, ...

Each seed is its own `run_train.py` process, started after the image cache is warm, then
`run_eval.py` gives its val, test and control accuracy (the last checkpoint, with the test-time
augmentation its validation used). Reported per recipe:
the mean and standard deviation over seeds of those accuracies, the wall time (process start to
exit, compilation included: each seed compiles, the persistent cache off) and the compilation
time apart, and each seed's time to first reach
--target on val: training plus each epoch end's precise BN and validation, up to the first epoch
whose val accuracy reaches it (None where no epoch does).

Recipes: speedrun (configs/speedrun.py), adam (configs/adam.py) and study (configs/adam.py without
the weight average and precise BN: the 2020 study's recipe). For the study's recipe in tf.keras,
--keras_images_per_second (tf.keras's training rate at batch 32, from bench_train_step.py in the
same sitting) turns the study recipe's epochs to the target into seconds.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_TARGET = 0.9885  # The 2020 study's Model 1 validation accuracy.
RECIPES = {
    "speedrun": ("configs/speedrun.py", []),
    "adam": ("configs/adam.py", []),
    "study": ("configs/adam.py", ["--config.ema_decay=0", "--config.bn_recalibration_batches=0"]),
}

FLAGS = flags.FLAGS


def define_flags():
    """The command line (defined when run, so that tests can import the functions)."""
    flags.DEFINE_list("recipes", ["speedrun"], f"Recipes to time: {', '.join(RECIPES)}.")
    flags.DEFINE_integer("seeds", 5, "Seeds per recipe (--config.seed and init), each a process.")
    flags.DEFINE_integer("first_seed", 0, "The first seed.")
    flags.DEFINE_list(
        "recipe_seeds",
        [],
        "Seeds for some recipes instead of --seeds, e.g. adam=3 (a configs/adam.py seed costs "
        "about four speedruns).",
    )
    flags.DEFINE_enum(
        "order",
        "seed",
        ["seed", "recipe"],
        "seed: the recipes take turns, seed by seed (speedrun 0, adam 0, speedrun 1, ...), so "
        "that a machine whose speed drifts during the sitting slows both alike; recipe: every "
        "seed of one recipe, then the next.",
    )
    flags.DEFINE_float(
        "target", STUDY_TARGET, "Val accuracy whose time to first reach is reported."
    )
    flags.DEFINE_integer(
        "max_rows", 0, "--config.data.max_rows for every run (0: the whole dataset)."
    )
    flags.DEFINE_multi_string("override", [], "More --config.<field>=<value> for every run.")
    flags.DEFINE_list(
        "stop_at_target",
        [],
        "Recipes whose runs stop after the first epoch reaching --target on val "
        "(--config.early_stopping.target_accuracy), e.g. adam,study: their time to the target "
        "without the rest of their schedule; their val/test/control are then that epoch's.",
    )
    flags.DEFINE_list(
        "extra_targets",
        [],
        "More val accuracies whose time to first reach is reported, e.g. 0.981 (the best the "
        "study's exact recipe reached here).",
    )
    flags.DEFINE_string("root", "speedrun_runs", "Folder for the workdirs and evaluations.")
    flags.DEFINE_float(
        "keras_images_per_second",
        0.0,
        "tf.keras's training img/s at batch 32 (bench_train_step.py).",
    )
    flags.DEFINE_string("output", "", "Optional JSON file for the results.")


def run_logged(command, log_path) -> float:
    """Runs `command` in the checkout with its output in `log_path`; its wall seconds. A failure
    stops the benchmark, naming the log."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"{' '.join(command[:3])} ... failed (exit code {code}); see {log_path}")
    return time.perf_counter() - start


def time_to_target(history: list, target: float):
    """(seconds, epochs) of training plus epoch ends until the first epoch whose val accuracy
    reaches `target`, or (None, None)."""
    seconds = 0.0
    for record in history:
        seconds += record["train_seconds"] + record.get("epoch_end_seconds", 0.0)
        if record["val_accuracy"] >= target:
            return seconds, record["epoch"]
    return None, None


def single_metrics(report: dict) -> dict:
    """{subset: metrics} of the report's single model (the one evaluated model's result)."""
    (result,) = [r for r in report["results"] if r["kind"] == "single"]
    return result["metrics"]


def accuracies(report: dict) -> dict:
    """{subset: accuracy} of the report's single model."""
    return {subset: m["accuracy"] for subset, m in single_metrics(report).items()}


def warm_image_cache(root: str, max_rows: int):
    """Decodes the photos of the dataset found by default once, so that no timed run decodes
    them (a --override of the data folder is not warmed); the log goes to `root`."""
    command = [
        sys.executable,
        "-c",
        "import sys; sys.path.insert(0, '.'); from configs import default; "
        "from fashion_jax.data import dataset; config = default.get_config(); "
        f"config.data.max_rows = {max_rows}; dataset.load_data(config.data, None)",
    ]
    run_logged(command, os.path.join(root, "warm_cache.log"))


def train_and_evaluate(config: str, workdir: str, overrides: list, subsets=()) -> tuple:
    """Trains `config` into `workdir` (its own process, output in <workdir>.log), then evaluates
    its last checkpoint with the test-time augmentation it validated with into <workdir>_eval
    (every subset, or `subsets`). Returns (wall seconds of training, its per-epoch history)."""
    wall = run_logged(
        [sys.executable, "run_train.py", f"--config={config}", f"--workdir={workdir}", *overrides],
        workdir + ".log",
    )
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(workdir, "config.json")) as f:
        tta = json.load(f).get("val_tta", "none")  # Evaluated as it was validated.
    output_dir = workdir + "_eval"
    run_logged(
        [
            sys.executable,
            "run_eval.py",
            f"--workdirs={workdir}",
            f"--output_dir={output_dir}",
            "--config.evaluators=single",
            "--config.checkpoint=latest",
            f"--config.tta={tta}",
            *([f"--config.subsets={','.join(subsets)}"] if subsets else []),
            "--config.progress_bar=False",
        ],
        output_dir + ".log",
    )
    return wall, history


def run_seed(recipe: str, seed: int, extra_targets: list) -> dict:
    config, recipe_overrides = RECIPES[recipe]
    workdir = os.path.abspath(os.path.join(FLAGS.root, f"{recipe}_seed{seed}"))
    overrides = [
        *recipe_overrides,
        f"--config.seed={seed}",
        f"--config.data.max_rows={FLAGS.max_rows}",
        "--config.progress_bar=False",
        # Every seed compiles, as a first run does: a seed that loaded the steps an earlier seed
        # cached would report less time than a new user waits.
        "--config.compilation_cache_dir=none",
        *FLAGS.override,
    ]
    if recipe in FLAGS.stop_at_target:
        overrides.append(f"--config.early_stopping.target_accuracy={FLAGS.target}")
    wall, history = train_and_evaluate(config, workdir, overrides)
    with open(os.path.join(workdir + "_eval", "report.json")) as f:
        subsets = accuracies(json.load(f))
    seconds, epochs = time_to_target(history, FLAGS.target)
    extra = {f"seconds_to_{target}": time_to_target(history, target)[0] for target in extra_targets}
    return {
        "recipe": recipe,
        "seed": seed,
        "workdir": workdir,
        "wall_seconds": wall,
        "compile_seconds": sum(r.get("compile_seconds", 0.0) for r in history),
        "epochs": len(history),
        "seconds_to_target": seconds,
        "epochs_to_target": epochs,
        "val_by_epoch": [r["val_accuracy"] for r in history],
        **extra,
        **{f"{subset}_accuracy": value for subset, value in subsets.items()},
    }


def parse_targets(items: list) -> list:
    """--extra_targets as val accuracies in (0, 1], refused before any run."""
    try:
        targets = [float(item) for item in items]
    except ValueError:
        targets = []
    if len(targets) != len(items) or not all(0.0 < t <= 1.0 for t in targets):
        raise app.UsageError(
            f"--extra_targets={','.join(items)}: expected val accuracies in (0, 1], e.g. 0.981"
        )
    return targets


def run_order(recipes: list, seeds: int, recipe_seeds: list, first_seed: int, order: str):
    """[(recipe, seed)] in the order they run; `recipe_seeds` ("adam=3") overrides `seeds`."""
    counts = {recipe: seeds for recipe in recipes}
    for item in recipe_seeds:
        recipe, _, count = item.partition("=")
        if recipe not in counts or not count.isdigit():
            raise app.UsageError(
                f"--recipe_seeds={item}: expected <recipe>=<count> for one of {recipes}"
            )
        counts[recipe] = int(count)
    pairs = [(r, first_seed + i) for r in recipes for i in range(counts[r])]
    if order == "seed":
        pairs.sort(key=lambda pair: pair[1])  # Stable: the recipes' order within a seed.
    return pairs


def mean_and_spread(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {spread:.4f} (n={len(values)})"


def summarise(runs: list, target: float, keras_rate: float, train_images: int = 29_451) -> dict:
    """Per recipe: mean +- standard deviation of each measure, and the seeds that missed;
    `train_images` turns tf.keras's rate into an epoch's seconds."""
    summary = {}
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        mine = [r for r in runs if r["recipe"] == recipe]
        reached = [r["seconds_to_target"] for r in mine if r["seconds_to_target"] is not None]
        row = {
            key: mean_and_spread([r.get(key) for r in mine])
            for key in (
                "val_accuracy",
                "test_accuracy",
                "control_accuracy",
                "wall_seconds",
                "compile_seconds",
                "seconds_to_target",
                "epochs_to_target",
                *sorted(
                    k for k in mine[0] if k.startswith("seconds_to_") and k != "seconds_to_target"
                ),
            )
        }
        row["seeds_reaching_target"] = f"{len(reached)} of {len(mine)} (val >= {target})"
        row["mean_seconds_to_target"] = statistics.mean(reached) if reached else None
        summary[recipe] = row
    study = [r for r in runs if r["recipe"] == "study"]
    if keras_rate and study:
        reached = [r["epochs_to_target"] for r in study if r["epochs_to_target"] is not None]
        # A seed that never reached the target counts with all its epochs: a lower bound.
        epochs = statistics.mean(r["epochs_to_target"] or r["epochs"] for r in study)
        summary["study_in_tf_keras"] = {
            "epochs_to_target": epochs,
            "mean_seconds_to_target": epochs * train_images / keras_rate,
            "lower_bound": len(reached) < len(study),
            "from": f"{keras_rate} img/s (tf.keras, batch 32) x {train_images} train images",
        }
    return summary


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.recipes) - set(RECIPES))
    if unknown:
        raise app.UsageError(f"--recipes: unknown {unknown}; choose from {', '.join(RECIPES)}")
    # Flags are checked before the image cache is warmed and any seed trains.
    order = run_order(FLAGS.recipes, FLAGS.seeds, FLAGS.recipe_seeds, FLAGS.first_seed, FLAGS.order)
    extra_targets = parse_targets(FLAGS.extra_targets)
    os.makedirs(FLAGS.root, exist_ok=True)
    warm_image_cache(FLAGS.root, FLAGS.max_rows)
    runs = []
    for recipe, seed in order:
        runs.append(run_seed(recipe, seed, extra_targets))
        print(json.dumps(runs[-1]), flush=True)
    with open(os.path.join(runs[0]["workdir"], "summary.json")) as f:
        train_images = json.load(f)["train_images"]
    summary = summarise(runs, FLAGS.target, FLAGS.keras_images_per_second, train_images)
    print(json.dumps(summary, indent=2))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump({"summary": summary, "runs": runs, "target": FLAGS.target}, f, indent=2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
