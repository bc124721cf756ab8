"""Time decoding every image once (cold, into an empty cache) and loading the cache (warm).

python bench/bench_image_cache.py                    # the dataset found as run_train.py finds it
python bench/bench_image_cache.py --data_dir=... --max_images=2000
"""

import os
import tempfile
import time

from absl import app
from absl import flags

from fashion_jax.data import image_cache
from fashion_jax.data import locate
from fashion_jax.data import styles

flags.DEFINE_string("data_dir", "", "Dataset folder; else found by fashion_jax/data/locate.py.")
flags.DEFINE_integer("max_images", 0, "Only the first N rows of styles.csv (0: all).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    data_dir = locate.find_dataset(FLAGS.data_dir, "--data_dir")
    ids = styles.read_styles(os.path.join(data_dir, "styles.csv")).rows["id"].tolist()
    ids = ids[: FLAGS.max_images] if FLAGS.max_images > 0 else ids
    with tempfile.TemporaryDirectory() as cache_dir:
        for label in ("cold decode", "warm cache load"):
            start = time.perf_counter()
            decoded = image_cache.decode_images(
                os.path.join(data_dir, "images"),
                ids,
                80,
                60,
                cache_dir=cache_dir,
                show_progress=False,
            )
            print(
                f"{label}: {len(decoded.ids)} images ({len(decoded.failed)} missing or failed) "
                f"in {time.perf_counter() - start:.1f} s, from cache: {decoded.from_cache}"
            )


if __name__ == "__main__":
    app.run(main)
