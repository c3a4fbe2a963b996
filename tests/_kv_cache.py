"""A simple left-padded KV cache for tests: the model's cache protocol (`begin`, `attend`, `advance`) over static
buffers and plain masked SDPA, a second path the engine's slot cache is checked against."""
import torch
import torch.nn.functional as F

from wizardcoder.starcoder_config import StarCoderConfig


class KVCache:
    """The simple cache, an independent check of the engine's slot cache (wizardcoder/engine/cache.py). Static K/V buffers allocated once for a batch (gpt-fast style): `k`, `v` are
    `[n_layer, B, max_len, n_kv_head, head_dim]`; MQA keeps one K/V head, so the cache is n_head times smaller than
    multi-head's. Rows may be left-padded: `key_mask [B, max_len]` marks the slots holding real tokens and
    `lengths [B]` counts them (the next token's position id). `pos` is the next free slot, shared by all rows."""

    def __init__(self, cfg: StarCoderConfig, batch: int, max_len: int, dtype=None, device=None):
        shape = (cfg.n_layer, batch, max_len, cfg.n_kv_head, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.pos = 0
        self.max_len = max_len

    def begin(self, new_mask: torch.Tensor) -> torch.Tensor:
        """Reserve slots for the next forward's tokens (`new_mask [B, S]`, True = real); returns their position ids."""
        S = new_mask.shape[1]
        if self.pos + S > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {S} tokens > max_len {self.max_len}")
        self.key_mask[:, self.pos : self.pos + S] = new_mask
        positions = self.lengths[:, None] + (new_mask.long().cumsum(-1) - 1).clamp(min=0)
        self._pending = S
        return positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """The cache protocol the attention layer calls (the engine's caches implement it too): store this
        forward's K/V for `layer`, return the attention of q `[B, S, Hq, D]` over everything cached so far."""
        end = self.pos + k.shape[1]
        self.k[layer, :, self.pos : end] = k
        self.v[layer, :, self.pos : end] = v
        return cached_attention(q, self.k[layer, :, :end], self.v[layer, :, :end], scale=scale,
                                key_mask=self.key_mask[:, :end], start=self.pos)

    def advance(self) -> None:
        self.lengths += self.key_mask[:, self.pos : self.pos + self._pending].sum(-1)
        self.pos += self._pending


def cached_attention(q, k, v, *, scale, key_mask, start):
    """Masked SDPA over a left-padded cache: q `[B, S, Hq, D]` are the tokens in cache slots start..start+S-1;
    k/v `[B, L, Hkv, D]` are all L = start + S cached slots, `key_mask [B, L]` marks real ones. Query i sees real
    slots <= start + i (and always itself, so a padding query is not NaN; its output is unused)."""
    B, S, Hq, D = q.shape
    L = k.shape[1]
    slots, qpos = torch.arange(L, device=q.device), start + torch.arange(S, device=q.device)
    mask = (slots[None, :] <= qpos[:, None])[None, None] & key_mask[:, None, None, :]
    mask = mask | (slots[None, :] == qpos[:, None])[None, None]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S|L, D)
    rep = Hq // kh.shape[1]
    kh, vh = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale).transpose(1, 2)
