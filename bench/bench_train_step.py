"""Steady-state training speed of the seed CNN: fashion_jax against PyTorch and tf.keras.

  python bench/bench_train_step.py                       # batch 32, 128, 256; all frameworks found
  python bench/bench_train_step.py --batch_sizes=32 --frameworks=jax,torch --seconds=20
  python bench/bench_train_step.py --batch_sizes=32 --repeats=3     # median of 3, in turns
  python bench/bench_train_step.py --frameworks=jax --allocators=mimalloc,tcmalloc,system

Every framework trains the same network (seed CNN, 5 classes, Adam 1e-3, dropout 0.02) on the same
synthetic uint8 batch, each in its own subprocess with the allocator that run_train.py uses
(mimalloc from the install; --allocators=mimalloc,tcmalloc,system compares them in turns, and
each row says which allocator its process actually ran with). Compile/first-step time is measured apart; the rate is images
per second over at least --seconds of steps after --warmup steps. PyTorch runs channels_last.
PyTorch and TensorFlow are optional (`pip install -e ".[bench]"`); missing ones are reported.
"""

import functools
import json
import os
import subprocess
import sys
import time

from fashion_jax import launch  # noqa: E402

if __name__ == "__main__":
    launch.maybe_reexec_with_fast_allocator()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from fashion_jax.training import state as state_lib
from fashion_jax.training import steps

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["32", "128", "256"], "Batch sizes to measure.")
flags.DEFINE_list(
    "frameworks",
    ["jax", "torch", "keras"],
    "Frameworks to measure: jax, jax_winograd, jax_im2col, jax_xla_conv, jax_bf16, "
    "jax_small_resnet, jax_speedrun, jax_speedrun_adam, torch, keras.",
)
flags.DEFINE_float("seconds", 15.0, "Minimum timed seconds per measurement.")
flags.DEFINE_integer(
    "repeats",
    1,
    "Measurements per framework and batch size, taken in turns "
    "(framework after framework, then again); the table shows the median and "
    "the range, so that a noisy moment does not decide a ratio.",
)
flags.DEFINE_list(
    "allocators",
    [launch.chosen_allocator()],
    "Allocators to run each worker with (FASHION_JAX_ALLOCATOR: mimalloc, tcmalloc, system); "
    "default: the one run_train.py uses.",
)
flags.DEFINE_integer("warmup", 3, "Untimed steps after the first (compiling) one.")
flags.DEFINE_string("output", "", "Optional JSON file for the results.")
flags.DEFINE_string("worker", "", "Internal: measure one framework in this process.")
flags.DEFINE_integer("batch_size", 32, "Internal: the worker's batch size.")

NUM_CLASSES, HEIGHT, WIDTH = 5, 80, 60
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_batch(batch_size):
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (batch_size, HEIGHT, WIDTH, 3), dtype=np.uint8),
        rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
    )


def time_steps(step, sync, batch_size):
    """(first step seconds, images/s over >= FLAGS.seconds after warm-up)."""
    start = time.perf_counter()
    sync(step())
    first = time.perf_counter() - start
    for _ in range(FLAGS.warmup):
        sync(step())
    steps, start = 0, time.perf_counter()
    while True:
        out = step()
        steps += 1
        if steps % 5 == 0:
            sync(out)
            elapsed = time.perf_counter() - start
            if elapsed >= FLAGS.seconds:
                return first, steps * batch_size / elapsed


