// Matrix products straight from GGML block bytes, for the k-quant engine (CPU).
//
//   qmatmul(x float32 [T, K], blocks uint8 [N, row_bytes], ggml_type, K) -> float32 [T, N]
//   dequantize(blocks uint8 [N, row_bytes], ggml_type, K)                  -> float32 [N, K]
//
// Each block is decoded to float32 with the same operations, in the same order, as
// backends/quantization/dequantize_*.py, so decoded weights are bit-identical to dequantize();
// products differ from F.linear(x, dequantize(W)) only by float summation order.
// Decoding happens in registers/L1 per block and the decoded block is reused for every token
// of the batch, so memory traffic is the block bytes alone: that is what makes batch-1 decode
// fast (it is memory-bound) and the reason to decode per row rather than per matrix.
// Compiled by kernel_cpu.py with -O3 -march=native; the loops are written so that GCC
// vectorizes them (16-float lanes, one AVX-512 register).

#include "../torch_ext.h"

#include "kernel_decode.h"
#include "kernel_int8.h"

namespace {

using namespace rg;

// Call f.template operator()<DECODE, BLOCK_SIZE, TYPE_SIZE>() for one GGML type id. Decoders
// are template arguments, not pointers, so they inline into the product loop.
template <typename F>
void with_format(int64_t ggml_type, F&& f) {
  switch (ggml_type) {  // GGML type ids (gguf.GGMLQuantizationType)
    case 2: return f.template operator()<decode_q4_0, 32, 18>();
    case 3: return f.template operator()<decode_q4_1, 32, 20>();
    case 6: return f.template operator()<decode_q5_0, 32, 22>();
    case 7: return f.template operator()<decode_q5_1, 32, 24>();
    case 8: return f.template operator()<decode_q8_0, 32, 34>();
    case 12: return f.template operator()<decode_q4_k, 256, 144>();
    case 13: return f.template operator()<decode_q5_k, 256, 176>();
    case 14: return f.template operator()<decode_q6_k, 256, 210>();
    default: TORCH_CHECK(false, "qmatmul: unsupported GGML type ", ggml_type);
  }
}

// The GGML types the integer path multiplies on this build (none without AVX2).
std::vector<int64_t> int8_formats() {
  if (!kInt8Dot) return {};
  return {2, 3, 6, 7, 8, 12, 13, 14};
}

// x [T, K] float32 -> its 8-bit quantization (kernel_int8.h), buffers owned by the caller.
struct Q8Buffers {
  std::vector<int8_t> q;
  std::vector<float> sv, sums;
  Q8Acts acts;
  Q8Buffers(const float* x, int64_t T, int64_t K) : q(T * round_up_64(K)), sv(T * round_up_64(K) / 4), sums(T * K / 16) {
    TORCH_CHECK(K % 32 == 0, "8-bit activations need K % 32 == 0, got K=", K);
    const int64_t Kp = round_up_64(K);
    for (int64_t t = 0; t < T; ++t) quantize_row_q8(x + t * K, K, q.data() + t * Kp, sv.data() + t * Kp / 4, sums.data() + t * K / 16);
    acts = Q8Acts{q.data(), sv.data(), sums.data(), K, Kp};
  }
};

// The activations the integer path multiplies, as floats (s * q): the float-GEMM path uses
// these so that both paths compute the same products.
at::Tensor fake_quantize(at::Tensor x) {
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 2, "x must be float32 [T, K]");
  x = x.contiguous();
  const int64_t T = x.size(0), K = x.size(1), Kp = round_up_64(K);
  Q8Buffers b(x.data_ptr<float>(), T, K);
  auto out = at::empty({T, K}, x.options());
  float* op = out.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) op[t * K + k] = b.sv[t * Kp / 4 + k / 4] * float(b.q[t * Kp + k]);
  return out;
}

void check_blocks(const at::Tensor& blocks, int64_t block_size, int64_t type_size, int64_t K) {
  TORCH_CHECK(blocks.dtype() == at::kByte && blocks.dim() == 2 && blocks.is_contiguous(),
              "blocks must be contiguous uint8 [rows, row_bytes]");
  TORCH_CHECK(K > 0 && K % block_size == 0, "K=", K, " is not a multiple of ", block_size);
  TORCH_CHECK(blocks.size(1) == K / block_size * type_size, "row_bytes does not match K");
}

at::Tensor qmatmul(at::Tensor x, at::Tensor blocks, int64_t ggml_type, int64_t K, bool int8) {
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 2 && x.size(1) == K, "x must be float32 [T, K]");
  x = x.contiguous();
  const int64_t T = x.size(0), N = blocks.size(0);
  auto y = at::empty({T, N}, x.options());
#ifdef RG_INT8_DOT
  if (int8) {
    Q8Buffers acts(x.data_ptr<float>(), T, K);
    with_int8_format(ggml_type, [&]<typename Format>() {
      check_blocks(blocks, Format::BS, Format::TS, K);
      const uint8_t* wp = blocks.data_ptr<uint8_t>();
      float* yp = y.data_ptr<float>();
      at::parallel_for(0, N, std::max<int64_t>(1, (1 << 16) / K), [&](int64_t n0, int64_t n1) {
        Format::rows(acts.acts, T, wp, yp, N, n0, n1);
      });
    });
    return y;
  }
