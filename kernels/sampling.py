"""Sort-free top-k / top-p sampling in Triton: one program per row, no sort, no host sync.

The kept set is the one of wizardcoder/engine/sampler.py (`keep_top_k_top_p`, itself tested against the sorting
reference): the shortest prefix of the tokens by descending weight w = exp(logits / T - max) (ties: lower token id
first) whose size reaches k, then the shortest prefix of those whose mass reaches top_p of theirs. A prefix is fixed
by its last token's weight tau and how many of tau's ties it takes. On the GPU a row's V weights are re-read from
L1/L2 cheaply, so tau is found by bisection over the 31 value bits of w (31 passes over the row, each a masked sum)
instead of the torch version's histograms; then tie j of tau (in token order) is kept iff the mass before it,
above + j * tau_w, is below the target. The draw is the torch version's: inverse CDF in token order over the kept
weights with the row's uniform u (the first token whose cumulative kept weight reaches u * total).

Mass is summed in fp64 (as the torch version), counts in int32. V is a compile-time constant (one vocabulary per
model; it also keeps the CPU interpreter, which cannot loop to a runtime bound here, working). `sample_rows_triton` takes the uniforms from the
caller, so the draws stay the engine's counter-based ones. Greedy rows (T = 0) are the caller's (argmax).
Tested: tests/test_sampling.py (CPU interpreter) against `keep_top_k_top_p` and `sample_rows`: same sets, same tokens.
GPU speed: unmeasured this session.
"""
from __future__ import annotations

import torch

from ._triton import tl, triton


