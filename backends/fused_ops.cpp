// Fused per-layer operations of the model step (CPU), for both engines.
//
// A decode step of a small model is dominated by the fixed cost of each torch operation (a
// few microseconds of dispatch for a few hundred floats of work), not by arithmetic: SmolLM2's
// 30 layers ran ~50 ops each. Each function here does the work of several such ops in one call:
//
//   rms_norm(x, w, eps)                                   -> x / rms(x) * w
//   add_rms_norm_(x, delta, delta_w, w, eps)              x += [rms_norm(delta, delta_w)]; -> rms_norm(x, w)
//   rope_write_kv_(qkv, positions, cos, sin, q_w, k_w, eps, k_cache, v_cache, blocks, offsets)
//       QK-norm (optional) and RoPE of Q in place; K (normed, rotated) and V into their KV slots
//   decode_attention(q, k_cache, v_cache, tables, context_lens, scale, window) -> [B, H, D]
//       one new token per sequence attending to its paged context (GQA, sliding window)
//
// Activations are float32 or bfloat16 (the engine's dtype); arithmetic is float32, and every
// value the torch path rounds to the activation dtype (a norm's output, the residual sum) is
// rounded here at the same point, so bfloat16 results follow the same rounding steps.
// Compiled by fused_ops.py with -O3 -march=native (see compiled_extension.py).

#include "torch_ext.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

using c10::BFloat16;

template <typename T>
inline float to_f(T v) { return static_cast<float>(v); }
// The same value from the bits (a bfloat16 is a float32's high half): a shift the compiler
// vectorizes, where c10's conversion kept the attention's dot products scalar.
inline float to_f(BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round a float to the activation type and back: the value a torch op would have stored.
template <typename T>
inline float rounded(float v) { return static_cast<float>(static_cast<T>(v)); }

// f(float{}) or f(BFloat16{}) by the activation dtype of t.
void dispatch(const at::Tensor& t, const char* what, auto&& f) {
  if (t.scalar_type() == at::kFloat) return f(float{});
  if (t.scalar_type() == at::kBFloat16) return f(BFloat16{});
  TORCH_CHECK(false, what, ": activations must be float32 or bfloat16, got ", t.scalar_type());
}

inline void check_vector(const at::Tensor& w, int64_t n, const char* what) {
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 1 && w.size(0) == n && w.is_contiguous(),
              what, " must be a contiguous float32 vector of ", n);
}

// 1 / rms of n floats (float accumulation, as torch's rms_norm does for both dtypes).
inline float inv_rms(const float* v, int64_t n, float eps) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += v[i] * v[i];
  return 1.f / std::sqrt(sum / static_cast<float>(n) + eps);
}

// out[i] = T(v[i] * r * w[i]) as floats.
template <typename T>
inline void norm_into(const float* v, int64_t n, const float* w, float eps, float* out) {
  const float r = inv_rms(v, n, eps);
  for (int64_t i = 0; i < n; ++i) out[i] = rounded<T>(v[i] * r * w[i]);
}

template <typename T>
inline void load(const T* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_f(src[i]);
}

template <typename T>
inline void store(const float* src, int64_t n, T* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps) {
  TORCH_CHECK(x.dim() >= 1, "rms_norm: x must have at least one dimension");
  x = x.contiguous();
  const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(n, 1);
  check_vector(w, n, "rms_norm weight");
  auto out = at::empty_like(x);
  dispatch(x, "rms_norm", [&]<typename T>(T) {
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    std::vector<float> v(n), y(n);
    for (int64_t r = 0; r < rows; ++r) {
      load(xp + r * n, n, v.data());
      norm_into<T>(v.data(), n, w.data_ptr<float>(), static_cast<float>(eps), y.data());
      store(y.data(), n, op + r * n);
    }
  });
  return out;
}

