"""Fused linear cross-entropy: loss = CE(h @ weight^T, targets) without ever holding the [N, V] logits, with the
gradients of h and weight computed in the forward pass (as Liger-Kernel's fused linear cross-entropy does).

Algorithm: tokens are processed in chunks of C rows (C = next power of two of N / ceil(V / D), so a chunk's logits
are about the size of h). Per chunk:
  1. logits = h_c @ weight^T            (cuBLAS, input dtype, fp32 accumulation)         [C, V]
  2. a Triton kernel, one program per row: online max / sum-exp over V in fp32 (pass 1), then overwrites the row in
     place with d loss / d logits = (softmax - onehot(target)) * scale (pass 2) and writes the row's loss
     lse - logit[target]. Rows whose target is `ignore_index` get loss 0 and a zero gradient row.
  3. grad_h[c] = dlogits @ weight;  grad_weight += dlogits^T @ h_c.
The loss is the fp32 sum of the row losses times `scale`; scale = 1 / (number of targets that count) for
`mean` (read by the kernel from a device scalar: no host sync), 1 for `sum`. The backward only multiplies the
gradients the forward made by the incoming scalar gradient (in place, in fp32 arithmetic; see Memory).

Dtypes: h [N, D] fp16/bf16/fp32; weight [V, D] in h's dtype, or fp32 master weights under a half h (autocast): the
matmuls then use one copy of the weight in h's dtype (the copy torch's autocast makes for F.linear) and the weight's
gradient comes back in fp32.

Memory: grad_h [N, D] and grad_weight [V, D] are the gradients the caller gets (the unfused path makes them too);
beyond them the forward holds one chunk of logits [C, V] in h's dtype and, only where it is needed, a V x D fp32
accumulator:
- fp32 weight (fp32 training, or fp32 master weights under autocast): grad_weight itself is the fp32 accumulator;
  no extra buffer (chunk products are added in fp32: cuBLAS's half x half -> fp32 addmm where this torch has it).
- half weight (pure bf16/fp16 parameters, e.g. FSDP2 param_dtype) and one chunk: one GEMM (fp32 accumulation
  inside it, one rounding, exactly the unfused path); no extra buffer.
- half weight and several chunks: an fp32 accumulator freed at the end of the forward (one rounding, like the
  unfused GEMM; summing chunk products in bf16 instead, as Liger does by default, adds one rounding per chunk);
  `accumulate_fp32=False` takes Liger's layout.
The backward scales the saved gradients in place by the incoming scalar (fp32 arithmetic: a small Triton kernel for
half tensors, since a loss scale of 2**16 is inf in fp16) and hands them over (no copy), so it can run once per
forward: a second backward through a retained graph raises.

All targets ignored: `sum` gives 0; `mean` gives nan, as torch's F.cross_entropy does (0 / 0), and both give zero
gradients. Targets outside [0, V) other than ignore_index are not checked (torch raises); the kernel never reads out of
bounds for them (the row's loss is its lse and its gradient the plain softmax).

Limits: no bias, no label smoothing, no z-loss.
Tested: tests/test_kernels_cross_entropy.py vs `linear_cross_entropy_reference` (CPU interpreter fp32/fp16, bf16 on
CUDA). Benchmarked: bench/bench_kernels.py (time and peak extra bytes vs torch, and Liger when installed).
"""
from __future__ import annotations

import functools
import os

import torch

from ._common import custom_op
from ._triton import tl, triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _ce_kernel(LOGITS, TARGETS, LOSS, SCALE, stride_l, V, ignore_index, BLOCK_V: tl.constexpr):
    """Row `pid` of LOGITS [C, V]: LOSS[pid] = lse - logit[target]; LOGITS row <- (softmax - onehot) * SCALE."""
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_l
    target = tl.load(TARGETS + row)
    offs = tl.arange(0, BLOCK_V)
    if target == ignore_index:
        for start in range(0, V, BLOCK_V):
            tl.store(base + start + offs, tl.zeros([BLOCK_V], tl.float32).to(LOGITS.dtype.element_ty),
                     mask=start + offs < V)
        tl.store(LOSS + row, 0.0)
        return
    scale = tl.load(SCALE)
    # pass 1: running max m and running sum d of exp(x - m)
    m = float("-inf")
    d = 0.0
    for start in range(0, V, BLOCK_V):
        x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    x_t = tl.load(base + target, mask=(target >= 0) & (target < V), other=0.0).to(tl.float32)
    lse = m + tl.log(d)
    # pass 2: the gradient, in place
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        g = tl.exp(x - lse)
        g = tl.where(cols == target, g - 1.0, g) * scale
        tl.store(base + cols, g.to(LOGITS.dtype.element_ty), mask=cols < V)
    tl.store(LOSS + row, lse - x_t)


