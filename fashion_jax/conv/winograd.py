"""3x3 convolution, stride 1, by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016).

Each 4x4 input tile (stride 2) becomes 16 transformed values, each transformed 3x3 kernel 16
values; the convolution is then 16 independent [tiles, Cin] x [Cin, Cout] matrix products, and
each product's 4x4 result folds back into a 2x2 output tile. Against im2col this writes 4 copies of
the input instead of 9 and does 2.25x fewer multiplications; on these CPUs each of the seed CNN's
3x3 layers with 16 or more input channels trains 4-21% faster, the whole step 11% (README.md,
Speed). With 3 input channels (the first layer) the transforms cost more than they save, so
models.conv3x3 keeps im2col there. Results equal a direct convolution to float32 rounding
(tests/test_models.py).

The transforms are sums of strided slices with constant coefficients, so JAX differentiates them
like any other linear map; no custom gradient is needed.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Input, kernel and output transforms of F(2, 3): Y = A^T [(G g G^T) * (B^T d B)] A.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
TILE, STEP = 4, 2  # Input tile size and stride (= output tile size).


def _combine(matrix: np.ndarray, parts: list) -> list:
    """[sum_j matrix[i, j] * parts[j] for each row i], skipping zeros (no multiply by +-1)."""
    rows = []
    for coefficients in matrix:
        total = None
        for c, part in zip(coefficients, parts):
            if c == 0:
                continue
            term = part if c == 1 else -part if c == -1 else float(c) * part
            total = term if total is None else total + term
        rows.append(total)
    return rows


def conv3x3_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID 3x3 convolution of NHWC `x` [B, H, W, Cin] with an HWIO `kernel` [3, 3, Cin, Cout],
    stride 1: [B, H - 2, W - 2, Cout]. Odd output sizes are padded to whole tiles and cropped."""
    batch, height, width, channels = x.shape
    out_h, out_w = height - 2, width - 2
    tiles_h, tiles_w = -(-out_h // STEP), -(-out_w // STEP)
    x = jnp.pad(
        x, ((0, 0), (0, tiles_h * STEP + 2 - height), (0, tiles_w * STEP + 2 - width), (0, 0))
    )
    # Input transform B^T d B, separably over rows then columns: 16 x [B, th, tw, Cin].
    rows = _combine(B_T, [x[:, a : a + STEP * tiles_h : STEP] for a in range(TILE)])
    transformed = []
    for row in rows:
        transformed += _combine(
            B_T, [row[:, :, b : b + STEP * tiles_w : STEP] for b in range(TILE)]
        )
    v = jnp.stack(transformed).reshape(TILE * TILE, -1, channels)
    # Kernel transform G g G^T: [16, Cin, Cout].
    g = jnp.asarray(G, kernel.dtype)
    u = jnp.einsum("ia,abco,jb->ijco", g, kernel, g).reshape(TILE * TILE, channels, -1)
    m = jnp.einsum("tnc,tco->tno", v, u).reshape(TILE, TILE, batch, tiles_h, tiles_w, -1)
    # Output transform A^T m A: 2x2 outputs per tile, interleaved back into rows and columns.
    out_rows = _combine(A_T, [m[i] for i in range(TILE)])
    out = jnp.stack(
        [jnp.stack(_combine(A_T, [r[j] for j in range(TILE)]), axis=3) for r in out_rows], axis=2
    )  # [B, th, 2, tw, 2, Cout]
    out = out.reshape(batch, STEP * tiles_h, STEP * tiles_w, -1)
    return out[:, :out_h, :out_w]
