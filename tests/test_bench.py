"""The benchmarks' own logic: bench_train_step's summary (the median of repeated measurements,
failures kept) and bench_soup_memory's measurement of a child process; and every script in
bench/ starting as its docstring says from another folder, so that none can rot."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest

from fashion_jax import launch
from tests.conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOUP_BENCH = os.path.join(ROOT, "bench", "bench_soup_memory.py")


def load_bench():
    return load_script("bench/bench_train_step.py")


def test_summary_takes_the_median_per_framework_and_batch_and_keeps_errors():
    bench = load_bench()
    runs = [
        {
            "framework": "jax",
            "version": "x",
            "batch_size": 32,
            "first_step_seconds": 3.0,
            "images_per_second": 300.0,
        },
        {"framework": "torch", "batch_size": 32, "error": "No module named 'torch'"},
        {
            "framework": "jax",
            "version": "x",
            "batch_size": 32,
            "first_step_seconds": 5.0,
            "images_per_second": 100.0,
        },
        {
            "framework": "jax",
            "version": "x",
            "batch_size": 32,
            "first_step_seconds": 4.0,
            "images_per_second": 350.0,
        },
        {
            "framework": "jax",
            "version": "x",
            "batch_size": 128,
            "first_step_seconds": 1.0,
            "images_per_second": 50.0,
        },
    ]
    rows = bench.summarise(runs)
    assert [(r["framework"], r["batch_size"]) for r in rows] == [
        ("jax", 32),
        ("torch", 32),
        ("jax", 128),
    ]
    assert rows[0]["images_per_second"] == 300.0  # Median, not mean (250) nor best (350).
    assert rows[0]["images_per_second_all"] == [100.0, 300.0, 350.0]
    assert rows[0]["first_step_seconds"] == 4.0
    assert rows[1]["error"] == "No module named 'torch'"
    assert rows[2]["images_per_second"] == 50.0


def run_measured_in_a_fresh_process(args: list[str], log_path: str) -> list | dict:
    """bench_soup_memory.run_measured's result, or {"error": message} where it stopped, called in
    its own interpreter: the benchmarks define flags of the same names, which one process cannot
    hold twice."""
    script = f"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("bench_soup_memory", {SOUP_BENCH!r})
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
try:
    print(json.dumps(bench.run_measured({args!r}, {log_path!r})))
except SystemExit as error:
    print(json.dumps({{"error": str(error)}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def test_soup_memory_bench_sees_a_child_s_anonymous_memory_and_reports_its_failure(tmp_path):
    # 300 MB written (so resident), held for half a second: long enough for 20 ms sampling.
    allocate = (
        "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
        "time.sleep(0.5)"
    )
    seconds, peak, peak_anonymous = run_measured_in_a_fresh_process(
        ["-c", allocate], str(tmp_path / "ok.log")
    )
    assert seconds >= 0.5
    assert 300 * 2**20 <= peak_anonymous <= peak
    log = str(tmp_path / "fail.log")
    failure = run_measured_in_a_fresh_process(["-c", "raise SystemExit(3)"], log)
    assert "exit code 3" in failure["error"] and log in failure["error"]


BENCH_SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "bench", "*.py")))


def run_script(script, *args, cwd, env=None):
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=os.path.basename)
def test_every_bench_script_shows_its_help_from_another_folder(script, tmp_path):
    result = run_script(script, "--help", cwd=tmp_path)
    with open(script) as f:
        first_line = f.readline().strip().strip('r"')
    assert first_line in result.stdout, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_the_train_step_bench_measures_jax_with_each_allocator_from_another_folder(tmp_path):
    """The speedrun recipe's step (its own optimizer) with each allocator."""
    output = tmp_path / "steps.json"
    result = run_script(
        os.path.join(ROOT, "bench", "bench_train_step.py"),
        "--frameworks=jax_speedrun",
        "--batch_sizes=2",
        "--seconds=0.2",
        "--warmup=0",
        "--allocators=mimalloc,system",
        f"--output={output}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["summary"]
    assert [r.get("error") for r in rows] == [None] * 2, rows
    assert all(r["images_per_second"] > 0 for r in rows)
    assert [r["framework"] for r in rows] == ["jax_speedrun", "jax_speedrun"]
    # What each worker actually ran with, read from its own memory map.
    expected = "mimalloc" if launch.mimalloc_path() and sys.platform == "linux" else "system"
    assert [r["allocator"] for r in rows] == [expected, "system"]
    assert "mimalloc" in result.stdout and "system" in result.stdout


def test_the_conv_layer_bench_runs_a_tiny_setting(tmp_path):
    result = run_script(
        os.path.join(ROOT, "bench", "bench_conv_layers.py"),
        "--impls=xla",
        "--batch_size=2",
        "--seconds=0.01",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "xla" in result.stdout


def test_the_image_cache_bench_runs_on_a_small_dataset(tmp_path):
    from tests.conftest import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", rows_per_class=5)
    result = run_script(
        os.path.join(ROOT, "bench", "bench_image_cache.py"),
        f"--data_dir={data}",
        "--max_images=12",
        cwd=tmp_path,
        env=dict(os.environ, FASHION_CACHE_DIR=str(tmp_path / "cache")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cold decode: 12 images (0 missing or failed)" in result.stdout
    assert "warm cache load: 12 images" in result.stdout and "from cache: True" in result.stdout


def test_the_device_check_s_tiny_setting_writes_its_tables_on_cpu(tmp_path):
    """bench/device_check.py --tiny (CI's CPU): every step row and the epoch measured, in the
    markdown and the JSON it writes."""
    from tests.conftest import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", rows_per_class=40)
    out = tmp_path / "out"
    result = run_script(
        os.path.join(ROOT, "bench", "device_check.py"),
        "--tiny",
        f"--out={out}",
        f"--data_dir={data}",
        cwd=tmp_path,
        env=dict(os.environ, FASHION_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((out / "device_check.json").read_text())
    assert table["tiny"] and table["device"]["backend"] == "cpu"
    models = ("seed_cnn (configs/adam.py)", "speed_net (configs/speedrun.py)")
    assert [(r["model"], r["dtype"], r["batch_size"]) for r in table["steps"]] == [
        (m, d, 4) for m in models for d in ("float32", "bfloat16")
    ]
    for row in table["steps"]:
        assert "error" not in row, row
        for key in ("images_per_second", "first_step_seconds"):
            assert math.isfinite(row[key]) and row[key] > 0, row
    epoch = table["epoch"]
    for key in (
        "train_seconds",
        "compile_seconds",
        "epoch_end_seconds",
        "epoch_seconds_without_compilation",
        "images_per_second",
    ):
        assert math.isfinite(epoch[key]) and epoch[key] > 0, epoch
    assert epoch["epoch_seconds_with_end"] > epoch["epoch_seconds_without_end"] > 0
    assert 0.0 <= epoch["val_accuracy"] <= 1.0
    assert epoch["train_images"] == 112  # 70% of 4 x 40 rows, at batch 16: 7 steps.
    markdown = (out / "device_check.md").read_text()
    assert "| speed_net (configs/speedrun.py) | bfloat16 | 4 |" in markdown
    assert "| epoch s with the epoch end (precise BN + validation) |" in markdown
    assert markdown in result.stdout
