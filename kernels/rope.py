"""Rotary position embeddings in Triton, applied to q and k in place from per-token position ids (so a packed stream
of documents, each restarting at position 0, rotates exactly as its documents would alone).

Convention: HF Llama's "rotate half": for i < D/2 with angle a = position * inv_freq[i],
    out[i]       = x[i] * cos(a) - x[i + D/2] * sin(a)
    out[i + D/2] = x[i + D/2] * cos(a) + x[i] * sin(a).
`inv_freq [D/2]` (fp32) carries the base theta and any linear scaling (LlamaConfig.inv_freq), so one kernel serves
CodeLlama (theta 1e6) and DeepSeek-Coder (theta 1e5, positions / 4).

Forward: one program per token; cos/sin of its D/2 angles computed in fp32 registers, then every head of that token
rotated as one [heads, D/2] tile and written back over the input. q and k are two launches (autograd lets a
Function modify a view in place only when it returns that one tensor; recomputing cos/sin is free next to the loads).
Backward: the rotation is orthogonal, so dx = R(-a) dy: the same kernel with sin negated, written to new tensors
(the incoming gradients are never overwritten: autograd may share them).

Limits: q `[..., Hq, D]`, k `[..., Hkv, D]` with one leading layout (`[T]` packed or `[B, S]` dense) whose token
dims flatten without a copy and a unit stride on D; D even; heads up to 128 per tile. fp16/bf16/fp32, math in fp32.
Tested: tests/test_llama_kernels.py vs `rope_reference` (CPU interpreter fp32/fp16; bf16 on CUDA).
"""
from __future__ import annotations

import torch

from ._common import custom_op
from ._triton import tl, triton


@triton.jit
def _rope_kernel(X, OUT, POS, INV_FREQ, stride_t, stride_h, stride_ot, stride_oh, H, HALF, BACKWARD: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Token t = program 0's id: rotate its [H, D] rows of X into OUT (which may be X)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    angle = tl.load(POS + t).to(tl.float32) * tl.load(INV_FREQ + d, mask=d < HALF, other=0.0)
    cos = tl.cos(angle)[None, :]
    sin = tl.sin(angle)[None, :]
    if BACKWARD:  # R(a)^T = R(-a)
        sin = -sin
    mask = (h < H)[:, None] & (d < HALF)[None, :]
    src = X + t * stride_t + h[:, None] * stride_h + d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = OUT + t * stride_ot + h[:, None] * stride_oh + d[None, :]
    tl.store(dst, (x1 * cos - x2 * sin).to(OUT.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(OUT.dtype.element_ty), mask=mask)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[..., H, D] -> a [T, H, D] view of the same memory (raises when the token dims do not flatten to a view)."""
    if x.stride(-1) != 1:
        raise ValueError(f"rope: the head dim must have stride 1; got strides {x.stride()}")
    return x.view(-1, x.shape[-2], x.shape[-1])


def _warps(block_h: int, block_d: int) -> int:
    """One warp per 512 values of the [heads, D/2] tile, 4 to 16: at 64 heads x head dim 128 (Llama 34B's q) four
    warps hold 64 fp32 values per thread twice over and the backward spills on sm_80 (bench.compile_report)."""
    return max(4, min(16, block_h * block_d // 512))


def _launch(x: torch.Tensor, out: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor, backward: bool) -> None:
    x3, o3 = _tokens(x), _tokens(out)
    T, H, D = x3.shape
    if T == 0:
        return
    BLOCK_H, BLOCK_D = triton.next_power_of_2(H), triton.next_power_of_2(D // 2)
    _rope_kernel[(T,)](x3, o3, position_ids.reshape(-1), inv_freq, x3.stride(0), x3.stride(1), o3.stride(0),
                       o3.stride(1), H, D // 2, BACKWARD=backward, BLOCK_H=BLOCK_H, BLOCK_D=BLOCK_D,
                       num_warps=_warps(BLOCK_H, BLOCK_D))


def _fwd_impl(x: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor) -> None:
    _launch(x, x, position_ids, inv_freq, backward=False)


def _fwd_fake(x, position_ids, inv_freq):
    return None


def _bwd_impl(dy: torch.Tensor, position_ids: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    dy = dy.contiguous()
    dx = torch.empty_like(dy)
    _launch(dy, dx, position_ids, inv_freq, backward=True)
    return dx


def _bwd_fake(dy, position_ids, inv_freq):
    return torch.empty_like(dy, memory_format=torch.contiguous_format)


_fwd_op = custom_op("rope_fwd_", _fwd_impl, _fwd_fake, mutates_args=("x",))
_bwd_op = custom_op("rope_bwd", _bwd_impl, _bwd_fake)


class RoPEFunction(torch.autograd.Function):
    """Rotates one tensor in place. One tensor per Function: autograd lets a Function modify a view input in place
    only when it returns that one tensor (q and k are views of their projections' outputs)."""

    @staticmethod
    def forward(ctx, x, position_ids, inv_freq):
        _fwd_op(x, position_ids, inv_freq)
        ctx.mark_dirty(x)
        ctx.save_for_backward(position_ids, inv_freq)
        return x

    @staticmethod
    def backward(ctx, dy):
        position_ids, inv_freq = ctx.saved_tensors
        return _bwd_op(dy, position_ids, inv_freq), None, None


def _check(q, k, position_ids, inv_freq) -> None:
    D = q.shape[-1]
    if k.shape[-1] != D or D % 2 or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"rope: q {tuple(q.shape)} and k {tuple(k.shape)} need one token layout and one even head dim")
    if position_ids.numel() != q.shape[:-2].numel():
        raise ValueError(f"rope: position_ids {tuple(position_ids.shape)} has {position_ids.numel()} entries for "
                         f"{q.shape[:-2].numel()} tokens")
    if inv_freq.shape != (D // 2,) or inv_freq.dtype != torch.float32:
        raise ValueError(f"rope: inv_freq must be fp32 [{D // 2}]; got {inv_freq.dtype} {tuple(inv_freq.shape)}")


def apply_rope_(q, k, position_ids, inv_freq):
    """Rotate q `[..., Hq, D]` and k `[..., Hkv, D]` in place by `position_ids` (one per token: `[T]`, `[1, T]` or
    `[B, S]`) times `inv_freq [D/2]` (fp32); returns `(q, k)`. Differentiable in q and k (a leaf that requires grad
    cannot be rotated in place; rotate the output of the projection, as the model does)."""
    _check(q, k, position_ids, inv_freq)
    return RoPEFunction.apply(q, position_ids, inv_freq), RoPEFunction.apply(k, position_ids, inv_freq)


def rope_reference(q, k, position_ids, inv_freq):
    """Plain torch, HF Llama's apply_rotary_pos_emb: angles in fp32, cos/sin rounded to q's dtype, rotate-half;
    returns new tensors."""
    _check(q, k, position_ids, inv_freq)
    angle = position_ids.reshape(q.shape[:-2]).float()[..., None] * inv_freq  # [..., D/2]
    emb = torch.cat([angle, angle], -1)[..., None, :]  # [..., 1, D]: broadcast over heads
    cos, sin = emb.cos(), emb.sin()

    def rotate(x):
        x1, x2 = x.chunk(2, -1)
        return x * cos.to(x.dtype) + torch.cat([-x2, x1], -1) * sin.to(x.dtype)

    return rotate(q), rotate(k)
