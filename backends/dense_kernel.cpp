// y = x W^T (+ b) for a few tokens, W bfloat16 or float32 [N, K], built by dense_kernel.py.
//
//   linear(x [T, K], W [N, K], bias [N] or None, grain_bytes) -> y [T, N] in W's dtype
//
// Decode is memory-bound: every weight byte comes from DRAM once per step and is used by only T
// tokens. So each weight byte is read once per call: rows go in blocks of ROWS; each block's
// vectors are multiplied with TOKENS tokens at a time (ROWS x TOKENS accumulators in registers),
// and the next token tile re-reads the block from L1 (ROWS rows of K <= 4096 bf16 are 32 KiB at
// most). Sums are float32 (bf16 pairs with AVX512_BF16 vdpbf16ps, else widened to float32 and
// fused), the bias is added to the float32 sum, and a bf16 output is rounded once at the end: what
// F.linear does, up to the order of the float32 additions. Vectors are AVX-512 registers where
// the CPU has them, else AVX2 + FMA ones (one Simd struct each; the blocked loop is shared).
// Rows are split between threads by at::parallel_for, in chunks of at least grain_bytes of weight,
// so a small matrix is not split when waking a second thread costs more than it saves.

#include "torch_ext.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#define RG_DENSE_SIMD 1
#endif

#include "dense_kernel_packed.h"
#include "dense_kernel_amx.h"

namespace {

constexpr int64_t ROWS = 4;  // weight rows per block
// How far ahead of its loads each row is prefetched: 4 KiB was a few % ahead of 0, 256 B and 1 KiB
// at 8 tokens and level at 1 (the hardware prefetcher already follows each row).
constexpr int64_t PREFETCH_BYTES = 4096;

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

#if defined(__AVX512F__)

// One 512-bit register: 16 floats.
struct Simd {
  using vf = __m512;
  using vi = __m512i;
  static constexpr int64_t BYTES = 64;
  static constexpr int64_t TOKENS = 4;  // tokens per pass over a block: ROWS x 4 accumulators of 32 registers
  static inline vf zero() { return _mm512_setzero_ps(); }
  static inline vi load_bytes(const void* p) { return _mm512_loadu_si512(p); }
  static inline vf as_float(vi v) { return _mm512_castsi512_ps(v); }
  static inline vi shift16(vi v) { return _mm512_slli_epi32(v, 16); }
  static inline vi high16(vi v) { return _mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))); }
  static inline vf fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
  static inline float sum(vf v) { return _mm512_reduce_add_ps(v); }
  // Sum of the lanes of each of four vectors -> four floats in a 128-bit register, in order.
  static inline __m128 sum4(vf a, vf b, vf c, vf d) {
    // Halve twice with adds of interleaved 256- and 128-bit parts, then a 4x4 transpose-add.
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    // ab = [a0+a2, a1+a3, b0+b2, b1+b3] (128-bit parts); same for cd.
    const __m512 abcd = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    // abcd = [a, b, c, d] parts of 4 lanes each: finish with two in-lane horizontal steps.
    const __m512 s1 = _mm512_add_ps(abcd, _mm512_permute_ps(abcd, 0x4E));  // lanes + lanes^2
    const __m512 s2 = _mm512_add_ps(s1, _mm512_permute_ps(s1, 0xB1));      // lanes + lanes^1
    // Lane 0 of each 128-bit part holds a total: gather lanes 0, 4, 8, 12.
    const __m512i idx = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(idx, s2));
  }
};

#elif defined(RG_DENSE_SIMD)

// One 256-bit register (AVX2 + FMA): 8 floats. Only 16 registers, so 2 tokens a pass keeps the
// ROWS x 2 accumulators, the ROWS weight vectors and the bfloat16 temporaries out of memory.
struct Simd {
  using vf = __m256;
  using vi = __m256i;
  static constexpr int64_t BYTES = 32;
  static constexpr int64_t TOKENS = 2;
  static inline vf zero() { return _mm256_setzero_ps(); }
  static inline vi load_bytes(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static inline vf as_float(vi v) { return _mm256_castsi256_ps(v); }
  static inline vi shift16(vi v) { return _mm256_slli_epi32(v, 16); }
  static inline vi high16(vi v) { return _mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))); }
  static inline vf fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
  static inline float sum(vf v) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
  }
  static inline __m128 sum4(vf a, vf b, vf c, vf d) {
    // hadd(hadd(a, b), hadd(c, d)) holds each vector's two 128-bit halves' sums in order.
    const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
  }
};

