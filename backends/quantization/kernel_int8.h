// The integer path of the k-quant kernels: 8-bit activations times the weights' integer codes,
// the way llama.cpp multiplies. Included by kernel_qmatmul.cpp. Two builds of the same scheme:
// - AVX512-VNNI: vpdpbusd, 64 unsigned-by-signed byte products summed into int32 a instruction;
// - AVX2: vpmaddubsw (32 byte products summed in pairs into int16) then vpmaddwd by ones into
//   int32 lanes of four. The int16 pair sums must not saturate: |u q| <= 63 * 127 for u < 64
//   (every format but Q8_0); Q8_0's codes (u + 128 <= 255) would overflow, so on AVX2 its u is
//   the signed code itself, multiplied as |u| by sign(u) q (as llama.cpp does), with ow = 0.
//
// Weights: each block is decoded to unsigned bytes u with w = sw * u + ow, one (sw, ow) per 16
// weights (Q6_K's sub-blocks are 16 long, the others' 32 or 256):
//     Q4_0 u = q, ow = -8d         Q4_1 u = q, ow = m          Q8_0 u = q + 128, ow = -128d
//     Q5_0 u = q, ow = -16d        Q5_1 u = q, ow = m          Q6_K u = q, sw = d sc, ow = -32 d sc
//     Q4_K/Q5_K u = q, sw = d sc, ow = -dmin m
// Activations: each 32 values x are quantized as llama.cpp's Q8_0 does, q = round(x / s) with
// s = max|x| / 127, so x ~ s q. Then per 16 weights
//     sum w x ~ sw s sum(u q) + ow (s sum(q)),
// the first sum exact in int32. The float-GEMM path of larger batches multiplies the same
// quantized activations (fake_quantize: s q as floats) with the decoded weights, so both paths
// compute the same products and differ only in float summation order.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernel_decode.h"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define RG_INT8_DOT 1
#define RG_INT8_512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define RG_INT8_DOT 1
#define RG_INT8_256 1
#endif

namespace rg {

#ifdef RG_INT8_DOT
constexpr bool kInt8Dot = true;
#else
constexpr bool kInt8Dot = false;
#endif
#ifdef RG_INT8_256
constexpr bool kSignedQ8 = true;  // Q8_0's u holds the signed code (see the top of this file)
#else
constexpr bool kSignedQ8 = false;
#endif

inline int64_t round_up_64(int64_t k) { return (k + 63) / 64 * 64; }

inline float fp16_round(float v) {  // v rounded to the nearest IEEE half, as a float
#if defined(__F16C__) || defined(__AVX512F__)
  return _cvtsh_ss(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT));
#else
  return v;
#endif
}

// ---- activations

// One token's x [K] (K % 32 == 0) -> q [Kp] (zero tail up to a multiple of 64), the scale of
// each four-value lane sv [Kp / 4] (zero tail), and s * sum(q) of each 16 values sums [K / 16].
inline void quantize_row_q8(const float* x, int64_t K, int8_t* q, float* sv, float* sums) {
  const int64_t Kp = round_up_64(K);
  for (int64_t b = 0; b < K / 32; ++b) {
    const float* xb = x + 32 * b;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    // As llama.cpp's Q8_0 activations: codes from the exact scale, the scale kept as fp16.
    const float exact = amax / 127.0f, inv = exact != 0.0f ? 1.0f / exact : 0.0f;
    const float s = fp16_round(exact);
    int total[2] = {0, 0};
    for (int j = 0; j < 32; ++j) {
      // NaN/inf activations give garbage out either way; keep the conversion defined.
      float r = std::nearbyint(xb[j] * inv);
      r = std::isfinite(r) ? std::clamp(r, -127.0f, 127.0f) : 0.0f;
      q[32 * b + j] = static_cast<int8_t>(r);
      total[j / 16] += static_cast<int>(r);
    }
    for (int l = 0; l < 8; ++l) sv[8 * b + l] = s;
    sums[2 * b] = s * float(total[0]);
    sums[2 * b + 1] = s * float(total[1]);
  }
  std::fill(q + K, q + Kp, int8_t(0));
  std::fill(sv + K / 4, sv + Kp / 4, 0.0f);
}

// ---- weights: one block -> u [BS], sw [BS / 16], ow [BS / 16]

