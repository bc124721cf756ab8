"""Data parallelism: 8 CPU devices and two processes (gloo) compute what one device computes.

What must be equal is compared tightly: one training step's gradients and updated parameters on
a mesh of 8 devices against a mesh of one. A whole run is compared loosely, by its loss and
accuracy: after thousands of floating-point reductions in another order (8 partial sums instead
of one; 8-float AVX2 or 16-float AVX-512 vectors), two epochs amplify last-bit differences in
individual parameters, so parameters after a run are not the thing to compare.
"""

import json
import os
import socket
import time

import pandas as pd
import pytest

from tests.conftest import assert_same_run
from tests.conftest import json_from_cpu_devices
from tests.conftest import launch_run_train
from tests.conftest import write_synthetic_dataset

# Augmentation on: its random flips and shifts must not depend on how the batch is sharded.
# One convolution for every device count: "auto" picks the native kernel only on one CPU device.
FLAGS = (
    "--config.num_epochs=2",
    "--config.batch_size=16",
    "--config.eval_batch_size=8",
    "--config.early_stopping.restore_best=false",
    "--config.augment.flip=true",
    "--config.augment.max_shift=2",
    "--config.model.conv_impl=im2col",
)

ONE_STEP = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from fashion_jax import models
from fashion_jax.data import augment
from fashion_jax.training import optim, state as state_lib, steps
from tests.conftest import tiny_config

config = tiny_config("", **{"model.conv_impl": "im2col", "augment.flip": True,
                            "augment.max_shift": 2})
model = models.create_model(config.model, 4)
rng = np.random.default_rng(0)
batch = {"image": rng.integers(0, 256, (16, 80, 60, 3), dtype=np.uint8),
         "label": rng.integers(0, 4, 16).astype(np.int32)}
results = {}
for devices in (1, 8):
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:devices])
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state = state_lib.create_train_state(config, model, optim.create_learning_rate_fn(
        config.optimizer), (80, 60, 3), replicated)
    spec = augment.from_config(config.augment)

    def grads(state, batch):
        def loss(params):
            logits = model.apply({"params": params, "batch_stats": state.batch_stats},
                                 models.scale_images(batch["image"]), train=True,
                                 rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])[0]
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), batch["label"]])
        return jax.grad(loss)(state.params)

    device_batch = jax.device_put(batch, sharded)
    g = jax.jit(grads, out_shardings=replicated)(state, device_batch)
    new, _ = jax.jit(lambda s, b: steps.train_step(s, b, jax.random.key(1), augment=spec),
                     out_shardings=(replicated, replicated))(state, device_batch)
    results[devices] = (jax.device_get(g), jax.device_get(new.params))

def worst(a, b):
    return max(float(np.max(np.abs(x - y) / (np.abs(y) + 1e-6))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))
def largest(tree):
    return max(float(np.max(np.abs(x))) for x in jax.tree.leaves(tree))
