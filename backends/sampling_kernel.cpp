// Fused per-row sampling for backends/sampler.py (CPU, float32 logits), built by sampling_kernel.py.
//
//   sample_rows(logits [B, V], fparams float64 [B, 4], iparams int64 [B, 3], poly, min_entropy,
//               candidate_blocks, max_block_top_k) -> (token_ids [B], logprobs [B], top_ids [B, N], top_lps [B, N])
//
// Each row's logits are read from memory once (maximum and per-block maxima); every later pass
// runs over the same 1 MiB row while it sits in L2, and no row is sorted whole:
//   greedy     argmax (first index of the maximum);
//   untruncated  w = exp((x - max) * scale), min-p zeroes w < min_p, inverse CDF in vocabulary
//              order by CDF_BLOCK block sums, then one block;
//   top-k/top-p  the descending order (x desc, index asc) is known only where it is needed: the
//              tokens >= the c-th largest block maximum (complete above that threshold, so their
//              order is a true prefix of the row's), else a histogram of d = (x - max) * scale in
//              NUM_BINS bins (monotone in x, so each bin is a contiguous run of the descending
//              order) whose crossing bins alone are listed and sorted.
// The rules are the sampler's (its module docstring); the arithmetic is not torch's: weights use
// exp_f below (within 1 ulp of the correctly rounded e^d, as torch.exp is) and sums are in double,
// in another order. So a token can differ from the torch path's only when u, p or min_p sits
// within float rounding of a boundary of the kept set or of a CDF interval. Ties at a cut keep the
// lower token ids.

#include "torch_ext.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int LANES = 16;             // one AVX-512 register of floats
constexpr int64_t BLOCK = 64;         // tokens per block maximum
constexpr int64_t CDF_BLOCK = 256;    // tokens per block sum of the untruncated inverse CDF
constexpr int NUM_BINS = 4096;        // histogram bins of d = (x - max) * scale ...
constexpr float BIN_RANGE = 64.0f;    // ... over [-64, 0] nats; everything below shares the last
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

// e^d for float32 (Cephes expf). exp16 below does the same operations in the same order (explicit
// fma; -ffp-contract=off fuses nothing else), so a weight recomputed by scalar code later equals
// bit for bit the one a vector loop summed before.
inline float exp_f(float d) {
  float e = d < -104.0f ? -104.0f : d;  // e^-104 rounds to 0 below; also maps -inf to 0
  e = e > 88.0f ? 88.0f : e;
  const float n = std::floor(std::fma(e, 1.44269504088896341f, 0.5f));
  float r = std::fma(n, -0.693359375f, e);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  const float y = std::fma(p, r * r, r) + 1.0f;
#if defined(__AVX512F__)
  return _mm_cvtss_f32(_mm_scalef_ss(_mm_set_ss(y), _mm_set_ss(n)));  // exactly exp16's y * 2^n
#else
  return std::ldexp(y, static_cast<int>(n));  // y * 2^n rounded once, subnormal results included
#endif
}

#if defined(__AVX512F__)
inline __m512 exp16(__m512 d) {
  __m512 e = _mm512_max_ps(d, _mm512_set1_ps(-104.0f));
  e = _mm512_min_ps(e, _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(e, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), e);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}
#endif

// The next row of this thread, pulled into L2 a line per 16 tokens while a compute pass runs over
// the current (L2-resident) row, so its first read does not wait for memory.
struct Ahead {
  const char* p = nullptr;
  const char* end = nullptr;
  void step() {
#if defined(__AVX512F__)
    if (p < end) _mm_prefetch(p, _MM_HINT_T1), p += 64;
#endif
  }
};
thread_local Ahead ahead;

struct Item {
  float x;
  int32_t id;
};

inline bool before(const Item& a, const Item& b) { return a.x > b.x || (a.x == b.x && a.id < b.id); }

struct RowMath {  // one row's processed logits: d = (x - m) * s <= 0, weight w = e^d = p / p_max
  const float* x;
  int64_t V;
  float m, s;
  float d(float v) const { return (v - m) * s; }
  float w(float v) const { return exp_f((v - m) * s); }
};