at::Tensor add_rms_norm_(at::Tensor x, at::Tensor delta, c10::optional<at::Tensor> delta_w,
                            at::Tensor w, double eps) {
  TORCH_CHECK(x.is_contiguous() && x.dim() == 2, "add_rms_norm_: x must be a contiguous [T, N] tensor");
  TORCH_CHECK(delta.sizes() == x.sizes() && delta.scalar_type() == x.scalar_type(),
              "add_rms_norm_: delta must match x in shape and dtype");
  delta = delta.contiguous();
  const int64_t rows = x.size(0), n = x.size(1);
  check_vector(w, n, "add_rms_norm_ weight");
  if (delta_w) check_vector(*delta_w, n, "add_rms_norm_ delta weight");
  auto out = at::empty_like(x);
  const float e = static_cast<float>(eps);
  dispatch(x, "add_rms_norm_", [&]<typename T>(T) {
    T* xp = x.data_ptr<T>();
    const T* dp = delta.data_ptr<T>();
    T* op = out.data_ptr<T>();
    std::vector<float> v(n), d(n), y(n);
    for (int64_t r = 0; r < rows; ++r) {
      load(dp + r * n, n, d.data());
      if (delta_w) norm_into<T>(d.data(), n, delta_w->data_ptr<float>(), e, d.data());
      load(xp + r * n, n, v.data());
      for (int64_t i = 0; i < n; ++i) v[i] = rounded<T>(v[i] + d[i]);  // the residual sum, stored
      store(v.data(), n, xp + r * n);
      norm_into<T>(v.data(), n, w.data_ptr<float>(), e, y.data());
      store(y.data(), n, op + r * n);
    }
  });
  return out;
}

// x (one head, D floats) -> NeoX RoPE with signed sin: y = x * cos + roll(x, D/2) * sin.
inline void rope(const float* x, const float* cos, const float* sin, int64_t D, float* y) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) y[i] = x[i] * cos[i] + x[i + half] * sin[i];
  for (int64_t i = half; i < D; ++i) y[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

void rope_write_kv_(at::Tensor qkv, at::Tensor positions, at::Tensor cos, at::Tensor sin,
                    c10::optional<at::Tensor> q_w, c10::optional<at::Tensor> k_w, double eps,
                    at::Tensor k_cache, at::Tensor v_cache, at::Tensor write_blocks,
                    at::Tensor write_offsets, int64_t num_heads, int64_t num_kv_heads) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.is_contiguous(), "rope_write_kv_: qkv must be a contiguous [T, heads, D] tensor");
  const int64_t num_tokens = qkv.size(0), D = qkv.size(2);
  TORCH_CHECK(qkv.size(1) == num_heads + 2 * num_kv_heads, "rope_write_kv_: qkv has ", qkv.size(1),
              " heads, expected ", num_heads + 2 * num_kv_heads);
  TORCH_CHECK(D % 2 == 0, "rope_write_kv_: head_dim must be even");
  for (const auto* t : {&positions, &write_blocks, &write_offsets})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->dim() == 1 && t->size(0) == num_tokens && t->is_contiguous(),
                "rope_write_kv_: positions and write slots must be contiguous int64 [T]");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.dim() == 2 && cos.size(1) == D && sin.sizes() == cos.sizes(),
              "rope_write_kv_: cos/sin must be contiguous float32 [positions, head_dim]");
  for (const auto* c : {&k_cache, &v_cache}) {
    TORCH_CHECK(c->dim() == 4 && c->size(2) == num_kv_heads && c->size(3) == D && c->stride(3) == 1 &&
                    c->stride(2) == D && c->scalar_type() == qkv.scalar_type(),
                "rope_write_kv_: caches must be [blocks, block_size, kv_heads, head_dim] of the activation dtype");
  }
  if (q_w) check_vector(*q_w, D, "q_norm weight");
  if (k_w) check_vector(*k_w, D, "k_norm weight");
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* blocks = write_blocks.data_ptr<int64_t>();
  const int64_t* offsets = write_offsets.data_ptr<int64_t>();
  const int64_t max_pos = cos.size(0), num_blocks = k_cache.size(0), block_size = k_cache.size(1);
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(pos[t] >= 0 && pos[t] < max_pos, "rope_write_kv_: position ", pos[t], " outside the RoPE table");
    TORCH_CHECK(blocks[t] >= 0 && blocks[t] < num_blocks && offsets[t] >= 0 && offsets[t] < block_size,
                "rope_write_kv_: write slot out of range");
  }
  const float e = static_cast<float>(eps);
  dispatch(qkv, "rope_write_kv_", [&]<typename T>(T) {
    T* base = qkv.data_ptr<T>();
    T* kc = k_cache.data_ptr<T>();
    T* vc = v_cache.data_ptr<T>();
    const int64_t heads = qkv.size(1);
    at::parallel_for(0, num_tokens, std::max<int64_t>(1, 4096 / (heads * D)), [&](int64_t t0, int64_t t1) {
      std::vector<float> x(D), y(D);
      for (int64_t t = t0; t < t1; ++t) {
        const float* c = cos.data_ptr<float>() + pos[t] * D;
        const float* s = sin.data_ptr<float>() + pos[t] * D;
        T* row = base + t * heads * D;
        const int64_t slot_k = blocks[t] * k_cache.stride(0) + offsets[t] * k_cache.stride(1);
        const int64_t slot_v = blocks[t] * v_cache.stride(0) + offsets[t] * v_cache.stride(1);
        for (int64_t h = 0; h < num_heads + num_kv_heads; ++h) {
          const bool is_q = h < num_heads;
          load(row + h * D, D, x.data());
          const auto& norm_w = is_q ? q_w : k_w;
          if (norm_w) norm_into<T>(x.data(), D, norm_w->data_ptr<float>(), e, x.data());
          rope(x.data(), c, s, D, y.data());
          store(y.data(), D, is_q ? row + h * D : kc + slot_k + (h - num_heads) * D);
        }
        for (int64_t h = 0; h < num_kv_heads; ++h)
          std::copy_n(row + (num_heads + num_kv_heads + h) * D, D, vc + slot_v + h * D);
      }
    });
  });
}

