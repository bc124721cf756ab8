r"""Measures a device in about 5 minutes: training img/s, compilation, an epoch and its accuracy.

  PYTHONPATH=. python bench/device_check.py --out=device_check       # on a lent GPU, no install
  PYTHONPATH=. python bench/device_check.py --tiny --out=/tmp/dc     # CPU smoke run, ~2 minutes

Writes device_check.md (tables) and device_check.json into --out:
1. Steps: images/s of the train step (bench_train_step.py's jax worker: a synthetic uint8 batch
   already on the device, one jitted step per call) of the seed CNN (configs/adam.py: its model,
   Adam and weight average) and of the speedrun recipe (configs/speedrun.py: SpeedNet, Muon), at
   each --batch_sizes, in float32 and bfloat16, with the first (compiling) step's seconds apart.
   A measurement that fails (e.g. out of memory) is a row with its error; the others go on.
2. Epoch: one epoch of configs/speedrun.py on the real training set (its 4-epoch schedule,
   stopped after epoch 1 by --config.early_stopping.target_accuracy), through run_train.py's own
   train_and_evaluate: train seconds (compilation included, and apart), epoch-end seconds (precise
   BN and validation), the epoch's time with and without them, img/s, and the val accuracy after
   the epoch against the CPU's recorded in bench/README.md.

Only public JAX / Flax / optax / orbax APIs, no tensorflow or torch: a GPU image's own (newer)
versions can run it from a checkout. --tiny: a batch of 4, a fraction of a second per
measurement, the epoch on --max_rows rows (400 unless given) at batch 16.
"""

import json
import math
import os
import shutil
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
# fashion_jax and configs/ from this checkout, installed or not; bench_train_step beside it.
sys.path[:0] = [REPO_ROOT, BENCH_DIR]

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import bench_train_step  # noqa: E402  (its flags: --batch_sizes, --seconds, --warmup)

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "device_check", "Folder for device_check.md, .json and the run.")
flags.DEFINE_bool("tiny", False, "CPU smoke setting: small batches and data, few steps.")
flags.DEFINE_list("parts", ["steps", "epoch"], "What to measure: steps, epoch.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes of the step measurements.")
flags.DEFINE_string(
    "data_dir", "", "Dataset folder for the epoch ('': found as run_train.py does)."
)
flags.DEFINE_integer("max_rows", 0, "--config.data.max_rows of the epoch (0: all; --tiny: 400).")

# The models measured: (name in the table, bench_train_step.bench_jax's recipe).
MODELS = (("seed_cnn (configs/adam.py)", "adam"), ("speed_net (configs/speedrun.py)", "speedrun"))
# bench/README.md, "Result: 5 seeds": configs/speedrun.py's val accuracy after epoch 1 of its
# 4-epoch schedule on the 2-core Intel Xeon (AVX-512), seed 0 (this script's seed) and 5 seeds.
CPU_VAL_AFTER_EPOCH_1 = {"seed 0": 0.9819, "5 seeds mean": 0.98084, "5 seeds sd": 0.00112}
# Stops after the first epoch (any val accuracy reaches it) and keeps the 4-epoch schedule, so
# epoch 1 is the same epoch the CPU runs recorded.
STOP_AFTER_FIRST_EPOCH = 1e-9


def describe_error(error: Exception) -> str:
    """The exception's type and first line, for a table cell."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


def device_description() -> dict:
    import jax

    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": getattr(device, "device_kind", str(device)),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
    }


def measure_steps(batch_sizes, dtypes, conv_impl="auto") -> list:
    """One row per model, dtype and batch: img/s and the first step's seconds, or the error.
    `conv_impl` "auto" is XLA's convolution (cuDNN) on a GPU, the native kernel on CPU."""
    rows = []
    for model, recipe in MODELS:
        for dtype in dtypes:
            for batch_size in batch_sizes:
                row = {"model": model, "dtype": dtype, "batch_size": batch_size}
                try:
                    (first, rate), _ = bench_train_step.bench_jax(
                        batch_size, conv_impl, recipe=recipe, dtype=dtype
                    )
                    row.update(images_per_second=rate, first_step_seconds=first)
                except Exception as e:  # noqa: BLE001  One failure (memory) must not end the check.
                    row["error"] = describe_error(e)
                logging.info("step: %s", row)
                rows.append(row)
    return rows