// Row maximum and the maximum of every BLOCK tokens (the last block may be short).
float block_maxima(const float* x, int64_t V, float* bmax) {
  const int64_t nb = (V + BLOCK - 1) / BLOCK;
  float m = NEG_INF;
  for (int64_t b = 0; b < nb; ++b) {
    const float* p = x + b * BLOCK;
    const int64_t len = std::min(BLOCK, V - b * BLOCK);
    float mx = NEG_INF;
#if defined(__AVX512F__)
    if (len == BLOCK) {
      const __m512 a = _mm512_max_ps(_mm512_max_ps(_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16)),
                                     _mm512_max_ps(_mm512_loadu_ps(p + 32), _mm512_loadu_ps(p + 48)));
      mx = _mm512_reduce_max_ps(a);
    } else
#endif
    if (len == BLOCK) {
      float acc[LANES];
      for (int l = 0; l < LANES; ++l) acc[l] = p[l];
      for (int64_t j = LANES; j < BLOCK; j += LANES)
        for (int l = 0; l < LANES; ++l) acc[l] = acc[l] > p[j + l] ? acc[l] : p[j + l];
      for (int l = 0; l < LANES; ++l) mx = acc[l] > mx ? acc[l] : mx;
    } else {
      for (int64_t j = 0; j < len; ++j) mx = p[j] > mx ? p[j] : mx;
    }
    bmax[b] = mx;
    m = mx > m ? mx : m;
  }
  return m;
}

int64_t first_max(const float* x, int64_t V, const float* bmax, float m) {
  for (int64_t b = 0; b * BLOCK < V; ++b)
    if (bmax[b] == m)
      for (int64_t j = b * BLOCK; j < std::min(V, (b + 1) * BLOCK); ++j)
        if (x[j] == m) return j;
  return 0;  // only for a NaN maximum, which has no index
}

// Every token >= T, sorted, where T is the c-th largest block maximum: at least c tokens, and
// every token larger than one left out (so the list is a prefix of the row's descending order,
// and it holds the row's top c). When c covers every block it is the whole row.
void top_candidates(const float* x, int64_t V, const float* bmax, int64_t c,
                    std::vector<float>& tmp, std::vector<Item>& out) {
  const int64_t nb = (V + BLOCK - 1) / BLOCK;
  float T = NEG_INF;
  if (c < nb) {
    tmp.assign(bmax, bmax + nb);
    std::nth_element(tmp.begin(), tmp.begin() + (c - 1), tmp.end(), std::greater<float>());
    T = tmp[c - 1];
  }
  out.clear();
  for (int64_t b = 0; b < nb; ++b)
    if (bmax[b] >= T)
      for (int64_t j = b * BLOCK; j < std::min(V, (b + 1) * BLOCK); ++j)
        if (x[j] >= T) out.push_back({x[j], static_cast<int32_t>(j)});
  std::sort(out.begin(), out.end(), before);
}

// Sum of e^(x - m) and of e^(x - m) (x - m) (masked tokens add 0): the entropy of softmax(x).
double entropy(const float* x, int64_t V, float m) {
  double z = 0.0, zd = 0.0;
  for (int64_t j0 = 0; j0 < V; j0 += CDF_BLOCK) {
    const int64_t len = std::min(CDF_BLOCK, V - j0);
    float a[LANES] = {}, b[LANES] = {};
    int64_t j = 0;
#if defined(__AVX512F__)
    __m512 va = _mm512_setzero_ps(), vb = _mm512_setzero_ps();
    for (; j + LANES <= len; j += LANES) {
      const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + j0 + j), _mm512_set1_ps(m)), e = exp16(d);
      va = _mm512_add_ps(va, e);
      ahead.step();
      vb = _mm512_add_ps(vb, _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(e, _mm512_setzero_ps(), _CMP_GT_OQ), e, d));
    }
    _mm512_storeu_ps(a, va);
    _mm512_storeu_ps(b, vb);
