// The integer path on AMX tiles (Intel Sapphire Rapids and later), for every format whose weight
// scale is one per 32 values (all of the integer path's but Q6_K). Included by kernel_int8_avx2.h.
//
// The 256-bit kernels re-decode each row for every group of four tokens and spend about five
// instructions per 32 weights per token, so at 16 tokens they do four times the decoding and
// sixteen times the multiply work of one token. Here each panel of 16 rows is decoded once per
// call (the same F::block as theirs) into its codes, which are AMX's A operand as they lie (16
// rows x 32 codes a tile), and one tdpbusd (tdpbssd for Q8_0's signed codes) multiplies them by
// a tile of 8-16 tokens' 8-bit activations (transposed once per call) into exact int32 sums;
// fewer tokens take byte dot products on the decoded rows, their lanes summed to the same
// integers. Each (token, row, 32-value chunk) sum is then scaled in float32, s * sw * isum, and
// the per-16 offsets add ow . (s sum q) at the end, as in kernel_int8.h's formula. Every token's
// outputs are the same arithmetic in the same order whatever T, the token tiling or the row
// split, so batching never changes a request's logits; they differ from the 256-bit kernels' in
// the order of float32 additions only (those sum four products per lane first), so one process
// uses one path for every product: AMX where the CPU and the OS allow it, unless
// ROUTEGATE_NO_AMX=1 (rg_tiles::enabled()).

#pragma once

#include "../amx_tiles.h"

#if defined(RG_AMX_TILES) && defined(__AMX_INT8__) && defined(__AVX512F__)
#define RG_INT8_AMX 1

#include <type_traits>

namespace rg {
namespace amx8 {

constexpr int ROWS = 16;    // rows per panel (the 16 int32 columns of a C tile)
constexpr int TOKENS = 16;  // tokens per A and C tile
constexpr int CHUNK = 32;   // values per A and B tile (bytes of an A row)
template <typename F>
constexpr bool kSupported = !std::is_same_v<F, avx2::Q6_K>;  // Q6_K's scales are per 16 values

// Tokens below this many take byte dot products (panel_few: no tile costs), the rest tiles.
constexpr int FEW = 8;

inline bool enabled() { return rg_tiles::enabled(); }

// Lane i = i * stride: the offsets of a 16-lane gather or scatter.
inline __m512i lane_offsets(int64_t stride) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(static_cast<int>(stride)));
}

// Tiles: 0 = C (16 rows x tokens int32), 1 = A (16 rows x 32 weight codes, as decoded), 2 = B
// (8 x tokens dwords: four consecutive activations of a token in each).
inline void configure(int tokens) {
  rg_tiles::TileConfig c;
  c.set(0, ROWS, 4 * tokens);
  c.set(1, ROWS, CHUNK);
  c.set(2, CHUNK / 4, 4 * tokens);
  _tile_loadconfig(&c);
}

// One panel of up to 16 rows, decoded for the tiles (rows past the matrix are zeros).
struct Panel {
  std::vector<uint8_t> codes;  // [16][K]: each row's codes in order, the A operand as it lies
  std::vector<float> sw;       // [K / 32][16]: the weight scale of each row's chunk
  std::vector<float> ow;       // [K / 16][16]: each row's offsets
  std::vector<float> ow_row;   // [K / 16]: one row's offsets (scratch)
  std::vector<int32_t> scratch;  // panel_few's lane sums [FEW][chunks][8] and chunk sums [FEW][16][chunks]
  void resize(int64_t K) {
    codes.resize(ROWS * K);
    scratch.resize(FEW * (K / CHUNK) * (8 + ROWS));
    sw.resize(K / CHUNK * ROWS);
    ow.resize(K / 16 * ROWS);
    ow_row.resize(K / 16);
  }
};

