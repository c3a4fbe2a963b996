"""Cascade decode attention in Triton: one new token per sample row against its prompt (held once, in a shared prompt
slot) and its own suffix, in one launch (Hydragen, arXiv 2402.05099; FlashInfer's cascade attention). The engine's
decode attention on CUDA (wizardcoder/engine/cache.py, `decode_backend` in wizardcoder/engine/attention.py).

Algorithm: the host groups the rows by prompt slot (`groups [NG, W]`, -1 padding; `group_slot [NG]`, -1 for a group
of rows that hold their prompt themselves). One program takes ROWS rows of one group and GP query heads of one K/V
head (ROWS x GP queries; with multi-query attention GP = 16 heads of one K/V head, more heads take more programs)
and runs an online softmax first over the slot's prompt keys, BLOCK_N at a time, as one matrix product for all its
queries (`tl.dot`: a block of the prompt's K/V is read once for ROWS rows x GP heads), then over each row's own keys
(a batched `tl.dot` over the rows: a row's GP heads share its keys). An online softmax over the two parts in turn
is exactly their log-sum-exp merge. Both loops stop at the lengths (a slot's prompt, a tile's longest row), so the
whole cache buffers are passed as they are and keys past a length are never read. Inputs in the model's dtype
into the dots (fp32: IEEE dots), fp32 accumulation; masked keys never produce NaN (an empty part leaves the running
max at -inf and adds nothing).

Tile (`tiles`): GP 16, ROWS 2, BLOCK_N 64 (fp32: 32), BLOCK_R 16, 4 warps, 1 stage. Compiled for sm_90a and sm_80 on
a CPU machine with Triton 3.6's ptxas (bench/compile_report.py, bf16, head_dim 128, the cache of 200 rows of one prompt;
2026-12-04): registers / spill bytes / shared bytes per program
    StarCoderBase-1B (16 heads, MQA)   sm_90a 163 / 0 / 36864    sm_80 168 / 0 / 36864
    StarCoder-15B (48 heads, MQA)      sm_90a 168 / 0 / 36864    sm_80 168 / 0 / 36864
    CodeLlama-7B (32 heads, MHA)       sm_90a 164 / 0 / 36864    sm_80 168 / 0 / 36864
    CodeLlama-34B (64 heads, GQA 8)    sm_90a 163 / 0 / 36864    sm_80 168 / 0 / 36864
and for the pass@k bench's 4 x d512 (head_dim 64, 8 heads, MQA): sm_90a 109 / 0 / 20480, sm_80 128 / 0 / 20480.
Tried and dropped: one program per row-tile over all heads at once (StarCoder-15B's 48 heads padded to 64: 255
registers, 1.3 KB spilled even with 8 warps); 2 stages (4 bytes spilled for CodeLlama-7B); the first version's
per-query [M, N, D] products for the suffix (255 registers, 252 B to 28 KB spilled at head_dim 128).

Limits: head_dim a power of two >= 16 (`supported`; the engine takes its torch path otherwise). Tested:
tests/test_kernels_decode_attention.py (CPU interpreter, fp32 and fp16; on CUDA also bf16) against
`cascade_decode_attention_reference` below, and the engine end to end against its torch path and HF transformers
(tests/test_engine.py). GPU speed: unmeasured (no GPU lent while it was written); bench/gpu_check.py measures it.
"""
from __future__ import annotations

import torch

from ._common import custom_op
from ._triton import tl, triton


@triton.jit
def _online(m_i, l_i, s):
    """One block of the online softmax: scores s `[ROWS, GP, N]` (-inf: masked), returns the new (max, sum, acc
    scale, p). A query with every key so far masked keeps max -inf and adds nothing (no NaN)."""
    m_new = tl.maximum(m_i, tl.max(s, 2))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, :, None])
    return m_new, l_i * alpha + tl.sum(p, 2), alpha, p