print(json.dumps({
    "gradient_relative": worst(results[8][0], results[1][0]),
    "gradient_absolute": max(float(np.max(np.abs(x - y))) for x, y in
                             zip(jax.tree.leaves(results[8][0]), jax.tree.leaves(results[1][0]))),
    "gradient_scale": largest(results[1][0]),
    "params_absolute": max(float(np.max(np.abs(x - y))) for x, y in
                           zip(jax.tree.leaves(results[8][1]), jax.tree.leaves(results[1][1]))),
}))
"""


def test_one_step_on_eight_devices_matches_one_device():
    numbers = json_from_cpu_devices(ONE_STEP, devices=8)
    # Gradients: the same sums in another order (float32): ~1e-7 of the largest gradient.
    assert numbers["gradient_absolute"] <= 1e-5 * numbers["gradient_scale"], numbers
    # One Adam step moves each parameter by about the learning rate (1e-3): the updated
    # parameters agree to a small fraction of that.
    assert numbers["params_absolute"] <= 1e-6, numbers


@pytest.fixture(scope="module")
def data_and_reference(tmp_path_factory):
    """A synthetic dataset and a one-device, one-process reference run on it."""
    root = tmp_path_factory.mktemp("parallel")
    data_dir = write_synthetic_dataset(root / "data", rows_per_class=30)
    reference = root / "one_device"
    process = launch_run_train(
        reference, data_dir, root / "cache", *FLAGS, env={"JAX_NUM_CPU_DEVICES": "1"}
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return root, data_dir, reference


def test_eight_devices_match_one(data_and_reference):
    root, data_dir, reference = data_and_reference
    workdir = root / "eight_devices"
    process = launch_run_train(
        workdir, data_dir, root / "cache", *FLAGS, env={"JAX_NUM_CPU_DEVICES": "8"}
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert json.loads((workdir / "summary.json").read_text())["devices"] == 8
    val_images = (pd.read_csv(reference / "split.csv").subset == "val").sum()
    assert val_images % 8 != 0
    assert_same_run(reference, workdir, val_images)


def test_batch_size_must_divide_by_devices(data_and_reference, tmp_path):
    root, data_dir, _ = data_and_reference
    process = launch_run_train(
        tmp_path / "run",
        data_dir,
        root / "cache",
        "--config.batch_size=12",
        env={"JAX_NUM_CPU_DEVICES": "8"},
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "--config.batch_size=12 must divide by the number of devices (8)" in output


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_job_id():
    """A job id whose coordinator port, as JAX 0.10's SlurmCluster derives it (id % 4096 +
    61440), is free here."""
    for job_id in range(4242, 4242 + 4096):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", job_id % 4096 + 61440))
                return job_id
            except OSError:
                continue
    raise RuntimeError("no free port in 61440-65535 for the SLURM coordinator")


def slurm_task_environment(job_id: int, task: int, tasks: int = 2) -> dict:
    """What `srun --nodes=1 --ntasks=<tasks>` sets for each task (JAX reads SLURM_JOB_ID,
    SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID)."""
    return {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_NNODES": "1",
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": str(tasks),
        "SLURM_NTASKS_PER_NODE": str(tasks),
        "SLURM_STEP_NUM_TASKS": str(tasks),
        "SLURM_PROCID": str(task),
        "SLURM_LOCALID": str(task),
        "SLURM_STEP_ID": "0",
    }


def launch_two_processes(root, workdir, data_dir, *extra, slurm=False):
    """Two run_train.py processes: given the coordinator, process count and index by flags, or
    (`slurm`) only --distributed and the environment SLURM gives each task."""
    address, job_id = f"127.0.0.1:{free_port()}", slurm_job_id() if slurm else None
    by_flags = ["--coordinator_address={address}", "--num_processes=2", "--process_id={i}"]
    return [
        launch_run_train(
            workdir,
            data_dir,
            root / "cache",
            *FLAGS,
            "--config.checkpoint.every_steps=2",
            *extra,
            *(["--distributed"] if slurm else [f.format(address=address, i=i) for f in by_flags]),
            env={
                "JAX_NUM_CPU_DEVICES": "1",
                **(slurm_task_environment(job_id, i) if slurm else {}),
            },
        )
        for i in range(2)
    ]


def test_two_processes_match_one_also_after_one_of_them_died(data_and_reference):
    """Process 1 killed (SIGKILL) after the first checkpoint: process 0 stops within seconds
    with one line saying to start both again (it used to print a gloo traceback and abort a
    minute later); started again, as SLURM tasks (`srun ... run_train.py --distributed`) and
    with the training images on the devices (each process uploads its rows of each epoch, in
    chunks of 4 steps), both resume and end as one process does on host data, each having held
    only its share of the images."""
    root, data_dir, reference = data_and_reference
    workdir = root / "two_processes"
    # A process that waits at a checkpoint's barrier (not in a collective) when the other dies
    # learns of it from the coordination service's heartbeat: bounded here to 10 s.
    processes = launch_two_processes(root, workdir, data_dir, "--heartbeat_timeout_seconds=10")
    checkpoints, deadline = workdir / "checkpoints", time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if checkpoints.is_dir() and any(n.isdigit() for n in os.listdir(checkpoints)):
            break
        time.sleep(0.02)
    assert all(p.poll() is None for p in processes), "a process ended before the kill"
    processes[1].kill()
    killed = time.time()
    output, _ = processes[0].communicate(timeout=300)
    seconds = time.time() - killed
    processes[1].communicate(timeout=60)
    assert processes[0].returncode == 1, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("run_train.py: Process 0 of 2 lost contact with the others"), last
    assert "Start all 2 processes again with the same command; they resume" in last
    assert seconds < 60, f"{seconds:.0f} s from the kill to process 0's exit:\n{output[-3000:]}"
    print(f"process 0 stopped {seconds:.1f} s after process 1 was killed")

    on_device = ("--config.data_on_device=true", "--config.steps_per_dispatch=4")
    processes = launch_two_processes(root, workdir, data_dir, *on_device, slurm=True)
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output
    assert "Resumed from checkpoint" in outputs[0]
    for i, output in enumerate(outputs):  # parallel.initialize_distributed's line.
        assert f"Process {i} of 2; 1 local and 2 global devices." in output, output
        assert "training data on device: True; steps per dispatch: 4." in output
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["devices"] == 2
    split = pd.read_csv(reference / "split.csv")
    val_images = (split.subset == "val").sum()
    assert_same_run(reference, workdir, val_images)
    assert_each_process_held_its_share(workdir, split, batch_size=16, eval_batch_size=8)


def assert_each_process_held_its_share(workdir, split, batch_size, eval_batch_size):
    """Train: each held about half of the last epoch's images (the last, partial batch is filled
    from the epoch's first images), and together all of them. Val: each read exactly its rows of
    every eval batch, no more."""
    train = set(split.id[split.subset == "train"])
    val = split.id[split.subset == "val"].sort_values().to_numpy()
    records = [
        json.loads((workdir / "host_rows" / f"process_{i}.json").read_text()) for i in (0, 1)
    ]
    for i, record in enumerate(records):
        assert record["process"] == i and record["processes"] == 2 and record["epoch"] == 2
        held = set(record["train_ids_held"])
        assert held <= train
        assert len(train) / 2 <= len(held) <= len(train) / 2 + batch_size / 2, (i, len(held))
        half = eval_batch_size // 2
        expected = [v for n, v in enumerate(val) if (n % eval_batch_size) // half == i]
        assert sorted(record["eval_ids_read"]) == expected, i
    assert set(records[0]["train_ids_held"]) | set(records[1]["train_ids_held"]) == train
