"""bench/bench_train_step.py's summary: the median of repeated measurements, and failures kept."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_train_step", os.path.join(ROOT, "bench", "bench_train_step.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
