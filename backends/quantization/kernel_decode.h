// Block decoders and the block-times-activations loop of the k-quant kernels (plain C++, no
// torch, so tools can compile it alone). Included by kernel_qmatmul.cpp.
//
// Each decoder turns one block into float32 weights with the same operations, in the same
// order, as backends/quantization/dequantize_*.py, so its output is bit-identical to
// dequantize(). (Where a multiply-add is contracted into an FMA the product is exact, so the
// single rounding is the same.)

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rg {


constexpr int kLanes = 16;  // independent partial sums per token: one 512-bit register

inline float fp16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if defined(__F16C__) || defined(__AVX512F__)
  return _cvtsh_ss(h);
#else  // IEEE half -> float by bits (normal, subnormal, inf/nan)
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  float f;
  if (exp == 0) {
    f = float(man) * (1.0f / 16777216.0f);  // man * 2^-24, exact
    return sign ? -f : f;
  }
  const uint32_t bits = sign | ((exp == 31 ? 255u : exp + 112u) << 23) | (man << 13);
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

#if defined(__AVX2__) || defined(__AVX512F__)
// Nibble helpers for the 4-bit formats (16 or 32 bytes at a time).
inline __m128i lo4(__m128i v) { return _mm_and_si128(v, _mm_set1_epi8(15)); }
inline __m128i hi4(__m128i v) { return _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(15)); }
inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m256i lo4(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(15)); }
inline __m256i hi4(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(15)); }
inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
#endif

#ifdef __AVX512F__
// Sixteen bytes -> sixteen int32 lanes.
inline __m512i u8_to_i32(__m128i v) { return _mm512_cvtepu8_epi32(v); }
inline __m512 to_ps(__m512i v) { return _mm512_cvtepi32_ps(v); }
#endif

// ---- decoders: one block -> float32 weights (see dequantize_legacy.py / dequantize_kquants.py)

inline void decode_q4_0(const uint8_t* b, float* w) {
#ifdef __AVX512F__
  const __m512 d = _mm512_set1_ps(fp16_at(b));
  const __m128i qs = load16(b + 2);
  const __m512i eight = _mm512_set1_epi32(8);
  _mm512_storeu_ps(w, _mm512_mul_ps(to_ps(_mm512_sub_epi32(u8_to_i32(lo4(qs)), eight)), d));
  _mm512_storeu_ps(w + 16, _mm512_mul_ps(to_ps(_mm512_sub_epi32(u8_to_i32(hi4(qs)), eight)), d));
#else  // d:f16, qs:16
  const float d = fp16_at(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    w[j] = float(int(qs[j] & 15) - 8) * d;
    w[j + 16] = float(int(qs[j] >> 4) - 8) * d;
  }
#endif
}

inline void decode_q4_1(const uint8_t* b, float* w) {
#ifdef __AVX512F__
  const __m512 d = _mm512_set1_ps(fp16_at(b)), m = _mm512_set1_ps(fp16_at(b + 2));
  const __m128i qs = load16(b + 4);
  _mm512_storeu_ps(w, _mm512_fmadd_ps(to_ps(u8_to_i32(lo4(qs))), d, m));
  _mm512_storeu_ps(w + 16, _mm512_fmadd_ps(to_ps(u8_to_i32(hi4(qs))), d, m));
#else  // d:f16, m:f16, qs:16
  const float d = fp16_at(b), m = fp16_at(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    w[j] = float(qs[j] & 15) * d + m;
    w[j + 16] = float(qs[j] >> 4) * d + m;
  }
#endif
}