// Up to 16 tokens' activations, transposed once per call for the B tiles and the token-wise
// scales (tokens past T are zeros).
struct Tokens {
  std::vector<int32_t> b;   // [K / 4][16]: dword (d, t) = q[t0 + t][4d .. 4d + 3]
  std::vector<float> s;     // [K / 32][16]: token t's scale of chunk c
  std::vector<float> sums;  // [K / 16][16]: token t's s * sum(q) of 16-value group g
  void fill(const Q8Acts& a, int64_t t0, int tt) {
    const int64_t K = a.K;
    b.assign(K / 4 * TOKENS, 0);
    s.assign(K / CHUNK * TOKENS, 0.0f);
    sums.assign(K / 16 * TOKENS, 0.0f);
    for (int t = 0; t < tt; ++t) {
      const int8_t* q = a.q + (t0 + t) * a.Kp;
      for (int64_t d = 0; d < K / 4; ++d) std::memcpy(&b[d * TOKENS + t], q + 4 * d, 4);
      for (int64_t c = 0; c < K / CHUNK; ++c) s[c * TOKENS + t] = a.sv[(t0 + t) * (a.Kp / 4) + 8 * c];
      for (int64_t g = 0; g < K / 16; ++g) sums[g * TOKENS + t] = a.sums[(t0 + t) * (K / 16) + g];
    }
  }
};

// Decodes the panel's rows [n0, n0 + nr): chunk(r, c, u) with each row's 32-value chunk of codes,
// then row_done(r), and the weight scales and offsets into p.sw and p.ow; rows past nr get zero
// scales and offsets, and pad(r). Rows are prefetched ahead (kernel_int8_avx2.h).
template <typename F, typename Chunk, typename RowDone, typename Pad>
__attribute__((always_inline)) inline void decode_rows(const uint8_t* W, int64_t row_bytes, int64_t n0, int nr,
                                                       int64_t K, Panel& p, Chunk&& chunk, RowDone&& row_done,
                                                       Pad&& pad) {
  const int64_t chunks = K / CHUNK, groups = K / 16, num_blocks = K / F::BS;
  // Raw pointers: stores through the vectors' data would otherwise make the compiler reload
  // every vector's data pointer from the (thread-local) panel after each store.
  float* __restrict sw = p.sw.data();
  float* __restrict ow = p.ow.data();
  float* __restrict ow_row = p.ow_row.data();
  for (int r = 0; r < ROWS; ++r) {
    if (r >= nr) {
      for (int64_t c = 0; c < chunks; ++c) sw[c * ROWS + r] = 0.0f;
      for (int64_t g = 0; g < groups; ++g) ow[g * ROWS + r] = 0.0f;
      pad(r);
      continue;
    }
    const uint8_t* row = W + (n0 + r) * row_bytes;
    // The loop of avx2::prefetch_row, written out: called from here (GCC 12, the lambdas
    // inlined into this function) the prefetches were dropped, and T = 1 fell back to ~5 GB/s.
    for (int64_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(row + avx2::kPrefetchBytes + o, 0, 3);
    for (int64_t blk = 0; blk < num_blocks; ++blk) {
      const int64_t c0 = blk * (F::BS / CHUNK);
      F::block(row + blk * F::TS, ow_row + blk * (F::BS / 16),
               [&](int j, __m256i u, __m256 ws) __attribute__((always_inline)) {
                 chunk(r, c0 + j, u);
                 sw[(c0 + j) * ROWS + r] = _mm256_cvtss_f32(ws);  // one scale for the 32 values
               });
    }
    row_done(r);
    if constexpr (!F::SIGNED)
      for (int64_t g = 0; g < groups; ++g) ow[g * ROWS + r] = ow_row[g];
  }
}

// The panel's codes for the tiles (panel_many).
template <typename F>
void decode_panel(const uint8_t* W, int64_t row_bytes, int64_t n0, int nr, int64_t K, Panel& p) {
  uint8_t* __restrict codes = p.codes.data();
  decode_rows<F>(
      W, row_bytes, n0, nr, K, p,
      [&](int r, int64_t c, __m256i u) __attribute__((always_inline)) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + r * K + CHUNK * c), u);
      },
      [](int) {}, [&](int r) { std::memset(codes + r * K, 0, K); });
}

// isum (16 rows x tt tokens, exact) of chunk c into C (tile 0).
template <bool SIGNED>
inline void chunk_sums(const Panel& p, const Tokens& x, int64_t K, int64_t c) {
  _tile_zero(0);
  _tile_loadd(1, p.codes.data() + CHUNK * c, K);
  _tile_loadd(2, x.b.data() + c * (CHUNK / 4) * TOKENS, 4 * TOKENS);
  if constexpr (SIGNED)
    _tile_dpbssd(0, 1, 2);
  else
    _tile_dpbusd(0, 1, 2);
}

