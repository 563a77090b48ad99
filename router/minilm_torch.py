"""A BERT encoder forward for one short text on one thread: the serving path of the embedder.

For a dozen tokens the work is ~0.3 GFLOP, almost all of it in 24 matrix products of 16 rows by
the model's weights (42 MB of float32 streamed once per query). MKL (through torch) does those
about 3x faster than numpy's OpenBLAS at this shape, so the forward is a handful of torch calls on
weights taken from the loaded model, with no tokenizer, padding, mask or module dispatch.

Threads: a multi-threaded product at this size gains little on two cores and, on a CPU that the
gateway's engines keep busy, waits for descheduled workers (tens of ms). OneThread runs the
forward with one OpenMP thread in the *calling* thread only: OpenMP's thread count is a per-thread
setting, so the engines' threads and torch's process-wide count are left as they are."""

from __future__ import annotations

import ctypes
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
    with the same torch kernels as the model itself (equal to sentence-transformers within ~1e-7)."""

    def __init__(self, bert):
        import torch

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

    def encode(self, ids: list[int]) -> np.ndarray:
        torch = self._torch
        F = torch.nn.functional
        n, h, dim = len(ids), self.num_heads, self.dim
        if not 0 < n <= self.max_len:
            raise ValueError(f"encode takes 1 to {self.max_len} token ids, got {n}")
        shape = (dim,)
        with torch.inference_mode():
            x = self.word[torch.tensor(ids)] + self.type0 + self.pos[:n]  # the order BertEmbeddings adds in
            x = F.layer_norm(x, shape, *self.emb_ln, self.eps)
            for qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 in self.layers:
                q, k, v = F.linear(x, qkv_w, qkv_b).view(n, 3, h, dim // h).permute(1, 2, 0, 3).unbind(0)
                ctx = F.scaled_dot_product_attention(q, k, v)  # [heads, n, head_dim]; no padding, no mask
                x = F.layer_norm(F.linear(ctx.transpose(0, 1).reshape(n, dim), o_w, o_b) + x, shape, *ln1, self.eps)
                x = F.layer_norm(F.linear(F.gelu(F.linear(x, i_w, i_b)), f_w, f_b) + x, shape, *ln2, self.eps)
            pooled = x.mean(0)
            return F.normalize(pooled, dim=0).numpy()
