"""The model's hot operations behind one switch: a plain-torch reference (any device, the ground truth in tests) and
fused Triton kernels / flash-attn on CUDA.

Backends (see StarCoderConfig): attention is `torch` | `triton` | `flash`; LayerNorm, bias-GELU and the LM-head loss
are `torch` | `triton`. `auto` picks the fast path on CUDA tensors when it is importable and the reference otherwise.

Shapes: attention takes q `[T, Hq, D]`, k/v `[T, Hkv, D]` (packed: documents back to back, `cu_seqlens` int32
`[n_docs + 1]`, document i = rows cu_seqlens[i]:cu_seqlens[i+1]) or q `[B, S, Hq, D]`, k/v `[B, S, Hkv, D]`
(dense batch). Attention is causal and Hq must be a multiple of Hkv (MQA: Hkv = 1; query head h reads K/V head
h // (Hq // Hkv)), as in flash-attn.
"""
from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F


@functools.cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # ImportError, or a CUDA/toolchain error raised at import time
        return False


def resolve(backend: str, tensor: torch.Tensor, kind: str = "kernels") -> str:
    """Turn `auto` into a concrete backend for `tensor`'s device. `kind` is `attention` or `kernels`."""
    if backend != "auto":
        return backend
    if tensor.device.type != "cuda":
        return "torch"
    if kind == "attention" and _importable("flash_attn") and tensor.dtype in (torch.float16, torch.bfloat16):
        return "flash"
    return "triton" if _importable("wizardcoder.kernels") and _importable("triton") else "torch"


# ----------------------------------------------------------------------------------------------------- attention
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal (grouped-/multi-query) attention; packed when `cu_seqlens` is given, dense otherwise.
    `key_padding_mask` (dense only, `[B, S]`, True = real token) masks padding keys; only the torch path takes it."""
    backend = resolve(backend, q, "attention")
    if key_padding_mask is not None:
        backend = "torch"
    if backend == "torch":
        if cu_seqlens is not None:
            return attention_varlen_reference(q, k, v, cu_seqlens, scale)
        return attention_dense_reference(q, k, v, scale, key_padding_mask)
    if backend == "triton":
        from wizardcoder.kernels import flash_attention as fa

        if cu_seqlens is not None:
            return fa.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale, causal=True)
        return fa.flash_attn_func(q, k, v, softmax_scale=scale, causal=True)
    if backend == "flash":
        import flash_attn

        if cu_seqlens is not None:
            return flash_attn.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale, causal=True)
        return flash_attn.flash_attn_func(q, k, v, softmax_scale=scale, causal=True)
    raise ValueError(f"unknown attention backend {backend!r}")


def _repeat_kv(k, v, n_heads):
    """(B, Hkv, S, D) -> (B, n_heads, S, D): query head h reads K/V head h // (n_heads // Hkv)."""
    if k.shape[1] == n_heads:
        return k, v
    rep = n_heads // k.shape[1]
    return (t[:, :, None].expand(-1, -1, rep, -1, -1).flatten(1, 2) for t in (k, v))


def attention_dense_reference(q, k, v, scale, key_padding_mask=None):
    """q [B, S, Hq, D], k/v [B, S, Hkv, D] -> [B, S, Hq, D] through torch SDPA (its math/flash/efficient kernels)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, D)
    k, v = _repeat_kv(k, v, q.shape[1])
    if key_padding_mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        S = q.shape[2]
        causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
        mask = causal[None, None] & key_padding_mask[:, None, None, :].bool()
        # A query row with no visible key (left padding) would be NaN; let it see itself instead (its output is unused).
        mask = mask | torch.eye(S, dtype=torch.bool, device=q.device)[None, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return y.transpose(1, 2)


def attention_varlen_reference(q, k, v, cu_seqlens, scale):
    """q [T, Hq, D], k/v [T, Hkv, D] packed -> [T, Hq, D]: each document attends causally to itself alone."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            out[s:e] = attention_dense_reference(q[None, s:e], k[None, s:e], v[None, s:e], scale)[0]
    return out


def attention_with_cache_reference(q, k, v, *, scale, key_mask, start):
    """Decoding step(s): q `[B, S, Hq, D]` are the tokens in cache slots start..start+S-1; k/v `[B, L, Hkv, D]` are
    all L = start + S cached slots, `key_mask [B, L]` marks real ones. Query i sees real slots <= start + i."""
    B, S, Hq, D = q.shape
    L = k.shape[1]
    causal = torch.arange(L, device=q.device)[None, :] <= (start + torch.arange(S, device=q.device))[:, None]
    mask = causal[None, None] & key_mask[:, None, None, :]
    mask = mask | (torch.arange(L, device=q.device)[None, :] == (start + torch.arange(S, device=q.device))[:, None])[None, None]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S|L, D)
    kh, vh = _repeat_kv(kh, vh, Hq)
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- norms and MLP
def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-norm residual step: `r = x + residual` (or `x` when residual is None), returns `(LayerNorm(r), r)`."""
    if resolve(backend, x) == "triton":
        from wizardcoder.kernels import layernorm

        return layernorm.add_layer_norm(x, residual, weight, bias, eps)
    r = x if residual is None else x + residual
    return F.layer_norm(r, (r.shape[-1],), weight, bias, eps), r


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, approximate: bool, backend: str = "auto") -> torch.Tensor:
    """GELU(x @ weight.T + bias), tanh-approximated when `approximate`; bias and GELU fused on the fast path."""
    if resolve(backend, x) == "triton":
        from wizardcoder.kernels import gelu

        return gelu.bias_gelu(F.linear(x, weight), bias, approximate=approximate)
    return F.gelu(F.linear(x, weight, bias), approximate="tanh" if approximate else "none")


# ---------------------------------------------------------------------------------------------------- LM loss
def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of `h [N, D] @ weight[V, D].T` against `targets [N]` (ignore_index skipped; `mean` over the
    targets that count, `sum` for gradient accumulation over micro-batches). The fast path never holds [N, V]."""
    if resolve(backend, h) == "triton":
        from wizardcoder.kernels import cross_entropy

        return cross_entropy.fused_linear_cross_entropy(h, weight, targets, ignore_index=ignore_index, reduction=reduction)
    logits = F.linear(h, weight).float()
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
