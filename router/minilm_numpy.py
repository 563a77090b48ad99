"""A BERT encoder forward in numpy for one short text: the serving path of the embedder.

For a dozen tokens the work is tiny (~0.1 GFLOP) and torch's per-op dispatch and intra-op thread
pool dominate; on a busy CPU a multi-threaded op also waits for descheduled workers. Plain numpy
on weights copied out of the loaded model does the same arithmetic in float32 (equal to the
sentence-transformers pipeline within ~1e-6) with far fewer, larger calls."""

from __future__ import annotations

import numpy as np
from scipy.special import erf


class NumpyBertEncoder:
    """Mean-pooled, L2-normalized BERT embeddings (all-MiniLM-L6-v2's pipeline) of one sequence."""

    def __init__(self, bert):
        cfg = bert.config
        if getattr(cfg, "hidden_act", "gelu") != "gelu" or getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("NumpyBertEncoder supports BERT with erf GELU and absolute positions only")
        sd = {k: v.detach().float().cpu().numpy() for k, v in bert.state_dict().items()}
        self.num_heads = cfg.num_attention_heads
        self.eps = cfg.layer_norm_eps
        self.word = sd["embeddings.word_embeddings.weight"]
        self.pos = sd["embeddings.position_embeddings.weight"]
        self.type0 = sd["embeddings.token_type_embeddings.weight"][0]
        self.emb_ln = (sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate([sd[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]).T.copy()
            qkv_b = np.concatenate([sd[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append((
                qkv_w, qkv_b,
                sd[p + "attention.output.dense.weight"].T.copy(), sd[p + "attention.output.dense.bias"],
                (sd[p + "attention.output.LayerNorm.weight"], sd[p + "attention.output.LayerNorm.bias"]),
                sd[p + "intermediate.dense.weight"].T.copy(), sd[p + "intermediate.dense.bias"],
                sd[p + "output.dense.weight"].T.copy(), sd[p + "output.dense.bias"],
                (sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"]),
            ))

    def _ln(self, x, wb):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * wb[0] + wb[1]

    def encode(self, ids: list[int]) -> np.ndarray:
        n, h = len(ids), self.num_heads
        x = self._ln(self.word[ids] + self.pos[:n] + self.type0, self.emb_ln)
        d = x.shape[1] // h
        for qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 in self.layers:
            qkv = (x @ qkv_w + qkv_b).reshape(n, 3, h, d).transpose(1, 2, 0, 3)  # [3, heads, n, d]
            scores = qkv[0] @ qkv[1].transpose(0, 2, 1) / np.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            ctx = (scores / scores.sum(-1, keepdims=True)) @ qkv[2]  # [heads, n, d]
            x = self._ln(x + ctx.transpose(1, 0, 2).reshape(n, -1) @ o_w + o_b, ln1)
            inner = x @ i_w + i_b
            inner = 0.5 * inner * (1.0 + erf(inner / np.sqrt(2.0)))
            x = self._ln(x + inner @ f_w + f_b, ln2)
        pooled = x.mean(0)
        return (pooled / max(np.linalg.norm(pooled), 1e-12)).astype(np.float32)
