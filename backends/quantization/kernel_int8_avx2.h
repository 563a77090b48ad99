// The products of the integer path on 256-bit registers (see kernel_int8.h), for every CPU with
// AVX2; vpdpbusd replaces vpmaddubsw + vpmaddwd where the CPU has VNNI. Included by kernel_int8.h.
//
// A row is a sequence of 32-value chunks; each format's block() turns one block into its chunks
// in registers: bytes u (the codes) and ws, the weight scale of each int32 lane (lanes 0-3 sum
// values 0-15, lanes 4-7 values 16-31), and writes the block's per-16 offsets ow. Per token,
// chunk c adds cvt(maddubs(u, q) summed by lanes) * ws * s to accumulator c % 2; the offsets
// add ow . (s sum q) at the end.
//
// Every row is decoded in registers for each group of up to four tokens and nothing but ow is
// stored: decoding into a buffer once per row and reloading it for every token group measured
// 1.3-2x slower at every batch size (T = 1 to 512). A token's output is the same arithmetic in
// the same order whatever the batch, so batching never changes a request's logits.
//
// vpmaddubsw sums pairs of u8 x s8 products into int16 and saturates: |u q| <= 63 * 127 for
// u < 64 keeps a pair under 2^15 (every format but Q8_0). Q8_0's u + 128 would overflow, so its
// u is the signed code, multiplied as |u| by sign(u) q (as llama.cpp does), and its ow is 0.

#pragma once

namespace rg {
namespace avx2 {

inline __m256 fp16_x8(const uint8_t* p) {  // the fp16 at p, in all eight lanes
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h)));
}

inline __m256i nibbles(const uint8_t* qs) {  // 16 bytes -> 32 values, low nibbles first
  const __m128i v = load16(qs);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(15));
}

inline __m256i plus_high_bits(__m256i u, const uint8_t* qh_bytes) {  // value j += 16 where bit j of qh is set
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  // Byte j gets byte j / 8 of qh, then keeps bit j % 8.
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(qh)),
                                             _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                               0x0101010101010101, 0x0000000000000000));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_or_si256(u, _mm256_and_si256(set, _mm256_set1_epi8(16)));
}

// Bits [s, s + width) of every byte, moved to bit 4 (16-bit shifts: the masks drop what crosses bytes).
inline __m256i high_bits(__m256i v, int s, int width) {
  return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(v, s), _mm256_set1_epi8(char((1 << width) - 1))), 4);
}

inline __m256 lane(__m256 v, int i) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i)); }
inline __m256 lane_pair(__m256 v, int i) {  // lanes 0-3 = v[i], lanes 4-7 = v[i + 1]
  return _mm256_permutevar8x32_ps(v, _mm256_set_epi32(i + 1, i + 1, i + 1, i + 1, i, i, i, i));
}
inline void pair(float* ow, float o) { ow[0] = ow[1] = o; }

// ---- formats: BS values in TS bytes; block(b, ow, emit) calls emit(j, u, ws) for chunk j.

struct Q4_0 {
  static constexpr int BS = 32, TS = 18;
  static constexpr bool SIGNED = false;
  template <typename E> static void block(const uint8_t* b, float* ow, E&& emit) {
    const __m256 d = fp16_x8(b);
    pair(ow, -8.0f * _mm256_cvtss_f32(d));
    emit(0, nibbles(b + 2), d);
  }
};

struct Q4_1 {
  static constexpr int BS = 32, TS = 20;
  static constexpr bool SIGNED = false;
  template <typename E> static void block(const uint8_t* b, float* ow, E&& emit) {
    pair(ow, fp16_at(b + 2));
    emit(0, nibbles(b + 4), fp16_x8(b));
  }
};

struct Q5_0 {
  static constexpr int BS = 32, TS = 22;
  static constexpr bool SIGNED = false;
  template <typename E> static void block(const uint8_t* b, float* ow, E&& emit) {
    const __m256 d = fp16_x8(b);
    pair(ow, -16.0f * _mm256_cvtss_f32(d));
    emit(0, plus_high_bits(nibbles(b + 6), b + 2), d);
  }
};

struct Q5_1 {
  static constexpr int BS = 32, TS = 24;
  static constexpr bool SIGNED = false;
  template <typename E> static void block(const uint8_t* b, float* ow, E&& emit) {
    pair(ow, fp16_at(b + 2));
    emit(0, plus_high_bits(nibbles(b + 8), b + 4), fp16_x8(b));
  }
};

