"""Fused residual-add + LayerNorm in Triton (the pre-norm step StarCoder does twice per block).

Forward, one program per row (2 to 16 rows when rows are narrower than 2048): r = x + residual in torch's promoted
dtype (bf16 + bf16 stays bf16, rounded as the unfused torch add stores it; a bf16 block output added to the fp32
residual stream, as under autocast, is fp32), mean and 1/std over the row in fp32, y = (r - mean) * rstd * weight +
bias, stored in `out_dtype` (r's dtype by default; fp32 under CUDA autocast, whose policy computes layer_norm in
fp32). It writes y, r, and the fp32 mean and rstd `[M]` for the backward (so the backward reads r, dy and dr once and
never re-reduces the mean).
Backward: a fixed number of programs (a few per SM), each walking its run of rows (as many at a time as forward):
dxhat = dy * w; dr_total = rstd * (dxhat - xhat * mean(dxhat * xhat) - mean(dxhat)) + dr (dr = the gradient arriving
through the returned residual), written once and used for both x and residual; dweight / dbias partial sums are kept
in fp32 registers per program and reduced over programs at the end (no atomics).

Limits: normalized dim N up to 65536 (one row in registers; the block is the next power of two); any leading shape;
fp16/bf16/fp32 inputs (x, residual, weight and bias may differ in dtype) with fp32 statistics; weight and bias
required.
Tested: tests/test_kernels_layernorm.py vs `add_layer_norm_reference` (CPU interpreter fp32/fp16; bf16 on CUDA).
Benchmarked: bench/bench_kernels.py (GB/s vs the copy bandwidth, vs torch).
"""
from __future__ import annotations

import torch

from ._common import custom_op
from ._triton import tl, triton


