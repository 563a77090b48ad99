// The AVX512-VNNI build of the integer path (see kernel_int8.h): each weight row is decoded to
// bytes u and per-16 scales/offsets, then multiplied with vpdpbusd. Included by kernel_int8.h.

#pragma once

namespace rg {

// ---- weights: one block -> u [BS], sw [BS / 16], ow [BS / 16]

// NOTE: written with intrinsics: GCC left these byte loops scalar (uint8_t pointers may alias),
// which made Q4_0/Q4_1/Q5_0/Q5_1 rows 6-9x slower than the float path.
inline void store32(uint8_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }

inline void nibbles(const uint8_t* qs, uint8_t* u) {  // 16 bytes -> 32 values, low nibbles first
  const __m128i v = load16(qs);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(u), lo4(v));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(u + 16), hi4(v));
}

// 16 bytes of nibbles + 32 high bits (bit k adds 16 to value k) -> 32 five-bit values, in
// registers: storing the nibbles and reloading them stalls store forwarding.
inline void nibbles_high(const uint8_t* qs, uint32_t qh, uint8_t* u) {
  const __m128i v = load16(qs);
  const __m256i q = _mm256_set_m128i(hi4(v), lo4(v));
  store32(u, _mm256_or_si256(q, _mm256_maskz_set1_epi8(__mmask32(qh), 16)));
}

// Bits [s, s + width) of every byte, moved to bit 4 (16-bit shifts: the masks drop what crosses bytes).
inline __m256i high_bits(__m256i v, int s, int width) {
  return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(v, s), _mm256_set1_epi8(char((1 << width) - 1))), 4);
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

inline void int8_q8_0(const uint8_t* b, uint8_t* u, float* sw, float* ow) {  // two's complement q + 128
  const float d = fp16_at(b);
  store32(u, _mm256_xor_si256(load32(b + 2), _mm256_set1_epi8(char(0x80))));
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

inline void int8_q4_k(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  k4_scales(b, sw, ow);
  for (int c = 0; c < 4; ++c) {
    const __m256i v = load32(b + 16 + 32 * c);
    store32(u + 64 * c, lo4(v));
    store32(u + 64 * c + 32, hi4(v));
  }
}

inline void int8_q5_k(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  k4_scales(b, sw, ow);
  const __m256i h = load32(b + 16);
  for (int c = 0; c < 4; ++c) {
    const __m256i v = load32(b + 48 + 32 * c);
    store32(u + 64 * c, _mm256_or_si256(lo4(v), high_bits(h, 2 * c, 1)));
    store32(u + 64 * c + 32, _mm256_or_si256(hi4(v), high_bits(h, 2 * c + 1, 1)));
  }
}

inline void int8_q6_k(const uint8_t* b, uint8_t* u, float* sw, float* ow) {
  const float d = fp16_at(b + 208);
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (int g = 0; g < 16; ++g) {  // sub-block g holds values 16g..16g+15
    sw[g] = d * float(sc[g]);
    ow[g] = -32.0f * sw[g];
  }
  for (int h = 0; h < 2; ++h) {  // values 128h + 32i + l: nibbles of ql, two bits of qh each
    const __m256i l0 = load32(b + 64 * h), l1 = load32(b + 64 * h + 32), hv = load32(b + 128 + 32 * h);
    uint8_t* out = u + 128 * h;
    store32(out, _mm256_or_si256(lo4(l0), high_bits(hv, 0, 2)));
    store32(out + 32, _mm256_or_si256(lo4(l1), high_bits(hv, 2, 2)));
    store32(out + 64, _mm256_or_si256(hi4(l0), high_bits(hv, 4, 2)));
    store32(out + 96, _mm256_or_si256(hi4(l1), high_bits(hv, 6, 2)));
  }
}

using Int8Decoder = void (*)(const uint8_t*, uint8_t*, float*, float*);

// y[t * N] for TB tokens of one decoded row (u [Kp], sw/ow [K / 16]).
template <int TB>
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

// Rows [n0, n1) of y [T, N]: y = W x through the integer path.
template <Int8Decoder DECODE, int BS, int TS>
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
        dot_int8<4>(u.data() + r * Kp, sw.data() + r * groups, ow.data() + r * groups, a, t, y + t * N + r0 + r, N);
    for (; t < T; ++t)
      for (int64_t r = 0; r < rows; ++r)
        dot_int8<1>(u.data() + r * Kp, sw.data() + r * groups, ow.data() + r * groups, a, t, y + t * N + r0 + r, N);
  }
}

// One GGML type's integer path: Format::BS/TS and Format::rows(...), as in kernel_int8_avx2.h.
template <Int8Decoder DECODE, int BS_, int TS_>
struct Int8Format {
  static constexpr int BS = BS_, TS = TS_;
  static void rows(const Q8Acts& a, int64_t T, const uint8_t* W, float* y, int64_t N, int64_t n0, int64_t n1) {
    rows_times_q8<DECODE, BS, TS>(a, T, W, y, N, n0, n1);
  }
};

// f.template operator()<Format>() for one GGML type id.
template <typename F>
void with_int8_format(int64_t ggml_type, F&& f) {
  switch (ggml_type) {
    case 2: return f.template operator()<Int8Format<int8_q4_0, 32, 18>>();
    case 3: return f.template operator()<Int8Format<int8_q4_1, 32, 20>>();
    case 6: return f.template operator()<Int8Format<int8_q5_0, 32, 22>>();
    case 7: return f.template operator()<Int8Format<int8_q5_1, 32, 24>>();
    case 8: return f.template operator()<Int8Format<int8_q8_0, 32, 34>>();
    case 12: return f.template operator()<Int8Format<int8_q4_k, 256, 144>>();
    case 13: return f.template operator()<Int8Format<int8_q5_k, 256, 176>>();
    case 14: return f.template operator()<Int8Format<int8_q6_k, 256, 210>>();
    default: throw std::invalid_argument("qmatmul: no integer path for GGML type " + std::to_string(ggml_type));
  }
}

}  // namespace rg