struct Q8_0 {
  static constexpr int BS = 32, TS = 34;
  static constexpr bool SIGNED = true;  // no offsets: ow is not written
  template <typename E> static void block(const uint8_t* b, float*, E&& emit) { emit(0, load32(b + 2), fp16_x8(b)); }
};

// Q4_K/Q5_K: the eight 6-bit scales sc_j and mins m_j of a super-block, as d sc_j and -(dmin m_j)
// (the products dequantize_kquants.py forms); ow gets each min twice (two 16-value groups).
inline __m256 k4_scales(const uint8_t* b, float* ow) {
  uint32_t w[3];
  std::memcpy(w, b + 4, 12);
  // scale_min_k4 on four bytes at a time: j < 4 from the low six bits of bytes j (scales) and
  // j + 4 (mins); j >= 4 from the nibbles of bytes j + 4 plus the top two bits of bytes j - 4 / j.
  const uint32_t sc_lo = w[0] & 0x3F3F3F3F, m_lo = w[1] & 0x3F3F3F3F;
  const uint32_t sc_hi = (w[2] & 0x0F0F0F0F) | (((w[0] >> 6) & 0x03030303) << 4);
  const uint32_t m_hi = ((w[2] >> 4) & 0x0F0F0F0F) | (((w[1] >> 6) & 0x03030303) << 4);
  const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, int(sc_hi), int(sc_lo))));
  const __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, int(m_hi), int(m_lo))));
  const __m256 mins = _mm256_xor_ps(_mm256_mul_ps(fp16_x8(b + 2), m), _mm256_set1_ps(-0.0f));  // exact negation
  _mm256_storeu_ps(ow, _mm256_permutevar8x32_ps(mins, _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0)));
  _mm256_storeu_ps(ow + 8, _mm256_permutevar8x32_ps(mins, _mm256_set_epi32(7, 7, 6, 6, 5, 5, 4, 4)));
  return _mm256_mul_ps(fp16_x8(b), sc);
}

struct Q4_K {
  static constexpr int BS = 256, TS = 144;
  static constexpr bool SIGNED = false;
  template <typename E> static void block(const uint8_t* b, float* ow, E&& emit) {
    const __m256 sc = k4_scales(b, ow);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {  // 32 bytes: values 64c.. (low nibbles), 64c + 32.. (high)
      const __m256i v = load32(b + 16 + 32 * c);
      emit(2 * c, lo4(v), lane(sc, 2 * c));
      emit(2 * c + 1, hi4(v), lane(sc, 2 * c + 1));
    }
  }
};

struct Q5_K {
  static constexpr int BS = 256, TS = 176;
  static constexpr bool SIGNED = false;
  template <typename E> static void block(const uint8_t* b, float* ow, E&& emit) {
    const __m256 sc = k4_scales(b, ow);
    const __m256i h = load32(b + 16);  // bit j of byte l: the fifth bit of value 32j + l
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m256i v = load32(b + 48 + 32 * c);
      emit(2 * c, _mm256_or_si256(lo4(v), high_bits(h, 2 * c, 1)), lane(sc, 2 * c));
      emit(2 * c + 1, _mm256_or_si256(hi4(v), high_bits(h, 2 * c + 1, 1)), lane(sc, 2 * c + 1));
    }
  }
};

struct Q6_K {
  static constexpr int BS = 256, TS = 210;
  static constexpr bool SIGNED = false;
  template <typename E> static void block(const uint8_t* b, float* ow, E&& emit) {
    const __m256 d = fp16_x8(b + 208);
    // Sixteen int8 scales, one per 16 values: sw = d sc, ow = -32 sw.
    const __m128i sc = load16(b + 192);
    const __m256 sw[2] = {_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))),
                          _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8))))};
    _mm256_storeu_ps(ow, _mm256_mul_ps(_mm256_set1_ps(-32.0f), sw[0]));
    _mm256_storeu_ps(ow + 8, _mm256_mul_ps(_mm256_set1_ps(-32.0f), sw[1]));
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {  // values 128h + 32i + l: nibbles of ql, two bits of qh each
      const __m256i l0 = load32(b + 64 * h), l1 = load32(b + 64 * h + 32), hv = load32(b + 128 + 32 * h);
      emit(4 * h, _mm256_or_si256(lo4(l0), high_bits(hv, 0, 2)), lane_pair(sw[h], 0));
      emit(4 * h + 1, _mm256_or_si256(lo4(l1), high_bits(hv, 2, 2)), lane_pair(sw[h], 2));
      emit(4 * h + 2, _mm256_or_si256(hi4(l0), high_bits(hv, 4, 2)), lane_pair(sw[h], 4));
      emit(4 * h + 3, _mm256_or_si256(hi4(l1), high_bits(hv, 6, 2)), lane_pair(sw[h], 6));
    }
  }
};

