"""The native (C++ / XLA FFI) 3x3 convolution against XLA's convolution, values and gradients."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fashion_jax import models
from fashion_jax.conv import dispatch
from fashion_jax.conv import native_conv

# Skipped only where this machine cannot have the native convolution; where it can (x86-64 with
# AVX, a compiler), a build that fails fails every test that needs it, with the compiler's words.
ENVIRONMENT = native_conv.environment_reason()
REASON = native_conv.unavailable_reason()


@pytest.fixture
def native_built():
    if REASON:
        pytest.fail(
            "native_conv.cc did not build or load although this machine can have it "
            f"(a compiler and AVX are present): {REASON}"
        )


def needs_native(test):
    test = pytest.mark.usefixtures("native_built")(test)
    return pytest.mark.skipif(bool(ENVIRONMENT), reason=f"native convolution: {ENVIRONMENT}")(test)


def xla_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )


@needs_native
@pytest.mark.parametrize(
    "batch,height,width,cin,cout",
    [
        (2, 12, 10, 3, 32),  # The first layer's 3 channels; 2 x 16 output channels.
        (3, 15, 10, 20, 64),  # A partial channel tile in the kernel gradient; 64-channel tiles.
        (1, 9, 14, 16, 16),  # One 16-channel vector.
        (2, 7, 6, 32, 24),  # Output channels padded to 32 and cropped.
        (2, 3, 3, 5, 16),  # One output pixel: fewer pixels than a tile.
        (2, 4, 5, 8, 128),  # Tiny image, wide output.
    ],
)
def test_native_conv_and_its_gradients_equal_xla_conv(batch, height, width, cin, cout):
    keys = jax.random.split(jax.random.key(batch * height + cout), 3)
    x = jax.random.normal(keys[0], (batch, height, width, cin))
    kernel = jax.random.normal(keys[1], (3, 3, cin, cout)) * 0.2
    cotangent = jax.random.normal(keys[2], (batch, height - 2, width - 2, cout))

    def loss(conv):
        return lambda x, k: jnp.sum(conv(x, k) * cotangent)

    np.testing.assert_allclose(
        jax.jit(native_conv.conv3x3_valid)(x, kernel), xla_conv(x, kernel), rtol=1e-5, atol=1e-5
    )
    ours = jax.jit(jax.grad(loss(native_conv.conv3x3_valid), argnums=(0, 1)))(x, kernel)
    expected = jax.grad(loss(xla_conv), argnums=(0, 1))(x, kernel)
    for a, b in zip(ours, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@needs_native
@pytest.mark.parametrize("cin,cout", [(3, 32), (20, 24)])
def test_native_conv_with_bias_and_relu_and_their_gradients(cin, cout):
    keys = jax.random.split(jax.random.key(cout), 4)
    x = jax.random.normal(keys[0], (2, 9, 11, cin))
    kernel = jax.random.normal(keys[1], (3, 3, cin, cout)) * 0.2
    bias = jax.random.normal(keys[2], (cout,))
    cotangent = jax.random.normal(keys[3], (2, 7, 9, cout))

    def ours(x, k, b):
        return native_conv.conv3x3_valid(x, k, b, relu=True)

    def expected(x, k, b):
        return jax.nn.relu(xla_conv(x, k) + b)

    y = jax.jit(ours)(x, kernel, bias)
    assert 0.2 < float(jnp.mean(y == 0)) < 0.8  # The ReLU clips part of the outputs.
    np.testing.assert_allclose(y, expected(x, kernel, bias), rtol=1e-5, atol=1e-5)
    grads = [
        jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2))(x, kernel, bias)
        for f in (jax.jit(ours), expected)
    ]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@needs_native
def test_native_conv_is_deterministic_and_used_by_auto():
    x = jax.random.normal(jax.random.key(0), (8, 30, 20, 32))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) * 0.1
    grad = jax.jit(
        jax.grad(lambda x, k: jnp.sum(jnp.sin(native_conv.conv3x3_valid(x, k))), argnums=(0, 1))
    )
    first, second = grad(x, kernel), grad(x, kernel)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert dispatch.resolve_impl("auto", x, 1) == "native"
    np.testing.assert_array_equal(
        dispatch.conv3x3(x, kernel, impl="auto"), native_conv.conv3x3_valid(x, kernel)
    )


@needs_native
def test_seed_cnn_native_equals_xla_conv():
    x = jax.random.uniform(jax.random.key(0), (4, 80, 60, 3))
    variables = models.SeedCNN(num_classes=5, conv_impl="native").init(jax.random.key(1), x)

    def loss(impl):
        model = models.SeedCNN(num_classes=5, conv_impl=impl)
        return lambda p: jnp.sum(model.apply({**variables, "params": p}, x) ** 2)

    ours = jax.jit(jax.value_and_grad(loss("native")))(variables["params"])
    expected = jax.jit(jax.value_and_grad(loss("xla")))(variables["params"])
    np.testing.assert_allclose(ours[0], expected[0], rtol=1e-5)
    # Whole-network gradients are compared by norm: ReLU and max-pool switches make them jump
    # (here, scaling the input by 1 + 1e-6 moves XLA's own gradient by 0.7%); the layer-level
    # test above compares gradients element by element.
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(expected[1])):
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 0.03


def _probe(tmp_path, **env):
    """unavailable_reason() and auto's choice in a fresh process with `env` set."""
    code = (
        "import jax; from fashion_jax.conv import dispatch, native_conv; "
        "print(repr(native_conv.unavailable_reason())); "
        "print(dispatch.resolve_impl('auto', jax.ShapeDtypeStruct((1, 9, 9, 32), 'float32'),"
        " 1))"
    )
    env = {**os.environ, "FASHION_JAX_NATIVE_DIR": str(tmp_path / "native"), **env}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr
    reason, impl = result.stdout.strip().splitlines()[-2:]
    return reason, impl