inline void decode_q5_0(const uint8_t* b, float* w) {
#ifdef __AVX512F__
  const __m512 d = _mm512_set1_ps(fp16_at(b));
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const __m128i qs = load16(b + 6);
  const __m512i sixteen = _mm512_set1_epi32(16);
  __m512i lo = u8_to_i32(lo4(qs)), hi = u8_to_i32(hi4(qs));
  lo = _mm512_mask_or_epi32(lo, __mmask16(qh & 0xFFFF), lo, sixteen);
  hi = _mm512_mask_or_epi32(hi, __mmask16(qh >> 16), hi, sixteen);
  _mm512_storeu_ps(w, _mm512_mul_ps(to_ps(_mm512_sub_epi32(lo, sixteen)), d));
  _mm512_storeu_ps(w + 16, _mm512_mul_ps(to_ps(_mm512_sub_epi32(hi, sixteen)), d));
#else  // d:f16, qh:u32 (bit k -> weight k), qs:16
  const float d = fp16_at(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 15) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    w[j] = float(lo - 16) * d;
    w[j + 16] = float(hi - 16) * d;
  }
#endif
}

inline void decode_q5_1(const uint8_t* b, float* w) {
#ifdef __AVX512F__
  const __m512 d = _mm512_set1_ps(fp16_at(b)), m = _mm512_set1_ps(fp16_at(b + 2));
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const __m128i qs = load16(b + 8);
  const __m512i sixteen = _mm512_set1_epi32(16);
  __m512i lo = u8_to_i32(lo4(qs)), hi = u8_to_i32(hi4(qs));
  lo = _mm512_mask_or_epi32(lo, __mmask16(qh & 0xFFFF), lo, sixteen);
  hi = _mm512_mask_or_epi32(hi, __mmask16(qh >> 16), hi, sixteen);
  _mm512_storeu_ps(w, _mm512_fmadd_ps(to_ps(lo), d, m));
  _mm512_storeu_ps(w + 16, _mm512_fmadd_ps(to_ps(hi), d, m));
#else  // d:f16, m:f16, qh:u32, qs:16
  const float d = fp16_at(b), m = fp16_at(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 15) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    w[j] = float(lo) * d + m;
    w[j + 16] = float(hi) * d + m;
  }
#endif
}

inline void decode_q8_0(const uint8_t* b, float* w) {
#ifdef __AVX512F__
  const __m512 d = _mm512_set1_ps(fp16_at(b));
  _mm512_storeu_ps(w, _mm512_mul_ps(to_ps(_mm512_cvtepi8_epi32(load16(b + 2))), d));
  _mm512_storeu_ps(w + 16, _mm512_mul_ps(to_ps(_mm512_cvtepi8_epi32(load16(b + 18))), d));
#else  // d:f16, qs:i8*32
  const float d = fp16_at(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) w[j] = float(qs[j]) * d;
#endif
}

// Q4_K/Q5_K: 8 six-bit scales and mins packed into 12 bytes (see unpack_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* s, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

inline void decode_q4_k(const uint8_t* b, float* w) {
#ifdef __AVX512F__
  const float d = fp16_at(b), dmin = fp16_at(b + 2);
  for (int c = 0; c < 4; ++c) {
    int sc0, m0, sc1, m1;
    scale_min_k4(2 * c, b + 4, sc0, m0);
    scale_min_k4(2 * c + 1, b + 4, sc1, m1);
    const __m512 d0 = _mm512_set1_ps(d * float(sc0)), d1 = _mm512_set1_ps(d * float(sc1));
    const __m512 o0 = _mm512_set1_ps(-(dmin * float(m0))), o1 = _mm512_set1_ps(-(dmin * float(m1)));
    for (int half = 0; half < 2; ++half) {
      const __m128i q = load16(b + 16 + 32 * c + 16 * half);
      _mm512_storeu_ps(w + 64 * c + 16 * half, _mm512_fmadd_ps(to_ps(u8_to_i32(lo4(q))), d0, o0));
      _mm512_storeu_ps(w + 64 * c + 32 + 16 * half, _mm512_fmadd_ps(to_ps(u8_to_i32(hi4(q))), d1, o1));
    }
  }
#else  // d, dmin, scales:12, qs:128
  const float d = fp16_at(b), dmin = fp16_at(b + 2);
  const uint8_t* qs = b + 16;
  for (int c = 0; c < 4; ++c) {
    int sc0, m0, sc1, m1;
    scale_min_k4(2 * c, b + 4, sc0, m0);
    scale_min_k4(2 * c + 1, b + 4, sc1, m1);
    const float d0 = d * float(sc0), d1 = d * float(sc1);
    const float o0 = dmin * float(m0), o1 = dmin * float(m1);
    const uint8_t* q = qs + 32 * c;
    for (int l = 0; l < 32; ++l) {
      w[64 * c + l] = float(q[l] & 15) * d0 - o0;
      w[64 * c + 32 + l] = float(q[l] >> 4) * d1 - o1;
    }
  }
#endif
}

