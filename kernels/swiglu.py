"""Fused SwiGLU in Triton: h = SiLU(gate) * up, the Llama MLP's nonlinearity between its gate/up and down matmuls.

Forward: one program per BLOCK of the flattened contiguous tensors; math in fp32; reads gate and up once and writes
h once (unfused torch reads and writes an extra [tokens, intermediate] tensor for SiLU(gate)).
Backward: recomputes s = sigmoid(gate) from the saved inputs (nothing else is saved):
dgate = dh * up * s * (1 + gate * (1 - s)), dup = dh * SiLU(gate), both in one pass.

Limits: gate and up of one shape and dtype; fp16/bf16/fp32. The matmuls stay in cuBLAS (the gate/up projections are
two HF parameters; fusing them into one [2F, D] matmul is a loading-time choice left to the integration step).
Tested: tests/test_llama_kernels.py vs `swiglu_reference` (CPU interpreter fp32/fp16; bf16 on CUDA).
"""
from __future__ import annotations

import torch

from ._common import custom_op
from ._triton import tl, triton


@triton.jit
def _swiglu_fwd_kernel(G, U, H, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    h = g * tl.sigmoid(g) * u
    tl.store(H + offs, h.to(H.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(DH, G, U, DG, DU, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dh = tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    tl.store(DG + offs, (dh * u * s * (1.0 + g * (1.0 - s))).to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + offs, (dh * g * s).to(DU.dtype.element_ty), mask=mask)


BLOCK = 1024


def _fwd_impl(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    h = torch.empty_like(gate)
    if gate.numel():
        _swiglu_fwd_kernel[(triton.cdiv(gate.numel(), BLOCK),)](gate, up, h, gate.numel(), BLOCK=BLOCK, num_warps=4)
    return h


def _fwd_fake(gate, up):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


def _bwd_impl(dh: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dh, gate, up = dh.contiguous(), gate.contiguous(), up.contiguous()
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    if gate.numel():
        _swiglu_bwd_kernel[(triton.cdiv(gate.numel(), BLOCK),)](dh, gate, up, dgate, dup, gate.numel(), BLOCK=BLOCK,
                                                                num_warps=4)
    return dgate, dup


def _bwd_fake(dh, gate, up):
    return (torch.empty_like(gate, memory_format=torch.contiguous_format),
            torch.empty_like(up, memory_format=torch.contiguous_format))


_fwd_op = custom_op("swiglu_fwd", _fwd_impl, _fwd_fake)
_bwd_op = custom_op("swiglu_bwd", _bwd_impl, _bwd_fake)


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return _fwd_op(gate, up)

    @staticmethod
    def backward(ctx, dh):
        gate, up = ctx.saved_tensors
        return _bwd_op(dh, gate, up)


def swiglu(gate, up):
    """SiLU(gate) * up for two tensors of one shape and dtype. Differentiable in both."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} must "
                         "have one shape and dtype")
    return SwiGLUFunction.apply(gate, up)


def swiglu_reference(gate, up):
    """Plain torch, HF's LlamaMLP nonlinearity: F.silu(gate) * up."""
    return torch.nn.functional.silu(gate) * up
