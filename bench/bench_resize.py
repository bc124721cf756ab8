"""Photos as they come: accuracy on control photos made square or large, resized by "stretch" or
"pad" (keep the aspect ratio, pad with the border colour).

  python bench/bench_resize.py --workdirs=runs/start --output=bench/resize.json

From every control photo of the saved split it makes three variants in a temporary folder: the
original (60x80), "square" (padded to a square with its border colour, then upscaled to 224x224:
a marketplace thumbnail) and "large" (upscaled to 600x800, the Kaggle large version's aspect);
it predicts each with both resize modes and reports accuracy per head with a Wilson interval,
and McNemar's exact test of pad against stretch on the same photos.
"""

import json
import os
import tempfile

from fashion_jax import launch

if __name__ == "__main__":
    launch.maybe_reexec_with_fast_allocator()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fashion_jax import saved_runs  # noqa: E402
from fashion_jax.data import locate  # noqa: E402
from fashion_jax.evaluation import statistics  # noqa: E402
from fashion_jax.inference import classifier  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", [], "Training workdirs (an ensemble when several).")
flags.DEFINE_string("checkpoint", "best", "best, latest or a step.")
flags.DEFINE_string("subset", "control", "Subset of the saved split whose photos are used.")
flags.DEFINE_integer("limit", 0, "Use only the first N photos (0: all).")
flags.DEFINE_string("data_dir", "", "Dataset folder (default: found as run_eval.py finds it).")
flags.DEFINE_string("output", "", "Optional JSON file for the results.")


def border_colour(image: Image.Image) -> tuple:
    pixels = np.asarray(image.convert("RGB"))
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(c) for c in np.median(border, axis=0))


def make_variants(paths: list, folder: str) -> dict:
    """{variant: [paths]} of the original, square 224x224 and large 600x800 photos."""
    variants = {"original": list(paths), "square_224": [], "large_600x800": []}
    for path in paths:
        name = os.path.basename(path)
        with Image.open(path) as image:
            image = image.convert("RGB")
            side = max(image.size)
            square = Image.new("RGB", (side, side), border_colour(image))
            square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            target = os.path.join(folder, "square_224", name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            square.resize((224, 224), Image.Resampling.BICUBIC).save(target, quality=95)
            variants["square_224"].append(target)
            target = os.path.join(folder, "large_600x800", name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            image.resize((600, 800), Image.Resampling.BICUBIC).save(target, quality=95)
            variants["large_600x800"].append(target)
    return variants


def main(argv):
    del argv
    runs = [saved_runs.open_run(w) for w in FLAGS.workdirs]
    split = saved_runs.read_split(runs[0])
    rows = split[split["subset"] == FLAGS.subset]
    if FLAGS.limit:
        rows = rows.head(FLAGS.limit)
    data_dir = locate.find_dataset(
        FLAGS.data_dir, "--data_dir", recorded=runs[0].config.data.get("data_dir")
    )
    paths = [os.path.join(data_dir, "images", f"{i}.jpg") for i in rows["id"]]
    heads = list(runs[0].heads) if runs[0].heads else [runs[0].config.data.label_column]
    truth = {h: rows[h if runs[0].heads else "label"].to_numpy() for h in heads}
    results = {"workdirs": FLAGS.workdirs, "subset": FLAGS.subset, "photos": len(rows)}
    with tempfile.TemporaryDirectory() as folder:
        variants = make_variants(paths, folder)
        correct = {}
        for resize in ("stretch", "pad"):
            clf = classifier.load_classifier(
                FLAGS.workdirs, checkpoint=FLAGS.checkpoint, resize=resize, data_dir=data_dir
            )
            for variant, variant_paths in variants.items():
                predictions = clf.predict(variant_paths)
                for head in heads:
                    labelled = truth[head] != ""
                    got = np.array([p.heads[head].label for p in predictions])
                    hits = (got == truth[head])[labelled]
                    correct[variant, resize, head] = hits
                    low, high = statistics.wilson_interval(int(hits.sum()), len(hits))
                    results.setdefault(variant, {}).setdefault(head, {})[resize] = {
                        "accuracy": float(hits.mean()),
                        "interval": [low, high],
                        "photos": int(len(hits)),
                    }
        for variant in variants:
            for head in heads:
                test = statistics.mcnemar_exact(
                    correct[variant, "pad", head], correct[variant, "stretch", head]
                )
                results[variant][head]["pad_vs_stretch"] = test
    print(json.dumps(results, indent=1))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
