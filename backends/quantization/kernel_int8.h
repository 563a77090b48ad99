// The integer path of the k-quant kernels: 8-bit activations times the weights' integer codes,
// the way llama.cpp multiplies. Included by kernel_qmatmul.cpp; this file holds the activations,
// kernel_int8_avx2.h the products, on 256-bit registers with the byte dot product the CPU has:
// - AVX512-VNNI (with VL) or AVX-VNNI: vpdpbusd, 32 unsigned-by-signed byte products summed
//   four by four into int32 lanes in one instruction;
// - AVX2: vpmaddubsw (32 byte products summed in pairs into int16), then vpmaddwd by ones.
// Both give the same integers, so every x86 CPU with AVX2 computes the same logits.
//
// NOTE: AVX-512 CPUs run the 256-bit kernels too. An earlier 512-bit kernel (rows decoded 16 at
// a time into a buffer, then vpdpbusd on zmm) measured, on the 2-core Zen 4 EPYC with both
// models' matrices (2026-12-07), 1.6x slower than these at T=1 and 1.5x at T=4, 1.2x at T=8,
// 0.8-1.03x at T=16 and 0.96-1.0x at T=512: decode is the memory-bound case that matters, and
// one code path keeps batching from ever changing a request's logits. On CPUs with AMX_INT8
// the formats with one scale per 32 values run on tiles instead (kernel_int8_amx.h), at every
// batch size, with the same integer sums and their own fixed float order.
//
// Weights: each block is decoded to bytes u with w = sw * u + ow, one (sw, ow) per 16 weights
// (Q6_K's sub-blocks are 16 long, the others' 32 or 256):
//     Q4_0 u = q, ow = -8d         Q4_1 u = q, ow = m          Q8_0 u = q (signed), ow = 0
//     Q5_0 u = q, ow = -16d        Q5_1 u = q, ow = m          Q6_K u = q, sw = d sc, ow = -32 d sc
//     Q4_K/Q5_K u = q, sw = d sc, ow = -dmin m
// (Q8_0's signed codes are multiplied as |u| by sign(u) q: see kernel_int8_avx2.h).
// Activations: each 32 values x are quantized as llama.cpp's Q8_0 does, q = round(x / s) with
// s = max|x| / 127, so x ~ s q. Then per 16 weights
//     sum w x ~ sw s sum(u q) + ow (s sum(q)),
// the first sum exact in int32. fake_quantize (s q as floats) gives these same activations to
// tests and to the float paths of CPUs without AVX2.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernel_decode.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define RG_INT8_DOT 1
#endif

namespace rg {

#ifdef RG_INT8_DOT
constexpr bool kInt8Dot = true;
#else
constexpr bool kInt8Dot = false;
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

// ---- products

// Quantized activations of T tokens: q [T, Kp], sv [T, Kp / 4], sums [T, K / 16].
struct Q8Acts {
  const int8_t* q;
  const float* sv;
  const float* sums;
  int64_t K, Kp;
};

}  // namespace rg

#ifdef RG_INT8_DOT
#include "kernel_int8_avx2.h"
#endif