#endif
    for (; j + LANES <= len; j += LANES)
      for (int l = 0; l < LANES; ++l) {
        const float d = x[j0 + j + l] - m, e = exp_f(d);
        a[l] += e;
        b[l] += e > 0.0f ? e * d : 0.0f;
      }
    for (; j < len; ++j) {
      const float d = x[j0 + j] - m, e = exp_f(d);
      a[0] += e;
      b[0] += e > 0.0f ? e * d : 0.0f;
    }
    for (int l = 0; l < LANES; ++l) z += a[l], zd += b[l];
  }
  return std::log(z) - zd / z;
}

// Sum over the row of w (with w < min_p counted as 0), in double, per CDF_BLOCK block if sums.
double weight_sum(const RowMath& rm, float min_p, double* sums) {
  double total = 0.0;
  for (int64_t j0 = 0; j0 < rm.V; j0 += CDF_BLOCK) {
    const int64_t len = std::min(CDF_BLOCK, rm.V - j0);
    const float* p = rm.x + j0;
    float a[LANES] = {};
    int64_t j = 0;
#if defined(__AVX512F__)
    const __m512 vm = _mm512_set1_ps(rm.m), vs = _mm512_set1_ps(rm.s), vmin = _mm512_set1_ps(min_p);
    __m512 va = _mm512_setzero_ps();
    for (; j + LANES <= len; j += LANES) {
      const __m512 w = exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(p + j), vm), vs));
      va = _mm512_add_ps(va, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(w, vmin, _CMP_GE_OQ), w));
      ahead.step();
    }
    _mm512_storeu_ps(a, va);
#endif
    for (; j + LANES <= len; j += LANES)
      for (int l = 0; l < LANES; ++l) {
        const float w = rm.w(p[j + l]);
        a[l] += w >= min_p ? w : 0.0f;
      }
    double s = 0.0;
    for (; j < len; ++j) {
      const float w = rm.w(p[j]);
      s += w >= min_p ? w : 0.0f;
    }
    for (int l = 0; l < LANES; ++l) s += a[l];
    if (sums) sums[j0 / CDF_BLOCK] = s;
    total += s;
  }
  return total;
}

// The descending order of one row in segments: segment s holds ranks [start[s], start[s+1]) with
// weight before[s+1] - before[s]; build(s, items) lists it sorted, or returns false when it cannot
// (the candidate path's "rest"), which sends the row to the histogram path.
struct Segments {
  std::vector<int64_t> start;
  std::vector<double> before;
  std::function<bool(int64_t, std::vector<Item>&)> build;
  int64_t built = -1;
  std::vector<Item> items;

  int64_t count() const { return static_cast<int64_t>(start.size()) - 1; }
  const std::vector<Item>* get(int64_t s) {
    if (s != built) {
      built = -1;
      if (!build(s, items)) return nullptr;
      built = s;
    }
    return &items;
  }
  int64_t holding(int64_t rank) const {  // the (non-empty) segment holding a rank
    return std::upper_bound(start.begin(), start.end(), rank) - start.begin() - 1;
  }
};

// Weight of ranks [0, n), n >= 1.
bool prefix_mass(Segments& sg, const RowMath& rm, int64_t n, double& out) {
  const int64_t s = sg.holding(n - 1);
  if (sg.start[s + 1] == n) return out = sg.before[s + 1], true;
  const auto* it = sg.get(s);
  if (!it) return false;
  double acc = sg.before[s];
  for (int64_t q = 0; q < n - sg.start[s]; ++q) acc += rm.w((*it)[q].x);
  return out = acc, true;
}

// Top-p's cut: the least r >= 1 whose ranks [0, r) weigh >= target, at most limit.
bool rank_reaching(Segments& sg, const RowMath& rm, double target, int64_t limit, int64_t& out) {
  for (int64_t s = 0; s < sg.count(); ++s) {
    if (sg.start[s] >= limit) break;
    if (sg.before[s + 1] < target || sg.start[s] == sg.start[s + 1]) continue;
    const auto* it = sg.get(s);
    if (!it) return false;
    double acc = sg.before[s];
    for (int64_t q = 0; q < static_cast<int64_t>(it->size()); ++q) {
      acc += rm.w((*it)[q].x);
      if (acc >= target) return out = std::min(limit, std::max<int64_t>(1, sg.start[s] + q + 1)), true;
    }
    return out = std::min(limit, sg.start[s + 1]), true;  // rounding: the listed sum fell short
  }
  return out = limit, true;
}