@triton.jit
def _cascade_kernel(q_ptr, pk_ptr, pv_ptr, plen_ptr, groups_ptr, gslot_ptr, rk_ptr, rv_ptr, rlen_ptr, out_ptr,
                    sq_b, sq_h, sp_p, sp_h, sp_l, sr_b, sr_h, sr_l, so_b, so_h, W, scale, G: tl.constexpr,
                    GP: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_R: tl.constexpr, PREC: tl.constexpr):
    grp, tile, hc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    h, g0 = hc // tl.cdiv(G, GP), (hc % tl.cdiv(G, GP)) * GP  # K/V head h, its query heads g0 .. g0 + GP - 1
    r = tile * ROWS + tl.arange(0, ROWS)
    row = tl.load(groups_ptr + grp * W + r, mask=r < W, other=-1)  # (ROWS,) -1: padding
    valid = row >= 0
    row = tl.where(valid, row, 0)
    g = g0 + tl.arange(0, GP)
    head = h * G + g  # (GP,) query heads of K/V head h (past G: padding, masked)
    d = tl.arange(0, D)
    qmask = valid[:, None, None] & (g < G)[None, :, None]
    q = tl.load(q_ptr + row[:, None, None] * sq_b + head[None, :, None] * sq_h + d[None, None], mask=qmask,
                other=0.0)  # (ROWS, GP, D) in the model's dtype
    m_i = tl.full([ROWS, GP], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS, GP], tl.float32)
    acc = tl.zeros([ROWS, GP, D], tl.float32)
    # prompt part: every query of the program against the slot's keys (none for slot -1 or a tile of padding),
    # one matrix product per block: the block's K/V is read once for ROWS rows x G heads
    slot = tl.load(gslot_ptr + grp)
    plen = tl.load(plen_ptr + tl.maximum(slot, 0)).to(tl.int32)
    plen = tl.where((slot >= 0) & (tl.max(valid.to(tl.int32), 0) > 0), plen, 0)
    base = tl.maximum(slot, 0).to(tl.int64) * sp_p + h * sp_h
    q2 = tl.reshape(q, [ROWS * GP, D])
    n = tl.arange(0, BLOCK_N)
    for n0 in range(0, plen, BLOCK_N):
        keep = n0 + n < plen
        off = base + (n0 + n)[:, None] * sp_l + d[None]
        k = tl.load(pk_ptr + off, mask=keep[:, None], other=0.0)
        v = tl.load(pv_ptr + off, mask=keep[:, None], other=0.0)
        s = tl.dot(q2, tl.trans(k), input_precision=PREC) * scale  # (ROWS * GP, BLOCK_N)
        s = tl.reshape(tl.where(keep[None], s, float("-inf")), [ROWS, GP, BLOCK_N])
        m_i, l_i, alpha, p = _online(m_i, l_i, s)
        pv = tl.dot(tl.reshape(p, [ROWS * GP, BLOCK_N]).to(v.dtype), v, input_precision=PREC)
        acc = acc * alpha[:, :, None] + tl.reshape(pv, [ROWS, GP, D])
    # suffix part: each row's G heads against its own keys (a batched product over the rows)
    rlen = tl.load(rlen_ptr + row, mask=valid, other=0).to(tl.int32)  # (ROWS,)
    rbase = row.to(tl.int64) * sr_b + h * sr_h
    nr = tl.arange(0, BLOCK_R)
    for n0 in range(0, tl.max(rlen, 0), BLOCK_R):
        keep = (n0 + nr)[None] < rlen[:, None]  # (ROWS, BLOCK_R)
        off = rbase[:, None, None] + (n0 + nr)[None, :, None] * sr_l + d[None, None]
        k = tl.load(rk_ptr + off, mask=keep[:, :, None], other=0.0)  # (ROWS, BLOCK_R, D)
        v = tl.load(rv_ptr + off, mask=keep[:, :, None], other=0.0)
        s = tl.dot(q, tl.trans(k, 0, 2, 1), input_precision=PREC) * scale  # (ROWS, GP, BLOCK_R)
        s = tl.where(keep[:, None, :], s, float("-inf"))
        m_i, l_i, alpha, p = _online(m_i, l_i, s)
        acc = acc * alpha[:, :, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    out = acc / tl.maximum(l_i, 1e-30)[:, :, None]
    tl.store(out_ptr + row[:, None, None] * so_b + head[None, :, None] * so_h + d[None, None],
             out.to(out_ptr.dtype.element_ty), mask=qmask)


def supported(head_dim: int) -> bool:
    """Whether the kernel takes this head dim (tl.arange and tl.dot need a power of two >= 16)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def tiles(group: int, head_dim: int, fp32: bool = False) -> dict:
    """The launch's tile: GP = 16 query heads of one K/V head per program (tl.dot's smallest side; fewer heads are
    padded, more take several programs: 16 x 3 for StarCoder-15B's 48), ROWS = 2 rows per program (32 queries), the
    prompt block BLOCK_N, the suffix block BLOCK_R, warps, stages. Registers and spills at this tile: module
    docstring. (One program over all 48 heads of StarCoder-15B spills 1.3 KB even with 8 warps.) fp32 inputs (a
    correctness path: IEEE dots) take BLOCK_N 32, spill-free up to head_dim 64 (at 128 they spill ~1 KB)."""
    return dict(GP=16, ROWS=2, BLOCK_N=32 if fp32 else 64, BLOCK_R=16, num_warps=4, num_stages=1)


def _launch(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, prefix_len: torch.Tensor,
            groups: torch.Tensor, group_slot: torch.Tensor, row_k: torch.Tensor, row_v: torch.Tensor,
            row_len: torch.Tensor, scale: float) -> torch.Tensor:
    B, Hq, D = q.shape
    Hkv = prefix_k.shape[1]
    NG, W = groups.shape
    t = tiles(Hq // Hkv, D, q.dtype == torch.float32)
    out = torch.empty_like(q)
    grid = (NG, triton.cdiv(W, t["ROWS"]), Hkv * triton.cdiv(Hq // Hkv, t["GP"]))
    _cascade_kernel[grid](q, prefix_k, prefix_v, prefix_len, groups, group_slot, row_k, row_v, row_len, out,
                          q.stride(0), q.stride(1), prefix_k.stride(0), prefix_k.stride(1), prefix_k.stride(2),
                          row_k.stride(0), row_k.stride(1), row_k.stride(2), out.stride(0), out.stride(1), W, scale,
                          G=Hq // Hkv, GP=t["GP"], D=D, ROWS=t["ROWS"], BLOCK_N=t["BLOCK_N"], BLOCK_R=t["BLOCK_R"],
                          PREC="ieee" if q.dtype == torch.float32 else None, num_warps=t["num_warps"],
                          num_stages=t["num_stages"])
    return out


def _fake(q, prefix_k, prefix_v, prefix_len, groups, group_slot, row_k, row_v, row_len, scale):
    return torch.empty_like(q)


_op = custom_op("cascade_decode_attention", _launch, _fake)


def cascade_decode_attention_triton(q, prefix_k, prefix_v, prefix_len, groups, group_slot, row_k, row_v, row_len,
                                    scale: float) -> torch.Tensor:
    """q `[B, Hq, D]`; prefix_k/v `[P, Hkv, Lp, D]`, prefix_len `[P]`; groups `[NG, W]` (row ids, -1: padding; every
    row that needs an output in exactly one group), group_slot `[NG]` (the group's prompt slot, -1: none); row_k/v
    `[B, Hkv, Lr, D]`, row_len `[B]` (keys row b attends to, this step's included). Each tensor's last dim is
    contiguous; any other strides (views of the engine's cache, q a view of the fused QKV projection) are taken as
    they are. Returns `[B, Hq, D]` in q's dtype (rows in no group: unwritten). One custom op
    (`wizardcoder::cascade_decode_attention`), so torch.compile and the op counts see one call."""
    return _op(q, prefix_k, prefix_v, prefix_len, groups, group_slot, row_k, row_v, row_len, scale)


def cascade_decode_attention_reference(q, prefix_k, prefix_v, prefix_len, groups, group_slot, row_k, row_v, row_len,
                                       scale: float) -> torch.Tensor:
    """The kernel's plain-torch reference (same arguments): per row, softmax attention in fp32 over the
    concatenation [its slot's first prefix_len keys | its first row_len own keys]. Returns `[B, Hq, D]` fp32."""
    B, Hq, D = q.shape
    G = Hq // prefix_k.shape[1]
    out = torch.zeros(B, Hq, D, dtype=torch.float32, device=q.device)
    for g, slot in enumerate(group_slot.tolist()):
        for b in groups[g].tolist():
            if b < 0:
                continue
            n = int(prefix_len[slot]) if slot >= 0 else 0
            k = torch.cat([prefix_k[max(slot, 0), :, :n], row_k[b, :, : int(row_len[b])]], 1).float()
            v = torch.cat([prefix_v[max(slot, 0), :, :n], row_v[b, :, : int(row_len[b])]], 1).float()
            k, v = k.repeat_interleave(G, 0), v.repeat_interleave(G, 0)  # (Hq, L, D)
            p = torch.softmax(torch.einsum("hd,hld->hl", q[b].float(), k) * scale, -1)
            out[b] = torch.einsum("hl,hld->hd", p, v)
    return out
