"""Cascade decode attention in Triton: one new token per sample row against its prompt (held once, in a shared prompt
slot) and its own suffix, in one launch (Hydragen, arXiv 2402.05099; FlashInfer's cascade attention).

Algorithm: the host groups the rows by prompt slot (`groups [NG, Gm]`, `group_slot [NG]`, -1 for a group of rows
that hold their prompt themselves). One program takes BLOCK_M queries of one group and one K/V head (the G query
heads of a K/V head of Gm rows: Gm * G queries, which with multi-query attention is all Hq heads of every row) and
runs an online softmax first over the slot's prompt keys, BLOCK_N at a time, as a matrix product shared by all its
queries (`tl.dot`: the prompt's K/V is read once per program, not once per row), then over each query's own row
keys (a per-row product). An online softmax over the two parts in turn is exactly their log-sum-exp merge. fp32
accumulation; masked keys never produce NaN (an empty part leaves the running max at -inf and adds nothing).

Limits: head_dim a power of two >= 16. Tested: tests/test_kernels_decode_attention.py (CPU interpreter, fp32 and fp16)
against `cascade_decode_attention_reference` below (and the engine's torch path against SDPA in tests/test_engine.py).
GPU speed: unmeasured this session.
"""
from __future__ import annotations

import torch

from . import _common  # noqa: F401  (the Triton interpreter fix the CPU tests need)
from ._triton import tl, triton


@triton.jit
def _online(m_i, l_i, s):
    """One block of the online softmax: scores s `[M, N]` (-inf: masked), returns the new (max, sum, acc scale, p)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    return m_new, l_i * alpha + tl.sum(p, 1), alpha, p


@triton.jit
def _cascade_kernel(q_ptr, pk_ptr, pv_ptr, plen_ptr, groups_ptr, gslot_ptr, rk_ptr, rv_ptr, rlen_ptr, out_ptr,
                    sq_b, sq_h, sp_p, sp_h, sp_l, sr_b, sr_h, sr_l, so_b, so_h,
                    Gm, Lp, Lr, scale, G: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    grp, tile, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    j = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    r, hh = j // G, j % G
    row = tl.load(groups_ptr + grp * Gm + r, mask=r < Gm, other=-1)
    valid = row >= 0
    row = tl.where(valid, row, 0)
    head = h * G + hh
    d = tl.arange(0, D)
    n = tl.arange(0, BLOCK_N)
    q = tl.load(q_ptr + row[:, None] * sq_b + head[:, None] * sq_h + d[None], mask=valid[:, None], other=0.0)
    q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    slot = tl.load(gslot_ptr + grp)
    plen = tl.where(slot >= 0, tl.load(plen_ptr + tl.maximum(slot, 0)), 0)
    base = tl.maximum(slot, 0).to(tl.int64) * sp_p + h * sp_h
    # prompt part: every query of the program against the slot's keys, one matrix product per block
    for n0 in range(0, Lp, BLOCK_N):
        keep = n0 + n < plen
        k = tl.load(pk_ptr + base + (n0 + n)[:, None] * sp_l + d[None], mask=keep[:, None], other=0.0).to(tl.float32)
        v = tl.load(pv_ptr + base + (n0 + n)[:, None] * sp_l + d[None], mask=keep[:, None], other=0.0).to(tl.float32)
        s = tl.where(keep[None], tl.dot(q, tl.trans(k), input_precision="ieee") * scale, float("-inf"))
        m_i, l_i, alpha, p = _online(m_i, l_i, s)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    # suffix part: each query against its own row's keys
    rlen = tl.load(rlen_ptr + row, mask=valid, other=0)
    rbase = row.to(tl.int64) * sr_b + h * sr_h
    for n0 in range(0, Lr, BLOCK_N):
        keep = (n0 + n)[None] < rlen[:, None]  # (M, N)
        off = rbase[:, None, None] + (n0 + n)[None, :, None] * sr_l + d[None, None]
        k = tl.load(rk_ptr + off, mask=keep[:, :, None], other=0.0).to(tl.float32)
        v = tl.load(rv_ptr + off, mask=keep[:, :, None], other=0.0).to(tl.float32)
        s = tl.where(keep, tl.sum(q[:, None, :] * k, 2) * scale, float("-inf"))
        m_i, l_i, alpha, p = _online(m_i, l_i, s)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v, 1)
    out = acc / tl.maximum(l_i, 1e-30)[:, None]
    tl.store(out_ptr + row[:, None] * so_b + head[:, None] * so_h + d[None], out.to(out_ptr.dtype.element_ty),
             mask=valid[:, None])


def cascade_decode_attention_triton(q, prefix_k, prefix_v, prefix_len, groups, group_slot, row_k, row_v, row_len,
                                    scale: float, block_m: int = 16, block_n: int = 16) -> torch.Tensor:
    """q `[B, Hq, D]`; prefix_k/v `[P, Hkv, Lp, D]`, prefix_len `[P]`; groups `[NG, Gm]` (row ids, -1: padding; every
    row that needs an output in exactly one group), group_slot `[NG]` (the group's prompt slot, -1: none); row_k/v
    `[B, Hkv, Lr, D]` (each last dim contiguous), row_len `[B]` (keys row b attends to, this step's included).
    Returns `[B, Hq, D]` in q's dtype (rows in no group: zeros)."""
    B, Hq, D = q.shape
    Hkv, Lp, Lr = prefix_k.shape[1], prefix_k.shape[2], row_k.shape[2]
    G = Hq // Hkv
    NG, Gm = groups.shape
    out = torch.zeros_like(q)
    grid = (NG, triton.cdiv(Gm * G, block_m), Hkv)
    _cascade_kernel[grid](q, prefix_k, prefix_v, prefix_len, groups, group_slot, row_k, row_v, row_len, out,
                          q.stride(0), q.stride(1), prefix_k.stride(0), prefix_k.stride(1), prefix_k.stride(2),
                          row_k.stride(0), row_k.stride(1), row_k.stride(2), out.stride(0), out.stride(1),
                          Gm, Lp, Lr, scale, G=G, D=D, BLOCK_M=block_m, BLOCK_N=block_n)
    return out


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
