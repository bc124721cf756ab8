// Direct 3x3 VALID convolution (stride 1, NHWC input, HWIO kernel, float32) for XLA:CPU, as
// XLA FFI custom calls: the forward pass, the input gradient (the same kernel on the padded
// output gradient with the flipped, transposed kernel) and the kernel gradient. AVX-512, or
// AVX2 + FMA on CPUs without it.
//
// Why: XLA:CPU lowers a convolution to Eigen or, in fashion_jax's formulations, to im2col or
// Winograd products whose expanded copies of the input dominate the step (README.md, Speed).
// These kernels read the input where it lies and keep a tile of outputs in the vector
// registers, as oneDNN does.
//
// Forward: each image is walked as one flat sequence of pixels with row stride W, so output
// "pixel" q = y * W + x reads input q + i * W + j for tap (i, j) at a fixed stride of Ci floats;
// the two columns per row with x >= W - 2 are computed and not stored. A tile holds PX pixels x
// NV vectors of kLanes output channels.
//
// Determinism: the forward pass writes each output once. The kernel gradient sums over a fixed
// number of pixel parts (a function of the shapes only, not of the thread count), each summed in
// pixel order, and adds the parts in order.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The vector instructions: AVX-512 (16 floats, 32 registers) or AVX2 + FMA (8 floats, 16
// registers), whichever the compiler targets (-march=native picks the best this CPU has).
#if defined(__AVX512F__)
using Vec = __m512;
constexpr int kLanes = 16;
constexpr int kAccumulators = 24;  // Of 32 registers; the rest hold weights and a broadcast.
inline Vec Load(const float* p) { return _mm512_loadu_ps(p); }
inline void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec Broadcast(float x) { return _mm512_set1_ps(x); }
inline Vec Zero() { return _mm512_setzero_ps(); }
inline Vec MulAdd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
#elif defined(__AVX2__) && defined(__FMA__)
using Vec = __m256;
constexpr int kLanes = 8;
constexpr int kAccumulators = 12;  // Of 16 registers.
inline Vec Load(const float* p) { return _mm256_loadu_ps(p); }
inline void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec Broadcast(float x) { return _mm256_set1_ps(x); }
inline Vec Zero() { return _mm256_setzero_ps(); }
inline Vec MulAdd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
#else
#error "native_conv.cc needs AVX-512 or AVX2 with FMA"
#endif

struct ParallelState {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// Claims and runs parts until none is left; returns how many it ran.
template <typename F>
int64_t RunParts(ParallelState& state, int64_t parts, const F& body) {
  int64_t finished = 0;
  for (int64_t p; (p = state.next.fetch_add(1)) < parts; ++finished) body(p);
  return finished;
}

// Runs body(part) for every part in [0, parts) on the calling thread and on XLA's intra-op
// thread pool. The caller claims parts too, so it only ever waits for parts already running
// (no deadlock when every pool thread is itself inside such a call).
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t parts, const F& body) {
  if (parts <= 0) return;
  auto state = std::make_shared<ParallelState>();
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), parts) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    // A helper that starts late finds nothing to claim and never touches `body`.
    pool.Schedule([state, parts, body_ptr = &body]() {
      if (int64_t n = RunParts(*state, parts, *body_ptr)) state->done.fetch_add(n);
    });
  }
  state->done.fetch_add(RunParts(*state, parts, body));
  while (state->done.load() < parts) _mm_pause();
}

// Register tiles by output channels (a multiple of kLanes): NV vectors of kLanes channels times
// `tile` pixels (forward) or input taps (kernel gradient), kAccumulators in all.
// Calls run(nv, tile) with both as std::integral_constant.
template <typename F>
void ByOutputChannels(int64_t co, const F& run) {
  using std::integral_constant;
  if (co % (4 * kLanes) == 0)
    run(integral_constant<int, 4>{}, integral_constant<int, kAccumulators / 4>{});
  else if (co % (2 * kLanes) == 0)
    run(integral_constant<int, 2>{}, integral_constant<int, kAccumulators / 2>{});
  else
    run(integral_constant<int, 1>{}, integral_constant<int, kAccumulators>{});
}

// ---------------------------------------------------------------------------------------------
// Forward: y[b, y, x, :] = bias + sum_{i, j, c} in[b, y + i, x + j, c] * w[i, j, c, :], then
// optionally ReLU.

