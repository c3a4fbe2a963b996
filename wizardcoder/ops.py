"""The model's hot operations behind one switch: plain torch (the reference that lives beside each kernel in
`kernels/`; any device; the ground truth in tests) and fused Triton kernels / flash-attn on CUDA.

Backends (see StarCoderConfig): attention is `torch` | `triton` | `flash`; LayerNorm, bias-GELU and the LM-head loss
are `torch` | `triton`. `auto` picks the fast path on CUDA tensors when it is importable and the reference otherwise.

Shapes: attention takes q `[T, Hq, D]`, k/v `[T, Hkv, D]` (packed: documents back to back, `cu_seqlens` int32
`[n_docs + 1]`, document i = rows cu_seqlens[i]:cu_seqlens[i+1]) or q `[B, S, Hq, D]`, k/v `[B, S, Hkv, D]`
(dense batch). Attention is causal and Hq must be a multiple of Hkv (MQA: Hkv = 1; query head h reads K/V head
h // (Hq // Hkv)), as in flash-attn.

Mixed precision, one design for every fused op: explicit casts here that follow torch's own autocast policy op by
op, so a fused op computes what the unfused torch op it replaces computes under the same autocast.
- `torch.autocast(device, dtype)` over fp32 parameters (bf16 on CUDA, fp16 on CPU or CUDA: the single-process
  trainer). With `dtype` the autocast dtype:
    attention          q, k, v in dtype (SDPA is on autocast's lower-precision list)
    x @ W^T + b, GELU  x and W in dtype (F.linear under autocast), b cast to dtype as F.linear casts its bias;
                       GELU runs in its input's dtype (autocast has no rule for it)
    add + LayerNorm    the add promotes as torch's add does (a bf16 block output + the fp32 residual stream = fp32);
                       LayerNorm returns fp32 on CUDA (autocast's fp32 list) and r's dtype elsewhere (CPU autocast
                       has no rule for it; in the model r is fp32 there anyway)
    LM head + loss     h in dtype; an fp32 weight goes in as is (the kernel makes the one copy in dtype that
                       F.linear's autocast makes, and returns the weight's gradient in fp32 directly); logits in
                       dtype, log-softmax and loss in fp32 (cross_entropy is on the fp32 list)
  The kernels run with autocast off (kernels.custom_op), so their own torch ops keep the dtypes chosen here.
- Pure low-precision parameters (FSDP2 MixedPrecisionPolicy(param_dtype=bf16|fp16, reduce_dtype=fp32), no
  autocast): every tensor is already in one dtype and nothing is cast.
Outside autocast nothing is cast (plain torch refuses F.linear of a bf16 x with an fp32 W, and so do the kernels).
Explicit casts rather than torch.amp.custom_fwd(cast_inputs=dtype): custom_fwd casts every floating input to one
dtype, but the residual stream must stay fp32 and the loss kernel takes fp32 master weights without a copy of
their own. See docs/kernels.md.
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


def autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The dtype torch's autocast computes matmul-like ops in on `t`'s device, or None when autocast is off there."""
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


def resolve(backend: str, tensor: torch.Tensor, kind: str = "kernels") -> str:
    """Turn `auto` into a concrete backend for `tensor`'s device. `kind` is `attention` or `kernels`."""
    if backend != "auto":
        return backend
    if tensor.device.type != "cuda":
        return "torch"
    dtype = autocast_dtype(tensor) or tensor.dtype
    if kind == "attention" and _importable("flash_attn") and dtype in (torch.float16, torch.bfloat16):
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
    from wizardcoder.kernels import flash_attention as fa

    auto = backend == "auto"
    backend = resolve(backend, q, "attention")
    if key_padding_mask is not None or (auto and backend == "triton" and cu_seqlens is None):
        # dense batches: SDPA's flash kernel, measured 3x faster than ours on an H200 (bf16, B8 H16 S2048 D128,
        # forward + backward 1.27 ms vs 3.74 ms autotuned; bench/RESULTS.md); packed ones keep ours (6.5x the loop)
        backend = "torch"
    if backend == "torch":
        # Packed on a GPU: batched over documents, no host sync (held to attention_reference in tests). On CPU the
        # loop over documents reads cu_seqlens from host memory (no device to wait for) and runs SDPA's causal
        # kernel per document, 2-2.6x faster there than the batched form's masked [T, 2 x max_seqlen] scores.
        if cu_seqlens is not None and q.is_cuda:
            if max_seqlen is None:
                max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 1
            return fa.attention_packed_torch(q, k, v, cu_seqlens, max_seqlen, softmax_scale=scale)
        return fa.attention_reference(q, k, v, cu_seqlens, cu_seqlens, softmax_scale=scale, causal=True,
                                      key_padding_mask=key_padding_mask)
    dtype = autocast_dtype(q)
    if dtype is not None:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if backend == "triton":
        if cu_seqlens is not None:
            return fa.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale, causal=True)
        return fa.flash_attn_func(q, k, v, softmax_scale=scale, causal=True)
    if backend == "flash":
        import flash_attn

        if cu_seqlens is not None:
            return flash_attn.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale, causal=True)
        return flash_attn.flash_attn_func(q, k, v, softmax_scale=scale, causal=True)
    raise ValueError(f"unknown attention backend {backend!r}")


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
    from wizardcoder.kernels import layernorm

    if resolve(backend, x) == "triton":
        # autocast's layer_norm rule: fp32 output on CUDA; none on CPU (the output keeps r's dtype there).
        out_dtype = torch.float32 if x.is_cuda and autocast_dtype(x) is not None else None
        return layernorm.add_layer_norm(x, residual, weight, bias, eps, out_dtype=out_dtype)
    return layernorm.add_layer_norm_reference(x, residual, weight, bias, eps)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, approximate: bool, backend: str = "auto") -> torch.Tensor:
    """GELU(x @ weight.T + bias), tanh-approximated when `approximate`; bias and GELU fused on the fast path."""
    from wizardcoder.kernels import gelu

    dtype = autocast_dtype(x)
    if dtype is not None:  # F.linear's autocast rule covers its bias, which the GELU step adds here
        bias = bias.to(dtype)
    h = F.linear(x, weight)  # autocast casts x and weight
    if resolve(backend, x) == "triton":
        return gelu.bias_gelu(h, bias, approximate=approximate)
    return gelu.bias_gelu_reference(h, bias, approximate=approximate)


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
    from wizardcoder.kernels import cross_entropy

    if resolve(backend, h) == "triton":
        dtype = autocast_dtype(h)
        if dtype is not None:
            h = h.to(dtype)
            if weight.dtype != torch.float32:  # fp32 master weights are cast once, by the kernel
                weight = weight.to(dtype)
        return cross_entropy.fused_linear_cross_entropy(h, weight, targets, ignore_index=ignore_index, reduction=reduction)
    return cross_entropy.linear_cross_entropy_reference(h, weight, targets, ignore_index=ignore_index, reduction=reduction)