#endif

#if defined(RG_DENSE_SIMD)
constexpr int64_t TOKENS = Simd::TOKENS;

// One weight vector (a register of bf16 or float32) at a time: Traits::fma accumulates the
// products of one W chunk and one x chunk, Traits::LANES counts elements per chunk.
struct Bf16Traits {
  using scalar_t = uint16_t;
  static constexpr int64_t LANES = Simd::BYTES / 2;
#if defined(__AVX512BF16__)
  static inline Simd::vf fma(Simd::vf acc, Simd::vi w, Simd::vi x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
  }
#else
  static inline Simd::vf fma(Simd::vf acc, Simd::vi w, Simd::vi x) {
    // A bf16 is a float32's high half. Even elements: shift left by 16; odd: mask the high halves.
    acc = Simd::fmadd(Simd::as_float(Simd::shift16(w)), Simd::as_float(Simd::shift16(x)), acc);
    return Simd::fmadd(Simd::as_float(Simd::high16(w)), Simd::as_float(Simd::high16(x)), acc);
  }
#endif
};

struct F32Traits {
  using scalar_t = float;
  static constexpr int64_t LANES = Simd::BYTES / 4;
  static inline Simd::vf fma(Simd::vf acc, Simd::vi w, Simd::vi x) {
    return Simd::fmadd(Simd::as_float(w), Simd::as_float(x), acc);
  }
};

// The last n < LANES elements of a row, zero-padded to one register (zeros add nothing).
template <typename Tr>
inline Simd::vi load_tail(const typename Tr::scalar_t* p, int64_t n) {
  alignas(64) typename Tr::scalar_t buf[Tr::LANES] = {};
  std::memcpy(buf, p, n * sizeof(typename Tr::scalar_t));
  return Simd::load_bytes(buf);
}

// sums[t * R + r] = dot(x[t0 + t], W[n0 + r]) for R <= ROWS rows and NT <= TOKENS tokens.
template <typename Tr, int R, int NT>
inline void block_dots(const typename Tr::scalar_t* w, const typename Tr::scalar_t* x, int64_t K,
                       bool prefetch, float* sums) {
  Simd::vf acc[NT][R];
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < R; ++r) acc[t][r] = Simd::zero();
  constexpr int64_t L = Tr::LANES;
  constexpr int64_t AHEAD = PREFETCH_BYTES / sizeof(typename Tr::scalar_t);
  const int64_t full = K / L * L;
  for (int64_t k = 0; k < full; k += L) {
    Simd::vi wv[R];
    for (int r = 0; r < R; ++r) {
      // A prefetch past the matrix's end is harmless: prefetches never fault.
      if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k + AHEAD), _MM_HINT_T0);
      wv[r] = Simd::load_bytes(w + r * K + k);
    }
    for (int t = 0; t < NT; ++t) {
      const Simd::vi xv = Simd::load_bytes(x + t * K + k);
      for (int r = 0; r < R; ++r) acc[t][r] = Tr::fma(acc[t][r], wv[r], xv);
    }
  }
  if (full < K) {
    Simd::vi wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_tail<Tr>(w + r * K + full, K - full);
    for (int t = 0; t < NT; ++t) {
      const Simd::vi xv = load_tail<Tr>(x + t * K + full, K - full);
      for (int r = 0; r < R; ++r) acc[t][r] = Tr::fma(acc[t][r], wv[r], xv);
    }
  }
  for (int t = 0; t < NT; ++t) {
    if constexpr (R == 4) {
      _mm_storeu_ps(sums + t * R, Simd::sum4(acc[t][0], acc[t][1], acc[t][2], acc[t][3]));
    } else {
      for (int r = 0; r < R; ++r) sums[t * R + r] = Simd::sum(acc[t][r]);
    }
  }
}

