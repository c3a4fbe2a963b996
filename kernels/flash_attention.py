"""FlashAttention-2 in Triton: causal (or full) attention over packed variable-length documents, with multi-query /
grouped-query K/V, forward and backward.

Algorithm (Dao, "FlashAttention-2", 2023):
- forward: one program per (query block of BLOCK_M rows of one document, query head). It streams the document's K/V in
  blocks of BLOCK_N with an online softmax in base 2 (running max m, running sum l, fp32 accumulator), so the
  [S, S] score matrix never exists, and stores O and the row log-sum-exp (base 2, fp32, `[Hq, T]`). The key loop is
  split in two: blocks fully below the causal diagonal and inside the document run without any mask; only the few
  blocks on the diagonal / at the document end apply one. Blocks above the diagonal are never visited.
- backward: a preprocess kernel computes delta = rowsum(dO * O); a dK/dV kernel, one program per (key block of one
  document, K/V head, head split), recomputes P = exp2(S - LSE) for every query head of its group and every query
  block at or below the diagonal and accumulates dV = P^T dO and dK = dS^T Q in registers (no atomics, K/V never
  expanded); a dQ kernel, one program per (query block of one document, query head), accumulates dQ = dS K. When a
  group is large (MQA: all query heads share one K/V head) and the grid would be too small to fill the GPU, the group's
  heads are split over `n_split` programs that write fp32 partial dK/dV summed afterwards.
- varlen: `cu_seqlens` (int32, `[n_docs + 1]`) gives document boundaries. The grid's token axis enumerates the blocks
  of all documents back to back (about T / BLOCK + n_docs programs, not n_docs * max_seqlen / BLOCK); each program
  finds its document by a binary search in a small table of cumulative block counts built on the device (no host
  sync), then reads its document's start and length. No document ever attends to another, and no program is spent
  on the empty tail of a short document. Dense `[B, S, H, D]` input is the same with B documents of length S.
- MQA/GQA: query head h reads K/V head h // (Hq // Hkv).
- causal mask: aligned to the bottom-right corner when seqlen_q != seqlen_k (as flash-attn >= 2.1): query i of a
  document sees key j iff j <= i + seqlen_k - seqlen_q. A query row that sees no key outputs 0.

Limits: head dim up to 256 (any size; a compile-time constant, padded to a power of two inside and masked only when
it is not one); fp16, bf16 and fp32 (fp32 dots use IEEE fp32, not TF32); last dimension contiguous; no dropout, no ALiBi, no sliding window, no KV cache.
Block sizes are autotuned on CUDA (configs for H100/H200); the interpreter uses one small config.

Tested: tests/test_kernels_attention.py, against `attention_reference` (fp32 torch) on CPU in the Triton interpreter
(fp32, fp16; bf16 is CUDA-only because numpy has no bf16) and on CUDA when present; model-level in
tests/test_kernels_model.py. Benchmarked: bench/bench_kernels.py (vs torch SDPA and flash-attn when installed).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from ._common import custom_op
from ._triton import tl, triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# WIZARDCODER_AUTOTUNE=0: one tile per kernel (the first of each list; fp32 keeps its 64x32 tile) instead of timing
# them all. For test runs on a GPU, where every new (head dim, causal, length bucket, dtype) would autotune again.
AUTOTUNE = os.environ.get("WIZARDCODER_AUTOTUNE", "1") != "0"


# ------------------------------------------------------------------------------------------------ autotune configs
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and architecture; the first of each list is the one used with
# autotuning off. Every tile listed compiles without register spills at head dim 128 in bf16 with the arguments of a
# StarCoder training launch, within the architecture's shared memory (227 KB on Hopper, 163 KB on Ampere):
# `python -m bench.compile_report` prints registers, spills and shared bytes for each (bench/RESULTS.md), and
# tests/test_kernels_compile.py holds the first of each list to it. Hopper's list is used from sm_90 on, Ampere's below.
# The dK/dV kernel holds two fp32 accumulators of BLOCK_N x D plus K and V: key blocks of 64 rows with 8 warps and
# 2 stages are the default; 128-row key blocks fit only on Hopper, with 16-row query blocks and one stage (with more
# they spill 0.2-2.8 KB a thread on both architectures).
CUDA_TILES = {
    90: {
        "fwd": [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 8, 3), (64, 64, 4, 4),
                (64, 32, 4, 3)],
        "dkdv": [(16, 64, 8, 2), (16, 128, 8, 1), (32, 64, 8, 1), (32, 32, 4, 2), (16, 32, 4, 2)],  # key block held
        "dq": [(64, 64, 8, 3), (128, 32, 8, 3), (128, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 3), (64, 16, 4, 3)],
    },
    80: {
        "fwd": [(64, 64, 8, 3), (128, 32, 8, 3), (64, 32, 4, 3), (64, 32, 4, 2)],
        "dkdv": [(16, 64, 8, 2), (32, 64, 8, 2), (32, 32, 4, 2), (16, 32, 4, 2)],  # 16x128 spills 24 B at 15B
        "dq": [(64, 64, 8, 3), (64, 32, 4, 3), (64, 16, 4, 3), (64, 32, 4, 2)],
    },
}


def _arch() -> int:
    """CUDA_TILES' key for this machine's GPU: 90 from Hopper on, else 80."""
    major, _ = torch.cuda.get_device_capability()
    return 90 if major >= 9 else 80


def _configs(kind: str) -> list[triton.Config]:
    if INTERPRET or not torch.cuda.is_available():
        # The interpreter: few programs (it is slow per program), unequal M and N so the tests cover both.
        m, n = (16, 32) if kind == "dkdv" else (32, 16)
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in CUDA_TILES[_arch()][kind]]


def _prune(configs, named_args, **kwargs):
    """Drop tiles too large for the head dim's shared memory (D=256 cannot take 128x128 with 3 stages). fp32 inputs
    (a correctness path, not a fast one) get the one smallest 64-wide tile: fp32 operands double registers and shared
    memory, and larger tiles spill and take ptxas minutes to compile."""
    d = named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 64))
    smallest = min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], -max(c.kwargs.values())))
    if named_args.get("PREC", kwargs.get("PREC")) == "ieee":
        small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] == 64 * 32]
        return small[:1] or [smallest]
    kept = [c for c in configs if d <= 128 or c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    return (kept or [smallest])[: None if AUTOTUNE else 1]


# ------------------------------------------------------------------- varlen: which document does a program work on
BLOCK_TABLE_SIZES = (16, 32, 64, 128)  # every tile size along the grid's token axis must be one of these


def _block_table(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """int32 [len(BLOCK_TABLE_SIZES), n_docs + 1]: row r holds the cumulative count of BLOCK_TABLE_SIZES[r]-token
    blocks over the documents (computed on the device; no host sync). The kernels map their program id to
    (document, block) with a binary search in the row of their tile size."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    zero = torch.zeros(1, device=cu_seqlens.device, dtype=torch.int32)
    return torch.stack([torch.cat([zero, torch.cumsum((lens + b - 1) // b, 0, dtype=torch.int32)]) for b in BLOCK_TABLE_SIZES])


def _grid_blocks(total_tokens: int, n_docs: int, block: int) -> int:
    """Programs along the token axis: an upper bound of sum_i ceil(len_i / block); the few extra ones exit at once."""
    return triton.cdiv(total_tokens, block) + n_docs


@triton.jit
def _doc_and_block(TABLE, n_docs, BLOCK: tl.constexpr):
    """program_id(0) -> (document, block index inside it). Documents are packed back to back in the grid, so no program
    is spent on blocks past a short document's end. A program past the last block gets a block index past its
    document's end, which the caller's bounds check turns into an early exit."""
    tab = TABLE + ((BLOCK == 32) * 1 + (BLOCK == 64) * 2 + (BLOCK == 128) * 3) * (n_docs + 1)
    pid = tl.program_id(0)
    lo = pid * 0
    hi = lo + n_docs
    while hi - lo > 1:  # invariant: tab[lo] <= pid < tab[hi]; empty documents are skipped over
        mid = (lo + hi) // 2
        go = tl.load(tab + mid) <= pid
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    return lo, pid - tl.load(tab + lo)


# ------------------------------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K, V, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, k_len, causal_off,
               lo, hi, qk_scale, D: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               PREC: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if MASKED:
            kmask = (cols < k_len)[None, :] & d_ok[:, None]
        else:
            kmask = d_ok[:, None]
        if MASKED or D != BLOCK_D:
            kT = tl.load(K + k_base + cols[None, :] * stride_kt + offs_d[:, None], mask=kmask, other=0.0)  # (D, N)
        else:  # a full block inside the document: no mask, vectorized loads
            kT = tl.load(K + k_base + cols[None, :] * stride_kt + offs_d[:, None])
        qk = tl.dot(q, kT, input_precision=PREC) * qk_scale  # (M, N), log2 units
        if MASKED:
            ok = (cols < k_len)[None, :]
            if CAUSAL:
                ok = ok & (offs_m[:, None] + causal_off >= cols[None, :])
            qk = tl.where(ok, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no visible key yet
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED or D != BLOCK_D:
            vmask = (cols < k_len)[:, None] & d_ok[None, :]
            v = tl.load(V + v_base + cols[:, None] * stride_vt + offs_d[None, :], mask=vmask, other=0.0)
        else:
            v = tl.load(V + v_base + cols[:, None] * stride_vt + offs_d[None, :])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)  # accumulate in the MMA
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_configs("fwd"), key=["BLOCK_D", "CAUSAL", "SEQ_BUCKET", "PREC"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, cu_q, cu_k, QBLOCKS, sm_scale,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                stride_lse_h, n_docs, group, D: tl.constexpr, SEQ_BUCKET,
                CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PREC: tl.constexpr):
    doc, pid_m = _doc_and_block(QBLOCKS, n_docs, BLOCK_M)
    h = tl.program_id(1)
    hk = h // group
    q_start = tl.load(cu_q + doc).to(tl.int64)
    q_len = (tl.load(cu_q + doc + 1) - q_start).to(tl.int32)
    k_start = tl.load(cu_k + doc).to(tl.int64)
    k_len = (tl.load(cu_k + doc + 1) - k_start).to(tl.int32)
    m0 = pid_m * BLOCK_M
    if m0 >= q_len:
        return
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < q_len
    q = tl.load(Q + (q_start + offs_m[:, None]) * stride_qt + h * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    k_base = k_start * stride_kt + hk * stride_kh
    v_base = k_start * stride_vt + hk * stride_vh
    qk_scale = sm_scale * 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2 e)

    causal_off = k_len - q_len  # bottom-right alignment
    if CAUSAL:
        hi = tl.minimum(k_len, m0 + BLOCK_M + causal_off)
        full = tl.minimum(k_len, m0 + causal_off + 1)  # keys every row of the block sees
    else:
        hi = k_len
        full = k_len
    hi = tl.maximum(hi, 0)
    full = tl.maximum(full, 0) // BLOCK_N * BLOCK_N
    full = tl.minimum(full, hi)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, k_len,
                               causal_off, 0, full, qk_scale, D, False, CAUSAL, BLOCK_N, BLOCK_D, PREC)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, k_len,
                               causal_off, full, hi, qk_scale, D, True, CAUSAL, BLOCK_N, BLOCK_D, PREC)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    # Rows that saw no key: O = 0 and LSE = +inf, so the backward's P = exp2(S - LSE) is exactly 0 for them.
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
    tl.store(O + (q_start + offs_m[:, None]) * stride_ot + h * stride_oh + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])
    tl.store(LSE + h * stride_lse_h + q_start + offs_m, lse, mask=row_ok)


# ------------------------------------------------------------------------------------------------------ backward
@triton.jit
def _bwd_preprocess(O, DO, DELTA, stride_ot, stride_oh, stride_dot, stride_doh, stride_delta_h, T, D: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    h = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < T)[:, None] & (offs_d < D)[None, :]
    o = tl.load(O + offs_m[:, None].to(tl.int64) * stride_ot + h * stride_oh + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + offs_m[:, None].to(tl.int64) * stride_dot + h * stride_doh + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + h * stride_delta_h + offs_m, delta, mask=offs_m < T)


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, q_base, do_base, lse_base, stride_qt, stride_dot, offs_n, offs_d,
                q_len, causal_off, lo, hi, qk_scale, D: tl.constexpr,
                MASKED: tl.constexpr, BLOCK_M: tl.constexpr, PREC: tl.constexpr):
    offs_m0 = tl.arange(0, BLOCK_M)
    d_ok = offs_d < D
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + offs_m0
        m_ok = offs_m < q_len
        qT = tl.load(Q + q_base + offs_m[None, :] * stride_qt + offs_d[:, None], mask=m_ok[None, :] & d_ok[:, None],
                     other=0.0)  # (D, M)
        # Rows past the document end load LSE = +inf, so their P is 0 without a mask.
        lse = tl.load(LSE + lse_base + offs_m, mask=m_ok, other=float("inf"))
        qkT = tl.dot(k, qT, input_precision=PREC) * qk_scale  # (N, M)
        pT = tl.math.exp2(qkT - lse[None, :])
        if MASKED:
            pT = tl.where(offs_m[None, :] + causal_off >= offs_n[:, None], pT, 0.0)
        do = tl.load(DO + do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :],
                     other=0.0)  # (M, D)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PREC)
        delta = tl.load(DELTA + lse_base + offs_m, mask=m_ok, other=0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=PREC)  # (N, M)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=PREC)
    return dk, dv