// ---- products

inline float sum8(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

// Sums of four u8 x s8 products per int32 lane. With VNNI on 256-bit registers (AVX512-VNNI
// with VL, or AVX-VNNI) one vpdpbusd; otherwise vpmaddubsw then vpmaddwd. Both are exact for
// every format here (see the saturation note above), so they give the same results.
inline __m256i dot_u8s8(__m256i u, __m256i q, [[maybe_unused]] __m256i ones) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, q);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, q);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), ones);
#endif
}

// Per-token accumulators of TB tokens t0.. for one row; the arithmetic both drivers share.
template <int TB, bool SIGNED>
struct RowSums {
  __m256 acc[2][TB];
  RowSums() {
    for (int t = 0; t < TB; ++t) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
  }
  inline __attribute__((always_inline)) void chunk(int64_t c, __m256i u, __m256 ws, const Q8Acts& a, int64_t t0) {
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i uu = SIGNED ? _mm256_sign_epi8(u, u) : u;  // |u| as unsigned bytes
#pragma GCC unroll 4
    for (int t = 0; t < TB; ++t) {
      const int64_t tk = t0 + t;
      __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + tk * a.Kp + 32 * c));
      if constexpr (SIGNED) q = _mm256_sign_epi8(q, u);
      const __m256i p = dot_u8s8(uu, q, ones);
      const __m256 s = _mm256_mul_ps(ws, _mm256_loadu_ps(a.sv + tk * (a.Kp / 4) + 8 * c));
      acc[c & 1][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[c & 1][t]);
    }
  }
  void finish(const float* ow, const Q8Acts& a, int64_t t0, float* y, int64_t N) const {
    const int64_t groups = a.K / 16;
    for (int t = 0; t < TB; ++t) {
      float total = sum8(_mm256_add_ps(acc[0][t], acc[1][t]));
      if constexpr (!SIGNED) {
        const float* sums = a.sums + (t0 + t) * groups;
        __m256 o = _mm256_setzero_ps();
        int64_t g = 0;
        for (; g + 8 <= groups; g += 8) o = _mm256_fmadd_ps(_mm256_loadu_ps(ow + g), _mm256_loadu_ps(sums + g), o);
        float tail = 0.0f;
        for (; g < groups; ++g) tail += ow[g] * sums[g];
        total += sum8(o) + tail;
      }
      y[t * N] = total;
    }
  }
};

// Rows lie back to back, and decoding a row is slow enough that the hardware prefetcher falls
// behind: weights streamed from DRAM at T = 1 came at ~5 GB/s (Q4_1, Q5_0, Q4_K on the 2-core
// Xeon), and prefetching each row's bytes 4 KiB ahead of its decoding took that to 8.6-10 GB/s
// (1 KiB and 16 KiB ahead were a little behind 4 KiB). Prefetches past the matrix are harmless.
constexpr int64_t kPrefetchBytes = 4096;

inline void prefetch_row(const uint8_t* row, int64_t row_bytes) {
  for (int64_t o = 0; o < row_bytes; o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchBytes + o), _MM_HINT_T0);
}

// The first kPrefetchBytes of a range of rows, which no earlier row prefetched.
inline void prefetch_start(const uint8_t* p, int64_t bytes) {
  for (int64_t o = 0; o < std::min(bytes, kPrefetchBytes); o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + o), _MM_HINT_T0);
}