#else
  TORCH_CHECK(!int8, "qmatmul: this build has no integer path (needs AVX2)");
#endif
  with_format(ggml_type, [&]<Decoder DECODE, int BS, int TS>() {
    check_blocks(blocks, BS, TS, K);
    const float* xp = x.data_ptr<float>();
    const uint8_t* wp = blocks.data_ptr<uint8_t>();
    float* yp = y.data_ptr<float>();
    // Rows per task: enough work (~64K weights) to pay for waking the second thread.
    const int64_t grain = std::max<int64_t>(1, (1 << 16) / K);
    at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
      rg::rows_times_x<DECODE, BS, TS>(xp, T, K, wp, yp, N, n0, n1);
    });
  });
  return y;
}

// Several matrices sharing K, one output [T, sum N_i]: one parallel region (one wake-up of the
// thread pool) for Q, K and V instead of three. Each output element is the same row-times-x
// loop as qmatmul, so results are bit-identical to separate calls.
at::Tensor qmatmul_stacked(at::Tensor x, std::vector<at::Tensor> parts,
                              std::vector<int64_t> ggml_types, int64_t K, bool int8) {
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 2 && x.size(1) == K, "x must be float32 [T, K]");
  TORCH_CHECK(!parts.empty() && parts.size() == ggml_types.size(), "one GGML type per part");
  x = x.contiguous();
  const int64_t T = x.size(0), P = static_cast<int64_t>(parts.size());
  std::vector<int64_t> first(P + 1, 0);  // first output column of each part
  for (int64_t p = 0; p < P; ++p) {
    with_format(ggml_types[p], [&]<Decoder DECODE, int BS, int TS>() { check_blocks(parts[p], BS, TS, K); });
    first[p + 1] = first[p] + parts[p].size(0);
  }
  const int64_t N = first[P];
  auto y = at::empty({T, N}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / K);
#ifdef RG_INT8_DOT
  if (int8) {
    Q8Buffers acts(xp, T, K);  // quantized once for every part
    at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
      for (int64_t p = 0; p < P; ++p) {
        const int64_t lo = std::max(n0, first[p]), hi = std::min(n1, first[p + 1]);
        if (lo >= hi) continue;
        const uint8_t* wp = parts[p].data_ptr<uint8_t>();
        with_int8_format(ggml_types[p], [&]<typename Format>() {
          Format::rows(acts.acts, T, wp, yp + first[p], N, lo - first[p], hi - first[p]);
        });
      }
    });
    return y;
  }
#else
  TORCH_CHECK(!int8, "qmatmul_stacked: this build has no integer path (needs AVX2)");
#endif
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t p = 0; p < P; ++p) {
      const int64_t lo = std::max(n0, first[p]), hi = std::min(n1, first[p + 1]);
      if (lo >= hi) continue;
      const uint8_t* wp = parts[p].data_ptr<uint8_t>();
      with_format(ggml_types[p], [&]<Decoder DECODE, int BS, int TS>() {
        rg::rows_times_x<DECODE, BS, TS>(xp, T, K, wp, yp + first[p], N, lo - first[p], hi - first[p]);
      });
    }
  });
  return y;
}

at::Tensor dequantize(at::Tensor blocks, int64_t ggml_type, int64_t K) {
  const int64_t N = blocks.size(0);
  auto out = at::empty({N, K}, at::TensorOptions().dtype(at::kFloat));
  with_format(ggml_type, [&]<Decoder DECODE, int BS, int TS>() {
    check_blocks(blocks, BS, TS, K);
    const int64_t num_blocks = K / BS, row_bytes = num_blocks * TS;
    const uint8_t* wp = blocks.data_ptr<uint8_t>();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, N, std::max<int64_t>(1, (1 << 15) / K), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t b = 0; b < num_blocks; ++b) DECODE(wp + n * row_bytes + b * TS, op + n * K + b * BS);
    });
  });
  return out;
}

}  // namespace

// GGML types whose integer path runs on AMX tiles in this process (kernel_int8_amx.h).
std::vector<int64_t> int8_amx_formats() {
  std::vector<int64_t> out;
#if defined(RG_INT8_AMX)
  if (rg::amx8::enabled())
    for (const int64_t t : int8_formats())
      with_int8_format(t, [&]<typename Format>() {
        if (Format::AMX) out.push_back(t);
      });
#endif
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qmatmul", &qmatmul, "x [T, K] @ dequantize(blocks)^T from GGML block bytes (int8: 8-bit activations)");
  m.def("qmatmul_stacked", &qmatmul_stacked, "x [T, K] @ [W_1; W_2; ...]^T, one output [T, sum N_i]");
  m.def("fake_quantize", &fake_quantize, "x [T, K] -> the 8-bit activations of the integer path, as floats");
  m.def("int8_formats", &int8_formats, "GGML types with an integer path on this build");
  m.def("int8_amx_formats", &int8_amx_formats, "GGML types whose integer path runs on AMX tiles here");
  m.def("dequantize", &dequantize, "GGML block bytes [N, row_bytes] -> float32 [N, K]");
}