@triton.jit
def _bits_and_weight(x_ptr, offs, V, inv_t, m):
    x = tl.load(x_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_t
    w = tl.where(offs < V, tl.exp(x - m), 0.0)
    return w.to(tl.int32, bitcast=True), w


@triton.jit
def _in_top_k(bits, offs, V, tau_k, above_k, ties_before, k):
    """Top-k membership of a block (k <= 0: everything), given the ties of tau_k in earlier blocks."""
    tie = (bits == tau_k) & (offs < V)
    rank = ties_before + tl.cumsum(tie.to(tl.int32), 0) - 1
    keep = (bits > tau_k) | (tie & (above_k + rank < k))
    return (keep | (k <= 0)) & (offs < V), tl.sum(tie.to(tl.int32), 0)


@triton.jit
def _in_top_p(bits, kk, tau_p, tau_w, above_p, ties_before, target, p_off):
    """Kept tokens of a block (top-k members `kk` within the nucleus), given the ties of tau_p in earlier blocks."""
    tie = kk & (bits == tau_p)
    rank = ties_before + tl.cumsum(tie.to(tl.int32), 0) - 1
    in_p = (bits > tau_p) | (tie & (above_p + rank.to(tl.float64) * tau_w < target))
    return kk & (in_p | p_off), tl.sum(tie.to(tl.int32), 0)


@triton.jit
def _sample_kernel(x_ptr, stride, inv_t_ptr, top_k_ptr, top_p_ptr, u_ptr, out_ptr, keep_ptr, V: tl.constexpr,
                   WRITE_KEEP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x_ptr += row.to(tl.int64) * stride
    inv_t = tl.load(inv_t_ptr + row)
    k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    lanes = tl.arange(0, BLOCK)
    m = float("-inf")
    for s in range(0, V, BLOCK):
        x = tl.load(x_ptr + s + lanes, mask=s + lanes < V, other=float("-inf")).to(tl.float32) * inv_t
        m = tl.maximum(m, tl.max(x, 0))
    # top-k: tau_k = the largest v with count(bits >= v) >= k (bisection over the value bits)
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], 2147483647, tl.int32)
    if k > 0:
        for _ in range(31):
            mid = lo + (hi - lo) // 2
            cnt = tl.full([], 0, tl.int32)
            for s in range(0, V, BLOCK):
                bits, w = _bits_and_weight(x_ptr, s + lanes, V, inv_t, m)
                cnt += tl.sum(((bits >= mid) & (s + lanes < V)).to(tl.int32), 0)
            if cnt >= k:
                lo = mid
            else:
                hi = mid
    tau_k = lo
    above_k = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK):
        bits, w = _bits_and_weight(x_ptr, s + lanes, V, inv_t, m)
        above_k += tl.sum(((bits > tau_k) & (s + lanes < V)).to(tl.int32), 0)
    # top-p over the top-k set: tau_p = the largest v with mass(kept, bits >= v) >= top_p * mass(kept)
    total = tl.full([], 0.0, tl.float64)
    ties = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK):
        bits, w = _bits_and_weight(x_ptr, s + lanes, V, inv_t, m)
        kk, n_tie = _in_top_k(bits, s + lanes, V, tau_k, above_k, ties, k)
        ties += n_tie
        total += tl.sum(tl.where(kk, w, 0.0).to(tl.float64), 0)
    target = top_p.to(tl.float64) * total
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], 2147483647, tl.int32)
    if top_p < 1.0:
        for _ in range(31):
            mid = lo + (hi - lo) // 2
            mass = tl.full([], 0.0, tl.float64)
            ties = tl.full([], 0, tl.int32)
            for s in range(0, V, BLOCK):
                bits, w = _bits_and_weight(x_ptr, s + lanes, V, inv_t, m)
                kk, n_tie = _in_top_k(bits, s + lanes, V, tau_k, above_k, ties, k)
                ties += n_tie
                mass += tl.sum(tl.where(kk & (bits >= mid), w, 0.0).to(tl.float64), 0)
            if mass >= target:
                lo = mid
            else:
                hi = mid
    tau_p = lo
    p_off = (tl.zeros([BLOCK], tl.float32) + top_p) >= 1.0  # top-p off: every top-k token stays
    tau_w = tau_p.to(tl.float32, bitcast=True).to(tl.float64)
    above_p = tl.full([], 0.0, tl.float64)
    ties = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK):
        bits, w = _bits_and_weight(x_ptr, s + lanes, V, inv_t, m)
        kk, n_tie = _in_top_k(bits, s + lanes, V, tau_k, above_k, ties, k)
        ties += n_tie
        above_p += tl.sum(tl.where(kk & (bits > tau_p), w, 0.0).to(tl.float64), 0)
    # the kept weights, their total, then the draw (two passes: the threshold needs the total first)
    kept_total = tl.full([], 0.0, tl.float32)
    ties = tl.full([], 0, tl.int32)
    ties_p = tl.full([], 0, tl.int32)
    for s in range(0, V, BLOCK):
        offs = s + lanes
        bits, w = _bits_and_weight(x_ptr, offs, V, inv_t, m)
        kk, n_tie = _in_top_k(bits, offs, V, tau_k, above_k, ties, k)
        ties += n_tie
        keep, n_tie_p = _in_top_p(bits, kk, tau_p, tau_w, above_p, ties_p, target, p_off)
        ties_p += n_tie_p
        if WRITE_KEEP:
            tl.store(keep_ptr + row.to(tl.int64) * V + offs, keep.to(tl.int8), mask=offs < V)
        kept_total += tl.sum(tl.where(keep, w, 0.0), 0)
    threshold = tl.load(u_ptr + row) * kept_total
    carry = tl.full([], 0.0, tl.float32)
    ties = tl.full([], 0, tl.int32)
    ties_p = tl.full([], 0, tl.int32)
    pick = tl.full([], 0, tl.int32) + V - 1
    for s in range(0, V, BLOCK):
        offs = s + lanes
        bits, w = _bits_and_weight(x_ptr, offs, V, inv_t, m)
        kk, n_tie = _in_top_k(bits, offs, V, tau_k, above_k, ties, k)
        ties += n_tie
        keep, n_tie_p = _in_top_p(bits, kk, tau_p, tau_w, above_p, ties_p, target, p_off)
        ties_p += n_tie_p
        cdf = carry + tl.cumsum(tl.where(keep, w, 0.0), 0)
        pick = tl.minimum(pick, tl.min(tl.where((cdf >= threshold) & (offs < V), offs, V - 1), 0))
        carry = carry + tl.sum(tl.where(keep, w, 0.0), 0)
    tl.store(out_ptr + row, pick)


def sample_rows_triton(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
                       u: torch.Tensor, return_keep: bool = False):
    """Tokens `[B]` (int64) drawn from logits `[B, V]` with each row's temperature (> 0), top_p, top_k and uniform
    u (all `[B]`); with `return_keep` also the kept set `[B, V]` bool (for tests)."""
    B, V = logits.shape
    logits = logits.contiguous()
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    keep = torch.empty(B, V, dtype=torch.int8, device=logits.device) if return_keep else out
    _sample_kernel[(B,)](logits, logits.stride(0), (1.0 / temperature).float().contiguous(),
                         top_k.to(torch.int32).contiguous(), top_p.float().contiguous(), u.float().contiguous(), out,
                         keep, V, WRITE_KEEP=return_keep, BLOCK=min(1024, triton.next_power_of_2(V)))
    return (out, keep.bool()) if return_keep else out