def bench_jax(
    batch_size, conv_impl="auto", recipe="default", model_name=None, dtype="float32", optimizer=None
):
    """A train step of configs/<recipe>.py's model and optimizer (or `model_name`, `optimizer`)."""
    import importlib

    import jax

    sys.path.insert(0, REPO_ROOT)  # configs/ is read from the checkout, as run_train.py does.
    from fashion_jax import models
    from fashion_jax.training import lengths
    from fashion_jax.training import optim

    config = importlib.import_module(f"configs.{recipe}").get_config()
    config.model.conv_impl = conv_impl
    config.model.name = model_name or config.model.name
    config.model.dtype = dtype
    config.optimizer.name = optimizer or config.optimizer.name
    model = models.create_model(config.model, NUM_CLASSES)
    train_examples = 29_451  # The training set's size, for lengths given in epochs.
    learning_rate_fn = optim.create_learning_rate_fn(
        config.optimizer, 10_000, batch_size, train_examples
    )
    ema_decay = lengths.ema_decay(config, train_examples, batch_size)
    state = state_lib.create_train_state(
        config, model, learning_rate_fn, (HEIGHT, WIDTH, 3), ema_decay=ema_decay
    )
    images, labels = synthetic_batch(batch_size)
    batch = jax.device_put({"image": images, "label": labels})
    rng = jax.random.key(0)
    # As a run measures the gradient, parameter and update norms: at its logged steps only.
    norm_periods = (lengths.resolve(config, train_examples, batch_size).log_every_steps,)
    step_fn = jax.jit(
        functools.partial(steps.train_step, norm_periods=norm_periods), donate_argnums=(0,)
    )
    holder = {"state": state}

    def step():
        holder["state"], metrics = step_fn(holder["state"], batch, rng)
        return metrics["loss_sum"]

    return time_steps(step, lambda x: x.block_until_ready(), batch_size), jax.__version__


def bench_torch(batch_size):
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count())
    layers, cin = [], 3
    for features in (32, 64, 128):
        for _ in range(2):
            layers += [
                nn.Conv2d(cin, features, 3),
                nn.ReLU(),
                nn.BatchNorm2d(features, eps=1e-3, momentum=0.01),
            ]
            cin = features
        layers += [nn.MaxPool2d(2), nn.Dropout(0.02)]
    layers += [
        nn.Flatten(),
        nn.Dropout(0.02),
        nn.Linear(3072, 1024),
        nn.ReLU(),
        nn.Dropout(0.02),
        nn.Linear(1024, NUM_CLASSES),
    ]
    model = nn.Sequential(*layers).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    images, labels = synthetic_batch(batch_size)
    images = (
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    )
    labels = torch.from_numpy(labels).long()
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images.float() / 255.0), labels)
        loss.backward()
        optimizer.step()
        return loss

    return time_steps(step, lambda x: x.item(), batch_size), torch.__version__


def bench_keras(batch_size):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    layers = [keras.Input((HEIGHT, WIDTH, 3)), keras.layers.Rescaling(1 / 255.0)]
    for features in (32, 64, 128):
        for _ in range(2):
            layers += [
                keras.layers.Conv2D(features, 3, activation="relu"),
                keras.layers.BatchNormalization(),
            ]
        layers += [keras.layers.MaxPooling2D(2), keras.layers.Dropout(0.02)]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dropout(0.02),
        keras.layers.Dense(1024, activation="relu"),
        keras.layers.Dropout(0.02),
        keras.layers.Dense(NUM_CLASSES),
    ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images, labels = synthetic_batch(batch_size)
    images = tf.constant(images.astype(np.float32))
    labels = tf.constant(labels)

    def step():
        return model.train_on_batch(images, labels)

    return time_steps(step, lambda x: float(np.asarray(x)), batch_size), tf.__version__


WORKERS = {
    "jax": bench_jax,
    "torch": bench_torch,
    "keras": bench_keras,
    # fashion_jax with other convolutions than the CPU default (the native direct kernel,
    # fashion_jax/native_conv.py): Winograd from 16 input channels else im2col (the
    # default without a compiler), im2col everywhere, or XLA's own convolution.
    "jax_winograd": lambda batch_size: bench_jax(batch_size, "winograd"),
    "jax_im2col": lambda batch_size: bench_jax(batch_size, "im2col"),
    "jax_xla_conv": lambda batch_size: bench_jax(batch_size, "xla"),
    # Mixed precision (--config.model.dtype=bfloat16).
    "jax_bf16": lambda batch_size: bench_jax(batch_size, dtype="bfloat16"),
    # The other backbone (configs/multi_head_resnet.py), single head; not in the default.
    "jax_small_resnet": lambda batch_size: bench_jax(batch_size, model_name="small_resnet"),
    # The time-to-accuracy recipe's network and optimizer (configs/speedrun.py), and with Adam.
    "jax_speedrun": lambda batch_size: bench_jax(batch_size, recipe="speedrun"),
    "jax_speedrun_adam": lambda batch_size: bench_jax(
        batch_size, recipe="speedrun", optimizer="adam"
    ),
}


