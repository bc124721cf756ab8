"""Time decoding every image once (cold, into an empty cache) and loading the cache (warm).

python bench/bench_image_cache.py [--data_dir=...]   # default $FASHION_DATA_DIR
"""

import os
import tempfile
import time

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from fashion_jax.data import image_cache  # noqa: E402
from fashion_jax.data import styles  # noqa: E402

flags.DEFINE_string("data_dir", "", "Dataset folder; else $FASHION_DATA_DIR.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    data_dir = styles.resolve_data_dir(FLAGS.data_dir)
    ids = styles.read_styles(os.path.join(data_dir, "styles.csv")).rows["id"].tolist()
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