// Computes PX flat pixels starting at `in` (pixel stride ci) for NV output vectors and stores
// those whose column is valid. `q0`: the first pixel's flat index within the image.
template <int NV, int PX>
inline void ForwardTile(const float* in, int64_t width, int64_t ci, const float* w, int64_t co,
                        const float* bias, bool relu, float* out_image, int64_t out_w,
                        int64_t q0) {
  Vec acc[PX][NV];
  for (int p = 0; p < PX; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = Zero();
  // For kernel row i, taps (j, c) are k = j * ci + c in [0, 3 ci): contiguous in the input
  // (pixel p's window row starts at p * ci) and in the HWIO kernel.
  for (int i = 0; i < 3; ++i) {
    const float* ip = in + i * width * ci;
    const float* wp = w + i * 3 * ci * co;
    for (int64_t k = 0; k < 3 * ci; ++k) {
      Vec wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = Load(wp + k * co + kLanes * v);
      for (int p = 0; p < PX; ++p) {
        const Vec a = Broadcast(ip[p * ci + k]);
        for (int v = 0; v < NV; ++v) acc[p][v] = MulAdd(a, wv[v], acc[p][v]);
      }
    }
  }
  // Epilogue: + bias, then ReLU, on the registers before the one store.
  Vec b[NV];
  for (int v = 0; v < NV; ++v) b[v] = bias ? Load(bias + kLanes * v) : Zero();
  const Vec zero = Zero();
  for (int p = 0; p < PX; ++p) {
    const int64_t q = q0 + p, row = q / width, col = q % width;
    if (col >= out_w) continue;
    float* op = out_image + (row * out_w + col) * co;
    for (int v = 0; v < NV; ++v) {
      Vec value = Add(acc[p][v], b[v]);
      if (relu) value = Max(value, zero);
      Store(op + kLanes * v, value);
    }
  }
}

struct ForwardShape {
  int64_t batch, height, width, ci, co;
  int64_t out_h() const { return height - 2; }
  int64_t out_w() const { return width - 2; }
  // Flat pixels per image that start a 3x3 window inside the image.
  int64_t flat() const { return out_h() * width - 2; }
};

template <int NV, int PX>
void ForwardPart(const ForwardShape& s, const float* x, const float* w, const float* bias,
                 bool relu, float* y, int64_t b, int64_t tile_begin, int64_t tile_end) {
  const float* image = x + b * s.height * s.width * s.ci;
  float* out_image = y + b * s.out_h() * s.out_w() * s.co;
  const int64_t flat = s.flat();
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    // The last tile is moved back to end at the last pixel (it recomputes a few pixels).
    const int64_t q0 = std::min(t * PX, flat - PX);
    for (int64_t g = 0; g < s.co; g += kLanes * NV)
      ForwardTile<NV, PX>(image + q0 * s.ci, s.width, s.ci, w + g, s.co,
                          bias ? bias + g : nullptr, relu, out_image + g, s.out_w(), q0);
  }
}

