r"""Peak memory of the soup evaluator against the number of ingredients K.

  python bench/bench_soup_memory.py --ingredients=2,4,8,16 --output=soup_memory.json

The ingredients are real fine-tunes of one shared start, as in configs/finetune.py, made small
enough to train in minutes: the start is configs/multi_head_resnet_sub.py (the soups' network:
11 MB of parameters and batch statistics, what an ingredient's restore reads) trained one epoch
(warm-up cut to 10 steps) on a stratified slice of `--max_rows` rows, and ingredient i is
configs/finetune.py:(i mod 6) with seed 100 + i, fine-tuned one epoch from it on the same slice.
Each K then runs `run_eval.py --config.evaluators=soup` on the first K ingredients (uniform and
greedy soups, their ensembles, every ingredient's row) in a fresh process, and its peak resident
memory is read from the kernel (wait4's ru_maxrss: the process and every child it waited for).
The evaluator holds at most two models' variables whatever K is, so the peak should not grow by
one model (11 MB) per ingredient; time grows with K, since every ingredient and greedy candidate
is predicted on the subset. ru_maxrss includes pages of the memory-mapped image cache and varies
between identical runs by more than one model, so the script also samples the process's anonymous
resident memory (what it allocates itself), and `--runs_per_k` measures each K several times and
reports every run and their median.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list("ingredients", ["2", "4", "8", "16"], "Numbers of ingredients K to measure.")
flags.DEFINE_integer("max_rows", 3000, "Rows of the stratified slice the start and fine-tunes use.")
flags.DEFINE_string("subsets", "val", "Subsets the soup evaluator predicts (--config.subsets).")
flags.DEFINE_string("head", "masterCategory", "Head the soups are reported for (--config.head).")
flags.DEFINE_integer("runs_per_k", 1, "Evaluations per K (fresh processes), to show the spread.")
flags.DEFINE_string("root", "", "Folder for the runs (default: a temporary folder, removed).")
flags.DEFINE_string("data_dir", "", "Dataset folder (default: found as run_train.py finds it).")
flags.DEFINE_string("output", "", "Optional JSON file for the results.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_SIZE = 6  # configs/finetune.py's ingredients.


def anonymous_rss(pid: int) -> int:
    """The child's resident anonymous memory in bytes (Linux); 0 once it has exited and is
    waiting to be reaped, when its status has no memory lines."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def run_measured(args: list[str], log_path: str) -> tuple[float, int, int]:
    """(seconds, peak RSS, peak anonymous RSS; bytes) of one command run from the repository root.

    ru_maxrss also counts pages of the memory-mapped image cache, which the kernel maps in or not
    depending on what the page cache holds, so it varies between identical runs; the anonymous
    part (arrays, parameters, compiled code) is what the evaluator itself allocates. It is sampled
    every 20 ms, so a spike shorter than that can be missed.
    """
    start = time.perf_counter()
    peak_anonymous = 0
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_anonymous = max(peak_anonymous, anonymous_rss(process.pid))
            time.sleep(0.02)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed with exit code {code}; see {log_path}.")
    return seconds, usage.ru_maxrss * 1024, peak_anonymous  # ru_maxrss is in kilobytes on Linux.


def data_flags() -> list[str]:
    flags_ = [f"--config.data.max_rows={FLAGS.max_rows}"]
    if FLAGS.data_dir:
        flags_.append(f"--config.data.data_dir={FLAGS.data_dir}")
    return flags_


