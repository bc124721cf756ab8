"""The benchmarks' own logic: bench_train_step's summary (the median of repeated measurements,
failures kept) and bench_soup_memory's measurement of a child process."""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOUP_BENCH = os.path.join(ROOT, "bench", "bench_soup_memory.py")


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