@triton.autotune(configs=_configs("dkdv"), key=["BLOCK_D", "CAUSAL", "SEQ_BUCKET", "PREC", "HEADS_PER_SPLIT"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, cu_q, cu_k, KBLOCKS, sm_scale,
                 stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                 stride_lse_h, stride_dks, stride_dkt, stride_dkh, stride_dvs, stride_dvt, stride_dvh,
                 n_docs, group, n_split, D: tl.constexpr, SEQ_BUCKET,
                 HEADS_PER_SPLIT: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    doc, pid_n = _doc_and_block(KBLOCKS, n_docs, BLOCK_N)
    pid = tl.program_id(1)
    split = pid % n_split
    hk = pid // n_split
    q_start = tl.load(cu_q + doc).to(tl.int64)
    q_len = (tl.load(cu_q + doc + 1) - q_start).to(tl.int32)
    k_start = tl.load(cu_k + doc).to(tl.int64)
    k_len = (tl.load(cu_k + doc + 1) - k_start).to(tl.int32)
    n0 = pid_n * BLOCK_N
    if n0 >= k_len:
        return
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n < k_len)[:, None] & (offs_d < D)[None, :]
    k = tl.load(K + (k_start + offs_n[:, None]) * stride_kt + hk * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + (k_start + offs_n[:, None]) * stride_vt + hk * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634

    causal_off = k_len - q_len
    if CAUSAL:
        # Query rows that see some key of this block start at n0 - causal_off; rows from n0 + BLOCK_N - 1 - causal_off
        # on see all of it.
        lo = tl.maximum(n0 - causal_off, 0) // BLOCK_M * BLOCK_M
        mid = tl.minimum(tl.maximum(n0 + BLOCK_N - causal_off, 0), q_len)
        mid = tl.minimum((mid + BLOCK_M - 1) // BLOCK_M * BLOCK_M, tl.maximum(q_len, lo))
        mid = tl.maximum(mid, lo)
    else:
        lo = 0
        mid = 0

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for i in range(HEADS_PER_SPLIT):
        h = hk * group + split * HEADS_PER_SPLIT + i
        q_base = q_start * stride_qt + h * stride_qh
        do_base = q_start * stride_dot + h * stride_doh
        lse_base = h * stride_lse_h + q_start
        if CAUSAL:
            dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, q_base, do_base, lse_base, stride_qt, stride_dot,
                                 offs_n, offs_d, q_len, causal_off, lo, mid, qk_scale, D, True, BLOCK_M, PREC)
        dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, q_base, do_base, lse_base, stride_qt, stride_dot,
                             offs_n, offs_d, q_len, causal_off, mid, q_len, qk_scale, D, False, BLOCK_M, PREC)
    dk = dk * sm_scale
    tl.store(DK + split * stride_dks + (k_start + offs_n[:, None]) * stride_dkt + hk * stride_dkh + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + split * stride_dvs + (k_start + offs_n[:, None]) * stride_dvt + hk * stride_dvh + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, K, V, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, k_len, causal_off,
              lo, hi, qk_scale, D: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n0
        if MASKED:
            kmask = (cols < k_len)[None, :] & d_ok[:, None]
        else:
            kmask = d_ok[:, None]
        if MASKED or D != BLOCK_D:
            kT = tl.load(K + k_base + cols[None, :] * stride_kt + offs_d[:, None], mask=kmask, other=0.0)  # (D, N)
            vT = tl.load(V + v_base + cols[None, :] * stride_vt + offs_d[:, None], mask=kmask, other=0.0)  # (D, N)
        else:
            kT = tl.load(K + k_base + cols[None, :] * stride_kt + offs_d[:, None])
            vT = tl.load(V + v_base + cols[None, :] * stride_vt + offs_d[:, None])
        qk = tl.dot(q, kT, input_precision=PREC) * qk_scale
        p = tl.math.exp2(qk - lse[:, None])
        if MASKED:
            ok = (cols < k_len)[None, :]
            if CAUSAL:
                ok = ok & (offs_m[:, None] + causal_off >= cols[None, :])
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, vT, input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=PREC)
    return dq


@triton.autotune(configs=_configs("dq"), key=["BLOCK_D", "CAUSAL", "SEQ_BUCKET", "PREC"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, cu_q, cu_k, QBLOCKS, sm_scale,
               stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
               stride_lse_h, stride_dqt, stride_dqh, n_docs, group, D: tl.constexpr, SEQ_BUCKET,
               CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               PREC: tl.constexpr):
    doc, pid_m = _doc_and_block(QBLOCKS, n_docs, BLOCK_M)
    h = tl.program_id(1)
    hk = h // group
    q_start = tl.load(cu_q + doc).to(tl.int64)
    q_len = (tl.load(cu_q + doc + 1) - q_start).to(tl.int32)
    k_start = tl.load(cu_k + doc).to(tl.int64)
    k_len = (tl.load(cu_k + doc + 1) - k_start).to(tl.int32)
    m0 = pid_m * BLOCK_M
    if m0 >= q_len:
        return
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < q_len
    qmask = row_ok[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + (q_start + offs_m[:, None]) * stride_qt + h * stride_qh + offs_d[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + (q_start + offs_m[:, None]) * stride_dot + h * stride_doh + offs_d[None, :], mask=qmask, other=0.0)
    lse = tl.load(LSE + h * stride_lse_h + q_start + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + h * stride_lse_h + q_start + offs_m, mask=row_ok, other=0.0)
    k_base = k_start * stride_kt + hk * stride_kh
    v_base = k_start * stride_vt + hk * stride_vh
    qk_scale = sm_scale * 1.4426950408889634

    causal_off = k_len - q_len
    if CAUSAL:
        hi = tl.minimum(k_len, m0 + BLOCK_M + causal_off)
        full = tl.minimum(k_len, m0 + causal_off + 1)
    else:
        hi = k_len
        full = k_len
    hi = tl.maximum(hi, 0)
    full = tl.minimum(tl.maximum(full, 0) // BLOCK_N * BLOCK_N, hi)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _dq_inner(dq, q, do, lse, delta, K, V, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, k_len,
                   causal_off, 0, full, qk_scale, D, False, CAUSAL, BLOCK_N, BLOCK_D, PREC)
    dq = _dq_inner(dq, q, do, lse, delta, K, V, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, k_len,
                   causal_off, full, hi, qk_scale, D, True, CAUSAL, BLOCK_N, BLOCK_D, PREC)
    dq = dq * sm_scale
    tl.store(DQ + (q_start + offs_m[:, None]) * stride_dqt + h * stride_dqh + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=qmask)


# ----------------------------------------------------------------------------------------------------- launchers
def _prec(dtype: torch.dtype) -> str | None:
    """tl.dot input precision: IEEE fp32 for fp32 inputs (not TF32: the tests hold fp32 to fp32 accuracy); the
    default (None) for fp16/bf16, where it does not apply."""
    return "ieee" if dtype == torch.float32 else None


def _seq_bucket(max_seqlen: int) -> int:
    return 1 << max(6, int(max_seqlen - 1).bit_length()) if max_seqlen > 1 else 64


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _check(q, k, v, cu_seqlens_q, cu_seqlens_k):
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"flash_attn_varlen_func: q, k, v must be [T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[2] != k.shape[2]:
        raise ValueError(f"flash_attn_varlen_func: k {tuple(k.shape)} and v {tuple(v.shape)} must match q's head dim {q.shape[2]}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"flash_attn_varlen_func: q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"flash_attn_varlen_func: query heads ({q.shape[1]}) must be a multiple of K/V heads ({k.shape[1]})")
    if q.shape[2] > 256:
        raise ValueError(f"flash_attn_varlen_func: head dim {q.shape[2]} > 256 is not supported")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError("flash_attn_varlen_func: cu_seqlens_q and cu_seqlens_k must have the same number of documents")


def _fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, scale: float, causal: bool):
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    n_docs = cu_seqlens_q.numel() - 1
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((Hq, T), device=q.device, dtype=torch.float32)
    if T == 0 or n_docs == 0:
        return o.zero_(), lse.fill_(float("inf"))
    BLOCK_D = max(16, triton.next_power_of_2(D))
    grid = lambda META: (_grid_blocks(T, n_docs, META["BLOCK_M"]), Hq)  # noqa: E731
    _fwd_kernel[grid](q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, _block_table(cu_seqlens_q), scale,
                      q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                      o.stride(0), o.stride(1), lse.stride(0), n_docs, Hq // Hkv, D, _seq_bucket(max(max_seqlen_q, max_seqlen_k)),
                      CAUSAL=causal, BLOCK_D=BLOCK_D, PREC=_prec(q.dtype))
    return o, lse


def _num_sms(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _head_splits(group: int, Hkv: int, Tk: int, num_sms: int | None) -> int:
    """How many programs share one K/V head's query heads in the dK/dV pass: 1 when the grid already fills the GPU
    (>= 4 programs per SM at the default 64-row key block), else the smallest power-of-two divisor of `group` that does.
    `num_sms` None: not a GPU (the interpreter), where 2 exercises the split path in the tests."""
    if num_sms is None:
        return 2 if group % 2 == 0 else 1
    target = 4 * num_sms
    base = triton.cdiv(Tk, 64) * Hkv
    s = 1
    while base * s < target and group % (2 * s) == 0 and s < 8:
        s *= 2
    return s


def _bwd(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, scale: float, causal: bool):
    T, Hq, D = q.shape
    Tk, Hkv = k.shape[0], k.shape[1]
    group = Hq // Hkv
    n_docs = cu_seqlens_q.numel() - 1
    do = _last_contiguous(do)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    if T == 0 or n_docs == 0:
        return dq.zero_(), torch.zeros_like(k), torch.zeros_like(v)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    prec = _prec(q.dtype)
    bucket = _seq_bucket(max(max_seqlen_q, max_seqlen_k))

    delta = torch.empty_like(lse)
    PRE_M = 64 if not INTERPRET else 16
    _bwd_preprocess[(triton.cdiv(T, PRE_M), Hq)](o, do, delta, o.stride(0), o.stride(1), do.stride(0), do.stride(1),
                                                 delta.stride(0), T, D, BLOCK_M=PRE_M, BLOCK_D=BLOCK_D)

    n_split = _head_splits(group, Hkv, Tk, _num_sms(q.device) if q.device.type == "cuda" else None)
    if n_split == 1:
        dk = torch.empty(1, Tk, Hkv, D, device=q.device, dtype=k.dtype)
        dv = torch.empty(1, Tk, Hkv, D, device=q.device, dtype=v.dtype)
    else:  # fp32 partial sums, one per head split
        dk = torch.empty(n_split, Tk, Hkv, D, device=q.device, dtype=torch.float32)
        dv = torch.empty(n_split, Tk, Hkv, D, device=q.device, dtype=torch.float32)
    if Tk > 0:
        grid = lambda META: (_grid_blocks(Tk, n_docs, META["BLOCK_N"]), Hkv * n_split)  # noqa: E731
        _dkdv_kernel[grid](q, k, v, do, lse, delta, dk, dv, cu_seqlens_q, cu_seqlens_k, _block_table(cu_seqlens_k), scale,
                           q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                           do.stride(0), do.stride(1), lse.stride(0),
                           dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
                           n_docs, group, n_split, D, bucket,
                           HEADS_PER_SPLIT=group // n_split, CAUSAL=causal, BLOCK_D=BLOCK_D, PREC=prec)
    if n_split == 1:
        dk, dv = dk[0], dv[0]
    else:
        dk, dv = dk.sum(0).to(k.dtype), dv.sum(0).to(v.dtype)

    grid = lambda META: (_grid_blocks(T, n_docs, META["BLOCK_M"]), Hq)  # noqa: E731
    _dq_kernel[grid](q, k, v, do, lse, delta, dq, cu_seqlens_q, cu_seqlens_k, _block_table(cu_seqlens_q), scale,
                     q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                     do.stride(0), do.stride(1), lse.stride(0), dq.stride(0), dq.stride(1), n_docs, group, D, bucket,
                     CAUSAL=causal, BLOCK_D=BLOCK_D, PREC=prec)
    return dq, dk, dv


# ---------------------------------------------------- custom ops (opaque to torch.compile, with fake shapes)
def _fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
              max_seqlen_q: int, max_seqlen_k: int, scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal)


def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


def _bwd_impl(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
              cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, scale: float,
              causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal)


def _bwd_fake(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
    c = torch.contiguous_format
    return (torch.empty_like(q, memory_format=c), torch.empty_like(k, memory_format=c), torch.empty_like(v, memory_format=c))


_fwd_op = custom_op("flash_attn_varlen_fwd", _fwd_impl, _fwd_fake)
_bwd_op = custom_op("flash_attn_varlen_bwd", _bwd_impl, _bwd_fake)


class FlashAttnVarlenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
        # cu_seqlens_k None: the same as cu_seqlens_q (one tensor passed twice would stop torch.compile's tracing).
        cu_seqlens_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
        q, k, v = (_last_contiguous(t) for t in (q, k, v))
        o, lse = _fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k)
        ctx.args = (max_seqlen_q, max_seqlen_k, scale, causal)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = _bwd_op(do, q, k, v, o, lse, cu_q, cu_k, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None


# ------------------------------------------------------------------------------------------------- public API
def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                           causal=True):
    """Attention over packed documents, flash-attn's call shape.

    q `[T, Hq, D]`, k/v `[Tk, Hkv, D]` (Hq a multiple of Hkv; query head h reads K/V head h // (Hq // Hkv));
    cu_seqlens_q/k int32 `[n_docs + 1]` cumulative document lengths (empty documents allowed); max_seqlen_q/k ints,
    the longest document (used to pick autotuned block sizes; no device sync is made). softmax_scale defaults to 1/sqrt(D). With `causal`, the
    mask is aligned to the bottom-right corner of each document's [seqlen_q, seqlen_k] block. Returns `[T, Hq, D]`,
    differentiable in q, k and v."""
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k)
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32)
    cu_k = None if cu_seqlens_k is cu_seqlens_q else cu_seqlens_k.to(device=q.device, dtype=torch.int32)
    return FlashAttnVarlenFunction.apply(q, k, v, cu_q, cu_k, int(max_seqlen_q), int(max_seqlen_k), scale, bool(causal))


def flash_attn_func(q, k, v, softmax_scale=None, causal=True):
    """Dense batch: q `[B, S, Hq, D]`, k/v `[B, Sk, Hkv, D]` -> `[B, S, Hq, D]`; the varlen kernel with B documents."""
    B, S, Hq, D = q.shape
    Sk = k.shape[1]
    cu_q = torch.arange(0, (B + 1) * S, S, device=q.device, dtype=torch.int32)
    cu_k = torch.arange(0, (B + 1) * Sk, Sk, device=q.device, dtype=torch.int32)
    out = flash_attn_varlen_func(q.reshape(B * S, Hq, D), k.reshape(B * Sk, k.shape[2], D), v.reshape(B * Sk, v.shape[2], D),
                                 cu_q, cu_k, S, Sk, softmax_scale=softmax_scale, causal=causal)
    return out.view(B, S, Hq, D)


# ---------------------------------------------------------------------------------------------- torch reference
def _sdpa(q, k, v, scale, causal, key_padding_mask=None):
    """q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D] -> [B, Sq, Hq, D] through torch SDPA, causal mask bottom-right aligned;
    `key_padding_mask [B, Sk]` (True = real key) hides keys. A query row that sees no key outputs 0 (gradient 0)."""
    Sq, Sk, Hq = q.shape[1], k.shape[1], q.shape[2]
    if Sq == 0 or Sk == 0:  # an empty document, or queries without keys
        return q * 0
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, D)
    if k.shape[1] != Hq:  # MQA/GQA: query head h reads K/V head h // (Hq // Hkv)
        rep = Hq // k.shape[1]
        k, v = (t[:, :, None].expand(-1, -1, rep, -1, -1).flatten(1, 2) for t in (k, v))
    if key_padding_mask is None and (not causal or Sq == Sk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale).transpose(1, 2)
    visible = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device)
    if causal:
        visible = torch.arange(Sk, device=q.device)[None, :] <= torch.arange(Sq, device=q.device)[:, None] + (Sk - Sq)
    visible = visible[None, None]
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :].bool()
    sees_some = visible.any(-1, keepdim=True)  # (B|1, 1, Sq, 1)
    mask = visible | ~sees_some  # a row with no visible key attends to all (finite math), then is zeroed
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return torch.where(sees_some, y, torch.zeros((), dtype=y.dtype, device=y.device)).transpose(1, 2)