// The draw among ranks [0, n): the first whose cumulative weight exceeds t; when rounding leaves
// t at or past the total, the last rank with a positive weight.
bool draw_rank(Segments& sg, const RowMath& rm, double t, int64_t n, Item& out) {
  bool found = false;
  for (int64_t s = 0; s < sg.count() && sg.start[s] < n; ++s) {
    const int64_t end = std::min(sg.start[s + 1], n);
    if (end == sg.start[s] || (end == sg.start[s + 1] && sg.before[s + 1] <= t && end < n)) continue;
    const auto* it = sg.get(s);
    if (!it) return false;
    double acc = sg.before[s];
    for (int64_t q = 0; q < end - sg.start[s]; ++q) {
      const float w = rm.w((*it)[q].x);
      acc += w;
      if (w > 0.0f || !found) out = (*it)[q], found = true;
      if (acc > t) return true;
    }
  }
  return found;
}

struct RowOut {
  int64_t token;
  double logprob;
  int64_t* top_ids;
  double* top_lps;
};

struct Scratch {
  std::vector<float> bmax, tmp;
  std::vector<double> sums;
  std::vector<Item> cands, top;
  std::vector<int64_t> hist_count;
  std::vector<double> hist_mass;
};

inline int bin_of(float d) {
  const float b = (0.0f - d) * (NUM_BINS / BIN_RANGE);
  return b < NUM_BINS - 1 ? static_cast<int>(b) : NUM_BINS - 1;  // -inf and NaN: the last bin
}

#if defined(__AVX512F__)
inline __m512 rm_d16(const RowMath& rm, int64_t j) {  // rm.d of 16 tokens from j
  return _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(rm.x + j), _mm512_set1_ps(rm.m)), _mm512_set1_ps(rm.s));
}

inline __m512i bins16(__m512 d) {  // bin_of, 16 at a time
  const __m512 b = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), d), _mm512_set1_ps(NUM_BINS / BIN_RANGE));
  const __mmask16 in = _mm512_cmp_ps_mask(b, _mm512_set1_ps(NUM_BINS - 1), _CMP_LT_OQ);
  return _mm512_mask_cvttps_epi32(_mm512_set1_epi32(NUM_BINS - 1), in, b);
}
#endif

// The listed top ranks, for logprobs: (id, d - log_z) while keep(item) holds.
template <typename Keep>
void write_top(const std::vector<Item>& items, int64_t n, double log_z, const RowMath& rm, Keep keep, RowOut& o) {
  for (int64_t q = 0; q < n && q < static_cast<int64_t>(items.size()) && keep(q, items[q]); ++q) {
    o.top_ids[q] = items[q].id;
    o.top_lps[q] = static_cast<double>(rm.d(items[q].x)) - log_z;
  }
}

// A top-k and/or top-p row once the segments are set: cut, draw, logprobs. False = needs more.
bool finish_truncated(Segments& sg, const RowMath& rm, int64_t k, double top_p, float min_p,
                      int64_t n_minp, bool minp_known, double z_all, double u, int64_t num_logprobs,
                      Scratch& sc, RowOut& o) {
  const int64_t n_k = k;
  double z = z_all;
  if (top_p < 1.0 && n_k < rm.V && !prefix_mass(sg, rm, n_k, z)) return false;
  int64_t n_keep = n_k;
  if (top_p < 1.0 && !rank_reaching(sg, rm, top_p * z, n_k, n_keep)) return false;
  if (!minp_known && n_keep > n_minp) return false;  // min-p's cut lies past what is listed
  n_keep = std::max<int64_t>(1, std::min(n_keep, n_minp));
  double total;
  if (!prefix_mass(sg, rm, n_keep, total)) return false;
  Item chosen;
  if (!draw_rank(sg, rm, u * total, n_keep, chosen)) return false;
  const double log_z = std::log(total);
  o.token = chosen.id;
  o.logprob = static_cast<double>(rm.d(chosen.x)) - log_z;
  if (num_logprobs > 0) {
    const auto* first = sg.start[1] >= std::min(num_logprobs, n_keep) ? sg.get(0) : nullptr;
    if (!first) {  // the top ranks span segments (histogram bins): list them by block maxima
      top_candidates(rm.x, rm.V, sc.bmax.data(), num_logprobs, sc.tmp, sc.top);
      first = &sc.top;
    }
    write_top(*first, std::min(num_logprobs, n_keep), log_z, rm, [](int64_t, const Item&) { return true; }, o);
  }
  return true;
}

