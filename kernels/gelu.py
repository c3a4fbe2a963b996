"""Fused bias + GELU in Triton: y = GELU(x + bias), tanh-approximated (StarCoder's `gelu_pytorch_tanh`) or exact
(erf, WizardCoder-15B's `gelu`).

Forward: one program per BLOCK of a flattened contiguous [M, N] tensor; the bias column is `offset % N`; math in
fp32, one read of x and one write of y (the unfused path reads and writes twice: bias add, then GELU).
Backward: dx = dy * GELU'(x + bias) recomputed from x and bias (nothing but the input is saved); dbias = the fp32
column sum of dx (a torch reduction).
tanh is written as 1 - 2 / (exp(2z) + 1) on z clamped to [-15, 15] (tanh(15) rounds to 1 in fp32).

Limits: bias over the last dim; fp16/bf16/fp32. Here the matmul itself stays in cuBLAS (ops.linear_gelu); fusing the
bias-GELU into the matmul epilogue is not done.
Tested: tests/test_kernels_gelu.py vs `bias_gelu_reference` (CPU interpreter fp32/fp16; bf16 on CUDA).
Benchmarked: bench/bench_kernels.py (GB/s, vs torch).
"""
from __future__ import annotations

import torch

from ._common import custom_op
from ._triton import tl, triton

SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
INV_SQRT_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


# A module-level constexpr goes on the right of a product: Triton 3.8's interpreter turns `constexpr * tensor` into a
# value that a nested @triton.jit call cannot take ("cannot convert ... tensor to tensor"); `tensor * constexpr` works
# in every version (found by `make test-latest`).
@triton.jit
def _tanh(z):
    z = tl.minimum(tl.maximum(z, -15.0), 15.0)  # tanh(15) == 1 in fp32; keeps exp finite
    return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)


@triton.jit
def _gelu_fwd_kernel(X, B, Y, numel, N, APPROX: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    u = x + tl.load(B + offs % N, mask=mask, other=0.0).to(tl.float32)
    if APPROX:
        y = 0.5 * u * (1.0 + _tanh((u + 0.044715 * u * u * u) * SQRT_2_OVER_PI))
    else:
        y = 0.5 * u * (1.0 + tl.math.erf(u * INV_SQRT_2))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bwd_kernel(DY, X, B, DX, numel, N, APPROX: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    u = x + tl.load(B + offs % N, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    if APPROX:
        t = _tanh((u + 0.044715 * u * u * u) * SQRT_2_OVER_PI)
        d = 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * u * u)
    else:
        d = 0.5 * (1.0 + tl.math.erf(u * INV_SQRT_2)) + u * tl.exp(-0.5 * u * u) * INV_SQRT_2PI
    tl.store(DX + offs, (dy * d).to(DX.dtype.element_ty), mask=mask)


BLOCK = 1024


def _fwd_impl(x: torch.Tensor, bias: torch.Tensor, approximate: bool) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel():
        _gelu_fwd_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, bias, y, x.numel(), x.shape[-1], APPROX=approximate,
                                                           BLOCK=BLOCK, num_warps=4)
    return y


def _fwd_fake(x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _bwd_impl(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, approximate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dy, x = dy.contiguous(), x.contiguous()
    dx = torch.empty_like(x)
    if x.numel():
        _gelu_bwd_kernel[(triton.cdiv(x.numel(), BLOCK),)](dy, x, bias, dx, x.numel(), x.shape[-1], APPROX=approximate,
                                                           BLOCK=BLOCK, num_warps=4)
    dbias = dx.reshape(-1, x.shape[-1]).sum(0, dtype=torch.float32).to(bias.dtype)
    return dx, dbias


def _bwd_fake(dy, x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(bias)


_fwd_op = custom_op("bias_gelu_fwd", _fwd_impl, _fwd_fake)
_bwd_op = custom_op("bias_gelu_bwd", _bwd_impl, _bwd_fake)


class BiasGeluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, approximate):
        ctx.save_for_backward(x, bias)
        ctx.approximate = approximate
        return _fwd_op(x, bias, approximate)

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dx, dbias = _bwd_op(dy, x, bias, ctx.approximate)
        return dx, dbias, None


def bias_gelu(x, bias, approximate: bool = True):
    """GELU(x + bias) for x `[..., N]`, bias `[N]`; tanh approximation when `approximate`, exact erf otherwise.
    Differentiable in x and bias."""
    if bias.shape != (x.shape[-1],):
        raise ValueError(f"bias_gelu: bias of shape {tuple(bias.shape)} does not match x's last dim {x.shape[-1]}")
    return BiasGeluFunction.apply(x, bias, bool(approximate))


def bias_gelu_reference(x, bias, approximate: bool = True):
    """Plain torch: F.gelu(x + bias)."""
    return torch.nn.functional.gelu(x + bias, approximate="tanh" if approximate else "none")