@functools.cache
def _addmm_fp32_out_works(device: str, dtype: torch.dtype) -> bool:
    """Whether `torch.addmm(c32, a16, b16, out_dtype=float32, out=c32)` exists here and is right (CUDA, recent torch)."""
    try:
        a = torch.randn(64, 32, device=device).to(dtype)
        b = torch.randn(32, 48, device=device).to(dtype)
        c = torch.randn(64, 48, device=device)
        want = c + a.float() @ b.float()
        torch.addmm(c, a, b, out_dtype=torch.float32, out=c)
        return bool(torch.allclose(c, want, atol=1e-2, rtol=1e-2))
    except Exception:
        return False


def _chunk_size(N: int, V: int, D: int) -> int:
    return triton.next_power_of_2(triton.cdiv(N, max(1, triton.cdiv(V, D))))


def _add_chunk_product(grad_w: torch.Tensor, dlogits_t: torch.Tensor, hc: torch.Tensor) -> None:
    """grad_w += dlogits_t @ hc, where grad_w is fp32 and the operands are in h's dtype."""
    if dlogits_t.dtype == grad_w.dtype:
        grad_w.addmm_(dlogits_t, hc)
    elif grad_w.is_cuda and _addmm_fp32_out_works(str(grad_w.device), hc.dtype):
        torch.addmm(grad_w, dlogits_t, hc, out_dtype=torch.float32, out=grad_w)  # half in, fp32 accumulate, in place
    elif grad_w.is_cuda:  # no fp32-output GEMM in this torch: half GEMM (one rounding per chunk), exact fp32 sum
        grad_w += dlogits_t @ hc
    else:
        grad_w.addmm_(dlogits_t.float(), hc.float())


