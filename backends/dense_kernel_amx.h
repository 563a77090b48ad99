// The bfloat16 product on CPUs with AMX (Intel Sapphire Rapids and later), from the same packed
// weights as dense_kernel_packed.h. Included by dense_kernel.cpp after that header.
//
//   rg_amx::blocks(x [T, K], wp [N / 16, K / 2, 16, 2], bias or null, y [T, N], T, N, K, b0, b1)
//
// The packed layout is AMX's own for the B operand: 16 consecutive column pairs of a block (32
// columns x 16 rows, 1 KiB, 64 bytes a pair) are one B tile as they lie in memory, so the weights
// are read straight into tiles, one sequential stream per block, with no repacking. A tile of up
// to 16 tokens x 32 columns of x is the A operand, and tdpbf16ps adds their product to a C tile of
// 16 tokens x 16 outputs in float32. One tdpbf16ps does 16 x 16 x 32 multiply-adds where
// vdpbf16ps does 16 x 2, so at 16 tokens the product is bound by streaming the weights, as at 1.
//
// Each output's float32 sum runs over k in the same tile order whatever T is and however tokens
// are tiled or rows split between threads (a C row depends only on its own A row), so a request's
// outputs do not depend on what it is batched with. The bias is added to the finished sum, which
// is rounded to bfloat16 once (vcvtneps2bf16). tdpbf16ps treats bfloat16 denormal inputs as zero
// and flushes denormal sums, so its bits differ from the vdpbf16ps kernel's in the last place at
// times: a process uses one of the two for every product (dense_kernel.py).

#pragma once

#include "amx_tiles.h"

#if defined(RG_DENSE_PACKED) && defined(RG_AMX_TILES) && defined(__AMX_BF16__)
#define RG_DENSE_AMX 1

namespace rg_amx {

constexpr int64_t TILE_COLS = 32;    // bfloat16 columns of x (16 pairs) per A and B tile
constexpr int64_t TILE_TOKENS = 16;  // tokens per A and C tile (AMX's maximum rows)
constexpr int64_t TILE_ELEMS = TILE_COLS * rg_packed::BLOCK_ROWS;  // one B tile: 512 bfloat16
constexpr int64_t BLOCKS = 4;        // packed blocks (C tiles) per pass: C 0-3, A 4, B 5 and 6

// A and C tiles hold `tokens` rows, B tiles 16 (column pairs); 64 bytes a row everywhere.
inline void configure(int tokens) {
  rg_tiles::TileConfig c;
  for (int i = 0; i < 5; ++i) c.set(i, tokens, 64);
  for (int i = 5; i < 7; ++i) c.set(i, 16, 64);
  _tile_loadconfig(&c);
}

// y[t0 .. t0 + tokens, 16 n0 ..) for NB consecutive blocks starting at block `b` (the tile config
// set for `tokens` rows).
template <int NB>
inline void pass(const uint16_t* x, const uint16_t* wp, const float* bias, at::BFloat16* y, int64_t N, int64_t K,
                 int64_t b, int64_t t0, int tokens) {
  const int64_t block_elems = K * rg_packed::BLOCK_ROWS;
  const uint16_t* w0 = wp + b * block_elems;
  const uint16_t* xt = x + t0 * K;
  const int64_t x_stride = K * 2;  // bytes between tokens
  _tile_zero(0);
  if constexpr (NB > 1) _tile_zero(1);
  if constexpr (NB > 2) _tile_zero(2);
  if constexpr (NB > 3) _tile_zero(3);
  for (int64_t c = 0; c < K / TILE_COLS; ++c) {
    _tile_loadd(4, xt + c * TILE_COLS, x_stride);
    const uint16_t* wc = w0 + c * TILE_ELEMS;
    _tile_loadd(5, wc, 64);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (NB > 1) {
      _tile_loadd(6, wc + block_elems, 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if constexpr (NB > 2) {
      _tile_loadd(5, wc + 2 * block_elems, 64);
      _tile_dpbf16ps(2, 4, 5);
    }
    if constexpr (NB > 3) {
      _tile_loadd(6, wc + 3 * block_elems, 64);
      _tile_dpbf16ps(3, 4, 6);
    }
  }
  alignas(64) float sums[BLOCKS][TILE_TOKENS][16];
  _tile_stored(0, sums[0], 64);
  if constexpr (NB > 1) _tile_stored(1, sums[1], 64);
  if constexpr (NB > 2) _tile_stored(2, sums[2], 64);
  if constexpr (NB > 3) _tile_stored(3, sums[3], 64);
  for (int j = 0; j < NB; ++j) {
    const int64_t n0 = (b + j) * rg_packed::BLOCK_ROWS;
    const __m512 add = bias ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
    for (int t = 0; t < tokens; ++t) {
      const __m512 v = _mm512_add_ps(_mm512_load_ps(sums[j][t]), add);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + (t0 + t) * N + n0), (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

// Every token tile of `tokens` rows from t0 (step 16, up to t1) over blocks [b0, b1).
inline void tiles(const uint16_t* x, const uint16_t* wp, const float* bias, at::BFloat16* y, int64_t N, int64_t K,
                  int64_t b0, int64_t b1, int64_t t0, int64_t t1, int tokens) {
  configure(tokens);
  int64_t b = b0;
  // Blocks outer, tokens inner: a group of four blocks (<= 256 KiB at K = 2048) stays in L2
  // while every token tile reads it.
  for (; b + BLOCKS <= b1; b += BLOCKS)
    for (int64_t t = t0; t < t1; t += TILE_TOKENS) pass<BLOCKS>(x, wp, bias, y, N, K, b, t, tokens);
  for (; b < b1; ++b)
    for (int64_t t = t0; t < t1; t += TILE_TOKENS) pass<1>(x, wp, bias, y, N, K, b, t, tokens);
}

// y = x W^T (+ bias) for blocks [b0, b1) (rows 16 b0 .. 16 b1) and all T tokens; K % 32 == 0.
inline void blocks(const uint16_t* x, const uint16_t* wp, const float* bias, at::BFloat16* y, int64_t T, int64_t N,
                   int64_t K, int64_t b0, int64_t b1) {
  const int64_t full = T / TILE_TOKENS * TILE_TOKENS;
  if (full > 0) tiles(x, wp, bias, y, N, K, b0, b1, 0, full, TILE_TOKENS);
  if (full < T) tiles(x, wp, bias, y, N, K, b0, b1, full, T, static_cast<int>(T - full));
  _tile_release();
}

}  // namespace rg_amx

#endif  // RG_DENSE_AMX