// y[t0 + t, n] for TB tokens, row n decoded in registers; ow: K / 16 floats of scratch.
template <typename F, int TB>
void row_fused(const uint8_t* row, const Q8Acts& a, int64_t t0, float* ow, float* y, int64_t N) {
  RowSums<TB, F::SIGNED> sums;
  const int64_t num_blocks = a.K / F::BS;
  // NOTE: chunk c's accumulator (c % 2) must be known at compile time, or the accumulators live
  // in memory and every FMA waits for a store (measured 1.7x slower): 32-value blocks go in
  // pairs; a 256-value block's chunks are unrolled and start at an even index.
  auto block = [&](int64_t b) __attribute__((always_inline)) {
    const int64_t c0 = b * (F::BS / 32);
    F::block(row + b * F::TS, ow + b * (F::BS / 16),
             [&](int j, __m256i u, __m256 ws) __attribute__((always_inline)) { sums.chunk(c0 + j, u, ws, a, t0); });
  };
  int64_t b = 0;
  if constexpr (F::BS == 32)
    for (; b + 2 <= num_blocks; b += 2) {
      block(b);
      block(b + 1);
    }
  for (; b < num_blocks; ++b) block(b);
  sums.finish(ow, a, t0, y, N);
}

// Rows [n0, n1) of y [T, N] (y + t * N + n), TB tokens per pass, every row re-decoded per pass.
template <typename F, int TB>
void rows_fused(const Q8Acts& a, int64_t t0, const uint8_t* W, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t row_bytes = a.K / F::BS * F::TS;
  std::vector<float> ow(a.K / 16);
  prefetch_start(W + n0 * row_bytes, (n1 - n0) * row_bytes);
  for (int64_t n = n0; n < n1; ++n) {
    prefetch_row(W + n * row_bytes, row_bytes);
    row_fused<F, TB>(W + n * row_bytes, a, t0, ow.data(), y + t0 * N + n, N);
  }
}

}  // namespace avx2

}  // namespace rg
#include "kernel_int8_amx.h"
namespace rg {

// Weight bytes of the rows that meet each group of four tokens in turn: the tile stays in L2
// while the groups pass over it, instead of streaming the whole matrix from L3/DRAM per group.
constexpr int64_t kTileBytes = 64 << 10;

// One GGML type's integer path: Format::BS/TS and Format::rows(...).
template <typename F>
struct Int8Format {
  static constexpr int BS = F::BS, TS = F::TS;
#if defined(RG_INT8_AMX)
  static constexpr bool AMX = amx8::kSupported<F>;
#else
  static constexpr bool AMX = false;
#endif
  static void rows(const Q8Acts& a, int64_t T, const uint8_t* W, float* y, int64_t N, int64_t n0, int64_t n1) {
#if defined(RG_INT8_AMX)
    if constexpr (amx8::kSupported<F>)
      if (amx8::enabled()) return amx8::rows<F>(a, T, W, y, N, n0, n1);
#endif
    const int64_t tile = std::max<int64_t>(1, kTileBytes / (a.K / F::BS * F::TS));
    for (int64_t r0 = n0; r0 < n1; r0 += tile) {
      const int64_t r1 = std::min(n1, r0 + tile);
      int64_t t = 0;
      for (; t + 4 <= T; t += 4) avx2::rows_fused<F, 4>(a, t, W, y, N, r0, r1);
      switch (T - t) {
        case 1: avx2::rows_fused<F, 1>(a, t, W, y, N, r0, r1); break;
        case 2: avx2::rows_fused<F, 2>(a, t, W, y, N, r0, r1); break;
        case 3: avx2::rows_fused<F, 3>(a, t, W, y, N, r0, r1); break;
        default: break;
      }
    }
  }
};

// f.template operator()<Format>() for one GGML type id.
template <typename F>
void with_int8_format(int64_t ggml_type, F&& f) {
  switch (ggml_type) {
    case 2: return f.template operator()<Int8Format<avx2::Q4_0>>();
    case 3: return f.template operator()<Int8Format<avx2::Q4_1>>();
    case 6: return f.template operator()<Int8Format<avx2::Q5_0>>();
    case 7: return f.template operator()<Int8Format<avx2::Q5_1>>();
    case 8: return f.template operator()<Int8Format<avx2::Q8_0>>();
    case 12: return f.template operator()<Int8Format<avx2::Q4_K>>();
    case 13: return f.template operator()<Int8Format<avx2::Q5_K>>();
    case 14: return f.template operator()<Int8Format<avx2::Q6_K>>();
    default: throw std::invalid_argument("qmatmul: no integer path for GGML type " + std::to_string(ggml_type));
  }
}

}  // namespace rg