def attention_reference(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, softmax_scale=None, causal=True, upcast=False,
                        key_padding_mask=None):
    """Plain-torch attention (the ground truth of the tests and benches; the model's `torch` backend for dense
    batches, `attention_packed_torch` for packed ones): torch SDPA
    with the kernel's semantics: MQA/GQA head mapping, causal mask aligned bottom-right when a document's query and
    key lengths differ, rows that see no key give 0.

    Packed: q `[T, Hq, D]`, k/v `[Tk, Hkv, D]`, cu_seqlens_q/k `[n_docs + 1]` (cu_seqlens_k None: same as q's); one
    SDPA call per document (a host sync on cu_seqlens). Dense: cu_seqlens_q None, q `[B, S, Hq, D]`, k/v
    `[B, Sk, Hkv, D]`, one batched call; `key_padding_mask [B, Sk]` (True = real key, dense only) hides padding keys.
    Computed in the inputs' dtype (under autocast: what SDPA does there), or in fp32 when `upcast`; returns q's dtype."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    if cu_seqlens_q is None:
        return _sdpa(q, k, v, scale, causal, key_padding_mask).to(dtype)
    if key_padding_mask is not None:
        raise ValueError("attention_reference: key_padding_mask is for dense batches; packed documents need none")
    bq = cu_seqlens_q.tolist()
    bk = bq if cu_seqlens_k is None else cu_seqlens_k.tolist()
    outs = [_sdpa(q[None, bq[i]:bq[i + 1]], k[None, bk[i]:bk[i + 1]], v[None, bk[i]:bk[i + 1]], scale, causal)[0]
            for i in range(len(bq) - 1)]
    return (torch.cat(outs) if outs else q[:0]).to(dtype)


def attention_packed_torch(q, k, v, cu_seqlens, max_seqlen: int, softmax_scale=None):
    """Causal self-attention over packed documents in plain torch, batched: no loop over documents and no host sync
    (the fallback on a GPU where the kernel is not used: `--attn-backend torch`, or no Triton). Same semantics as
    `attention_reference(q, k, v, cu_seqlens)`, which tests/test_kernels_attention.py holds it to.

    q `[T, Hq, D]`, k/v `[T, Hkv, D]`, cu_seqlens `[n_docs + 1]`, `max_seqlen` >= the longest document. The stream is
    cut into blocks of W = max_seqlen tokens; a document no longer than W that holds a query of block b starts after
    block b - 1 begins, so each query block attends to the keys of its own and the previous block under a
    same-document causal mask: one SDPA call of [n_blocks, Hq, W, 2W] scores (T x 2W per head, against sum L^2 for
    the loop over documents; MQA/GQA through SDPA's enable_gqa, K/V never expanded)."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    W = max(1, int(max_seqlen))
    nb = max(1, -(-T // W))
    pad = nb * W - T
    dev = q.device
    pos = torch.arange(nb * W, device=dev)
    doc = torch.searchsorted(cu_seqlens[1:].long(), pos, right=True)  # document of each token; padding: n_docs
    doc = torch.where(pos < T, doc, -1)

    def blocks(x):  # [T, H, D] -> [nb, H, W, D]
        return F.pad(x, (0, 0, 0, 0, 0, pad)).view(nb, W, x.shape[1], D).transpose(1, 2)

    def with_previous(x, fill):  # [nb, ..., W, *] -> [nb, ..., 2W, *]: the previous block's then this block's
        prev = torch.cat([torch.full_like(x[:1], fill), x[:-1]])
        return torch.cat([prev, x], dim=-2 if x.dim() > 2 else -1)

    kb, vb = with_previous(blocks(k), 0), with_previous(blocks(v), 0)
    doc_q, pos_q = doc.view(nb, W), pos.view(nb, W)
    doc_k, pos_k = with_previous(doc_q, -2), with_previous(pos_q, -1)
    mask = (doc_q[:, :, None] == doc_k[:, None, :]) & (pos_k[:, None, :] <= pos_q[:, :, None])  # [nb, W, 2W]
    y = F.scaled_dot_product_attention(blocks(q), kb, vb, attn_mask=mask[:, None], scale=scale,
                                       enable_gqa=Hq != Hkv)  # [nb, Hq, W, D]
    return y.transpose(1, 2).reshape(nb * W, Hq, D)[:T]
