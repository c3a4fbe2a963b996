"""Fused residual-add + RMSNorm in Triton (the pre-norm step a Llama block does twice).

Forward, one program per row (up to 16 rows when rows are narrower than 2048): r = x + residual in torch's promoted
dtype (a bf16 block output added to the fp32 residual stream is fp32), rstd = 1 / sqrt(mean(r^2) + eps) in fp32,
y = r * rstd * weight, stored in `out_dtype` (default: the promoted dtype of r and weight, what the torch
reference gives). It writes y, r and the fp32 rstd `[M]` for the backward.
Backward: a fixed number of programs, each walking its run of rows: xhat = r * rstd, dxhat = dy * w,
dr_total = rstd * (dxhat - xhat * mean(dxhat * xhat)) + dr (dr = the gradient arriving through the returned
residual), written once and used for both x and residual; dweight partial sums in fp32 per program, reduced over
programs at the end (no atomics).

Limits: normalized dim N up to 65536 (one row in registers); any leading shape; fp16/bf16/fp32 inputs with fp32
statistics. The reference follows HF's LlamaRMSNorm (normalise in fp32, round to r's dtype, then scale); the kernel
keeps fp32 until the one store, so in low precision it is at least as close to an fp32 computation.
Tested: tests/test_llama_kernels.py vs `add_rms_norm_reference` (CPU interpreter fp32/fp16; bf16 on CUDA).
"""
from __future__ import annotations

import torch

from ._common import custom_op
from ._triton import tl, triton
from .layernorm import _residual_dtype, _rows, _rows_per_block, _warps  # the same row tiling as add+LayerNorm