template <int NV, int PX>
void Forward(ffi::ThreadPool& pool, const ForwardShape& s, const float* x, const float* w,
             const float* bias, bool relu, float* y) {
  const int64_t flat = s.flat();
  if (flat < PX) {  // Tiny images: one pixel per tile.
    if constexpr (PX > 1) Forward<NV, 1>(pool, s, x, w, bias, relu, y);
    return;
  }
  const int64_t tiles = (flat + PX - 1) / PX;
  const int64_t tiles_per_part = std::max<int64_t>(1, 96 / PX);
  const int64_t parts_per_image = (tiles + tiles_per_part - 1) / tiles_per_part;
  ParallelFor(pool, s.batch * parts_per_image, [&](int64_t part) {
    const int64_t b = part / parts_per_image, k = part % parts_per_image;
    ForwardPart<NV, PX>(s, x, w, bias, relu, y, b, k * tiles_per_part,
                        std::min(tiles, (k + 1) * tiles_per_part));
  });
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> bias, int32_t relu,
                       ffi::ResultBuffer<ffi::F32> y) {
  const auto d = x.dimensions();
  const auto k = w.dimensions();
  if (d.size() != 4 || k.size() != 4 || k[0] != 3 || k[1] != 3 || k[2] != d[3] ||
      k[3] % kLanes != 0 || d[1] < 3 || d[2] < 3 || bias.element_count() != k[3])
    return ffi::Error::InvalidArgument(
        "conv3x3 forward: needs x [N, H>=3, W>=3, C], w [3, 3, C, Co] and bias [Co], "
        "Co a multiple of the vector width");
  const ForwardShape s{d[0], d[1], d[2], d[3], k[3]};
  const float* b = bias.typed_data();
  ByOutputChannels(s.co, [&](auto nv, auto tile) {
    Forward<nv(), tile()>(pool, s, x.typed_data(), w.typed_data(), b, relu, y->typed_data());
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Input gradient: dx = the forward pass on dy zero-padded by 2 on each side, with the kernel
// flipped in space and its channels swapped (wt, prepared by the caller). Each image is padded
// into a per-thread buffer that stays in cache, instead of a padded copy of the whole batch.

template <int NV, int PX>
void InputGrad(ffi::ThreadPool& pool, const ForwardShape& g, const float* dy, const float* wt,
               float* dx) {
  // g: dy [batch, height, width, ci] -> dx [batch, height + 2, width + 2, co]; the padded image
  // is [height + 4, width + 4, ci].
  const ForwardShape padded{1, g.height + 4, g.width + 4, g.ci, g.co};
  if (padded.flat() < PX) {
    if constexpr (PX > 1) InputGrad<NV, 1>(pool, g, dy, wt, dx);
    return;
  }
  const int64_t tiles = (padded.flat() + PX - 1) / PX;
  // Enough parts for two per thread even with small batches; each pads its own copy.
  const int64_t chunks = std::clamp<int64_t>(2 * pool.num_threads() / g.batch + 1, 1, tiles);
  const int64_t image_size = g.height * g.width * g.ci;
  const int64_t out_size = padded.out_h() * padded.out_w() * g.co;
  ParallelFor(pool, g.batch * chunks, [&](int64_t part) {
    const int64_t b = part / chunks, k = part % chunks;
    thread_local std::vector<float> buffer;
    buffer.assign(padded.height * padded.width * g.ci, 0.0f);
    const float* src = dy + b * image_size;
    for (int64_t row = 0; row < g.height; ++row)
      std::memcpy(buffer.data() + ((row + 2) * padded.width + 2) * g.ci,
                  src + row * g.width * g.ci, g.width * g.ci * sizeof(float));
    ForwardPart<NV, PX>(padded, buffer.data(), wt, nullptr, false, dx + b * out_size, 0,
                        tiles * k / chunks, tiles * (k + 1) / chunks);
  });
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> wt,
                         ffi::ResultBuffer<ffi::F32> dx) {
  const auto d = dy.dimensions();
  const auto k = wt.dimensions();
  if (d.size() != 4 || k.size() != 4 || k[0] != 3 || k[1] != 3 || k[2] != d[3] ||
      k[3] % kLanes != 0)
    return ffi::Error::InvalidArgument(
        "conv3x3 input gradient: needs dy [N, H, W, Co] and wt [3, 3, Co, Ci], "
        "Ci a multiple of the vector width");
  const ForwardShape g{d[0], d[1], d[2], d[3], k[3]};  // Input dy, output dx channels.
  ByOutputChannels(g.co, [&](auto nv, auto tile) {
    InputGrad<nv(), tile()>(pool, g, dy.typed_data(), wt.typed_data(), dx->typed_data());
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Kernel gradient: dw[i, j, c, :] = sum_{b, y, x} in[b, y + i, x + j, c] * dy[b, y, x, :].

// Adds `rows` output rows (each out_w pixels) into dw[i, taps k0:k0+nct, g:g+kLanes*NV] of one
// kernel row i; the CT x NV accumulator tile stays in registers across the rows. kPartial: nct < CT (the last
// channel tile), so channels past nct are neither read nor stored.
template <int NV, int CT, bool kPartial>
inline void WeightTile(const float* in, int64_t width, int64_t ci, const float* dy,
                       int64_t out_w, int64_t co, int64_t rows, float* dw, int64_t nct) {
  Vec acc[CT][NV];
  for (int c = 0; c < CT; ++c)
    for (int v = 0; v < NV; ++v)
      acc[c][v] = c < nct ? Load(dw + c * co + kLanes * v) : Zero();
  for (int64_t r = 0; r < rows; ++r) {
    const float* ip = in + r * width * ci;
    const float* dp = dy + r * out_w * co;
    for (int64_t x = 0; x < out_w; ++x) {
      Vec d[NV];
      for (int v = 0; v < NV; ++v) d[v] = Load(dp + x * co + kLanes * v);
      for (int c = 0; c < CT; ++c) {
        if (kPartial && c >= nct) break;
        const Vec a = Broadcast(ip[x * ci + c]);
        for (int v = 0; v < NV; ++v) acc[c][v] = MulAdd(a, d[v], acc[c][v]);
      }
    }
  }
  for (int c = 0; c < nct; ++c)
    for (int v = 0; v < NV; ++v) Store(dw + c * co + kLanes * v, acc[c][v]);
}

template <int NV, int CT>
void WeightRows(const ForwardShape& s, const float* in, const float* dy, int64_t rows,
                float* dw) {
  // As in the forward pass, kernel row i's taps (j, c) are k = j * ci + c in [0, 3 ci).
  const int64_t taps = 3 * s.ci;
  for (int i = 0; i < 3; ++i)
    for (int64_t k = 0; k < taps; k += CT) {
      const int64_t nct = std::min<int64_t>(CT, taps - k);
      const float* ip = in + i * s.width * s.ci + k;
      for (int64_t g = 0; g < s.co; g += kLanes * NV) {
        float* tile = dw + (i * taps + k) * s.co + g;
        if (nct == CT)
          WeightTile<NV, CT, false>(ip, s.width, s.ci, dy + g, s.out_w(), s.co, rows, tile, CT);
        else
          WeightTile<NV, CT, true>(ip, s.width, s.ci, dy + g, s.out_w(), s.co, rows, tile, nct);
      }
    }
}

template <int NV, int CT>
void WeightGrad(ffi::ThreadPool& pool, const ForwardShape& s, const float* x, const float* dy,
                float* dw) {
  const int64_t rows = s.batch * s.out_h();
  const int64_t pixels = rows * s.out_w();
  const int64_t size = 9 * s.ci * s.co;
  // Parts of ~1024+ pixels, at most 16: enough to share out, few enough partial sums to add.
  const int64_t parts = std::clamp<int64_t>(pixels / 1024, 1, std::min<int64_t>(16, rows));
  // Rows per accumulator load: at least 64 pixels, so narrow images amortise it too.
  const int64_t rows_per_tile = std::max<int64_t>(4, (64 + s.out_w() - 1) / s.out_w());
  std::vector<float> partial(parts > 1 ? parts * size : 0);
  ParallelFor(pool, parts, [&](int64_t part) {
    float* acc = parts > 1 ? partial.data() + part * size : dw;
    std::memset(acc, 0, size * sizeof(float));
    const int64_t end = rows * (part + 1) / parts;
    for (int64_t r = rows * part / parts; r < end;) {
      const int64_t b = r / s.out_h(), row = r % s.out_h();
      const int64_t count = std::min({rows_per_tile, end - r, s.out_h() - row});
      WeightRows<NV, CT>(s, x + (b * s.height + row) * s.width * s.ci,
                         dy + (b * s.out_h() + row) * s.out_w() * s.co, count, acc);
      r += count;
    }
  });
  if (parts == 1) return;
  constexpr int64_t kChunk = 4096;
  ParallelFor(pool, (size + kChunk - 1) / kChunk, [&](int64_t k) {
    const int64_t end = std::min(size, (k + 1) * kChunk);
    for (int64_t e = k * kChunk; e < end; ++e) {
      float sum = 0.0f;
      for (int64_t p = 0; p < parts; ++p) sum += partial[p * size + e];
      dw[e] = sum;
    }
  });
}

ffi::Error WeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw) {
  const auto d = x.dimensions();
  const auto g = dy.dimensions();
  if (d.size() != 4 || g.size() != 4 || g[0] != d[0] || g[1] != d[1] - 2 || g[2] != d[2] - 2 ||
      g[3] % kLanes != 0)
    return ffi::Error::InvalidArgument(
        "conv3x3 kernel gradient: needs x [N, H, W, C] and dy [N, H-2, W-2, Co], "
        "Co a multiple of the vector width");
  const ForwardShape s{d[0], d[1], d[2], d[3], g[3]};
  ByOutputChannels(s.co, [&](auto nv, auto tile) {
    WeightGrad<nv(), tile()>(pool, s, x.typed_data(), dy.typed_data(), dw->typed_data());
  });
  return ffi::Error::Success();
}

}  // namespace

// Floats per vector (the output channel multiple the kernels need): 16 or 8.
extern "C" int Conv3x3Lanes() { return kLanes; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv3x3Forward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [N, H, W, Ci]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w [3, 3, Ci, Co]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias [Co]
                                  .Attr<int32_t>("relu")  // 1: y = max(y, 0)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // y [N, H-2, W-2, Co]

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv3x3KernelGrad, WeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [N, H, W, Ci]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy [N, H-2, W-2, Co]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dw [3, 3, Ci, Co]

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv3x3InputGrad, InputGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy [N, H-2, W-2, Co]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // wt [3, 3, Co, Ci] flipped
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dx [N, H, W, Ci]