def _fwd_impl(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, mean: bool,
              accumulate_fp32: bool, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> loss (fp32 scalar), grad_h [N, D] (h's dtype) and grad_weight [V, D] (the weight's dtype), unscaled by the
    upstream gradient."""
    N, D = h.shape
    V = weight.shape[0]
    h = h.contiguous()
    targets = targets.contiguous()
    w = weight if weight.dtype == h.dtype else weight.to(h.dtype)  # fp32 master weights: one copy in h's dtype
    if mean:
        scale = 1.0 / (targets != ignore_index).sum().to(torch.float32)  # inf when nothing counts: loss 0 * inf = nan
    else:
        scale = torch.ones((), device=h.device, dtype=torch.float32)
    scale = scale.reshape(1)
    grad_h = torch.empty_like(h)
    C = chunk_size if chunk_size > 0 else max(1, _chunk_size(N, V, D))
    # The weight's gradient is accumulated in fp32 when the weight is fp32 (it is the gradient itself), or when a
    # half weight's gradient sums several chunks and accumulate_fp32 asks for one rounding (a transient buffer).
    acc_dtype = torch.float32 if weight.dtype == torch.float32 or (accumulate_fp32 and N > C) else weight.dtype
    grad_w = None  # made by the first chunk
    row_loss = torch.empty(N, device=h.device, dtype=torch.float32)
    BLOCK_V = min(triton.next_power_of_2(V), 4096)
    if INTERPRET:
        # The interpreter pays per op, not per element: a large vocabulary in one block; a small one (the tests') in
        # several, so the loop over blocks is covered.
        BLOCK_V = triton.next_power_of_2(V) if V > 4096 else 256
    for s in range(0, N, C):
        e = min(N, s + C)
        hc = h[s:e]
        logits = hc @ w.T  # (c, V), h's dtype
        _ce_kernel[(e - s,)](logits, targets[s:e], row_loss[s:e], scale, logits.stride(0), V, ignore_index,
                             BLOCK_V=BLOCK_V, num_warps=16 if BLOCK_V >= 4096 else 4)
        torch.mm(logits, w, out=grad_h[s:e])
        if acc_dtype == hc.dtype:
            grad_w = logits.T @ hc if grad_w is None else grad_w.addmm_(logits.T, hc)
        else:
            if grad_w is None:
                grad_w = torch.zeros(V, D, device=h.device, dtype=acc_dtype)
            _add_chunk_product(grad_w, logits.T, hc)
        del logits
    del w
    if grad_w is None:  # no tokens
        grad_w = torch.zeros(V, D, device=h.device, dtype=weight.dtype)
    loss = row_loss.sum() * scale[0]
    return loss, grad_h, grad_w.to(weight.dtype)  # a half weight's fp32 accumulator is freed here


def _fwd_fake(h, weight, targets, ignore_index, mean, accumulate_fp32, chunk_size):
    return (h.new_empty((), dtype=torch.float32), torch.empty_like(h, memory_format=torch.contiguous_format),
            torch.empty_like(weight, memory_format=torch.contiguous_format))


_fwd_op = custom_op("fused_linear_cross_entropy_fwd", _fwd_impl, _fwd_fake)


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index, mean, accumulate_fp32, chunk_size):
        loss, grad_h, grad_w = _fwd_op(h, weight, targets, ignore_index, mean, accumulate_fp32, chunk_size)
        # Kept as attributes, not saved tensors, so the backward can drop its references and hand the buffers over
        # to autograd (which then takes them as .grad without a copy).
        ctx.grads = (grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("fused_linear_cross_entropy: the backward consumes the gradients the forward computed; "
                               "it can run once per forward (do not backpropagate twice through a retained graph).")
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        # In place, without a host sync to test for 1.0: saves a copy of grad_h and grad_weight.
        g = grad_loss.to(torch.float32)
        _scale_(grad_h, g)
        _scale_(grad_w, g)
        return grad_h, grad_w, None, None, None, None, None


def _scale_(t: torch.Tensor, g: torch.Tensor) -> None:
    """t *= g in place with the product in fp32: g itself may not fit t's dtype (GradScaler's first loss scale, 2**16,
    is inf in fp16, while the scaled gradients are fine), so half tensors go through a kernel that multiplies in
    registers (no fp32 temporary)."""
    if t.dtype == torch.float32:
        t.mul_(g)
    else:
        _scale_op(t, g)


@triton.jit
def _scale_kernel(X, SCALE, numel, BLOCK: tl.constexpr):
    """X[i] = X[i] * SCALE[0], the product in fp32, in place (X contiguous)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(X + offs, (x * tl.load(SCALE)).to(X.dtype.element_ty), mask=mask)


def _scale_impl(x: torch.Tensor, scale: torch.Tensor) -> None:
    if x.numel():
        _scale_kernel[(triton.cdiv(x.numel(), 1024),)](x, scale, x.numel(), BLOCK=1024, num_warps=4)


_scale_op = custom_op("scale_", _scale_impl, lambda x, scale: None, mutates_args=("x",))


def fused_linear_cross_entropy(h, weight, targets, ignore_index: int = -100, reduction: str = "mean",
                               accumulate_fp32: bool = True, chunk_size: int = 0):
    """Cross-entropy of `h [N, D] @ weight[V, D]^T` against `targets [N]` (int64; `ignore_index` rows skipped),
    reduced by `mean` over counted targets or `sum`; a 0-dim fp32 tensor, differentiable in h and weight.
    `weight` is in h's dtype or fp32 (master weights under autocast; its gradient comes back in fp32).
    Never materializes [N, V]: see the module docstring for the memory held. `chunk_size` 0 picks the default."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"fused_linear_cross_entropy: reduction must be 'mean' or 'sum', not {reduction!r}")
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1] or targets.shape != (h.shape[0],):
        raise ValueError(f"fused_linear_cross_entropy: need h [N, D], weight [V, D], targets [N]; got "
                         f"{tuple(h.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}")
    if weight.dtype not in (h.dtype, torch.float32):
        raise ValueError(f"fused_linear_cross_entropy: weight ({weight.dtype}) must be in h's dtype ({h.dtype}) or "
                         "float32 (master weights); cast one of them")
    return FusedLinearCrossEntropyFunction.apply(h, weight, targets, int(ignore_index), reduction == "mean",
                                                 bool(accumulate_fp32), int(chunk_size))


def linear_cross_entropy_reference(h, weight, targets, ignore_index: int = -100, reduction: str = "mean"):
    """Plain torch: logits in the inputs' dtype, upcast to fp32, F.cross_entropy (holds [N, V])."""
    logits = torch.nn.functional.linear(h, weight).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
