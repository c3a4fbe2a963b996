"""The engine's static KV cache: allocated once, `max_prompts` prompt slots shared by their samples plus one row per
sample slot. It implements the cache protocol the model calls (`begin`, `attend`, `advance`; see model.py) in two
modes the engine switches between:

- prefill: several prompts packed into one stream `[1, T]` (cu_seqlens); each one's K/V is written to its target
  (a prompt slot, or a row for a prompt that is not shared) and attention is the model's causal varlen attention
  (flash-attn / Triton on CUDA, SDPA on CPU);
- decode: one token for each of the first n_rows rows `[n_rows, 1]`; its K/V is appended to the row, and attention
  is the cascade attention over (own prompt slot, own row) of wizardcoder/engine/attention.py: on the Triton path
  (`decode_backend`, CUDA by default) one kernel launch per layer over the whole buffers, on the torch path calls
  over views sliced to the sizes the host chose for the round (static shapes per size, so each step can be captured
  as a CUDA graph either way).

Buffers (L = n_layer, P = prompt slots, B = rows, Hkv = K/V heads (1 for MQA), D = head_dim), head-major so that a
slot's or a row's keys of one head are contiguous: prefix_k/v `[L, P, Hkv, Lp, D]`, prefix_len `[P]`;
row_k/v `[L, B, Hkv, Lr, D]`, row_len `[B]` (tokens a row holds), row_prefix `[B]` (its prompt slot, -1 when its
prompt lives in the row itself); written by the host once per round: on the torch path group_rows (the rows of each
slot, `[P, Gm]` flattened) and row_pos `[B]` (a row's place there, -1: none); on the Triton path kernel_groups (`[NG,
W]` flattened: the rows of each live slot, then the rows holding their own prompts in groups of W, -1 padding; NG
and W are functions of the round's sizes alone, so a captured step's grid stays right) and group_slot `[NG]` (each
group's prompt slot, -1: none).
"""
from __future__ import annotations

import torch

from .. import ops
from .attention import cascade_decode_attention, decode_backend, row_attention
from .invariant import row_attention_invariant