// NOTE: written with intrinsics: GCC left these byte loops scalar (uint8_t pointers may alias),
// which made Q4_0/Q4_1/Q5_0/Q5_1 rows 6-9x slower than the float path.
inline void nibbles(const uint8_t* qs, uint8_t* u) {  // 16 bytes -> 32 values, low nibbles first
#ifdef RG_INT8_DOT
  const __m128i v = load16(qs);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(u), lo4(v));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(u + 16), hi4(v));
#else
  for (int j = 0; j < 16; ++j) {
    u[j] = qs[j] & 15;
    u[j + 16] = qs[j] >> 4;
  }
#endif
}

// 16 bytes of nibbles + 32 high bits (bit k adds 16 to value k) -> 32 five-bit values.
inline void nibbles_high(const uint8_t* qs, uint32_t qh, uint8_t* u) {
#ifdef RG_INT8_DOT  // in registers: storing the nibbles and reloading them stalls store forwarding
  const __m128i v = load16(qs);
  const __m256i q = _mm256_set_m128i(hi4(v), lo4(v));
#ifdef RG_INT8_512
  const __m256i high = _mm256_maskz_set1_epi8(__mmask32(qh), 16);
#else  // byte j = 16 where bit j is set: spread byte j / 8 of qh to byte j, test bit j % 8
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(int(qh)),
                                             _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                               0x0101010101010101, 0x0000000000000000));
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
  const __m256i high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16));
#endif
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(u), _mm256_or_si256(q, high));
#else
  nibbles(qs, u);
  for (int j = 0; j < 32; ++j) u[j] |= ((qh >> j) & 1) << 4;
#endif
}

inline void pair(float* sw, float* ow, float s, float o) { sw[0] = sw[1] = s, ow[0] = ow[1] = o; }

inline void int8_q4_0(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  const float d = fp16_at(b);
  nibbles(b + 2, u);
  pair(sw, ow, d, -8.0f * d);
}

inline void int8_q4_1(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  nibbles(b + 4, u);
  pair(sw, ow, fp16_at(b), fp16_at(b + 2));
}

inline void int8_q5_0(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  const float d = fp16_at(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  nibbles_high(b + 6, qh, u);
  pair(sw, ow, d, -16.0f * d);
}

inline void int8_q5_1(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  nibbles_high(b + 8, qh, u);
  pair(sw, ow, fp16_at(b), fp16_at(b + 2));
}

inline void int8_q8_0(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  const float d = fp16_at(b);
  if constexpr (kSignedQ8) {  // the signed codes as they are
    std::memcpy(u, b + 2, 32);
    pair(sw, ow, d, 0.0f);
    return;
  }
#ifdef RG_INT8_DOT  // two's complement q + 128
  const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(u), _mm256_xor_si256(q, _mm256_set1_epi8(char(0x80))));
#else
  for (int j = 0; j < 32; ++j) u[j] = b[2 + j] ^ 0x80;
#endif
  pair(sw, ow, d, -128.0f * d);
}

// Q4_K/Q5_K: sub-block j (32 values) has scale d sc_j and offset -dmin m_j.
inline void k4_scales(const uint8_t* b, float* sw, float* ow) {
  const float d = fp16_at(b), dmin = fp16_at(b + 2);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(j, b + 4, sc, m);
    pair(sw + 2 * j, ow + 2 * j, d * float(sc), -(dmin * float(m)));
  }
}

#if defined(__AVX2__)
inline void store32(uint8_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
// Bits [s, s + width) of every byte, moved to bit 4 (16-bit shifts: the masks drop what crosses bytes).
inline __m256i high_bits(__m256i v, int s, int width) {
  return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(v, s), _mm256_set1_epi8(char((1 << width) - 1))), 4);
}
#endif

inline void int8_q4_k(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  k4_scales(b, sw, ow);
  for (int c = 0; c < 4; ++c) {
    const uint8_t* q = b + 16 + 32 * c;
#if defined(__AVX2__)
    const __m256i v = load32(q);
    store32(u + 64 * c, lo4(v));
    store32(u + 64 * c + 32, hi4(v));
#else
    for (int l = 0; l < 32; ++l) {
      u[64 * c + l] = q[l] & 15;
      u[64 * c + 32 + l] = q[l] >> 4;
    }
#endif
  }
}

