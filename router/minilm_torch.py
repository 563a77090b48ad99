"""A BERT encoder forward for one short text on one thread: the serving path of the embedder.

For a dozen tokens the work is ~0.3 GFLOP, almost all of it in 24 matrix products of 16 rows by
the model's weights (42 MB of float32 streamed once per query). torch's CPU kernels (oneDNN, MKL)
do those 2-3x faster than numpy's OpenBLAS at this shape, so the forward is a few dozen torch calls
on weights taken from the loaded model, with no padding, mask or module dispatch.

Threads: a multi-threaded product at this size gains little on two cores and, on a CPU that the
gateway's engines keep busy, waits for descheduled workers (tens of ms). OneThread runs the
forward with one OpenMP thread in the *calling* thread only: OpenMP's thread count is a per-thread
setting, so the engines' threads and torch's process-wide count are left as they are."""

from __future__ import annotations

import ctypes
import math
from contextlib import contextmanager

import numpy as np


class OneThread:
    """`with one_thread():` torch work in the calling thread uses one OpenMP thread, then the
    thread's previous count is restored. A no-op when no OpenMP runtime is loaded."""

    def __init__(self):
        import torch
        from threadpoolctl import threadpool_info

        self._torch = torch
        # NOTE: omp_set_num_threads changes the calling thread's setting only (OpenMP ICV), unlike
        # torch.set_num_threads / threadpoolctl's BLAS limits, which are process-wide.
        self._omp = [ctypes.CDLL(info["filepath"]) for info in threadpool_info() if info["internal_api"] == "openmp"]

    @contextmanager
    def __call__(self):
        # torch sets a new thread's OpenMP count from its global one on first use; make that
        # happen now, so it cannot overwrite ours later.
        self._torch.get_num_threads()
        saved = [lib.omp_get_max_threads() for lib in self._omp]
        for lib in self._omp:
            lib.omp_set_num_threads(1)
        try:
            yield
        finally:
            for lib, n in zip(self._omp, saved):
                lib.omp_set_num_threads(n)


class TorchBertEncoder:
    """Mean-pooled, L2-normalized BERT embeddings (all-MiniLM-L6-v2's pipeline) of one sequence,
    with torch's own kernels (equal to sentence-transformers within ~3e-7 on 1,500 MMLU prompts)."""

    def __init__(self, bert):
        import torch

        F = torch.nn.functional
        cfg = bert.config
        if getattr(cfg, "hidden_act", "gelu") != "gelu" or getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("TorchBertEncoder supports BERT with erf GELU and absolute positions only")
        self._torch = torch
        sd = {k: v.detach().float().cpu().contiguous() for k, v in bert.state_dict().items()}
        self.num_heads = cfg.num_attention_heads
        self.dim = cfg.hidden_size
        self.eps = cfg.layer_norm_eps
        self.max_len = cfg.max_position_embeddings
        self.word = sd["embeddings.word_embeddings.weight"]
        self.pos = sd["embeddings.position_embeddings.weight"]
        self.type0 = sd["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"encoder.layer.{i}."
            # Q, K and V in one product: one weight stream and one call instead of three.
            qkv_w = torch.cat([sd[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")])
            qkv_b = torch.cat([sd[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append((
                qkv_w, qkv_b, sd[p + "attention.output.dense.weight"], sd[p + "attention.output.dense.bias"],
                (sd[p + "attention.output.LayerNorm.weight"], sd[p + "attention.output.LayerNorm.bias"]),
                sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"],
                sd[p + "output.dense.weight"], sd[p + "output.dense.bias"],
                (sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"]),
            ))
        self._linear, self._linear_gelu = F.linear, lambda x, w, b: F.gelu(F.linear(x, w, b))
        packed = _packed_linear(torch, self.layers[0][0], self.layers[0][1])
        if packed is not None:
            # NOTE: weights reordered once into oneDNN's blocked layout: the 24 products of 16
            # rows took 5.8 ms instead of 7.3 ms with F.linear, which repacks them on every call
            # (one thread, this 2-core box).
            self._linear, self._linear_gelu, pack = packed
            self.layers = [tuple(pack(t) if j in _WEIGHTS else t for j, t in enumerate(layer)) for layer in self.layers]

    def encode(self, ids: list[int]) -> np.ndarray:
        torch = self._torch
        F = torch.nn.functional
        n, h, dim = len(ids), self.num_heads, self.dim
        if not 0 < n <= self.max_len:
            raise ValueError(f"encode takes 1 to {self.max_len} token ids, got {n}")
        shape, scale, linear, linear_gelu = (dim,), 1.0 / math.sqrt(dim // h), self._linear, self._linear_gelu
        with torch.inference_mode():
            x = self.word[torch.tensor(ids)] + self.type0 + self.pos[:n]  # the order BertEmbeddings adds in
            x = F.layer_norm(x, shape, *self.emb_ln, self.eps)
            for qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 in self.layers:
                q, k, v = linear(x, qkv_w, qkv_b).view(n, 3, h, dim // h).permute(1, 2, 0, 3).unbind(0)
                # one sequence, no padding: no mask; three plain calls beat SDPA's dispatch here
                scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
                ctx = torch.bmm(torch.softmax(scores, -1), v)  # [heads, n, head_dim]
                x = F.layer_norm(linear(ctx.transpose(0, 1).reshape(n, dim), o_w, o_b) + x, shape, *ln1, self.eps)
                x = F.layer_norm(linear(linear_gelu(x, i_w, i_b), f_w, f_b) + x, shape, *ln2, self.eps)
            pooled = x.mean(0)
            return F.normalize(pooled, dim=0).numpy()


_WEIGHTS = (0, 2, 5, 7)  # positions of the four linear weights in a layer tuple


def _packed_linear(torch, weight, bias):
    """(linear, linear_then_gelu, pack) on oneDNN-reordered weights, as torch.compile's CPU weight
    freezing uses (GELU fused into the product saves a pass over the 1536-wide activations), or
    None where this torch has no such ops or they disagree with F.linear / F.gelu on a test input."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None:
        return None
    F = torch.nn.functional

    def pack(w):
        return ops._reorder_linear_weight(w, 16)  # 16 rows: a short query's token count

    def linear(x, w, b):
        return ops._linear_pointwise(x, w, b, "none", [], "")

    def linear_gelu(x, w, b):
        return ops._linear_pointwise(x, w, b, "gelu", [], "none")  # "none": erf GELU, not tanh

    try:
        x = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            packed, plain = pack(weight), F.linear(x, weight, bias)
            same = (torch.allclose(linear(x, packed, bias), plain, atol=1e-5)
                    and torch.allclose(linear_gelu(x, packed, bias), F.gelu(plain), atol=1e-5))
    except (AttributeError, RuntimeError):  # private ops: absent or changed in this torch build
        return None
    return (linear, linear_gelu, pack) if same else None
