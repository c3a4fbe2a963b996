"""How the tokens of one forward pass are laid out, for every model family (StarCoder, Llama): the input forms, the
positions they imply and the shifted labels of the loss.

- dense `input_ids [B, S]` (optionally `attention_mask [B, S]`, 1 = real token; left padding counts positions over
  real tokens only);
- packed `input_ids [1, T]` with `position_ids [1, T]` restarting at 0 per document and `cu_seqlens` int32
  `[n_docs + 1]` (document i is tokens cu_seqlens[i]:cu_seqlens[i+1]); no document attends to another;
- with a `kv_cache`, the tokens are appended to the cache (prefill or decode) and `attention_mask [B, S]` marks which
  of them are real. A cache implements `begin(new_mask) -> position ids`, `attend(layer, q, k, v, scale) -> y` and
  `advance()`: the engine's slot cache (wizardcoder/engine/cache.py), and a simple left-padded one in the tests
  (tests/_kv_cache.py).
"""
from __future__ import annotations

import torch

from . import ops


class SeqInfo:
    """How the tokens of one forward pass are laid out (dense batch, packed stream, or decoding with a cache)."""

    __slots__ = ("cu_seqlens", "max_seqlen", "attention_mask", "kv_cache")

    def __init__(self, cu_seqlens=None, max_seqlen=None, attention_mask=None, kv_cache=None):
        self.cu_seqlens, self.max_seqlen, self.attention_mask, self.kv_cache = cu_seqlens, max_seqlen, attention_mask, kv_cache


def seq_layout(input_ids, position_ids=None, cu_seqlens=None, max_seqlen=None, attention_mask=None, kv_cache=None):
    """`(input_ids [B, S], position_ids [B or 1, S], SeqInfo)` for any of the three input forms above."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    B, S = input_ids.shape
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"packed input must be one stream [1, T]; got input_ids of shape {tuple(input_ids.shape)}")
        if position_ids is None:
            position_ids = positions_from_cu_seqlens(cu_seqlens, S)
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if kv_cache is not None:
        new_mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        position_ids = kv_cache.begin(new_mask)
    elif position_ids is None:
        if attention_mask is not None:  # left padding: count positions over real tokens only
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            position_ids = torch.arange(S, device=input_ids.device)[None]
    return input_ids, position_ids, SeqInfo(cu_seqlens, max_seqlen, attention_mask, kv_cache)


def shift_labels(labels: torch.Tensor, cu_seqlens: torch.Tensor | None = None, ignore_index: int = -100) -> torch.Tensor:
    """targets[t] = labels[t + 1]; the last position of every row (and of every packed document) gets ignore_index."""
    targets = torch.full_like(labels, ignore_index)
    targets[:, :-1] = labels[:, 1:]
    if cu_seqlens is not None:
        ends = cu_seqlens[1:].long() - 1
        # An empty leading document ends at -1, i.e. the last position, already ignored. Integer indices, not a
        # boolean mask: no host sync.
        targets[0, ends] = ignore_index
    return targets


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """[1, T] positions restarting at 0 at every document start."""
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], lengths, output_size=total)
    return (torch.arange(total, device=cu.device) - starts)[None]


def logits_or_loss(h: torch.Tensor, head: torch.Tensor, labels=None, cu_seqlens=None, reduction: str = "mean",
                   backend: str = "auto") -> torch.Tensor:
    """Logits `h @ head.T`, or, when `labels` is given, the LM loss alone (the fused path never holds the logits).
    `labels` follow HF: aligned with the input ids, -100 where no loss is taken; the shift happens here, and in the
    packed form the last token of a document never predicts the first of the next."""
    if labels is None:
        return torch.nn.functional.linear(h, head)
    if labels.dim() == 1:
        labels = labels[None]
    targets = shift_labels(labels, cu_seqlens)
    return ops.linear_cross_entropy(h.flatten(0, 1), head, targets.flatten(), reduction=reduction, backend=backend)