inline void int8_q5_k(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  k4_scales(b, sw, ow);
  const uint8_t* qh = b + 16;
#if defined(__AVX2__)
  const __m256i h = load32(qh);
#endif
  for (int c = 0; c < 4; ++c) {
    const uint8_t* q = b + 48 + 32 * c;
#if defined(__AVX2__)
    const __m256i v = load32(q);
    store32(u + 64 * c, _mm256_or_si256(lo4(v), high_bits(h, 2 * c, 1)));
    store32(u + 64 * c + 32, _mm256_or_si256(hi4(v), high_bits(h, 2 * c + 1, 1)));
#else
    for (int l = 0; l < 32; ++l) {
      u[64 * c + l] = (q[l] & 15) | (((qh[l] >> (2 * c)) & 1) << 4);
      u[64 * c + 32 + l] = (q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
    }
#endif
  }
}

inline void int8_q6_k(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  const float d = fp16_at(b + 208);
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (int g = 0; g < 16; ++g) {  // sub-block g holds values 16g..16g+15
    sw[g] = d * float(sc[g]);
    ow[g] = -32.0f * sw[g];
  }
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b + 64 * h;
    const uint8_t* qh = b + 128 + 32 * h;
    uint8_t* out = u + 128 * h;
#if defined(__AVX2__)
    const __m256i l0 = load32(ql), l1 = load32(ql + 32), hv = load32(qh);
    store32(out, _mm256_or_si256(lo4(l0), high_bits(hv, 0, 2)));
    store32(out + 32, _mm256_or_si256(lo4(l1), high_bits(hv, 2, 2)));
    store32(out + 64, _mm256_or_si256(hi4(l0), high_bits(hv, 4, 2)));
    store32(out + 96, _mm256_or_si256(hi4(l1), high_bits(hv, 6, 2)));
#else
    for (int l = 0; l < 32; ++l) {
      out[l] = (ql[l] & 15) | (((qh[l] >> 0) & 3) << 4);
      out[l + 32] = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
      out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
      out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
    }
#endif
  }
}

using Int8Decoder = void (*)(const uint8_t*, uint8_t*, float*, float*);

// ---- products

// Quantized activations of T tokens: q [T, Kp], sv [T, Kp / 4], sums [T, K / 16].
struct Q8Acts {
  const int8_t* q;
  const float* sv;
  const float* sums;
  int64_t K, Kp;
};