template <typename Tr, int R>
inline void block_tokens(const typename Tr::scalar_t* w, const typename Tr::scalar_t* x, int64_t K,
                         int64_t t0, int64_t nt, float* sums) {
  const auto* xt = x + t0 * K;
  const bool prefetch = t0 == 0;  // later token tiles find the block in L1
  if constexpr (TOKENS == 4) {
    switch (nt) {
      case 1: block_dots<Tr, R, 1>(w, xt, K, prefetch, sums); break;
      case 2: block_dots<Tr, R, 2>(w, xt, K, prefetch, sums); break;
      case 3: block_dots<Tr, R, 3>(w, xt, K, prefetch, sums); break;
      default: block_dots<Tr, R, 4>(w, xt, K, prefetch, sums); break;
    }
  } else {
    if (nt == 1) block_dots<Tr, R, 1>(w, xt, K, prefetch, sums);
    else block_dots<Tr, R, 2>(w, xt, K, prefetch, sums);
  }
}

template <typename Tr, typename Out>
void rows_simd(const typename Tr::scalar_t* x, const typename Tr::scalar_t* w, const float* bias,
               Out* y, int64_t T, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  float sums[TOKENS * ROWS];
  for (int64_t n = n0; n < n1; n += ROWS) {
    const int64_t nr = std::min(ROWS, n1 - n);
    const auto* wb = w + n * K;
    for (int64_t t0 = 0; t0 < T; t0 += TOKENS) {
      const int64_t nt = std::min(TOKENS, T - t0);
      switch (nr) {
        case 1: block_tokens<Tr, 1>(wb, x, K, t0, nt, sums); break;
        case 2: block_tokens<Tr, 2>(wb, x, K, t0, nt, sums); break;
        case 3: block_tokens<Tr, 3>(wb, x, K, t0, nt, sums); break;
        default: block_tokens<Tr, 4>(wb, x, K, t0, nt, sums); break;
      }
      for (int64_t t = 0; t < nt; ++t)
        for (int64_t r = 0; r < nr; ++r) {
          const float s = sums[t * nr + r] + (bias ? bias[n + r] : 0.0f);
          y[(t0 + t) * N + n + r] = static_cast<Out>(s);  // c10::BFloat16: round to nearest even
        }
    }
  }
}

#endif  // RG_DENSE_SIMD

// Portable path: the same float32 sums in plain loops (no AVX-512 or AVX2).
template <typename In, typename Out>
void rows_scalar(const In* x, const In* w, const float* bias, Out* y, int64_t T, int64_t N, int64_t K,
                 int64_t n0, int64_t n1) {
  auto value = [](In v) -> float {
    if constexpr (std::is_same_v<In, uint16_t>) return bf16_to_float(v); else return v;
  };
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t t = 0; t < T; ++t) {
      float s = 0.0f;
      for (int64_t k = 0; k < K; ++k) s += value(w[n * K + k]) * value(x[t * K + k]);
      y[t * N + n] = static_cast<Out>(s + (bias ? bias[n] : 0.0f));
    }
}

template <typename In, typename Out>
void run(const In* x, const In* w, const float* bias, Out* y, int64_t T, int64_t N, int64_t K,
         int64_t grain_bytes) {
  // Rows per parallel chunk, a whole number of ROWS blocks, at least grain_bytes of weight.
  const int64_t row_bytes = K * static_cast<int64_t>(sizeof(In));
  const int64_t grain_blocks = std::max<int64_t>(1, grain_bytes / (ROWS * row_bytes));
  const int64_t num_blocks = (N + ROWS - 1) / ROWS;
  at::parallel_for(0, num_blocks, grain_blocks, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * ROWS, n1 = std::min(N, b1 * ROWS);
#if defined(RG_DENSE_SIMD)
    if constexpr (std::is_same_v<In, uint16_t>) rows_simd<Bf16Traits>(x, w, bias, y, T, N, K, n0, n1);
    else rows_simd<F32Traits>(x, w, bias, y, T, N, K, n0, n1);
#else
    rows_scalar(x, w, bias, y, T, N, K, n0, n1);
#endif
  });
}

// The bias as float32 [N] (undefined when there is none), so the kernels add it to float32 sums.
at::Tensor float_bias(const std::optional<at::Tensor>& bias, int64_t N) {
  if (!bias.has_value() || !bias->defined()) return {};
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "bias must be [N]");
  return bias->to(at::kFloat).contiguous();
}