// The eight lanes of each of eight vectors summed: lane i of the result is the sum of v[i]'s
// lanes (int32, exact).
inline __m256i sum_lanes8(const __m256i* p) {
  __m256i v[8];
  for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_si256(p + i);
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  // a = [v0 v1 v2 v3 (low halves) | v0 v1 v2 v3 (high halves)], b the same for v4..v7
  const __m256i c = _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
  return c;  // [v0 v1 v2 v3 v4 v5 v6 v7]
}

inline int32_t sum_lanes(__m256i d) {
  const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
  const __m128i h2 = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
  return _mm_cvtsi128_si32(_mm_add_epi32(h2, _mm_shuffle_epi32(h2, 1)));
}

// 1 to 7 tokens (decode): each (token, row, chunk) sum from one 256-bit byte dot product on the
// decoded row, its eight int32 lanes then added (exactly: the same integer a tile gives), as a
// vector over 16 rows. A tile's fixed cost per chunk (zero, two loads, tdpbusd, store, in series)
// made one token 1.5-2.8x slower on tiles than this. y[t0 + t, n0 .. n0 + nr).
template <typename F, int TT>
void panel_few(const Q8Acts& a, int64_t t0, const uint8_t* W, int64_t row_bytes, int64_t n0, int nr, Panel& p,
               float* y, int64_t N) {
  const int64_t K = a.K, chunks = K / CHUNK, groups = K / 16;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i* __restrict lanes = reinterpret_cast<__m256i*>(p.scratch.data());  // [TT][chunks] of 8 lanes
  int32_t* __restrict isum = p.scratch.data() + TT * chunks * 8;              // [TT][16][chunks]
  const int8_t* q[TT];
  for (int t = 0; t < TT; ++t) q[t] = a.q + (t0 + t) * a.Kp;
  auto row_sums = [&](int r) {  // a decoded row's lanes -> its chunk sums
    for (int t = 0; t < TT; ++t) {
      int32_t* sums = isum + (t * ROWS + r) * chunks;
      const __m256i* l = lanes + t * chunks;
      int64_t c = 0;
      for (; c + 8 <= chunks; c += 8) _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums + c), sum_lanes8(l + c));
      for (; c < chunks; ++c) sums[c] = sum_lanes(_mm256_loadu_si256(l + c));
    }
  };
  decode_rows<F>(
      W, row_bytes, n0, nr, K, p,
      // By value: through captured references the compiler reloads q and lanes after every store.
      [=](int, int64_t c, __m256i u) __attribute__((always_inline)) {
        const __m256i uu = F::SIGNED ? _mm256_sign_epi8(u, u) : u;
#pragma GCC unroll 8
        for (int t = 0; t < TT; ++t) {
          __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[t] + CHUNK * c));
          if constexpr (F::SIGNED) x = _mm256_sign_epi8(x, u);
          _mm256_storeu_si256(lanes + t * chunks + c, avx2::dot_u8s8(uu, x, ones));
        }
      },
      row_sums,
      [&](int r) {
        for (int t = 0; t < TT; ++t) std::fill_n(isum + (t * ROWS + r) * chunks, chunks, 0);
      });
  const __m512i by_row = lane_offsets(chunks);
  const float* sw = p.sw.data();
  const float* ow = p.ow.data();
  const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1u);
  for (int t = 0; t < TT; ++t) {
    const int32_t* sums_t = isum + t * ROWS * chunks;
    const float* sv = a.sv + (t0 + t) * (a.Kp / 4);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(sw + c * ROWS), _mm512_set1_ps(sv[8 * c]));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_i32gather_epi32(by_row, sums_t + c, 4)), s, acc);
    }
    if constexpr (!F::SIGNED)
      for (int64_t g = 0; g < groups; ++g)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(ow + g * ROWS), _mm512_set1_ps(a.sums[(t0 + t) * groups + g]), acc);
    _mm512_mask_storeu_ps(y + t * N, mask, acc);
  }
}