#ifdef RG_INT8_512
// y[t * N] for TB tokens of one decoded row (u [Kp], sw/ow [K / 16]).
template <int TB, bool SIGNED>
inline void dot_int8(const uint8_t* u, const float* sw, const float* ow, const Q8Acts& a, int64_t t0,
                     float* y, int64_t N) {
  const int64_t K = a.K, Kp = a.Kp, groups = K / 16;
  // Lane i of a 64-value chunk sums values 4i..4i+3: group i / 4 of the chunk's four.
  const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  // Two accumulators per token (even and odd chunks): one FMA chain would wait on its own
  // latency every chunk.
  __m512 acc[2][TB];
  for (int t = 0; t < TB; ++t) acc[0][t] = acc[1][t] = _mm512_setzero_ps();
  auto chunk = [&](int64_t c, __m512* out) __attribute__((always_inline)) {
    const __m512i w = _mm512_loadu_si512(u + 64 * c);
    // Groups past K (the zero tail of a K % 64 == 32 row) read sw's padding: multiplied by 0.
    const __m512 ws = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(sw + 4 * c)));
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) {
      const int64_t tk = t0 + t;
      const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(a.q + tk * Kp + 64 * c));
      const __m512 s = _mm512_mul_ps(ws, _mm512_loadu_ps(a.sv + tk * (Kp / 4) + 16 * c));
      out[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, out[t]);
    }
  };
  const int64_t chunks = Kp / 64;
  int64_t c = 0;
  for (; c + 2 <= chunks; c += 2) {
    chunk(c, acc[0]);
    chunk(c + 1, acc[1]);
  }
  if (c < chunks) chunk(c, acc[0]);
  for (int t = 0; t < TB; ++t) {
    const float* sums = a.sums + (t0 + t) * groups;
    __m512 o = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 16 <= groups; g += 16) o = _mm512_fmadd_ps(_mm512_loadu_ps(ow + g), _mm512_loadu_ps(sums + g), o);
    float tail = 0.0f;
    for (; g < groups; ++g) tail += ow[g] * sums[g];
    y[t * N] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][t], acc[1][t])) + _mm512_reduce_add_ps(o) + tail;
  }
}
#elif defined(RG_INT8_256)
inline float sum8(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

// y[t * N] for TB tokens of one decoded row (u [K], sw/ow [K / 16]); SIGNED: u holds signed codes.
template <int TB, bool SIGNED>
inline void dot_int8(const uint8_t* u, const float* sw, const float* ow, const Q8Acts& a, int64_t t0,
                     float* y, int64_t N) {
  const int64_t K = a.K, Kp = a.Kp, groups = K / 16;
  // Lane i of a 32-value chunk sums values 4i..4i+3: group i / 4 of the chunk's two.
  const __m256i spread = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  const __m256i ones = _mm256_set1_epi16(1);
  // Two accumulators per token (even and odd chunks) so the FMA chains overlap.
  __m256 acc[2][TB];
  for (int t = 0; t < TB; ++t) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
  auto chunk = [&](int64_t c, __m256* out) __attribute__((always_inline)) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + 32 * c));
    const __m256i wu = SIGNED ? _mm256_sign_epi8(w, w) : w;  // |w| as unsigned bytes
    const __m256 ws = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_castsi128_ps(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sw + 2 * c)))), spread);
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) {
      const int64_t tk = t0 + t;
      __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + tk * Kp + 32 * c));
      if constexpr (SIGNED) q = _mm256_sign_epi8(q, w);
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wu, q), ones);
      const __m256 s = _mm256_mul_ps(ws, _mm256_loadu_ps(a.sv + tk * (Kp / 4) + 8 * c));
      out[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, out[t]);
    }
  };
  const int64_t chunks = K / 32;
  int64_t c = 0;
  for (; c + 2 <= chunks; c += 2) {
    chunk(c, acc[0]);
    chunk(c + 1, acc[1]);
  }
  if (c < chunks) chunk(c, acc[0]);
  for (int t = 0; t < TB; ++t) {
    const float* sums = a.sums + (t0 + t) * groups;
    __m256 o = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= groups; g += 8) o = _mm256_fmadd_ps(_mm256_loadu_ps(ow + g), _mm256_loadu_ps(sums + g), o);
    float tail = 0.0f;
    for (; g < groups; ++g) tail += ow[g] * sums[g];
    y[t * N] = sum8(_mm256_add_ps(acc[0][t], acc[1][t])) + sum8(o) + tail;
  }
}
#endif

#ifdef RG_INT8_DOT

// Rows [n0, n1) of y [T, N]: y = W x through the integer path.
template <Int8Decoder DECODE, int BS, int TS, bool SIGNED>
void rows_times_q8(const Q8Acts& a, int64_t T, const uint8_t* W, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t K = a.K, Kp = a.Kp, num_blocks = K / BS, row_bytes = num_blocks * TS;
  // Rows are decoded kRows at a time and each group of four tokens is applied to all of them:
  // the group's activations are then read from L2 once per kRows rows, not once per row
  // (per row, a 512-token prefill streamed ~650 KB of activations and was L2-bound). Every
  // output is still the same per-token loop, so results do not depend on T or the grouping.
  constexpr int64_t kRows = 16;
  const int64_t groups = K / 16 + 4;  // sw gets four floats of padding: a K % 64 == 32 row's last chunk reads two groups past K
  std::vector<uint8_t> u(kRows * Kp, 0);
  std::vector<float> sw(kRows * groups, 0.0f), ow(kRows * groups, 0.0f);
  for (int64_t r0 = n0; r0 < n1; r0 += kRows) {
    const int64_t rows = std::min(kRows, n1 - r0);
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* row = W + (r0 + r) * row_bytes;
      for (int64_t b = 0; b < num_blocks; ++b)
        DECODE(row + b * TS, u.data() + r * Kp + b * BS, sw.data() + r * groups + b * (BS / 16),
               ow.data() + r * groups + b * (BS / 16));
    }
    int64_t t = 0;
    for (; t + 4 <= T; t += 4)
      for (int64_t r = 0; r < rows; ++r)
        dot_int8<4, SIGNED>(u.data() + r * Kp, sw.data() + r * groups, ow.data() + r * groups, a, t, y + t * N + r0 + r, N);
    for (; t < T; ++t)
      for (int64_t r = 0; r < rows; ++r)
        dot_int8<1, SIGNED>(u.data() + r * Kp, sw.data() + r * groups, ow.data() + r * groups, a, t, y + t * N + r0 + r, N);
  }
}
#endif

}  // namespace rg
