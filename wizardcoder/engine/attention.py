"""Attention over cached keys: the shared-prefix decode attention the engine runs every step, and its plain checks.

Shared-prefix decode (Hydragen, Juravsky et al. 2024, arXiv 2402.05099): every sample row's keys are the keys of its
prompt (held once per prompt, in a prompt slot) followed by its own suffix (held per row). Softmax attention over
the concatenation splits exactly into the two parts, each with its log-sum-exp:

    out = (exp(lse_p) * out_p + exp(lse_s) * out_s) / (exp(lse_p) + exp(lse_s))

The prompt part is ONE matrix-matrix product: all rows' queries (B x Hq of them) against the keys of all prompt
slots at once; with multi-query attention the prompt K/V is a single head, so that is one GEMM
[B*Hq, D] @ [D, P*Lp] whatever the number of samples, and each prompt's K/V is read once per layer however many
samples share it (instead of once per sample). Rows see only their own slot through a mask. Its cost grows with the
number of prompt slots P, so the engine keeps P small (samples of one request share one slot). The suffix part is a
batched matrix-vector product per row. Both are plain GEMMs plus fused elementwise work: cuBLAS/MKL kernels here,
and one CUDA graph per engine step on GPU (see core.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_softmax_attend(scores: torch.Tensor, mask: torch.Tensor, v: torch.Tensor):
    """softmax(scores) @ v over the keys `mask` allows, and the log-sum-exp of the kept scores. scores fp32
    `[..., Q, L]`, mask broadcastable to it, v `[..., L, D]`; a query with no kept key gives out 0 and lse -inf."""
    scores = scores.masked_fill(~mask, float("-inf"))
    m = scores.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(scores - m)  # masked keys -> exp(-inf) = 0
    denom = p.sum(-1, keepdim=True)
    out = torch.matmul(p.to(v.dtype), v).float() / denom.clamp_min(1e-30)
    return out, m + torch.log(denom)  # lse: -inf where nothing was kept


def shared_prefix_decode_attention(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                                   prefix_mask: torch.Tensor, row_k: torch.Tensor, row_v: torch.Tensor,
                                   row_mask: torch.Tensor, scale: float) -> torch.Tensor:
    """One new token per row attends to its prompt (in a shared prompt slot) and its own cached suffix.

    q `[B, Hq, D]`; prefix_k/v `[P, Lp, Hkv, D]` (all prompt slots), prefix_mask `[B, P * Lp]` (row b sees key l of
    slot p iff its prompt is in p and l < that prompt's length); row_k/v `[B, Lr, Hkv, D]`, row_mask `[B, Lr]`
    (every row must see at least one key of its own: the token being decoded). Query head h reads K/V head
    h // (Hq // Hkv). Returns `[B, Hq, D]` in q's dtype."""
    B, Hq, D = q.shape
    P, Lp, Hkv, _ = prefix_k.shape
    G = Hq // Hkv
    # Prompt part: per K/V head one GEMM, all B*G queries against all P*Lp prompt keys; the mask keeps a row's slot.
    qp = q.view(B, Hkv, G, D).transpose(0, 1).reshape(Hkv, B * G, D)
    pk = prefix_k.reshape(P * Lp, Hkv, D).permute(1, 2, 0)  # (Hkv, D, P*Lp)
    pv = prefix_v.reshape(P * Lp, Hkv, D).transpose(0, 1)  # (Hkv, P*Lp, D)
    s_p = torch.matmul(qp, pk).float().view(Hkv, B, G, P * Lp) * scale
    out_p, lse_p = _masked_softmax_attend(s_p, prefix_mask[None, :, None, :], pv[:, None])  # (Hkv, B, G, D|1)
    out_p, lse_p = out_p.transpose(0, 1), lse_p.transpose(0, 1)  # (B, Hkv, G, D|1)
    # Suffix part: each row against its own keys (batched matrix-vector products).
    qr = q.view(B, Hkv, G, D)
    s_r = torch.matmul(qr, row_k.permute(0, 2, 3, 1)).float() * scale  # (B, Hkv, G, Lr)
    out_r, lse_r = _masked_softmax_attend(s_r, row_mask[:, None, None, :], row_v.transpose(1, 2))
    m = torch.maximum(lse_p, lse_r)  # lse_r is finite, so m is
    w_p, w_r = torch.exp(lse_p - m), torch.exp(lse_r - m)
    out = (out_p * w_p + out_r * w_r) / (w_p + w_r)
    return out.reshape(B, Hq, D).to(q.dtype)


def row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Decode attention when no prompt is shared: q `[B, 1, Hq, D]` over each row's own keys k/v `[B, L, Hkv, D]`,
    `mask [B, L]` (True = a real key); one SDPA call (MQA/GQA heads broadcast). Returns `[B, 1, Hq, D]`."""
    B, _, Hq, D = q.shape
    Hkv = k.shape[2]
    qg = q.view(B, Hkv, Hq // Hkv, D)  # the G query heads of a K/V head act as G query positions
    y = F.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask[:, None, None, :],
                                       scale=scale)
    return y.reshape(B, 1, Hq, D)


def decode_attention_full(q, prefix_k, prefix_v, prefix_len, row_k, row_v, row_len, scale):
    """Plain-torch check of `shared_prefix_decode_attention` for one row: concatenate its prompt keys and its own
    keys and run ordinary SDPA. q `[Hq, D]`, prefix_k/v `[Lp, Hkv, D]`, row_k/v `[Lr, Hkv, D]`."""
    k = torch.cat([prefix_k[:prefix_len], row_k[:row_len]]).transpose(0, 1)  # (Hkv, L, D)
    v = torch.cat([prefix_v[:prefix_len], row_v[:row_len]]).transpose(0, 1)
    rep = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    return F.scaled_dot_product_attention(q[:, None].float(), k.float(), v.float(), scale=scale)[:, 0]