class SlotCache:
    def __init__(self, cfg, max_slots: int, max_prompts: int, max_len: int, dtype, device):
        self.cfg = cfg
        L, Hkv, D = cfg.n_layer, cfg.n_kv_head, cfg.head_dim
        self.prefix_k = torch.zeros(L, max_prompts, Hkv, max_len, D, dtype=dtype, device=device)
        self.prefix_v = torch.zeros_like(self.prefix_k)
        self.row_k = torch.zeros(L, max_slots, Hkv, max_len, D, dtype=dtype, device=device)
        self.row_v = torch.zeros_like(self.row_k)
        self.prefix_len = torch.zeros(max_prompts, dtype=torch.long, device=device)
        self.row_len = torch.zeros(max_slots, dtype=torch.long, device=device)
        self.row_prefix = torch.full((max_slots,), -1, dtype=torch.long, device=device)
        self.rows = torch.arange(max_slots, device=device)
        self.heads = torch.arange(Hkv, device=device)[None, None]
        self.group_rows = torch.zeros(max_prompts * max_slots, dtype=torch.long, device=device)
        self.row_pos = torch.full((max_slots,), -1, dtype=torch.long, device=device)
        self.decode_backend = decode_backend(cfg, self.row_len)  # "triton" | "torch" (engine/attention.py)
        self.tile_rows = 1  # rows per kernel program: a group narrower than this is padded to it (set_decode)
        if self.decode_backend == "triton":
            from ..kernels import decode_attention

            self._kernel = decode_attention.cascade_decode_attention_triton
            self.tile_rows = decode_attention.tiles(cfg.n_head // Hkv, D)["ROWS"]
            # each layer's whole buffers, as the kernel reads them (static views, made once)
            self._layers = [(self.prefix_k[i], self.prefix_v[i], self.row_k[i], self.row_v[i]) for i in range(L)]
            W = max(max_slots, self.tile_rows)  # the widest group; NG * W <= (P + 1) * W + B (set_decode)
            self.kernel_groups = torch.full(((max_prompts + 1) * W + max_slots,), -1, dtype=torch.long, device=device)
            self.group_slot = torch.full((max_prompts + max_slots,), -1, dtype=torch.long, device=device)
        self.max_len = max_len
        self.mode = "decode"
        self.invariant = False  # decode attention over full-width, per-row key layouts (Engine(deterministic=True))
        self.prefix_slots = self.prefix_width = self.row_width = self.n_rows = self.group_width = 1
        self._targets: list[tuple[str, int, int, int]] = []

    @property
    def fused(self) -> bool:
        """Decode steps run the one-launch Triton kernel (the batch-invariant mode keeps its own attention)."""
        return self.decode_backend == "triton" and not self.invariant

    # ------------------------------------------------------------------------------------------- mode switches
    def set_prefill(self, targets: list[tuple[str, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next forward is a packed prefill: `targets` = (kind "prefix" | "row", index, n_tokens) in stream order;
        `begin` then hands the model position ids that restart at 0 for each prompt."""
        bounds, start = [], 0
        for kind, idx, n in targets:
            bounds.append((kind, idx, start, start + n))
            start += n
        device = self.row_len.device
        self._targets = bounds
        self._cu = torch.tensor([0] + [e for *_, e in bounds], dtype=torch.int32, device=device)
        self._max_seqlen = max(e - s for *_, s, e in bounds)
        self._positions = torch.cat([torch.arange(e - s, device=device) for *_, s, e in bounds])[None]
        self.mode = "prefill"

    def set_decode(self, prefix_slots: int, prefix_width: int, row_width: int, n_rows: int, groups) -> None:
        """Next forwards are decode steps of the first `n_rows` rows, attending to the first `prefix_width` keys of
        the first `prefix_slots` prompt slots (0: no prompt is shared) and the first `row_width` keys of every row
        (the host picks sizes that cover every live row for the coming steps); `groups[p]`: the rows of slot p."""
        self.mode = "decode"
        self.prefix_slots, self.prefix_width, self.row_width, self.n_rows = prefix_slots, prefix_width, row_width, n_rows
        Gm = self.group_width = max((len(g) for g in groups), default=1)
        if self.fused:
            self._set_kernel_groups(groups, n_rows)
            return
        if prefix_slots:  # where each row's query goes in the prompt part (one small host-to-device copy a round)
            flat = [g[i] if i < len(g) else 0 for g in groups for i in range(Gm)]
            pos = [-1] * n_rows
            for p, g in enumerate(groups):
                for i, b in enumerate(g):
                    pos[b] = p * Gm + i
            dev = self.row_len.device
            self.group_rows[: len(flat)].copy_(torch.tensor(flat, device=dev))
            self.row_pos[:n_rows].copy_(torch.tensor(pos, device=dev))
        # this round's per-layer views of the buffers (views of static storage: the same for every step)
        P, Wp, Wr, nb = prefix_slots, prefix_width, row_width, n_rows
        self._views = [(self.row_k[i], self.row_v[i], self.prefix_k[i, :P, :, :Wp], self.prefix_v[i, :P, :, :Wp],
                        self.row_k[i, :nb, :, :Wr], self.row_v[i, :nb, :, :Wr]) for i in range(self.cfg.n_layer)]

    def _set_kernel_groups(self, groups, n_rows: int) -> None:
        """The Triton path's groups for this round: each live slot's rows, then every other row of the first n_rows
        (its prompt in the row itself, or a free row) in groups of its own (slot -1), all W = max(Gm, tile_rows)
        wide. NG = slots + ceil(n_rows / W) whatever the rows' mix (trailing groups all padding), so the grid of a
        captured step matches every round with the same sizes. One host-to-device copy a round."""
        W = max(self.group_width, self.tile_rows)
        shared = {b for g in groups for b in g}
        own = [b for b in range(n_rows) if b not in shared]
        n_own = -(-n_rows // W)
        rows = list(groups) + [own[i * W:(i + 1) * W] for i in range(n_own)]
        NG = len(rows)
        ids = [b for g in rows for b in g + [-1] * (W - len(g))]
        slots = list(range(len(groups))) + [-1] * n_own
        both = torch.tensor(ids + slots, device=self.row_len.device)  # one copy for both
        self.kernel_groups[: NG * W].copy_(both[: NG * W])
        self.group_slot[:NG].copy_(both[NG * W:])
        self._kgroups, self._gslot = self.kernel_groups[: NG * W].view(NG, W), self.group_slot[:NG]

    # ------------------------------------------------------------------------------------ the model's protocol
    def begin(self, new_mask: torch.Tensor) -> torch.Tensor:
        """Position ids of this forward's tokens; in decode mode also this step's masks and write positions (shared
        by the layers)."""
        if self.mode == "prefill":
            return self._positions
        nb, P, Wp, Wr = self.n_rows, self.prefix_slots, self.prefix_width, self.row_width
        row_prefix, row_len = self.row_prefix[:nb], self.row_len[:nb]
        plen = torch.where(row_prefix >= 0, self.prefix_len[row_prefix.clamp(min=0)], torch.zeros_like(row_len))
        self._write = (self.rows[:nb, None, None], self.heads, row_len[:, None, None])  # -> [nb, 1, Hkv] like k
        if self.fused:
            self._keys = row_len + 1  # the keys each row attends to: its own and this step's
            return (plen + row_len)[:, None]
        dev = plen.device
        self._row_mask = torch.arange(Wr, device=dev)[None] <= row_len[:, None]  # (nb, Wr): its keys and this step's
        if P and not self.invariant:
            self._row_bias = torch.where(self._row_mask, 0.0, float("-inf"))[:, None, None]
            self._prefix_bias = torch.where(torch.arange(Wp, device=dev)[None] < self.prefix_len[:P, None], 0.0,
                                            float("-inf"))[:, None, None]
            pos = self.row_pos[:nb]
            self._pos = pos.clamp(min=0)
            self._no_prefix = torch.where(pos >= 0, 0.0, float("-inf"))[:, None, None]
            self._groups = self.group_rows[: P * self.group_width].view(P, self.group_width)
        return (plen + row_len)[:, None]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if self.mode == "prefill":
            for kind, idx, s, e in self._targets:
                kb, vb = (self.prefix_k, self.prefix_v) if kind == "prefix" else (self.row_k, self.row_v)
                kb[layer, idx, :, : e - s] = k[0, s:e].transpose(0, 1)
                vb[layer, idx, :, : e - s] = v[0, s:e].transpose(0, 1)
            return ops.attention(q[0], k[0], v[0], scale=scale, cu_seqlens=self._cu, max_seqlen=self._max_seqlen,
                                 backend=self.cfg.attn_backend)[None]
        # decode: q (B, 1, Hq, D), k/v (B, 1, Hkv, D); a row's new key goes to position row_len (rows that are done
        # keep rewriting the same position, which nothing reads)
        if self.fused:  # one launch over the whole buffers, read in place
            pk, pv, rk, rv = self._layers[layer]
            rk.index_put_(self._write, k)
            rv.index_put_(self._write, v)
            return self._kernel(q[:, 0], pk, pv, self.prefix_len, self._kgroups, self._gslot, rk, rv, self._keys,
                                scale)[:, None]
        row_k, row_v, pk, pv, rk, rv = self._views[layer]
        row_k.index_put_(self._write, k)
        row_v.index_put_(self._write, v)
        nb = self.n_rows
        if self.invariant:
            return row_attention_invariant(q, self.prefix_k[layer], self.prefix_v[layer], self.prefix_len,
                                           self.row_prefix[:nb], self.row_k[layer, :nb], self.row_v[layer, :nb],
                                           self.row_len[:nb], scale)
        if self.prefix_slots == 0:  # no prompt is shared: each row attends to its own keys, one call
            return row_attention(q, rk, rv, self._row_mask, scale)
        return cascade_decode_attention(q, pk, pv, self._prefix_bias, self._groups, self._pos, self._no_prefix, rk, rv,
                                        self._row_bias, scale)

    def advance(self) -> None:
        """Lengths are the engine's to move (only rows still generating grow), so nothing happens here."""