def epoch_config(tiny: bool, data_dir: str, max_rows: int):
    from configs import speedrun as speedrun_config

    config = speedrun_config.get_config()
    config.data.data_dir = data_dir
    config.data.max_rows = max_rows
    config.progress_bar = False
    config.early_stopping.target_accuracy = STOP_AFTER_FIRST_EPOCH
    if tiny:  # A few steps on a few hundred rows: what the recipe does, not how fast.
        config.num_epochs = 1
        config.batch_size = 16
        config.eval_batch_size = 32
        config.bn_recalibration_batches = 2
        config.log_every_steps = 5
    return config


def measure_epoch(workdir: str, tiny: bool, data_dir: str, max_rows: int) -> dict:
    """configs/speedrun.py's first epoch in a fresh `workdir`: its metrics.jsonl record."""
    from fashion_jax.training import train

    shutil.rmtree(workdir, ignore_errors=True)  # An old run there would be resumed.
    config = epoch_config(tiny, data_dir, max_rows)
    start = time.perf_counter()
    summary = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        record = json.loads(f.readline())
    train_seconds, end_seconds = record["train_seconds"], record["epoch_end_seconds"]
    return {
        "train_images": summary["train_images"],
        "batch_size": config.batch_size,
        "train_seconds": train_seconds,
        "compile_seconds": record["compile_seconds"],
        "epoch_end_seconds": end_seconds,
        "epoch_seconds_without_end": train_seconds,
        "epoch_seconds_with_end": train_seconds + end_seconds,
        "epoch_seconds_without_compilation": train_seconds - record["compile_seconds"],
        "images_per_second": record["images_per_second"],
        "val_accuracy": record["val_accuracy"],
        # Data loading (decoding on a cold image cache), set-up and the final validation.
        "wall_seconds": wall,
    }


def accuracy_verdict(val_accuracy: float, tiny: bool) -> str:
    if tiny:
        return "not comparable (--tiny: other data and batch)"
    seed0, mean, sd = (CPU_VAL_AFTER_EPOCH_1[k] for k in ("seed 0", "5 seeds mean", "5 seeds sd"))
    return (
        f"{100 * (val_accuracy - seed0):+.2f} points against the CPU's seed 0 ({100 * seed0:.2f}%); "
        f"{(val_accuracy - mean) / sd:+.1f} sd from its 5 seeds ({100 * mean:.2f} +- {100 * sd:.2f})"
    )