// Histogram segments: bin b of d lists the tokens whose d falls in it, sorted.
bool histogram_row(const RowMath& rm, int64_t k, double top_p, float min_p, double u,
                   int64_t num_logprobs, Scratch& sc, RowOut& o) {
  auto& cnt = sc.hist_count;
  auto& mass = sc.hist_mass;
  cnt.assign(NUM_BINS, 0);
  mass.assign(NUM_BINS, 0.0);
  int64_t n_minp = 0;
  double z = 0.0;
  int64_t j = 0;
#if defined(__AVX512F__)
  int32_t bins[LANES];
  float ws[LANES];
  for (; j + LANES <= rm.V; j += LANES) {
    const __m512 d = rm_d16(rm, j), w = exp16(d);
    _mm512_storeu_si512(bins, bins16(d));
    _mm512_storeu_ps(ws, w);
    for (int l = 0; l < LANES; ++l) {
      cnt[bins[l]] += 1;
      mass[bins[l]] += ws[l];
    }
    z += _mm512_reduce_add_ps(w);
    ahead.step();
    n_minp += __builtin_popcount(_mm512_cmp_ps_mask(w, _mm512_set1_ps(min_p), _CMP_GE_OQ));
  }
#endif
  for (; j < rm.V; ++j) {
    const float d = rm.d(rm.x[j]), w = exp_f(d);
    const int b = bin_of(d);
    cnt[b] += 1;
    mass[b] += w;
    z += w;
    n_minp += w >= min_p;
  }
  Segments sg;
  sg.start.assign(NUM_BINS + 1, 0);
  sg.before.assign(NUM_BINS + 1, 0.0);
  for (int b = 0; b < NUM_BINS; ++b) {
    sg.start[b + 1] = sg.start[b] + cnt[b];
    sg.before[b + 1] = sg.before[b] + mass[b];
  }
  sg.build = [&rm](int64_t b, std::vector<Item>& items) {
    items.clear();
    int64_t j = 0;
#if defined(__AVX512F__)
    for (; j + LANES <= rm.V; j += LANES)
      for (uint32_t hit = _mm512_cmpeq_epi32_mask(bins16(rm_d16(rm, j)), _mm512_set1_epi32(b)); hit; hit &= hit - 1) {
        const int64_t i = j + __builtin_ctz(hit);
        items.push_back({rm.x[i], static_cast<int32_t>(i)});
      }
#endif
    for (; j < rm.V; ++j)
      if (bin_of(rm.d(rm.x[j])) == b) items.push_back({rm.x[j], static_cast<int32_t>(j)});
    std::sort(items.begin(), items.end(), before);
    return true;
  };
  return finish_truncated(sg, rm, k, top_p, min_p, n_minp, true, z, u, num_logprobs, sc, o);
}

