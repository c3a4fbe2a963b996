"""Batch-invariant decode for `Engine(deterministic=True)`: a row's logits do not depend on how many rows share the
step, which rows they are, or which slots they sit in (the approach of vLLM's batch-invariant mode: a fixed
reduction order whatever the batch).

Where a plain step varies with the batch, and what this mode does instead:
- Matmuls: BLAS picks its blocking (and so the order it sums in) by the number of rows. Here every `F.linear` of the
  step runs as a batched product over fixed tiles of ROWS rows (the last one zero-padded), so each row always meets
  the same kernel at the same shape (`RowTiledLinear`, a TorchFunctionMode around the step).
- Attention: the shared-prefix path puts a row's keys at offsets set by its prompt slot and by the other prompts'
  widths. Here each row attends over [its prompt's keys | its own keys], each part `max_len` wide, so its keys sit at
  offsets that depend on its own request alone (`row_attention_invariant`).
- Prefill: prompts packed together change the shapes; here each prompt is prefilled alone (engine/core.py).
LayerNorm, softmax and the sampler already reduce within one row. Cost: see bench/RESULTS.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .attention import row_attention

ROWS = 8  # rows per matmul tile


class RowTiledLinear(TorchFunctionMode):
    """Within this mode, `F.linear(x, w, b)` computes x's rows in tiles of ROWS rows (one bmm over the tiles)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return tiled_linear(*args, **kwargs)
        return func(*args, **kwargs)


def tiled_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear with x's rows (all leading dims flattened) in zero-padded tiles of ROWS rows."""
    lead, K = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, K)
    n = rows.shape[0]
    tiles = -(-n // ROWS)
    padded = F.pad(rows, (0, 0, 0, tiles * ROWS - n)).view(tiles, ROWS, K)
    y = torch.bmm(padded, weight.t().expand(tiles, *weight.t().shape)).view(tiles * ROWS, -1)[:n]
    if bias is not None:
        y = y + bias
    return y.view(*lead, -1)


def row_attention_invariant(q, prefix_k, prefix_v, prefix_len, row_prefix, row_k, row_v, row_len, scale):
    """q `[B, 1, Hq, D]`; prefix_k/v `[P, Hkv, W, D]` (all prompt slots, full width), prefix_len `[P]`, row_prefix
    `[B]` (-1: none); row_k/v `[B, Hkv, W, D]`, row_len `[B]` (keys before this step's). Each row's keys: its
    prompt's at [0, plen), its own at [W, W + row_len]."""
    W = row_k.shape[2]
    slot = row_prefix.clamp(min=0)
    plen = torch.where(row_prefix >= 0, prefix_len[slot], torch.zeros_like(row_len))
    k = torch.cat([prefix_k[slot], row_k], 2)
    v = torch.cat([prefix_v[slot], row_v], 2)
    pos = torch.arange(W, device=q.device)[None]
    mask = torch.cat([pos < plen[:, None], pos <= row_len[:, None]], 1)
    return row_attention(q, k, v, mask, scale)