at::Tensor decode_attention(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                               at::Tensor tables, at::Tensor context_lens, double scale,
                               int64_t window) {
  TORCH_CHECK(q.dim() == 3, "decode_attention: q must be [B, heads, D]");
  q = q.contiguous();
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KV = k_cache.size(2);
  TORCH_CHECK(KV > 0 && H % KV == 0, "decode_attention: heads must be a multiple of kv heads");
  for (const auto* c : {&k_cache, &v_cache})
    TORCH_CHECK(c->dim() == 4 && c->size(3) == D && c->stride(3) == 1 && c->stride(2) == D &&
                    c->scalar_type() == q.scalar_type(),
                "decode_attention: caches must be [blocks, block_size, kv_heads, D] of q's dtype");
  TORCH_CHECK(tables.scalar_type() == at::kLong && tables.dim() == 2 && tables.size(0) == B &&
                  tables.is_contiguous(), "decode_attention: tables must be contiguous int64 [B, width]");
  TORCH_CHECK(context_lens.scalar_type() == at::kLong && context_lens.numel() == B &&
                  context_lens.is_contiguous(), "decode_attention: context_lens must be int64 [B]");
  const int64_t block_size = k_cache.size(1), width = tables.size(1), num_blocks = k_cache.size(0);
  const int64_t* tab = tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  int64_t work = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lens[b] >= 1 && lens[b] <= width * block_size, "decode_attention: context length ", lens[b],
                " does not fit the block table");
    for (int64_t j = 0; j < (lens[b] + block_size - 1) / block_size; ++j)
      TORCH_CHECK(tab[b * width + j] >= 0 && tab[b * width + j] < num_blocks, "decode_attention: block out of range");
    work += lens[b];
  }
  auto out = at::empty_like(q);
  const float sc = static_cast<float>(scale);
  const int64_t k_stride_block = k_cache.stride(0), k_stride_slot = k_cache.stride(1);
  const int64_t v_stride_block = v_cache.stride(0), v_stride_slot = v_cache.stride(1);
  // f(p, element offset of position p's slot) for p in [first, ctx), in order, through the table.
  auto for_slots = [block_size](int64_t first, int64_t ctx, const int64_t* table, int64_t stride_block,
                                int64_t stride_slot, auto&& f) {
    for (int64_t j = first / block_size, p = first; p < ctx; ++j) {
      const int64_t base = table[j] * stride_block, end = std::min(ctx, (j + 1) * block_size);
      for (int64_t slot = p - j * block_size; p < end; ++p, ++slot) f(p, base + slot * stride_slot);
    }
  };
  dispatch(q, "decode_attention", [&]<typename T>(T) {
    const T* qp = q.data_ptr<T>();
    const T* kc = k_cache.data_ptr<T>();
    const T* vc = v_cache.data_ptr<T>();
    T* op = out.data_ptr<T>();
    // One task per (sequence, KV head): the query heads sharing a KV head (GQA) read each K and
    // V row once. Each head's arithmetic is its own, in the same order as one head alone.
    const int64_t G = H / KV;
    const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, work / B * D * G));
    at::parallel_for(0, B * KV, grain, [&](int64_t i0, int64_t i1) {
      std::vector<float> qf(G * D), acc(G * D), scores, best(G), total(G);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / KV, kvh = i % KV, ctx = lens[b], h0 = b * H + kvh * G;
        // Only written slots are read: positions [first, ctx) of this sequence.
        const int64_t first = window > 0 ? std::max<int64_t>(0, ctx - window) : 0, n = ctx - first;
        for (int64_t g = 0; g < G; ++g) load(qp + (h0 + g) * D, D, qf.data() + g * D);
        scores.resize(G * n);
        std::fill(best.begin(), best.end(), -INFINITY);
        // Positions go block by block: a division per position (the block and the slot of p)
        // cost more than its dot product.
        for_slots(first, ctx, tab + b * width, k_stride_block, k_stride_slot, [&](int64_t p, int64_t offset) {
          const T* k = kc + offset + kvh * D;
          for (int64_t g = 0; g < G; ++g) {
            const float* qg = qf.data() + g * D;
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; ++d) dot += qg[d] * to_f(k[d]);
            float& s = scores[g * n + p - first];
            s = dot * sc;
            best[g] = std::max(best[g], s);
          }
        });
        for (int64_t g = 0; g < G; ++g) {
          float t = 0.f;
          for (int64_t j = 0; j < n; ++j) t += (scores[g * n + j] = std::exp(scores[g * n + j] - best[g]));
          total[g] = t;
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        for_slots(first, ctx, tab + b * width, v_stride_block, v_stride_slot, [&](int64_t p, int64_t offset) {
          const T* v = vc + offset + kvh * D;
          for (int64_t g = 0; g < G; ++g) {
            const float wgt = scores[g * n + p - first];
            float* ag = acc.data() + g * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) ag[d] += wgt * to_f(v[d]);
          }
        });
        for (int64_t g = 0; g < G; ++g) {
          const float inv = 1.f / total[g];
          for (int64_t d = 0; d < D; ++d) op[(h0 + g) * D + d] = static_cast<T>(acc[g * D + d] * inv);
        }
      }
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "x / rms(x) * w over the last dimension");
  m.def("add_rms_norm_", &add_rms_norm_, "x += [rms_norm(delta, delta_w)] in place; returns rms_norm(x, w)");
  m.def("rope_write_kv_", &rope_write_kv_, "QK-norm + RoPE of Q in place, K and V into their KV slots");
  m.def("decode_attention", &decode_attention, "one query per sequence over its paged K/V");
}
