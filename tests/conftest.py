"""Shared fixtures: tiny synthetic datasets in the Kaggle layout, and the real data's location."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "fashion-product-images-small"
HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
# One colour per class so a small network can learn the task in a few steps.
CLASS_COLOURS = {"Accessories": (200, 40, 40), "Apparel": (40, 200, 40),
                 "Footwear": (40, 40, 200), "Personal Care": (200, 200, 40),
                 "Sporting Goods": (40, 200, 200), "Home": (40, 200, 200)}


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
                root / "images" / f"{style_id}.jpg", quality=90)
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root


def write_multi_head_dataset(root):
    """write_synthetic_dataset with varied columns for several heads: gender (every tenth row
    missing), subCategory (one per masterCategory, one rare value) and articleType (two per
    subCategory)."""
    root = write_synthetic_dataset(root, rows_per_class=20)
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


def tiny_config(data_dir, **overrides):
    """configs/tiny.py pointed at `data_dir`, with fields overridden by dotted names."""
    from configs import tiny
    config = tiny.get_config()
    config.data.data_dir = str(data_dir)
    config.data.max_rows = 0
    config.progress_bar = False
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "styles.csv").exists(),
    reason=f"the real dataset is not at {SHARED_DATA} (../shared/data beside the repository)")


def launch_run_train(workdir, data_dir, cache_dir, *extra, env=None):
    """Starts run_train.py with configs/tiny.py on `data_dir`; returns the Popen."""
    command = [sys.executable, str(REPO_ROOT / "run_train.py"), "--config=configs/tiny.py",
               f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
               "--config.data.max_rows=0", "--config.progress_bar=false", *extra]
    env = dict(os.environ, FASHION_CACHE_DIR=str(cache_dir), JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def final_params(workdir):
    """(latest step, state tree as numpy) of a workdir's checkpoints, read-only."""
    import jax
    from fashion_jax import checkpointing
    manager = checkpointing.create_manager(str(workdir), read_only=True)
    step = manager.latest_step()
    return step, jax.device_get(checkpointing.restore_state_on_this_host(manager, step))