def test_without_native_conv_auto_falls_back_to_winograd_with_a_reason(tmp_path):
    reason, impl = _probe(tmp_path, FASHION_JAX_NO_NATIVE_CONV="1")
    assert "FASHION_JAX_NO_NATIVE_CONV" in reason and impl == "winograd"
    # A compiler that fails: the reason names it and the source file.
    reason, impl = _probe(tmp_path, CXX="false")
    if "AVX-512" not in reason and "x86-64" not in reason:
        assert "false failed on" in reason and "native_conv.cc" in reason
    assert impl == "winograd"
    # A cache folder that cannot be created: the reason names it.
    reason, impl = _probe(tmp_path, FASHION_JAX_NATIVE_DIR="/proc/fashion_jax_native")
    if "AVX-512" not in reason and "x86-64" not in reason and "compiler" not in reason:
        assert "/proc/fashion_jax_native" in reason
    assert impl == "winograd"
    assert not list((tmp_path / "native").glob("*.so"))  # No partial library left behind.


@needs_native
def test_build_is_cached_per_source_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_JAX_NATIVE_DIR", str(tmp_path))
    compiler = native_conv._compiler()
    library = native_conv._build(compiler)
    assert os.path.dirname(library) == str(tmp_path) and os.path.exists(library)
    built_at = os.stat(library).st_mtime_ns
    assert native_conv._build(compiler) == library  # Reused, not rebuilt.
    assert os.stat(library).st_mtime_ns == built_at
    assert os.listdir(tmp_path) == [os.path.basename(library)]


AVX2_CHECK = """
import jax, jax.numpy as jnp, numpy as np
from fashion_jax.conv import native_conv
from fashion_jax.conv import dispatch
x = jax.random.normal(jax.random.key(0), (2, 11, 9, 12))
kernel = jax.random.normal(jax.random.key(1), (3, 3, 12, 40)) * 0.2
bias = jax.random.normal(jax.random.key(2), (40,))
def ours(x, k, b):
    return jnp.sum(jnp.tanh(native_conv.conv3x3_valid(x, k, b, relu=True)))
def expected(x, k, b):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", precision="highest",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(jax.nn.relu(y + b)))
a = jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(x, kernel, bias)
b = jax.grad(expected, argnums=(0, 1, 2))(x, kernel, bias)
print("lanes", native_conv.lanes(), "error", max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(a, b)))
"""


def test_avx2_build_matches_xla_conv(tmp_path):
    """The AVX2 + FMA variant (8-float vectors, 12 accumulators), for CPUs without AVX-512, built
    with -march=haswell on this machine."""
    if ENVIRONMENT or not {"avx2", "fma"} <= set(native_conv._cpu_identity().split()):
        pytest.skip(f"needs a CPU with AVX2 and FMA and a compiler ({ENVIRONMENT or 'no AVX2'})")
    assert not REASON, f"native_conv.cc did not build or load here: {REASON}"
    env = {
        **os.environ,
        "FASHION_JAX_NATIVE_DIR": str(tmp_path),
        "FASHION_JAX_NATIVE_MARCH": "haswell",
    }
    result = subprocess.run(
        [sys.executable, "-c", AVX2_CHECK],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    words = result.stdout.split()
    assert words[:2] == ["lanes", "8"]  # 40 output channels: 5 vectors, tiles of 1 vector.
    assert float(words[3]) < 1e-4


@needs_native
def test_it_builds_where_this_machine_can(native_built):
    assert native_conv.available()


def test_a_failed_build_fails_the_tests_instead_of_skipping_them(tmp_path):
    """The check above, with a compiler that fails (CXX=false) and no cached library: pytest
    exits non-zero and prints why."""
    cpu = native_conv.environment_reason(compiler_needed=False)
    if cpu:
        pytest.skip(f"this machine cannot have the native convolution: {cpu}")
    env = {**os.environ, "CXX": "false", "FASHION_JAX_NATIVE_DIR": str(tmp_path / "native")}
    env.pop("FASHION_JAX_NO_NATIVE_CONV", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_it_builds_where_this_machine_can",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        timeout=600,
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert "native_conv.cc did not build or load" in result.stdout
    assert "false failed on" in result.stdout
