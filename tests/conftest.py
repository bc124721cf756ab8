"""Shared fixtures: tiny synthetic datasets in the Kaggle layout, and the real data's location."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
# One colour per class so a small network can learn the task in a few steps.
CLASS_COLOURS = {
    "Accessories": (200, 40, 40),
    "Apparel": (40, 200, 40),
    "Footwear": (40, 40, 200),
    "Personal Care": (200, 200, 40),
    "Sporting Goods": (40, 200, 200),
    "Home": (40, 200, 200),
}


def write_synthetic_dataset(root, rows_per_class=24, seed=0, classes=None):
    """styles.csv + images/<id>.jpg with class-coloured noisy images; returns the folder."""
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines, style_id = [HEADER], 1000
    for name in classes or ["Accessories", "Apparel", "Footwear", "Personal Care"]:
        colour = np.array(CLASS_COLOURS[name], np.float32)
        for _ in range(rows_per_class):
            style_id += 1
            lines.append(f"{style_id},Men,{name},Sub,Type,Blue,Summer,2012,Casual,Item {style_id}")
            pixels = colour + rng.normal(0, 30, (80, 60, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                root / "images" / f"{style_id}.jpg", quality=90
            )
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root


def write_multi_head_dataset(root, rows_per_class=20, classes=None):
    """write_synthetic_dataset with varied columns for several heads: gender (every tenth row
    missing), subCategory (one per masterCategory, one rare value) and articleType (two per
    subCategory)."""
    root = write_synthetic_dataset(root, rows_per_class=rows_per_class, classes=classes)
    lines = (root / "styles.csv").read_text().splitlines()
    out = [lines[0]]
    for n, line in enumerate(lines[1:]):
        fields = line.split(",")
        fields[1] = "" if n % 10 == 3 else ("Men" if n % 2 else "Women")
        fields[3] = "Rare" if n == 5 else f"{fields[2]}Sub"
        fields[4] = f"{fields[2]}Type{n % 2}"
        out.append(",".join(fields))
    (root / "styles.csv").write_text("\n".join(out) + "\n")
    return root


@pytest.fixture
def synthetic_data(tmp_path):
    return write_synthetic_dataset(tmp_path / "data")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("FASHION_CACHE_DIR", str(path))
    return path


def load_script(relative_path: str):
    """A script of the checkout (e.g. "bench/speedrun.py") imported as a module by its path."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def override(config, **dotted):
    """`config` with fields given by dotted names (data__x is not needed: pass **{"data.x": v})."""
    for name, value in dotted.items():
        node = config
        *parents, leaf = name.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


# The tests' own small run: configs/default.py with a narrow model and small batches (not
# configs/tiny.py, the users' smoke run, so that it can change without changing the tests).
TEST_RUN = {
    "model.filters": (8, 8, 8),
    "model.dense_units": 32,
    "batch_size": 16,
    "eval_batch_size": 64,
    "num_epochs": 2,
    "checkpoint.every_steps": 5,
    "log_every_steps": 5,
    "data.max_rows": 0,
    "progress_bar": False,
}


def tiny_config(data_dir, **overrides):
    """The tests' small run (TEST_RUN) on `data_dir`, with fields overridden by dotted names."""
    from configs import default

    config = override(default.get_config(), **TEST_RUN)
    config.data.data_dir = str(data_dir)
    return override(config, **overrides)


def eval_config(**overrides):
    """run_eval.py's default configuration without progress bars, with dotted overrides."""
    from fashion_jax.evaluation import default_config

    return override(default_config.get_config(), progress_bar=False, **overrides)


def _real_data():
    from fashion_jax.data import locate

    found = locate.find_local_dataset()
    return pathlib.Path(found) if found else None


# The real dataset, found by the scripts' own rule without a download ($FASHION_DATA_DIR, data/
# in the checkout, ../shared/data beside it, kagglehub's cache); None where it is nowhere.
REAL_DATA = _real_data()
requires_real_data = pytest.mark.skipif(
    REAL_DATA is None,
    reason="the real dataset is not found: set $FASHION_DATA_DIR, or unzip it into "
    "data/fashion-product-images-small/ in the checkout (README, Quickstart)",
)


def json_from_cpu_devices(code: str, devices: int):
    """Runs Python `code` in a fresh process with `devices` CPU devices (their number is fixed at
    JAX's start); returns the JSON its last stdout line prints."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def launch_run_train(workdir, data_dir, cache_dir, *extra, env=None):
    """Starts run_train.py with the tests' small run (TEST_RUN) on `data_dir`; returns the Popen."""
    command = [
        sys.executable,
        str(REPO_ROOT / "run_train.py"),
        "--config=configs/default.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *[f"--config.{k}={v}".replace(" ", "") for k, v in TEST_RUN.items()],
        *extra,
    ]
    env = dict(os.environ, FASHION_CACHE_DIR=str(cache_dir), JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def final_params(workdir):
    """(latest step, state tree as numpy) of a workdir's checkpoints, read-only."""
    import jax

    from fashion_jax.training import checkpointing

    manager = checkpointing.create_manager(str(workdir), read_only=True)
    step = manager.latest_step()
    return step, jax.device_get(checkpointing.restore_state_on_this_host(manager, step))


def make_state(seed=0, optimizer="adam", learning_rate=1e-3):
    config = tiny_config(
        "unused",
        seed=seed,
        **{"optimizer.name": optimizer, "optimizer.learning_rate": learning_rate},
    )
    from fashion_jax import models
    from fashion_jax.training import optim
    from fashion_jax.training import state as state_lib

    model = models.create_model(config.model, 4)
    lr_fn = optim.create_learning_rate_fn(config.optimizer)
    return state_lib.create_train_state(config, model, lr_fn, (80, 60, 3))


def synthetic_batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = (labels[:, None, None, None] * 60 + rng.integers(0, 30, (n, 80, 60, 3))).astype(
        np.uint8
    )
    return {"image": images, "label": labels}


def assert_same_run(reference, other, val_images):
    """The same steps and images; loss and accuracy equal up to reduction order."""
    import json

    a = json.loads((reference / "summary.json").read_text())
    b = json.loads((other / "summary.json").read_text())
    assert a["final_step"] == b["final_step"] > 0
    # Val need not divide by the eval batch: padding is masked, each image counted once.
    assert a["val_images"] == b["val_images"] == val_images
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.02)
    assert abs(b["val_accuracy"] - a["val_accuracy"]) <= 2 / val_images  # At most 2 images.
    history_a = [
        json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()
    ]
    history_b = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(history_a, history_b, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=0.02)