inline void decode_q5_k(const uint8_t* b, float* w) {
#ifdef __AVX512F__
  const float d = fp16_at(b), dmin = fp16_at(b + 2);
  const __m512i one = _mm512_set1_epi32(1);
  for (int c = 0; c < 4; ++c) {
    int sc0, m0, sc1, m1;
    scale_min_k4(2 * c, b + 4, sc0, m0);
    scale_min_k4(2 * c + 1, b + 4, sc1, m1);
    const __m512 d0 = _mm512_set1_ps(d * float(sc0)), d1 = _mm512_set1_ps(d * float(sc1));
    const __m512 o0 = _mm512_set1_ps(-(dmin * float(m0))), o1 = _mm512_set1_ps(-(dmin * float(m1)));
    for (int half = 0; half < 2; ++half) {
      const __m128i q = load16(b + 48 + 32 * c + 16 * half);
      const __m512i h = u8_to_i32(load16(b + 16 + 16 * half));
      const __m512i h0 = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h, 2 * c), one), 4);
      const __m512i h1 = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h, 2 * c + 1), one), 4);
      const __m512i lo = _mm512_or_si512(u8_to_i32(lo4(q)), h0), hi = _mm512_or_si512(u8_to_i32(hi4(q)), h1);
      _mm512_storeu_ps(w + 64 * c + 16 * half, _mm512_fmadd_ps(to_ps(lo), d0, o0));
      _mm512_storeu_ps(w + 64 * c + 32 + 16 * half, _mm512_fmadd_ps(to_ps(hi), d1, o1));
    }
  }
#else  // d, dmin, scales:12, qh:32, qs:128
  const float d = fp16_at(b), dmin = fp16_at(b + 2);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int c = 0; c < 4; ++c) {
    int sc0, m0, sc1, m1;
    scale_min_k4(2 * c, b + 4, sc0, m0);
    scale_min_k4(2 * c + 1, b + 4, sc1, m1);
    const float d0 = d * float(sc0), d1 = d * float(sc1);
    const float o0 = dmin * float(m0), o1 = dmin * float(m1);
    const uint8_t* q = qs + 32 * c;
    for (int l = 0; l < 32; ++l) {
      const int lo = (q[l] & 15) | (((qh[l] >> (2 * c)) & 1) << 4);
      const int hi = (q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
      w[64 * c + l] = float(lo) * d0 - o0;
      w[64 * c + 32 + l] = float(hi) * d1 - o1;
    }
  }
#endif
}

inline void decode_q6_k(const uint8_t* b, float* w) {
#ifdef __AVX512F__
  const float d = fp16_at(b + 208);
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const __m512i three = _mm512_set1_epi32(3), fifteen = _mm512_set1_epi32(15), bias = _mm512_set1_epi32(32);
  for (int h = 0; h < 2; ++h) {
    for (int f = 0; f < 4; ++f) {
      for (int half = 0; half < 2; ++half) {  // weights 128h + 32f + 16half .. +15
        const int l = 16 * half;
        const __m512i ql = u8_to_i32(load16(b + 64 * h + 32 * (f & 1) + l));
        const __m512i low = f < 2 ? _mm512_and_si512(ql, fifteen) : _mm512_srli_epi32(ql, 4);
        const __m512i qh = u8_to_i32(load16(b + 128 + 32 * h + l));
        const __m512i high = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh, 2 * f), three), 4);
        const __m512i q = _mm512_sub_epi32(_mm512_or_si512(low, high), bias);
        const __m512 dl = _mm512_set1_ps(d * float(sc[8 * h + 2 * f + half]));
        _mm512_storeu_ps(w + 128 * h + 32 * f + l, _mm512_mul_ps(to_ps(q), dl));
      }
    }
  }
