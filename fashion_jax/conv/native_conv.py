"""A direct 3x3 convolution for XLA:CPU, compiled from native_conv.cc on first use.

XLA:CPU has no fast convolution for this CNN: its own (Eigen), im2col and Winograd all spend most
of the step copying expanded inputs (README.md, Speed). native_conv.cc is a direct convolution
(AVX-512, or AVX2 + FMA) registered as XLA FFI custom calls: the forward pass; the input gradient
(the forward pass on the zero-padded output gradient with the kernel flipped and transposed,
padding one image at a time in cache); and the kernel gradient. `conv3x3_valid` ties them together
with a custom VJP; it can also add the bias and apply ReLU in the forward kernel, saving a pass
over the output.

Building: the C++ file is compiled once per machine type with the system C++ compiler (`$CXX`,
else c++ or g++; -O3 -march=native, or -march=$FASHION_JAX_NATIVE_MARCH) against the XLA FFI
headers that ship with jaxlib, into $FASHION_JAX_NATIVE_DIR (default ~/.cache/fashion_jax/native),
keyed by the source, flags, jaxlib version, compiler and CPU, so a shared home directory on a
mixed cluster is safe. `available()` says whether it could be built and loaded here (x86-64 with
AVX-512 or AVX2 + FMA, and a compiler); when not, models.conv3x3's "auto" keeps the pure-XLA
formulations and the reason is logged once.
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native_conv.cc")
FORWARD_TARGET = "fashion_jax_conv3x3_forward"
INPUT_GRAD_TARGET = "fashion_jax_conv3x3_input_grad"
KERNEL_GRAD_TARGET = "fashion_jax_conv3x3_kernel_grad"
_library_lanes = []  # Floats per vector of the loaded library (16 AVX-512, 8 AVX2), once loaded.


def _compiler():
    for name in (os.environ.get("CXX"), "c++", "g++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [
                ln for ln in f if ln.startswith(("model name", "flags", "cpu family", "model\t"))
            ]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build(compiler: str) -> str:
    """Path of the shared library, compiling it unless a matching one is cached."""
    import jaxlib  # For the version in the cache key.

    march = os.environ.get("FASHION_JAX_NATIVE_MARCH", "native")
    flags = [
        "-O3",
        f"-march={march}",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-w",
        "-I" + jax.ffi.include_dir(),
    ]
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(
        b"\0".join(
            [
                source,
                jaxlib.__version__.encode(),
                compiler.encode(),
                " ".join(flags).encode(),
                _cpu_identity().encode(),
            ]
        )
    ).hexdigest()[:16]
    cache_dir = os.environ.get("FASHION_JAX_NATIVE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "fashion_jax", "native"
    )
    library = os.path.join(cache_dir, f"native_conv_{key}.so")
    if os.path.exists(library):
        return library
    os.makedirs(cache_dir, exist_ok=True)
    # Compile to a temporary name and rename: concurrent processes never load a partial file.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *flags, SOURCE, "-o", partial], capture_output=True, text=True, timeout=600
        )
        if result.returncode:
            raise RuntimeError(f"{compiler} failed on {SOURCE}:\n{result.stderr[-2000:]}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    logging.info("Compiled %s into %s", SOURCE, library)
    return library


def environment_reason(compiler_needed: bool = True) -> str:
    """Why this machine cannot have the native convolution (turned off, not x86-64 with AVX-512
    or AVX2 + FMA, no C++ compiler), else "": then it should build and load, and a failure to
    is a bug (the tests fail on it rather than skip)."""
    if os.environ.get("FASHION_JAX_NO_NATIVE_CONV"):
        return "FASHION_JAX_NO_NATIVE_CONV is set"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs x86-64 with AVX-512 or AVX2, this is {platform.machine()}"
    cpu_flags = set(_cpu_identity().split())
    if "avx512f" not in cpu_flags and not {"avx2", "fma"} <= cpu_flags:
        return "this CPU has neither AVX-512 nor AVX2 with FMA"
    if compiler_needed and _compiler() is None:
        return "no C++ compiler found (set CXX, or install g++)"
    return ""


@functools.cache
def _load() -> str:
    """Builds, loads and registers the kernels; returns "" on success, else why not."""
    reason = environment_reason()
    if reason:
        return reason
    compiler = _compiler()
    try:
        path = _build(compiler)
        library = ctypes.cdll.LoadLibrary(path)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return str(e)  # Also an unwritable cache folder or a compiler that hangs.
    _library_lanes.append(library.Conv3x3Lanes())
    logging.info(
        "Native CPU convolution loaded from %s (%d-float vectors)", path, _library_lanes[0]
    )
    jax.ffi.register_ffi_target(
        FORWARD_TARGET, jax.ffi.pycapsule(library.Conv3x3Forward), platform="cpu"
    )
    jax.ffi.register_ffi_target(
        INPUT_GRAD_TARGET, jax.ffi.pycapsule(library.Conv3x3InputGrad), platform="cpu"
    )
    jax.ffi.register_ffi_target(
        KERNEL_GRAD_TARGET, jax.ffi.pycapsule(library.Conv3x3KernelGrad), platform="cpu"
    )
    return ""


def unavailable_reason() -> str:
    """ "" when the native convolution can be used on this machine, else the reason."""
    return _load()


@functools.cache
def available() -> bool:
    reason = _load()
    if reason:
        logging.warning(
            "Native CPU convolution unavailable (%s); using the XLA formulations.",
            reason.splitlines()[0],
        )
    return not reason


def lanes() -> int:
    """Floats per vector in the loaded kernels: output channels are padded to a multiple of it."""
    if not available():
        raise RuntimeError(f"native convolution unavailable: {unavailable_reason()}")
    return _library_lanes[0]


def _pad_channels(array):
    """Zero-pads the last axis to a multiple of the kernels' vector width; returns it and the
    original size, to crop results back."""
    channels = array.shape[-1]
    pad = -channels % lanes()
    if pad:
        array = jnp.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, pad)])
    return array, channels


def _call(target, shape, *operands, **attributes):
    if not available():
        raise RuntimeError(f"native convolution unavailable: {unavailable_reason()}")
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32))(
        *operands, **attributes
    )


def _forward(x, kernel, bias, relu):
    batch, height, width, _ = x.shape
    kernel, channels = _pad_channels(kernel)
    bias, _ = _pad_channels(bias)
    y = _call(
        FORWARD_TARGET,
        (batch, height - 2, width - 2, kernel.shape[-1]),
        x,
        kernel,
        bias,
        relu=np.int32(relu),
    )
    return y[..., :channels]


def conv3x3_valid(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, relu: bool = False
) -> jax.Array:
    """VALID 3x3 convolution, stride 1, of float32 NHWC `x` [B, H, W, Cin] with an HWIO `kernel`
    [3, 3, Cin, Cout], plus `bias` [Cout] and then ReLU when asked, both applied in registers
    before the output is stored: [B, H - 2, W - 2, Cout]. CPU only; check `available()` first."""
    if bias is None:
        bias = jnp.zeros(kernel.shape[-1:], jnp.float32)
    return _conv_bias_relu(x, kernel, bias, bool(relu))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_bias_relu(x, kernel, bias, relu):
    return _forward(x, kernel, bias, relu)


def _conv_forward(x, kernel, bias, relu):
    y = _forward(x, kernel, bias, relu)
    return y, (x, kernel, y if relu else None)


def _conv_backward(relu, residuals, dy):
    x, kernel, y = residuals
    if relu:
        dy = jnp.where(y > 0, dy, 0.0)  # jax.nn.relu's gradient: 0 at 0.
    batch, height, width, _ = x.shape
    # Input gradient: the "full" convolution of dy with the kernel flipped in space and with
    # input and output channels swapped.
    flipped, in_channels = _pad_channels(jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)))
    dx = _call(INPUT_GRAD_TARGET, (batch, height, width, flipped.shape[-1]), dy, flipped)
    dbias = dy.sum(axis=(0, 1, 2))
    dy, out_channels = _pad_channels(dy)
    dkernel = _call(KERNEL_GRAD_TARGET, kernel.shape[:3] + dy.shape[-1:], x, dy)
    return dx[..., :in_channels], dkernel[..., :out_channels], dbias


_conv_bias_relu.defvjp(_conv_forward, _conv_backward)
