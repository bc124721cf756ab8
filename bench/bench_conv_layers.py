"""Per-layer timing of the seed CNN's six 3x3 convolutions: forward, input and kernel gradient.

  python bench/bench_conv_layers.py                        # native, winograd, im2col, xla
  python bench/bench_conv_layers.py --impls=native --batch_size=32

Each (layer, formulation) is timed on random float32 data after compilation: the forward pass
alone, and forward + both gradients (jax.grad of sum(tanh(conv) * weights), so the forward values
are needed); the first layer's input gradient is not needed in training and not taken. GFLOP/s
counts 2 x multiply-adds of the direct convolution per pass (x3 with both gradients, x2 for the
first layer), whatever the formulation does.
"""

import time

from fashion_jax import launch  # noqa: E402

if __name__ == "__main__":
    launch.maybe_reexec_with_fast_allocator()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fashion_jax.conv import dispatch

FLAGS = flags.FLAGS
flags.DEFINE_list("impls", ["native", "winograd", "im2col", "xla"], "Formulations to time.")
flags.DEFINE_integer("batch_size", 32, "Images per batch.")
flags.DEFINE_float("seconds", 2.0, "Minimum timed seconds per measurement.")

# (input height, width, channels, output channels) of the seed CNN's convolutions on 80x60.
LAYERS = (
    (80, 60, 3, 32),
    (78, 58, 32, 32),
    (38, 28, 32, 64),
    (36, 26, 64, 64),
    (17, 12, 64, 128),
    (15, 10, 128, 128),
)


def milliseconds(fn, *args):
    jax.block_until_ready(fn(*args))
    runs, start = 0, time.perf_counter()
    while True:
        out = fn(*args)
        runs += 1
        if runs % 5 == 0:
            jax.block_until_ready(out)
            elapsed = time.perf_counter() - start
            if elapsed >= FLAGS.seconds:
                return elapsed / runs * 1e3


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    print(
        f"{'layer':<22}{'impl':<10}{'forward ms':>12}{'GFLOP/s':>9}{'fwd+bwd ms':>12}{'GFLOP/s':>9}"
    )
    totals = {}
    for height, width, cin, cout in LAYERS:
        x = jnp.asarray(rng.standard_normal((FLAGS.batch_size, height, width, cin), np.float32))
        kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.1)
        weights = jnp.asarray(
            rng.standard_normal((FLAGS.batch_size, height - 2, width - 2, cout), np.float32)
        )
        gflop = 2 * FLAGS.batch_size * (height - 2) * (width - 2) * 9 * cin * cout / 1e9
        argnums = (1,) if cin == 3 else (0, 1)
        for impl in FLAGS.impls:
            forward = jax.jit(lambda x, k, impl=impl: dispatch.conv3x3(x, k, impl=impl))
            grads = jax.jit(
                jax.grad(
                    lambda x, k, impl=impl, weights=weights: jnp.sum(
                        jnp.tanh(dispatch.conv3x3(x, k, impl=impl)) * weights
                    ),
                    argnums,
                )
            )
            fwd, both = milliseconds(forward, x, kernel), milliseconds(grads, x, kernel)
            totals[impl] = totals.get(impl, 0.0) + both
            print(
                f"{f'{height}x{width}x{cin}->{cout}':<22}{impl:<10}{fwd:>12.2f}{gflop / fwd * 1e3:>9.0f}"
                f"{both:>12.2f}{(1 + len(argnums)) * gflop / both * 1e3:>9.0f}"
            )
    print(
        "forward + backward, all six layers: "
        + ", ".join(f"{impl} {ms:.1f} ms" for impl, ms in totals.items())
    )


if __name__ == "__main__":
    app.run(main)