@triton.jit
def _rms_fwd_kernel(X, RES, W, Y, R, RSTD, stride_x, stride_res, stride_y, stride_r, M, N, eps,
                    HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RES:  # promoted as torch's add promotes
        x = x + tl.load(RES + rows[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
        tl.store(R + rows[:, None] * stride_r + cols[None, :], x, mask=mask)
    x = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 1) / N + eps)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _rms_bwd_kernel(R, W, DY, DR, DX, RSTD, DW, stride_r, stride_dy, stride_dr, stride_dx, M, N, rows_per_program,
                    HAS_DR: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows pid * rows_per_program ... in steps of BLOCK_M; this program's dweight partial sum -> DW[pid]."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        rows64 = rows.to(tl.int64)
        mask = row_ok[:, None] & col_ok[None, :]
        r = tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        xhat = r * rstd[:, None]
        dxhat = dy * w[None, :]
        c = tl.sum(xhat * dxhat, 1) / N
        dx = (dxhat - xhat * c[:, None]) * rstd[:, None]
        if HAS_DR:
            dx += tl.load(DR + rows64[:, None] * stride_dr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, 0)
    tl.store(DW + pid * N + cols, dw, mask=col_ok)


def _fwd_impl(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
              out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> y [M, N] in out_dtype, r [M, N] (empty when residual is None: r is x), rstd [M] fp32."""
    r_dtype = _residual_dtype(x, residual)
    if residual is not None and x.dtype != r_dtype and residual.dtype != r_dtype:
        x = x.to(r_dtype)  # fp16 + bf16: neither is the promoted dtype
    x2 = _rows(x)
    M, N = x2.shape
    y = torch.empty((M, N), device=x.device, dtype=out_dtype)
    r = torch.empty((M, N) if residual is not None else (0, N), device=x.device, dtype=r_dtype)
    rstd = torch.empty(M, device=x.device, dtype=torch.float32)
    if M == 0:
        return y, r, rstd
    res2 = _rows(residual) if residual is not None else x2
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_M = _rows_per_block(BLOCK_N)
    _rms_fwd_kernel[(triton.cdiv(M, BLOCK_M),)](x2, res2, weight, y, r if residual is not None else y, rstd,
                                                x2.stride(0), res2.stride(0), y.stride(0),
                                                N if residual is not None else 0, M, N, eps,
                                                HAS_RES=residual is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                                num_warps=_warps(BLOCK_N))
    return y, r, rstd


def _fwd_fake(x, residual, weight, eps, out_dtype):
    M, N = x.numel() // x.shape[-1], x.shape[-1]
    r = x.new_empty((M, N) if residual is not None else (0, N), dtype=_residual_dtype(x, residual))
    return x.new_empty((M, N), dtype=out_dtype), r, x.new_empty(M, dtype=torch.float32)


def _bwd_impl(dy: torch.Tensor, dr: torch.Tensor | None, r: torch.Tensor, weight: torch.Tensor,
              rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> d(x + residual) [M, N] in r's dtype, dweight in the weight's dtype (fp32 partial sums)."""
    r2, dy2 = _rows(r), _rows(dy)
    M, N = r2.shape
    dx = torch.empty((M, N), device=r.device, dtype=r.dtype)
    if M == 0:
        return dx, torch.zeros_like(weight)
    dr2 = _rows(dr) if dr is not None else dy2
    n_prog = max(1, min(M, 4 * torch.cuda.get_device_properties(r.device).multi_processor_count)) if r.is_cuda else min(M, 4)
    rows_per_program = triton.cdiv(M, n_prog)
    n_prog = triton.cdiv(M, rows_per_program)
    dw = torch.empty((n_prog, N), device=r.device, dtype=torch.float32)
    BLOCK_N = triton.next_power_of_2(N)
    _rms_bwd_kernel[(n_prog,)](r2, weight, dy2, dr2, dx, rstd, dw, r2.stride(0), dy2.stride(0), dr2.stride(0),
                               dx.stride(0), M, N, rows_per_program, HAS_DR=dr is not None,
                               BLOCK_M=_rows_per_block(BLOCK_N), BLOCK_N=BLOCK_N, num_warps=_warps(BLOCK_N))
    return dx, dw.sum(0).to(weight.dtype)


def _bwd_fake(dy, dr, r, weight, rstd):
    return r.new_empty((r.numel() // r.shape[-1], r.shape[-1])), torch.empty_like(weight)


_fwd_op = custom_op("add_rms_norm_fwd", _fwd_impl, _fwd_fake)
_bwd_op = custom_op("add_rms_norm_bwd", _bwd_impl, _bwd_fake)


class AddRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, out_dtype):
        y, r, rstd = _fwd_op(x, residual, weight, eps, out_dtype)
        has_res = residual is not None
        ctx.save_for_backward(r if has_res else x, weight, rstd)
        ctx.has_res, ctx.shape = has_res, x.shape
        ctx.dtypes = (x.dtype, residual.dtype if has_res else None)
        y = y.view(x.shape)
        if not has_res:
            ctx.mark_non_differentiable(r)
            return y, r
        return y, r.view(x.shape)

    @staticmethod
    def backward(ctx, dy, dr):
        r, weight, rstd = ctx.saved_tensors
        dx, dw = _bwd_op(dy, dr if ctx.has_res else None, r, weight, rstd)
        dx = dx.view(ctx.shape)
        x_dtype, res_dtype = ctx.dtypes  # d/dx and d/dresidual of x + residual are the same tensor
        return dx.to(x_dtype), (dx.to(res_dtype) if ctx.has_res else None), dw, None, None


def add_rms_norm(x, residual, weight, eps, out_dtype: torch.dtype | None = None):
    """Returns `(RMSNorm(r) * weight, r)` with `r = x + residual` (or `x` when residual is None), normalised over the
    last dim with fp32 statistics; the output in `out_dtype` (default: the promoted dtype of r and weight, as the
    reference gives). Differentiable in x, residual and weight."""
    r_dtype = _residual_dtype(x, residual)
    out_dtype = out_dtype or torch.promote_types(r_dtype, weight.dtype)
    y, r = AddRMSNormFunction.apply(x, residual, weight, float(eps), out_dtype)
    return (y, r) if residual is not None else (y, x)


def add_rms_norm_reference(x, residual, weight, eps, out_dtype: torch.dtype | None = None):
    """Plain torch, HF's LlamaRMSNorm: `r = x + residual`, normalised in fp32, rounded to r's dtype, times weight
    (so an fp32 weight on a bf16 r gives fp32, as HF's does); `out_dtype` casts the result."""
    r = x if residual is None else x + residual
    rf = r.float()
    y = weight * (rf * torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + eps)).to(r.dtype)
    return (y if out_dtype is None else y.to(out_dtype)), r