void truncated_row(const RowMath& rm, int64_t k, double top_p, float min_p, double u, int64_t num_logprobs,
                   int64_t candidate_blocks, int64_t max_block_top_k, Scratch& sc, RowOut& o) {
  const bool by_k = k < rm.V && k <= max_block_top_k;
  if (by_k || (top_p < 1.0 && candidate_blocks > 0)) {
    const double z_all = top_p < 1.0 && k >= rm.V ? weight_sum(rm, 0.0f, nullptr) : 0.0;
    top_candidates(rm.x, rm.V, sc.bmax.data(), by_k ? k : candidate_blocks, sc.tmp, sc.cands);
    if (by_k) sc.cands.resize(k);  // the row's top k, exactly
    const int64_t n = static_cast<int64_t>(sc.cands.size());
    double mass = 0.0;
    int64_t n_minp = n;
    for (int64_t q = 0; q < n; ++q) {
      const float w = rm.w(sc.cands[q].x);
      if (w < min_p && n_minp == n) n_minp = q;
      mass += w;
    }
    Segments sg;
    sg.start = {0, n, rm.V};
    sg.before = {0.0, mass, std::max(mass, z_all)};
    sg.build = [&sc](int64_t s, std::vector<Item>& items) { return s == 0 ? (items = sc.cands, true) : false; };
    if (finish_truncated(sg, rm, std::min(k, rm.V), top_p, min_p, n_minp, n_minp < n || n == rm.V, z_all, u,
                         num_logprobs, sc, o))
      return;
  }
  histogram_row(rm, std::min(k, rm.V), top_p, min_p, u, num_logprobs, sc, o);
}

void untruncated_row(const RowMath& rm, float min_p, double u, int64_t num_logprobs, Scratch& sc, RowOut& o) {
  const int64_t nblocks = (rm.V + CDF_BLOCK - 1) / CDF_BLOCK;
  sc.sums.resize(nblocks);
  const double total = weight_sum(rm, min_p, sc.sums.data());
  const double t = u * total;
  double acc = 0.0;
  int64_t b = 0;
  for (; b < nblocks - 1 && acc + sc.sums[b] <= t; ++b) acc += sc.sums[b];
  int64_t token = -1;
  for (int64_t j = b * CDF_BLOCK; j < std::min(rm.V, (b + 1) * CDF_BLOCK); ++j) {
    const float w0 = rm.w(rm.x[j]), w = w0 >= min_p ? w0 : 0.0f;
    if (w > 0.0f) {
      token = j;
      acc += w;
      if (acc > t) break;
    }
  }
  if (token < 0) {  // rounding left t past the block's weight and the block has none: the last positive
    for (int64_t j = rm.V - 1; j >= 0 && token < 0; --j)
      if (rm.w(rm.x[j]) >= min_p && rm.w(rm.x[j]) > 0.0f) token = j;
  }
  if (token < 0) token = first_max(rm.x, rm.V, sc.bmax.data(), rm.m);  // no positive weight (NaN logits)
  const double log_z = std::log(total);
  o.token = token;
  o.logprob = static_cast<double>(rm.d(rm.x[token])) - log_z;
  if (num_logprobs > 0) {
    top_candidates(rm.x, rm.V, sc.bmax.data(), num_logprobs, sc.tmp, sc.top);
    write_top(sc.top, num_logprobs, log_z, rm,
              [&](int64_t, const Item& it) { return rm.w(it.x) >= min_p && rm.w(it.x) > 0.0f; }, o);
  }
}