@triton.jit
def _ln_fwd_kernel(X, RES, W, B, Y, R, MEAN, RSTD, stride_x, stride_res, stride_y, stride_r, M, N, eps,
                   HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows pid * BLOCK_M ... of [M, N]: one row per program at StarCoder's widths, several for narrow rows."""
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
    mean = tl.sum(x, 1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, 1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _ln_bwd_kernel(R, W, DY, DR, DX, MEAN, RSTD, DW, DB, stride_r, stride_dy, stride_dr, stride_dx, M, N,
                   rows_per_program, HAS_DR: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows pid * rows_per_program ... in steps of BLOCK_M; dweight / dbias partial sums of this program -> DW/DB[pid]."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], tl.float32)
    db = tl.zeros([BLOCK_N], tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        rows64 = rows.to(tl.int64)
        mask = row_ok[:, None] & col_ok[None, :]
        r = tl.load(R + rows64[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (r - mean[:, None]) * rstd[:, None], 0.0)
        dxhat = dy * w[None, :]
        c1 = tl.sum(xhat * dxhat, 1) / N
        c2 = tl.sum(dxhat, 1) / N
        dx = (dxhat - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DR:
            dx += tl.load(DR + rows64[:, None] * stride_dr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, 0)
        db += tl.sum(dy, 0)
    tl.store(DW + pid * N + cols, dw, mask=col_ok)
    tl.store(DB + pid * N + cols, db, mask=col_ok)


def _rows_per_block(block_n: int) -> int:
    """Rows per tile: 1 at StarCoder's widths (>= 2048), up to 16 for narrow rows (fewer, fuller programs)."""
    return max(1, min(16, 2048 // block_n))


def _warps(block_n: int) -> int:
    return min(max(block_n // 256, 1), 16)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., N] -> [M, N] with a unit last stride (a view when possible)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _residual_dtype(x: torch.Tensor, residual: torch.Tensor | None) -> torch.dtype:
    return x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)


def _fwd_impl(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
              eps: float, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> y [M, N] in out_dtype, r [M, N] in the promoted dtype of x and residual (empty when residual is None: r is
    x), mean, rstd [M] fp32."""
    r_dtype = _residual_dtype(x, residual)
    if residual is not None and x.dtype != r_dtype and residual.dtype != r_dtype:
        x = x.to(r_dtype)  # fp16 + bf16: neither is the promoted dtype; the kernel adds in fp32 after this cast
    x2 = _rows(x)
    M, N = x2.shape
    y = torch.empty((M, N), device=x.device, dtype=out_dtype)
    r = torch.empty((M, N) if residual is not None else (0, N), device=x.device, dtype=r_dtype)
    mean = torch.empty(M, device=x.device, dtype=torch.float32)
    rstd = torch.empty(M, device=x.device, dtype=torch.float32)
    if M == 0:
        return y, r, mean, rstd
    res2 = _rows(residual) if residual is not None else x2
    BLOCK_N = triton.next_power_of_2(N)
    BLOCK_M = _rows_per_block(BLOCK_N)
    _ln_fwd_kernel[(triton.cdiv(M, BLOCK_M),)](x2, res2, weight, bias, y, r if residual is not None else y, mean, rstd,
                                               x2.stride(0), res2.stride(0), y.stride(0), N if residual is not None else 0,
                                               M, N, eps, HAS_RES=residual is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                               num_warps=_warps(BLOCK_N))
    return y, r, mean, rstd


def _fwd_fake(x, residual, weight, bias, eps, out_dtype):
    M, N = x.numel() // x.shape[-1], x.shape[-1]
    r = x.new_empty((M, N) if residual is not None else (0, N), dtype=_residual_dtype(x, residual))
    return (x.new_empty((M, N), dtype=out_dtype), r, x.new_empty(M, dtype=torch.float32),
            x.new_empty(M, dtype=torch.float32))


def _bwd_impl(dy: torch.Tensor, dr: torch.Tensor | None, r: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
              rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> d(x + residual) [M, N] in r's dtype, dweight, dbias (in the weight's dtype; fp32 partial sums)."""
    r2, dy2 = _rows(r), _rows(dy)
    M, N = r2.shape
    dx = torch.empty((M, N), device=r.device, dtype=r.dtype)
    if M == 0:
        return dx, torch.zeros_like(weight), torch.zeros_like(weight)
    dr2 = _rows(dr) if dr is not None else dy2
    n_prog = max(1, min(M, 4 * torch.cuda.get_device_properties(r.device).multi_processor_count)) if r.is_cuda else min(M, 4)
    rows_per_program = triton.cdiv(M, n_prog)
    n_prog = triton.cdiv(M, rows_per_program)
    dw = torch.empty((n_prog, N), device=r.device, dtype=torch.float32)
    db = torch.empty((n_prog, N), device=r.device, dtype=torch.float32)
    BLOCK_N = triton.next_power_of_2(N)
    _ln_bwd_kernel[(n_prog,)](r2, weight, dy2, dr2, dx, mean, rstd, dw, db, r2.stride(0), dy2.stride(0), dr2.stride(0),
                              dx.stride(0), M, N, rows_per_program, HAS_DR=dr is not None,
                              BLOCK_M=_rows_per_block(BLOCK_N), BLOCK_N=BLOCK_N, num_warps=_warps(BLOCK_N))
    return dx, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)


def _bwd_fake(dy, dr, r, weight, mean, rstd):
    return r.new_empty((r.numel() // r.shape[-1], r.shape[-1])), torch.empty_like(weight), torch.empty_like(weight)


_fwd_op = custom_op("add_layer_norm_fwd", _fwd_impl, _fwd_fake)
_bwd_op = custom_op("add_layer_norm_bwd", _bwd_impl, _bwd_fake)


class AddLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, out_dtype):
        y, r, mean, rstd = _fwd_op(x, residual, weight, bias, eps, out_dtype)
        has_res = residual is not None
        ctx.save_for_backward(r if has_res else x, weight, mean, rstd)
        ctx.has_res, ctx.shape = has_res, x.shape
        ctx.dtypes = (x.dtype, residual.dtype if has_res else None)
        y = y.view(x.shape)
        if not has_res:
            ctx.mark_non_differentiable(r)
            return y, r
        return y, r.view(x.shape)

    @staticmethod
    def backward(ctx, dy, dr):
        r, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _bwd_op(dy, dr if ctx.has_res else None, r, weight, mean, rstd)
        dx = dx.view(ctx.shape)
        # d/dx and d/dresidual of x + residual are the same tensor (in r's dtype; each input gets its own dtype back).
        x_dtype, res_dtype = ctx.dtypes
        return dx.to(x_dtype), (dx.to(res_dtype) if ctx.has_res else None), dw, db, None, None


def add_layer_norm(x, residual, weight, bias, eps, out_dtype: torch.dtype | None = None):
    """Returns `(LayerNorm(r), r)` with `r = x + residual` (or `x` when residual is None; the promoted dtype when x and
    residual differ), normalized over the last dim with fp32 statistics; the normed output in `out_dtype` (default:
    r's dtype). Differentiable in x, residual, weight and bias."""
    out_dtype = out_dtype or _residual_dtype(x, residual)
    y, r = AddLayerNormFunction.apply(x, residual, weight, bias, float(eps), out_dtype)
    return (y, r) if residual is not None else (y, x)


def add_layer_norm_reference(x, residual, weight, bias, eps, out_dtype: torch.dtype | None = None):
    """Plain torch: `r = x + residual` (promoted as torch promotes), `F.layer_norm(r)`; with `out_dtype`, the norm is
    computed in that dtype (fp32: what torch's autocast does with layer_norm on CUDA)."""
    r = x if residual is None else x + residual
    if out_dtype is not None and out_dtype != r.dtype:
        return torch.nn.functional.layer_norm(r.to(out_dtype), (r.shape[-1],), weight.to(out_dtype), bias.to(out_dtype), eps), r
    return torch.nn.functional.layer_norm(r, (r.shape[-1],), weight, bias, eps), r