def train_ingredients(root: str, count: int) -> list[str]:
    start = os.path.join(root, "start")
    if not os.path.exists(os.path.join(start, "summary.json")):
        seconds, _, _ = run_measured(
            [
                "run_train.py",
                "--config=configs/multi_head_resnet_sub.py",
                f"--workdir={start}",
                "--config.num_epochs=1",
                "--config.optimizer.warmup_steps=10",
                *data_flags(),
            ],
            os.path.join(root, "start.log"),
        )
        print(f"start: {seconds:.0f} s", flush=True)
    workdirs = []
    for i in range(count):
        workdir = os.path.join(root, f"finetune_{i}")
        if not os.path.exists(os.path.join(workdir, "summary.json")):
            seconds, _, _ = run_measured(
                [
                    "run_train.py",
                    f"--config=configs/finetune.py:{i % SWEEP_SIZE}",
                    f"--workdir={workdir}",
                    f"--config.init_checkpoint={start}",
                    f"--config.seed={100 + i}",
                    "--config.num_epochs=1",
                    "--config.early_stopping.patience=1",
                    "--config.checkpoint.keep_epochs=1",
                    # The slice's epoch is shorter than the configs' warm-ups.
                    "--config.optimizer.warmup_steps=10",
                    *data_flags(),
                ],
                os.path.join(root, f"finetune_{i}.log"),
            )
            print(f"finetune_{i}: {seconds:.0f} s", flush=True)
        workdirs.append(workdir)
    return workdirs


def measure_soup(root: str, workdirs: list[str]) -> tuple[float, int, int, list[dict]]:
    """(seconds, peak RSS, peak anonymous RSS, the report's rows) of one soup evaluation."""
    k = len(workdirs)
    output_dir = os.path.join(root, f"eval_{k}")
    shutil.rmtree(output_dir, ignore_errors=True)
    seconds, peak, peak_anonymous = run_measured(
        [
            "run_eval.py",
            f"--workdirs={','.join(workdirs)}",
            f"--output_dir={output_dir}",
            "--config.evaluators=soup",
            f"--config.subsets={FLAGS.subsets}",
            f"--config.head={FLAGS.head}",
            "--config.checkpoint=latest",
        ],
        os.path.join(root, f"eval_{k}.log"),
    )
    with open(os.path.join(output_dir, FLAGS.head, "report.json")) as f:
        rows = json.load(f)["results"]
    return seconds, peak, peak_anonymous, rows


def measure_repeated(root: str, workdirs: list[str], repeats: int) -> dict:
    seconds, peaks, anonymous_peaks = [], [], []
    for _ in range(repeats):
        run_seconds, peak, peak_anonymous, rows = measure_soup(root, workdirs)
        seconds.append(round(run_seconds, 1))
        peaks.append(round(peak / 2**20))
        anonymous_peaks.append(round(peak_anonymous / 2**20))
    greedy = next(row for row in rows if row["kind"] == "greedy soup")
    return {
        "ingredients": len(workdirs),
        "peak_rss_mib": statistics.median(peaks),
        "peak_rss_mib_runs": peaks,
        "peak_anonymous_mib": statistics.median(anonymous_peaks),
        "peak_anonymous_mib_runs": anonymous_peaks,
        "seconds": statistics.median(seconds),
        "seconds_runs": seconds,
        "greedy_kept": len(greedy["details"]["ingredients"]),
        "report_rows": [row["name"] for row in rows],
    }


def main(argv):
    del argv
    counts = sorted({int(k) for k in FLAGS.ingredients})
    if counts[0] < 2:
        raise app.UsageError("--ingredients: a soup needs at least 2 ingredients.")
    if FLAGS.runs_per_k < 1:
        raise app.UsageError("--runs_per_k: at least 1.")
    root = FLAGS.root or tempfile.mkdtemp(prefix="soup_memory_")
    os.makedirs(root, exist_ok=True)
    try:
        workdirs = train_ingredients(root, counts[-1])
        results = []
        for k in counts:
            results.append(measure_repeated(root, workdirs[:k], FLAGS.runs_per_k))
            print(
                f"K = {k}: peak RSS {results[-1]['peak_rss_mib_runs']} MiB, "
                f"anonymous {results[-1]['peak_anonymous_mib_runs']} MiB, "
                f"{results[-1]['seconds_runs']} s",
                flush=True,
            )
    finally:
        if not FLAGS.root:
            shutil.rmtree(root, ignore_errors=True)
    summary = {
        "max_rows": FLAGS.max_rows,
        "subsets": FLAGS.subsets,
        "head": FLAGS.head,
        "runs_per_k": FLAGS.runs_per_k,
        "results": results,
    }
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    app.run(main)
