"""Decode attention over the engine's cache: shared-prefix cascade attention (the step the engine runs), row
attention (no shared prompt; the deterministic mode) and the plain check both are tested against.

Cascade (Hydragen, Juravsky et al. 2024, arXiv 2402.05099; FlashInfer's cascade attention): a sample row's keys are
its prompt's (held once, in a prompt slot) followed by its own suffix (held per row). Softmax attention over the
concatenation splits exactly into the two parts, each with its log-sum-exp:

    out = out_s + sigmoid(lse_p - lse_s) * (out_p - out_s)      (= the exp(lse)-weighted mean of the two)

What runs where (`decode_backend`, from the model config's `attn_backend`, fixed when the cache is built):
- `triton` (CUDA by default; anywhere with `attn_backend="triton"`, on CPU under TRITON_INTERPRET=1): ONE kernel
  launch per layer, kernels/decode_attention.py. Each program takes a few rows of one group of rows sharing a prompt
  slot (or holding their prompts themselves) and one K/V head, runs an online softmax over the slot's keys (one
  matrix product per block, read once for all its rows' queries) and then over each row's own keys; the two parts'
  merge is the online softmax itself. It reads the cache's buffers in place (no copy); its bookkeeping (the groups,
  each group's slot, each row's key count) is made once per round on the host and once per step on the device, for
  all layers. Needs head_dim a power of two >= 16; other head dims (and attn_backend="torch") take the torch path.
- `torch` (CPU by default, and the fallback): `cascade_decode_attention` below. The prompt part is ONE attention call
  over the rows sharing each slot: the queries of slot p's rows (grouped by the host, `groups [P, Gm]`) against slot
  p's keys alone, so the cost is rows x prompt width and each prompt's K/V is read once per layer whatever the number
  of samples, with no copy. With multi-query attention that is one [Gm * Hq, D] x [D, Lp] product per slot. The
  suffix part is per row; then a gather back to rows and the sigmoid/lerp merge. On CPU each part is one fused
  attention call that also returns the log-sum-exp (the kernel SDPA runs); elsewhere a plain-torch math path.
Aten ops per layer of a decode step, both paths: bench/RESULTS.md (`python -m bench.bench_generate --case ops`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops


def decode_backend(cfg, like: torch.Tensor) -> str:
    """"triton" or "torch": who runs the decode attention for a model config `cfg` on `like`'s device. It follows
    `cfg.attn_backend`: "torch" is torch; "triton" is the kernel on any device; "auto" and "flash" (flash-attn has no
    cascade) are the kernel where Triton runs it (CUDA) and torch elsewhere. A head dim the kernel does not take
    falls back to torch."""
    if ops.resolve("auto" if cfg.attn_backend == "flash" else cfg.attn_backend, like) != "triton":
        return "torch"
    from ..kernels.decode_attention import supported  # imports Triton: only where it may run

    return "triton" if supported(cfg.head_dim) else "torch"



def attend_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float):
    """softmax(q k^T * scale + bias) v and its log-sum-exp: q `[N, Hkv, M, D]`, k/v `[N, Hkv, L, D]`, bias fp32
    broadcastable to `[N, 1, M, L]` (0 keep, -inf drop); returns out `[N, Hkv, M, D]` (q's dtype), lse `[N, Hkv, M]`
    fp32 (a query with no kept key: out 0, lse not -inf; the caller masks it)."""
    if q.device.type == "cpu":  # the fused CPU kernel SDPA itself runs, which also returns the log-sum-exp
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias,
                                                                          scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2)).float() * scale + bias
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.nan_to_num(neginf=0.0)[..., None])
    return torch.matmul(p.to(v.dtype), v), lse


def cascade_decode_attention(q, prefix_k, prefix_v, prefix_bias, groups, pos, no_prefix, row_k, row_v, row_bias,
                             scale):
    """One new token per row attends to its prompt (in a shared prompt slot) and its own keys.

    q `[B, 1, Hq, D]`; prefix_k/v `[P, Hkv, Lp, D]` (the live prompt slots), prefix_bias `[P, 1, 1, Lp]` fp32 (0 for a
    slot's keys, -inf past its length); groups `[P, Gm]`: the rows of each slot (padding: any row); pos `[B]`: row b's
    place in groups.flatten(); no_prefix `[B, 1, 1]` fp32: -inf for a row without a prompt slot, else 0; row_k/v
    `[B, Hkv, Lr, D]`, row_bias `[B, 1, 1, Lr]`. Query head h reads K/V head h // (Hq // Hkv). Returns `[B, 1, Hq, D]`."""
    B, _, Hq, D = q.shape
    P, Hkv, Gm = prefix_k.shape[0], prefix_k.shape[1], groups.shape[1]
    G = Hq // Hkv
    qr = q.view(B, Hkv, G, D)
    out_r, lse_r = attend_lse(qr, row_k, row_v, row_bias, scale)  # (B, Hkv, G, D|)
    qp = q[groups]  # (P, Gm, 1, Hq, D): the queries of each slot's rows
    qp = qp.view(P, 1, Gm * Hq, D) if Hkv == 1 else qp.view(P, Gm, Hkv, G, D).transpose(1, 2).reshape(P, Hkv, Gm * G, D)
    out_p, lse_p = attend_lse(qp, prefix_k, prefix_v, prefix_bias, scale)  # (P, Hkv, Gm*G, D|)
    if Hkv > 1:
        out_p, lse_p = out_p.view(P, Hkv, Gm, G, D).transpose(1, 2), lse_p.view(P, Hkv, Gm, G).transpose(1, 2)
    out_p = out_p.reshape(P * Gm, Hkv, G, D)[pos]  # back to rows
    lse_p = lse_p.reshape(P * Gm, Hkv, G)[pos] + no_prefix
    w = torch.sigmoid(lse_p - lse_r)[..., None]  # the prompt part's share of the softmax mass
    return torch.lerp(out_r, out_p, w.to(out_r.dtype)).view(B, 1, Hq, D)


def row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Decode attention over each row's own keys: q `[B, 1, Hq, D]`, k/v `[B, Hkv, L, D]`, `mask [B, L]` (True = a
    real key); one SDPA call (MQA/GQA heads broadcast). Returns `[B, 1, Hq, D]`."""
    B, _, Hq, D = q.shape
    Hkv = k.shape[1]
    qg = q.view(B, Hkv, Hq // Hkv, D)  # the G query heads of a K/V head act as G query positions
    y = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask[:, None, None, :], scale=scale)
    return y.reshape(B, 1, Hq, D)


def decode_attention_full(q, prefix_k, prefix_v, prefix_len, row_k, row_v, row_len, scale):
    """Plain-torch check of the decode attentions for one row: concatenate its prompt keys and its own keys and run
    ordinary SDPA in fp32. q `[Hq, D]`, prefix_k/v `[Hkv, Lp, D]`, row_k/v `[Hkv, Lr, D]`; returns `[Hq, D]` fp32."""
    k = torch.cat([prefix_k[:, :prefix_len], row_k[:, :row_len]], 1)  # (Hkv, L, D)
    v = torch.cat([prefix_v[:, :prefix_len], row_v[:, :row_len]], 1)
    rep = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    return F.scaled_dot_product_attention(q[:, None].float(), k.float(), v.float(), scale=scale)[:, 0]