at::Tensor linear(const at::Tensor& x_in, const at::Tensor& w, const std::optional<at::Tensor>& bias_in,
                     int64_t grain_bytes) {
  TORCH_CHECK(x_in.device().is_cpu() && w.device().is_cpu(), "dense_kernel.linear runs on the CPU");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "W must be a contiguous [N, K] matrix");
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kFloat, "W must be bfloat16 or float32");
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == w.size(1), "x must be [T, K] with K = W.size(1)");
  TORCH_CHECK(x_in.scalar_type() == w.scalar_type(), "x must have W's dtype");
  const int64_t T = x_in.size(0), N = w.size(0), K = w.size(1);
  const auto x = x_in.contiguous();
  const at::Tensor bias = float_bias(bias_in, N);
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  auto y = at::empty({T, N}, w.options());
  if (T == 0 || N == 0) return y;
  if (w.scalar_type() == at::kBFloat16) {
    run(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
        reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), b, y.data_ptr<at::BFloat16>(), T, N, K,
        grain_bytes);
  } else {
    run(x.data_ptr<float>(), w.data_ptr<float>(), b, y.data_ptr<float>(), T, N, K, grain_bytes);
  }
  return y;
}

bool packed_supported() {
#if defined(RG_DENSE_PACKED)
  return true;
#else
  return false;
#endif
}

// Whether linear_packed runs on AMX tiles here: built for AMX, granted by the OS, not switched
// off by ROUTEGATE_NO_AMX=1.
bool amx_supported() {
#if defined(RG_DENSE_AMX)
  return rg_tiles::enabled();
#else
  return false;
#endif
}

at::Tensor linear_packed(const at::Tensor& x_in, const at::Tensor& wp, const std::optional<at::Tensor>& bias_in,
                         int64_t grain_bytes, bool amx) {
#if defined(RG_DENSE_PACKED)
  TORCH_CHECK(wp.scalar_type() == at::kBFloat16 && wp.dim() == 4 && wp.is_contiguous() &&
                  wp.size(2) == rg_packed::BLOCK_ROWS && wp.size(3) == 2,
              "linear_packed: wp must be contiguous bfloat16 [N / 16, K / 2, 16, 2]");
  const int64_t num_blocks = wp.size(0), K = 2 * wp.size(1), N = num_blocks * rg_packed::BLOCK_ROWS;
  TORCH_CHECK(x_in.scalar_type() == at::kBFloat16 && x_in.dim() == 2 && x_in.size(1) == K,
              "linear_packed: x must be bfloat16 [T, K] with K = ", K);
  const auto x = x_in.contiguous();
  const at::Tensor bias = float_bias(bias_in, N);
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const int64_t T = x.size(0);
  auto y = at::empty({T, N}, x.options());
  if (T == 0) return y;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* w = reinterpret_cast<const uint16_t*>(wp.data_ptr<at::BFloat16>());
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  const int64_t grain = std::max<int64_t>(1, grain_bytes / (rg_packed::BLOCK_ROWS * K * 2));
#if defined(RG_DENSE_AMX)
  if (amx && K % rg_amx::TILE_COLS == 0 && rg_tiles::enabled()) {
    at::parallel_for(0, num_blocks, grain, [&](int64_t b0, int64_t b1) { rg_amx::blocks(xp, w, b, yp, T, N, K, b0, b1); });
    return y;
  }
#endif
  at::parallel_for(0, num_blocks, grain, [&](int64_t b0, int64_t b1) { rg_packed::blocks(xp, w, b, yp, T, N, K, b0, b1); });
  return y;
#else
  TORCH_CHECK(false, "linear_packed needs a CPU with AVX512_BF16");
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "x [T, K] W [N, K]^T (+ bias) for a few tokens, W bfloat16 or float32");
  m.def("packed_supported", &packed_supported, "whether linear_packed runs on this build (AVX512_BF16)");
  m.def("amx_supported", &amx_supported, "whether linear_packed can use AMX tiles on this CPU");
  m.def("linear_packed", &linear_packed,
        "x [T, K] bf16 times weights packed as [N / 16, K / 2, 16, 2] (+ bias); amx: on AMX tiles when K % 32 == 0");
}
