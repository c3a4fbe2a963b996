"""The Llama model's hot operations behind the same switch as wizardcoder/ops.py (which serves StarCoder): the
plain-torch reference beside each kernel, or the fused Triton kernel, chosen by `kernel_backend` through
`ops.resolve` (`auto`: Triton on CUDA when importable). Mixed precision follows ops.py's policy:
    add + RMSNorm   the add promotes as torch's add does; the output is the promoted dtype of r and the weight,
                    what HF's LlamaRMSNorm gives (an fp32 weight on the fp32 residual stream: fp32)
    RoPE            in q's and k's dtype (the projections' outputs), angles in fp32
    SwiGLU          in its inputs' dtype (the projections' outputs; autocast has no rule for silu or mul)
The kernels run with autocast off (kernels.custom_op), so nothing inside them is recast.
"""
from __future__ import annotations

import torch

from .ops import resolve


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-norm residual step: `r = x + residual` (or `x`), returns `(RMSNorm(r) * weight, r)`."""
    from wizardcoder.kernels import rmsnorm

    if resolve(backend, x) == "triton":
        return rmsnorm.add_rms_norm(x, residual, weight, eps)
    return rmsnorm.add_rms_norm_reference(x, residual, weight, eps)


def rope(q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor,
         backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embeddings of q `[..., Hq, D]` and k `[..., Hkv, D]` at `position_ids` (one per token). The Triton
    path rotates q and k in place (they must be fresh projection outputs, as in the model)."""
    from wizardcoder.kernels import rope as rope_kernels

    if resolve(backend, q) == "triton":
        return rope_kernels.apply_rope_(q, k, position_ids, inv_freq)
    return rope_kernels.rope_reference(q, k, position_ids, inv_freq)


def swiglu(gate: torch.Tensor, up: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """SiLU(gate) * up."""
    from wizardcoder.kernels import swiglu as swiglu_kernels

    if resolve(backend, gate) == "triton":
        return swiglu_kernels.swiglu(gate, up)
    return swiglu_kernels.swiglu_reference(gate, up)