def _number(value, digits=1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else "-"


def markdown(result: dict) -> str:
    d = result["device"]
    lines = [
        f"# device_check: {d['device_kind']} ({d['backend']}, {d['devices']} device(s), "
        f"JAX {d['jax']}, {d['cpus']} CPUs){' --tiny' if result['tiny'] else ''}",
        "",
        f"{result['date']}, {result['seconds']:.0f} s in all.",
    ]
    if result.get("steps"):
        lines += [
            "",
            "## Train step, synthetic batch on the device (bench_train_step.py's jax worker)",
            "",
            "| model | dtype | batch | img/s | first step s (compilation) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in result["steps"]:
            measured = (
                f"{_number(r.get('images_per_second'))} | {_number(r.get('first_step_seconds'), 2)}"
                if "error" not in r
                else f"not measured: {r['error']} | -"
            )
            lines.append(f"| {r['model']} | {r['dtype']} | {r['batch_size']} | {measured} |")
    epoch = result.get("epoch")
    if epoch:
        lines += [
            "",
            "## configs/speedrun.py, epoch 1 of 4 (float32, batch "
            f"{epoch.get('batch_size', '-')}, {epoch.get('train_images', '-')} training images)",
            "",
            "| measure | value |",
            "| --- | --- |",
        ]
        if "error" in epoch:
            lines.append(f"| error | {epoch['error']} |")
        else:
            lines += [
                f"| epoch s without the epoch end (compilation included) | "
                f"{_number(epoch['epoch_seconds_without_end'], 2)} |",
                f"| epoch s with the epoch end (precise BN + validation) | "
                f"{_number(epoch['epoch_seconds_with_end'], 2)} |",
                f"| epoch s without the epoch end and compilation | "
                f"{_number(epoch['epoch_seconds_without_compilation'], 2)} |",
                f"| epoch end s | {_number(epoch['epoch_end_seconds'], 2)} |",
                f"| compilation s (first dispatch) | {_number(epoch['compile_seconds'], 2)} |",
                f"| img/s (compilation left out) | {_number(epoch['images_per_second'])} |",
                f"| wall s (data loading and final validation too) | "
                f"{_number(epoch['wall_seconds'], 1)} |",
                f"| val accuracy | {100 * epoch['val_accuracy']:.2f}% |",
                f"| against the CPU (bench/README.md) | {epoch['against_cpu']} |",
            ]
    return "\n".join(lines) + "\n"


def check_finite_and_positive(result: dict) -> list:
    """The numbers of the measured rows that are not finite and > 0 (what --tiny's test asks)."""
    bad = []
    for r in result.get("steps", []):
        for key in ("images_per_second", "first_step_seconds"):
            if "error" not in r and not (math.isfinite(r[key]) and r[key] > 0):
                bad.append((r["model"], r["dtype"], r["batch_size"], key, r[key]))
    return bad


def main(argv):
    del argv
    start = time.perf_counter()
    tiny = FLAGS.tiny
    if tiny:  # Unless given on the command line.
        for name, value in (("batch_sizes", ["4"]), ("seconds", 0.05), ("warmup", 0)):
            if not FLAGS[name].present:
                FLAGS[name].value = value
    os.makedirs(FLAGS.out, exist_ok=True)
    result = {
        "device": device_description(),
        "tiny": tiny,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_val_after_epoch_1": CPU_VAL_AFTER_EPOCH_1,
    }
    if "steps" in FLAGS.parts:
        # --tiny: XLA's convolution, as on a GPU, and quicker to compile in bfloat16 on CPU
        # than the Winograd / im2col formulations that "auto" picks there.
        conv_impl = "xla" if tiny else "auto"
        result["steps"] = measure_steps(
            [int(b) for b in FLAGS.batch_sizes], FLAGS.dtypes, conv_impl
        )
        write(result, start)  # Kept if the epoch fails or the machine is taken back.
    if "epoch" in FLAGS.parts:
        max_rows = FLAGS.max_rows or (400 if tiny else 0)
        workdir = os.path.abspath(os.path.join(FLAGS.out, "speedrun_epoch"))
        try:
            epoch = measure_epoch(workdir, tiny, FLAGS.data_dir, max_rows)
            epoch["against_cpu"] = accuracy_verdict(epoch["val_accuracy"], tiny)
        except Exception as e:  # noqa: BLE001  The step table is still written, with the error.
            logging.exception("The epoch failed.")
            epoch = {"error": describe_error(e)}
        result["epoch"] = epoch
    print(write(result, start))
    bad = check_finite_and_positive(result)
    if bad or "error" in result.get("epoch", {}):
        sys.exit(f"device_check: failed or not finite and positive: {bad or result['epoch']}")


def write(result: dict, start: float) -> str:
    """Writes device_check.md and .json into --out; returns the markdown."""
    result["seconds"] = time.perf_counter() - start
    table = markdown(result)
    with open(os.path.join(FLAGS.out, "device_check.md"), "w") as f:
        f.write(table)
    with open(os.path.join(FLAGS.out, "device_check.json"), "w") as f:
        json.dump(result, f, indent=2)
    return table


if __name__ == "__main__":
    flags.FLAGS.set_default("batch_sizes", ["32", "256", "1024"])
    flags.FLAGS.set_default("seconds", 4.0)
    app.run(main)
