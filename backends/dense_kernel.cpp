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
// F.linear does, up to the order of the float32 additions.
// Rows are split between threads by at::parallel_for, in chunks of at least grain_bytes of weight,
// so a small matrix is not split when waking a second thread costs more than it saves.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t ROWS = 4;    // weight rows per block
constexpr int64_t TOKENS = 4;  // tokens per pass over a block (ROWS * TOKENS accumulators)
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

// Sum of the 16 lanes of each of four vectors -> four floats in a 128-bit register, in order.
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
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

// One weight vector of 32 bf16 (or 16 float32) at a time: Traits::step loads W and x chunks and
// accumulates, Traits::LANES counts elements per step.
struct Bf16Traits {
  using scalar_t = uint16_t;
  static constexpr int64_t LANES = 32;
  static inline __m512i load(const scalar_t* p) { return _mm512_loadu_si512(p); }
  static inline __m512i load(const scalar_t* p, __mmask32 m) { return _mm512_maskz_loadu_epi16(m, p); }
  static inline __mmask32 tail_mask(int64_t n) { return static_cast<__mmask32>((uint64_t{1} << n) - 1); }
#if defined(__AVX512BF16__)
  static inline __m512 fma(__m512 acc, __m512i w, __m512i x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
  }
#else
  static inline __m512 fma(__m512 acc, __m512i w, __m512i x) {
    // Even elements: shift left by 16; odd elements: mask the high halves.
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)),
                          _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), acc);
    return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(w, hi)),
                           _mm512_castsi512_ps(_mm512_and_si512(x, hi)), acc);
  }
#endif
};

struct F32Traits {
  using scalar_t = float;
  static constexpr int64_t LANES = 16;
  static inline __m512i load(const scalar_t* p) { return _mm512_castps_si512(_mm512_loadu_ps(p)); }
  static inline __m512i load(const scalar_t* p, __mmask16 m) { return _mm512_castps_si512(_mm512_maskz_loadu_ps(m, p)); }
  static inline __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }
  static inline __m512 fma(__m512 acc, __m512i w, __m512i x) {
    return _mm512_fmadd_ps(_mm512_castsi512_ps(w), _mm512_castsi512_ps(x), acc);
  }
};

// sums[t * R + r] = dot(x[t0 + t], W[n0 + r]) for R <= ROWS rows and NT <= TOKENS tokens.
template <typename Tr, int R, int NT>
inline void block_dots(const typename Tr::scalar_t* w, const typename Tr::scalar_t* x, int64_t K,
                       bool prefetch, float* sums) {
  __m512 acc[NT][R];
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < R; ++r) acc[t][r] = _mm512_setzero_ps();
  constexpr int64_t L = Tr::LANES;
  constexpr int64_t AHEAD = PREFETCH_BYTES / sizeof(typename Tr::scalar_t);
  const int64_t full = K / L * L;
  for (int64_t k = 0; k < full; k += L) {
    __m512i wv[R];
    for (int r = 0; r < R; ++r) {
      // A prefetch past the matrix's end is harmless: prefetches never fault.
      if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k + AHEAD), _MM_HINT_T0);
      wv[r] = Tr::load(w + r * K + k);
    }
    for (int t = 0; t < NT; ++t) {
      const __m512i xv = Tr::load(x + t * K + k);
      for (int r = 0; r < R; ++r) acc[t][r] = Tr::fma(acc[t][r], wv[r], xv);
    }
  }
  if (full < K) {
    const auto m = Tr::tail_mask(K - full);
    __m512i wv[R];
    for (int r = 0; r < R; ++r) wv[r] = Tr::load(w + r * K + full, m);
    for (int t = 0; t < NT; ++t) {
      const __m512i xv = Tr::load(x + t * K + full, m);
      for (int r = 0; r < R; ++r) acc[t][r] = Tr::fma(acc[t][r], wv[r], xv);
    }
  }
  for (int t = 0; t < NT; ++t) {
    if constexpr (R == 4) {
      _mm_storeu_ps(sums + t * R, reduce4(acc[t][0], acc[t][1], acc[t][2], acc[t][3]));
    } else {
      for (int r = 0; r < R; ++r) sums[t * R + r] = _mm512_reduce_add_ps(acc[t][r]);
    }
  }
}

template <typename Tr, int R>
inline void block_tokens(const typename Tr::scalar_t* w, const typename Tr::scalar_t* x, int64_t K,
                         int64_t t0, int64_t nt, float* sums) {
  const auto* xt = x + t0 * K;
  const bool prefetch = t0 == 0;  // later token tiles find the block in L1
  switch (nt) {
    case 1: block_dots<Tr, R, 1>(w, xt, K, prefetch, sums); break;
    case 2: block_dots<Tr, R, 2>(w, xt, K, prefetch, sums); break;
    case 3: block_dots<Tr, R, 3>(w, xt, K, prefetch, sums); break;
    default: block_dots<Tr, R, 4>(w, xt, K, prefetch, sums); break;
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

#endif  // __AVX512F__

// Portable path: the same float32 sums in plain loops (no AVX-512).
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
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<In, uint16_t>) rows_simd<Bf16Traits>(x, w, bias, y, T, N, K, n0, n1);
    else rows_simd<F32Traits>(x, w, bias, y, T, N, K, n0, n1);
#else
    rows_scalar(x, w, bias, y, T, N, K, n0, n1);
#endif
  });
}

torch::Tensor linear(const torch::Tensor& x_in, const torch::Tensor& w, const std::optional<torch::Tensor>& bias_in,
                     int64_t grain_bytes) {
  TORCH_CHECK(x_in.device().is_cpu() && w.device().is_cpu(), "dense_kernel.linear runs on the CPU");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "W must be a contiguous [N, K] matrix");
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kFloat, "W must be bfloat16 or float32");
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == w.size(1), "x must be [T, K] with K = W.size(1)");
  TORCH_CHECK(x_in.scalar_type() == w.scalar_type(), "x must have W's dtype");
  const int64_t T = x_in.size(0), N = w.size(0), K = w.size(1);
  const auto x = x_in.contiguous();
  torch::Tensor bias;  // float32, so the kernel adds it to the float32 sums
  if (bias_in.has_value() && bias_in->defined()) {
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == N, "bias must be [N]");
    bias = bias_in->to(at::kFloat).contiguous();
  }
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  auto y = torch::empty({T, N}, w.options());
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "x [T, K] W [N, K]^T (+ bias) for a few tokens, W bfloat16 or float32");
}
