"""Prediction speed on photo files: load_classifier().predict, run_eval.py --predict and the
exported ONNX model under onnxruntime, on the same photos.

  python bench/bench_predict.py --workdirs=runs/start --count=10000 --output=bench/predict.json

The page cache is dropped before each timed pass when the machine allows it (root on Linux), so
every pass reads the JPEGs from disk ("cold"); the JSON says whether it could. ONNX is timed
end to end (decoding the photos with the same preprocessing, then inference) and for inference
alone; photos are decoded on one thread per CPU, as load_classifier does. The model is exported to a temporary folder first (pip install -e ".[export]").
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

from fashion_jax import launch

if __name__ == "__main__":
    launch.maybe_reexec_with_fast_allocator()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from fashion_jax.data import locate  # noqa: E402
from fashion_jax.inference import classifier  # noqa: E402
from fashion_jax.inference import export  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", [], "Training workdirs (an ensemble when several).")
flags.DEFINE_integer("count", 10000, "Photos to predict (the first by file name).")
flags.DEFINE_integer("batch_size", 256, "Inference batch.")
flags.DEFINE_string("data_dir", "", "Dataset folder (default: found as run_eval.py finds it).")
flags.DEFINE_string("output", "", "Optional JSON file for the results.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def timed(function):
    cold = drop_page_cache()
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, cold, result


def main(argv):
    del argv
    data_dir = locate.find_dataset(FLAGS.data_dir, "--data_dir")
    names = sorted(os.listdir(os.path.join(data_dir, "images")))[: FLAGS.count]
    paths = [os.path.join(data_dir, "images", n) for n in names]
    clf = classifier.load_classifier(FLAGS.workdirs, batch_size=FLAGS.batch_size)
    clf.predict(paths[: FLAGS.batch_size])  # Compile once, as any long-running use would.
    results = {"photos": len(paths), "model": clf.description, "cpus": os.cpu_count()}

    seconds, cold, predictions = timed(lambda: clf.predict(paths))
    assert all(p.error is None for p in predictions)
    results["load_classifier_predict"] = {
        "seconds": seconds,
        "images_per_second": len(paths) / seconds,
        "cold": cold,
    }

    with tempfile.TemporaryDirectory() as folder:
        listing = os.path.join(folder, "photos.csv")
        with open(listing, "w") as f:
            f.write("path\n" + "\n".join(paths) + "\n")
        command = [
            sys.executable,
            os.path.join(REPO, "run_eval.py"),
            f"--workdirs={','.join(FLAGS.workdirs)}",
            f"--predict={listing}",
            f"--output={os.path.join(folder, 'out.csv')}",
            f"--config.batch_size={FLAGS.batch_size}",
            "--config.progress_bar=false",
        ]
        seconds, cold, _ = timed(lambda: subprocess.run(command, check=True, capture_output=True))
        results["run_eval_predict"] = {
            "seconds": seconds,
            "images_per_second": len(paths) / seconds,
            "cold": cold,
            "note": "whole command: start-up, compilation, CSV",
        }

        import onnxruntime

        export.export(clf, folder, formats=("onnx",))
        session = onnxruntime.InferenceSession(
            os.path.join(folder, export.ONNX_FILE), providers=["CPUExecutionProvider"]
        )
        height, width = clf.image_shape[:2]

        def decode():  # On as many threads as load_classifier's predict uses.
            def load(path):
                return classifier.as_model_input(path, height, width, clf.resize)

            with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
                return np.stack(list(pool.map(load, paths)))

        def infer(images):
            for start in range(0, len(images), FLAGS.batch_size):
                session.run(None, {export.INPUT_NAME: images[start : start + FLAGS.batch_size]})

        decode_seconds, cold, images = timed(decode)
        infer(images[: FLAGS.batch_size])  # Warm-up.
        infer_start = time.perf_counter()
        infer(images)
        infer_seconds = time.perf_counter() - infer_start
        results["onnxruntime"] = {
            "seconds": decode_seconds + infer_seconds,
            "images_per_second": len(paths) / (decode_seconds + infer_seconds),
            "inference_images_per_second": len(paths) / infer_seconds,
            "decode_seconds": decode_seconds,
            "cold": cold,
        }
    print(json.dumps(results, indent=1))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