def run_worker():
    (first, rate), version = WORKERS[FLAGS.worker](FLAGS.batch_size)
    print(
        "RESULT "
        + json.dumps(
            {
                "framework": FLAGS.worker,
                "allocator": launch.active_allocator(),
                "version": version,
                "batch_size": FLAGS.batch_size,
                "first_step_seconds": first,
                "images_per_second": rate,
            }
        )
    )


def allocator_environment(allocator):
    """This process's environment for a worker that is to start with `allocator` (the worker
    preloads it itself, as run_train.py does)."""
    preloads = os.environ.get("LD_PRELOAD", "").split()
    kept = [p for p in preloads if "libmimalloc" not in p and "libtcmalloc" not in p]
    return dict(os.environ, LD_PRELOAD=" ".join(kept), **{launch.ENV_VARIABLE: allocator})


def measure(framework, batch_size, allocator):
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--worker={framework}",
        f"--batch_size={batch_size}",
        f"--seconds={FLAGS.seconds}",
        f"--warmup={FLAGS.warmup}",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=allocator_environment(allocator),
    )
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT ") :]), "requested_allocator": allocator}
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return {
        "framework": framework,
        "allocator": allocator,
        "requested_allocator": allocator,
        "batch_size": batch_size,
        "error": last,
    }


def _key(run):
    return run["framework"], run.get("requested_allocator", ""), run["batch_size"]


def summarise(runs):
    """One row per (framework, allocator, batch): the median rate over its repeats, and their
    range."""
    rows = []
    for key in dict.fromkeys(_key(r) for r in runs):
        measured = [r for r in runs if _key(r) == key]
        ok = [r for r in measured if "error" not in r]
        if not ok:
            rows.append(measured[0])
            continue
        rates = sorted(r["images_per_second"] for r in ok)
        rows.append(
            {
                **ok[0],
                "images_per_second": float(np.median(rates)),
                "images_per_second_all": rates,
                "first_step_seconds": float(np.median([r["first_step_seconds"] for r in ok])),
            }
        )
    return rows


def main(argv):
    del argv
    if FLAGS.worker:
        return run_worker()
    for allocator in FLAGS.allocators:
        if allocator not in launch.CHOICES:
            raise app.UsageError(f"--allocators: {allocator!r} is not one of {launch.CHOICES}")
    runs = [
        measure(f, int(b), a)
        for b in FLAGS.batch_sizes
        for _ in range(FLAGS.repeats)
        for f in FLAGS.frameworks
        for a in FLAGS.allocators
    ]
    results = summarise(runs)
    from fashion_jax.conv import native_conv  # What "auto" runs on this CPU, for the record.

    native = native_conv.unavailable_reason() or f"built, {native_conv.lanes()}-float vectors"
    print(
        f"\nTraining step (jax, torch, keras: the seed CNN), synthetic batch, {os.cpu_count()} CPUs, "
        f"median of {FLAGS.repeats}; ratios against jax with {FLAGS.allocators[0]}; "
        f"native convolution: {native}"
    )
    print(
        f"{'framework':<18}{'allocator':<10}{'version':<12}{'batch':>6}{'first step s':>14}"
        f"{'img/s':>10}"
        f"{'jax / this':>12}  range"
    )
    for r in results:
        if "error" in r:
            print(
                f"{r['framework']:<18}{r['allocator']:<10}{'-':<12}{r['batch_size']:>6}  "
                f"not measured: {r['error']}"
            )
            continue
        jax_rate = next(
            (
                x["images_per_second"]
                for x in results
                if x["framework"] == "jax"
                and x["batch_size"] == r["batch_size"]
                and x.get("requested_allocator") == FLAGS.allocators[0]
                and "error" not in x
            ),
            None,
        )
        ratio = f"{jax_rate / r['images_per_second']:.2f}x" if jax_rate else "-"
        spread = "-".join(
            f"{v:.0f}" for v in (r["images_per_second_all"][0], r["images_per_second_all"][-1])
        )
        print(
            f"{r['framework']:<18}{r['allocator']:<10}{r['version']:<12}{r['batch_size']:>6}"
            f"{r['first_step_seconds']:>14.2f}{r['images_per_second']:>10.1f}{ratio:>12}  {spread}"
        )
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump({"summary": results, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