#else  // ql:128, qh:64, scales:i8*16, d:f16
  const float d = fp16_at(b + 208);
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b + 64 * h;
    const uint8_t* qh = b + 128 + 32 * h;
    float* out = w + 128 * h;
    for (int f = 0; f < 4; ++f) {  // weights 32f..32f+31 of this half
      const float dl0 = d * float(sc[8 * h + 2 * f]), dl1 = d * float(sc[8 * h + 2 * f + 1]);
      for (int l = 0; l < 32; ++l) {
        const int low = f < 2 ? (ql[32 * f + l] & 15) : (ql[32 * (f - 2) + l] >> 4);
        const int q = (low | (((qh[l] >> (2 * f)) & 3) << 4)) - 32;
        out[32 * f + l] = float(q) * (l < 16 ? dl0 : dl1);
      }
    }
  }
#endif
}

using Decoder = void (*)(const uint8_t*, float*);

// y[t0 + t, n] for TB tokens and one decoded row w [K]. Two accumulators per token (even and
// odd 16-weight chunks) hide FMA latency; TB <= 8 keeps all of them in registers.
template <int TB>
inline void dot_tokens(const float* w, const float* x, int64_t K, float* y, int64_t N) {
#ifdef __AVX512F__
  __m512 acc[2 * TB];
  for (int i = 0; i < 2 * TB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t j = 0; j < K; j += 32) {
    const __m512 w0 = _mm512_load_ps(w + j), w1 = _mm512_load_ps(w + j + 16);
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) {
      acc[2 * t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * K + j), acc[2 * t]);
      acc[2 * t + 1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * K + j + 16), acc[2 * t + 1]);
    }
  }
  for (int t = 0; t < TB; ++t) y[t * N] = _mm512_reduce_add_ps(_mm512_add_ps(acc[2 * t], acc[2 * t + 1]));
#else
  float acc[TB][kLanes] = {};
  for (int64_t j = 0; j < K; j += kLanes)
    for (int t = 0; t < TB; ++t)
      for (int v = 0; v < kLanes; ++v) acc[t][v] += w[j + v] * x[t * K + j + v];
  for (int t = 0; t < TB; ++t) {
    float s = 0.0f;
    for (int v = 0; v < kLanes; ++v) s += acc[t][v];
    y[t * N] = s;
  }
#endif
}

// y[t, n] = x[t] . row n, for rows n in [n0, n1) and all T tokens: each row is decoded once
// into an L1-resident buffer and reused for every token, eight tokens at a time.
template <Decoder DECODE, int BS, int TS>
void rows_times_x(const float* x, int64_t T, int64_t K, const uint8_t* W, float* y, int64_t N,
                  int64_t n0, int64_t n1) {
  std::vector<float> storage(K + 16);
  float* w = storage.data();
  while (reinterpret_cast<uintptr_t>(w) % 64) ++w;  // aligned loads in dot_tokens
  const int64_t num_blocks = K / BS, row_bytes = num_blocks * TS;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W + n * row_bytes;
    for (int64_t b = 0; b < num_blocks; ++b) DECODE(row + b * TS, w + b * BS);
    int64_t t = 0;
    for (; t + 8 <= T; t += 8) dot_tokens<8>(w, x + t * K, K, y + t * N + n, N);
    for (; t + 4 <= T; t += 4) dot_tokens<4>(w, x + t * K, K, y + t * N + n, N);
    for (; t < T; ++t) dot_tokens<1>(w, x + t * K, K, y + t * N + n, N);
  }
}

}  // namespace rg