std::vector<at::Tensor> sample_rows(at::Tensor logits, at::Tensor fparams, at::Tensor iparams,
                                       std::vector<double> poly, double min_entropy, int64_t candidate_blocks,
                                       int64_t max_block_top_k) {
  TORCH_CHECK(logits.dtype() == at::kFloat && logits.dim() == 2 && logits.is_contiguous() &&
              logits.device().is_cpu(), "logits must be contiguous float32 [B, V] on the CPU");
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V > 0 && V < (int64_t{1} << 31), "vocabulary size out of range: ", V);
  TORCH_CHECK(fparams.dtype() == at::kDouble && fparams.sizes() == at::IntArrayRef({B, 4}) &&
              fparams.is_contiguous(), "fparams must be contiguous float64 [B, 4]");
  TORCH_CHECK(iparams.dtype() == at::kLong && iparams.sizes() == at::IntArrayRef({B, 3}) &&
              iparams.is_contiguous(), "iparams must be contiguous int64 [B, 3]");
  // candidate_blocks = 0 (top-p) and max_block_top_k = 0 (top-k) send every such row to the histogram (tests).
  TORCH_CHECK(candidate_blocks >= 0 && max_block_top_k >= 0, "candidate_blocks and max_block_top_k must be >= 0");
  const double* fp = fparams.data_ptr<double>();
  const int64_t* ip = iparams.data_ptr<int64_t>();
  int64_t num_top = 0;
  for (int64_t r = 0; r < B; ++r) num_top = std::max(num_top, std::min(ip[r * 3 + 2], V));
  auto token_ids = at::empty({B}, at::kLong);
  auto logprobs = at::empty({B}, at::kDouble);
  auto top_ids = at::full({B, num_top}, -1, at::kLong);
  auto top_lps = at::full({B, num_top}, -std::numeric_limits<double>::infinity(), at::kDouble);
  const float* xp = logits.data_ptr<float>();
  int64_t* tp = token_ids.data_ptr<int64_t>();
  double* lp = logprobs.data_ptr<double>();
  int64_t* tip = top_ids.data_ptr<int64_t>();
  double* tlp = top_lps.data_ptr<double>();
  // Rows are claimed one at a time, not split in fixed halves: their costs differ ~30x (greedy vs
  // a histogram row), and on a shared CPU a descheduled worker then delays only its current row.
  std::atomic<int64_t> next_row{0};
  at::parallel_for(0, std::min<int64_t>(B, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    Scratch sc;
    sc.bmax.resize((V + BLOCK - 1) / BLOCK);
    for (int64_t r; (r = next_row.fetch_add(1)) < B;) {
      const float* x = xp + r * V;
      const int64_t peek = next_row.load(std::memory_order_relaxed);  // likely this worker's next row
      ahead.p = peek < B ? reinterpret_cast<const char*>(xp + peek * V) : nullptr;
      ahead.end = ahead.p ? ahead.p + V * sizeof(float) : nullptr;
      const double inv_temp = fp[r * 4], top_p = fp[r * 4 + 1], u = fp[r * 4 + 3];
      const float min_p = static_cast<float>(fp[r * 4 + 2]);
      const bool greedy = ip[r * 3] & 1, adaptive = ip[r * 3] & 2;
      const int64_t k = ip[r * 3 + 1] > 0 ? ip[r * 3 + 1] : V, n_top = std::min(ip[r * 3 + 2], V);
      RowOut o{0, 0.0, tip + r * num_top, tlp + r * num_top};
      const float m = block_maxima(x, V, sc.bmax.data());
      if (greedy || m == NEG_INF) {  // an all -inf row has nothing to draw from: its argmax, like torch
        o.token = first_max(x, V, sc.bmax.data(), m);
        if (n_top > 0) {
          const RowMath rm{x, V, m, 1.0f};
          const double log_z = std::log(weight_sum(rm, 0.0f, nullptr));
          o.logprob = static_cast<double>(x[o.token] - m) - log_z;
          top_candidates(x, V, sc.bmax.data(), n_top, sc.tmp, sc.top);
          write_top(sc.top, n_top, log_z, rm, [](int64_t, const Item& it) { return it.x != NEG_INF; }, o);
        }
      } else {
        float s = static_cast<float>(inv_temp);
        if (adaptive) {
          const double h = entropy(x, V, m);
          double beta = 0.0;
          for (double c : poly) beta = beta * h + c;  // Horner's rule, highest degree first
          s *= static_cast<float>(h > min_entropy ? std::max(beta, 1.0) : 1.0);
        }
        const RowMath rm{x, V, m, s};
        if (k < V || top_p < 1.0)
          truncated_row(rm, k, top_p, min_p, u, n_top, candidate_blocks, max_block_top_k, sc, o);
        else
          untruncated_row(rm, min_p, u, n_top, sc, o);
      }
      tp[r] = o.token;
      lp[r] = o.logprob;
    }
  });
  return {token_ids, logprobs, top_ids, top_lps};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sample_rows", &sample_rows, "one token per row of float32 logits, by the sampler's rules");
}