template <typename F, int TT = FEW - 1>
void few(int tt, const Q8Acts& a, int64_t t0, const uint8_t* W, int64_t row_bytes, int64_t n0, int nr, Panel& p,
         float* y, int64_t N) {
  if constexpr (TT >= 1) {
    if (tt == TT) return panel_few<F, TT>(a, t0, W, row_bytes, n0, nr, p, y, N);
    return few<F, TT - 1>(tt, a, t0, W, row_bytes, n0, nr, p, y, N);
  }
}

// 8 to 16 tokens on tiles: sums as a vector over the tokens, one accumulator per row; each
// (token, row) takes exactly panel_few's float operations in its order. y[t0 + t, n0 + r] = acc[r][t].
template <bool SIGNED>
void panel_many(const Panel& p, const Tokens& x, int64_t K, float* y, int64_t N, int tt, int nr) {
  __m512 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
  alignas(64) int32_t sums[ROWS][TOKENS];
  for (int64_t c = 0; c < K / CHUNK; ++c) {
    chunk_sums<SIGNED>(p, x, K, c);
    _tile_stored(0, sums, 4 * TOKENS);
    const __m512 s = _mm512_loadu_ps(x.s.data() + c * TOKENS);
    const float* sw = p.sw.data() + c * ROWS;
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r)
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(sums[r])), _mm512_mul_ps(_mm512_set1_ps(sw[r]), s),
                               acc[r]);
  }
  if constexpr (!SIGNED)
    for (int64_t g = 0; g < K / 16; ++g) {
      const __m512 sums_g = _mm512_loadu_ps(x.sums.data() + g * TOKENS);
      const float* ow = p.ow.data() + g * ROWS;
#pragma GCC unroll 16
      for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(ow[r]), sums_g, acc[r]);
    }
  const __m512i offsets = lane_offsets(N);
  const __mmask16 tokens = static_cast<__mmask16>((1u << tt) - 1u);
  for (int r = 0; r < nr; ++r) _mm512_mask_i32scatter_ps(y + r, tokens, offsets, acc[r], 4);
}

// Rows [n0, n1) of y [T, N] (y + t * N + n): panels of 16 rows, each decoded once per call;
// tiles of 8 to 16 tokens on AMX, fewer tokens (decode, the tail of a prefill) with panel_few.
template <typename F>
void rows(const Q8Acts& a, int64_t T, const uint8_t* W, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t K = a.K, row_bytes = K / F::BS * F::TS;
  avx2::prefetch_start(W + n0 * row_bytes, (n1 - n0) * row_bytes);
  thread_local Panel panel;
  panel.resize(K);
  thread_local std::vector<Tokens> tiles;
  const int64_t num_tiles = T / TOKENS + (T % TOKENS >= FEW ? 1 : 0);  // the rest: panel_few
  const int64_t tiled = std::min(T, num_tiles * TOKENS);
  if (static_cast<int64_t>(tiles.size()) < num_tiles) tiles.resize(num_tiles);
  for (int64_t i = 0; i < num_tiles; ++i)
    tiles[i].fill(a, i * TOKENS, static_cast<int>(std::min<int64_t>(TOKENS, T - i * TOKENS)));
  int configured = 0;
  for (int64_t r0 = n0; r0 < n1; r0 += ROWS) {
    const int nr = static_cast<int>(std::min<int64_t>(ROWS, n1 - r0));
    if (num_tiles > 0) {
      decode_panel<F>(W, row_bytes, r0, nr, K, panel);
      for (int64_t i = 0; i < num_tiles; ++i) {
        const int tt = static_cast<int>(std::min<int64_t>(TOKENS, T - i * TOKENS));
        if (tt != configured) configure(configured = tt);
        panel_many<F::SIGNED>(panel, tiles[i], K, y + i * TOKENS * N + r0, N, tt, nr);
      }
    }
    for (int64_t t0 = tiled; t0 < T; t0 += FEW - 1) {
      const int tt = static_cast<int>(std::min<int64_t>(FEW - 1, T - t0));
      few<F>(tt, a, t0, W, row_bytes, r0, nr, panel, y + t0 * N + r0, N);
    }
  }
  if (configured) _tile_release();
}

}  // namespace amx8
}  // namespace rg

#endif  // RG_INT8_AMX
