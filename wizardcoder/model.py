"""StarCoder (GPTBigCode), written by hand: multi-query attention, learned absolute positions, pre-LayerNorm blocks,
GELU MLP, LM head tied to the token embedding. Parameter names are HF's, so a checkpoint's state dict loads as is.

Two input forms:
- dense `input_ids [B, S]` (optionally `attention_mask [B, S]`, 1 = real token);
- packed `input_ids [1, T]` with `position_ids [1, T]` restarting at 0 per document and `cu_seqlens` int32
  `[n_docs + 1]` (document i is tokens cu_seqlens[i]:cu_seqlens[i+1]); no document attends to another.

The embedding is padded to a multiple of `config.vocab_multiple` rows (zeros) so the LM-head matmul has a friendly
shape; callers never see it: logits have the checkpoint's vocab size. Distribution (FSDP2), checkpoint I/O and the
fused kernels live beside this file, not in it (see ops.py, checkpoint.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .config import StarCoderConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: StarCoderConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        # Fused QKV. MQA layout: [q (n_embd) | k (head_dim) | v (head_dim)]; MHA layout (HF's, not GPT-2's):
        # per head [q_h | k_h | v_h], i.e. view as (n_head, 3 * head_dim).
        self.c_attn = nn.Linear(cfg.n_embd, cfg.n_embd + 2 * cfg.n_kv_head * cfg.head_dim)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn_weights else 1.0

    def forward(self, x: torch.Tensor, seq: "SeqInfo") -> torch.Tensor:
        B, S, _ = x.shape
        qkv = self.c_attn(x)
        if self.n_kv_head == 1:
            q, k, v = qkv.split([self.n_head * self.head_dim, self.head_dim, self.head_dim], dim=-1)
            q = q.view(B, S, self.n_head, self.head_dim)  # (B, S, H, hd)
            k, v = k.view(B, S, 1, self.head_dim), v.view(B, S, 1, self.head_dim)  # (B, S, 1, hd)
        else:
            q, k, v = qkv.view(B, S, self.n_head, 3 * self.head_dim).split(self.head_dim, dim=-1)
        if seq.kv_cache is not None:  # generating: the cache stores k/v and attends over everything it holds
            y = seq.kv_cache.attend(self.layer_idx, q, k, v, self.scale)
        elif seq.cu_seqlens is not None:  # packed: one stream of T tokens
            y = ops.attention(q[0], k[0], v[0], scale=self.scale, cu_seqlens=seq.cu_seqlens,
                              max_seqlen=seq.max_seqlen, backend=self.cfg.attn_backend)[None]
        else:
            y = ops.attention(q, k, v, scale=self.scale, key_padding_mask=seq.attention_mask, backend=self.cfg.attn_backend)
        return self.c_proj(y.reshape(B, S, -1))


class MLP(nn.Module):
    def __init__(self, cfg: StarCoderConfig):
        super().__init__()
        self.cfg = cfg
        self.c_fc = nn.Linear(cfg.n_embd, cfg.ffn_dim)
        self.c_proj = nn.Linear(cfg.ffn_dim, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ops.linear_gelu(x, self.c_fc.weight, self.c_fc.bias, self.cfg.gelu_tanh, self.cfg.kernel_backend)
        return self.c_proj(h)


class Block(nn.Module):
    """Pre-norm block. Written in the fused-residual form: it takes the residual stream and the previous block's
    output separately, so each add-then-LayerNorm is one kernel. Equivalent to
        x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))."""

    def __init__(self, cfg: StarCoderConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg = cfg
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, delta: torch.Tensor, residual: torch.Tensor | None, seq: "SeqInfo"):
        eps, kb = self.cfg.layer_norm_epsilon, self.cfg.kernel_backend
        h, residual = ops.add_layer_norm(delta, residual, self.ln_1.weight, self.ln_1.bias, eps, kb)
        h, residual = ops.add_layer_norm(self.attn(h, seq), residual, self.ln_2.weight, self.ln_2.bias, eps, kb)
        return self.mlp(h), residual


class SeqInfo:
    """How the tokens of one forward pass are laid out (dense batch, packed stream, or decoding with a cache)."""

    __slots__ = ("cu_seqlens", "max_seqlen", "attention_mask", "kv_cache")

    def __init__(self, cu_seqlens=None, max_seqlen=None, attention_mask=None, kv_cache=None):
        self.cu_seqlens, self.max_seqlen, self.attention_mask, self.kv_cache = cu_seqlens, max_seqlen, attention_mask, kv_cache


class StarCoder(nn.Module):
    def __init__(self, cfg: StarCoderConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.n_positions, cfg.n_embd),
                h=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
            )
        )
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ------------------------------------------------------------------------------------------ construction
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 / HF GPTBigCode init: N(0, 0.02) everywhere, output projections scaled by 1/sqrt(2 * n_layer),
        zero biases, unit LayerNorm gains; the padding rows of the embedding stay zero."""
        for name, p in self.named_parameters():
            init_parameter_(name, p, self.config, generator)

    @classmethod
    def from_config(cls, cfg: StarCoderConfig, dtype: torch.dtype | None = None, device=None, seed: int | None = None) -> "StarCoder":
        """A randomly initialised model, built on the meta device and materialised once, in place, on `device`."""
        with torch.device("meta"):
            model = cls(cfg)
        model.to_empty(device=device or "cpu")
        gen = None
        if seed is not None:
            gen = torch.Generator(device=device or "cpu").manual_seed(seed)
        model.init_weights(gen)
        return model.to(dtype) if dtype is not None else model

    @classmethod
    def from_preset(cls, name: str, dtype=None, device=None, seed: int | None = None, **overrides) -> "StarCoder":
        return cls.from_config(StarCoderConfig.from_preset(name, **overrides), dtype=dtype, device=device, seed=seed)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, dtype: torch.dtype | None = None, device=None, **config_overrides) -> "StarCoder":
        """Load a HF GPTBigCode checkpoint (local folder or hub id; safetensors or .bin, single or sharded)."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, path_or_hub_id, dtype=dtype, device=device, **config_overrides)

    def save_pretrained(self, folder: str, max_shard_bytes: int = 5 * 2**30) -> None:
        """Write safetensors + config.json that `transformers.GPTBigCodeForCausalLM.from_pretrained` loads."""
        from .checkpoint import save_pretrained

        save_pretrained(self, folder, max_shard_bytes=max_shard_bytes)

    @torch.no_grad()
    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow the vocabulary to `vocab_size` (e.g. StarCoder's 49152 + WizardCoder's [PAD]). New rows start at the
        mean of the existing embeddings, as WizardCoder's training script initialises them."""
        cfg = self.config
        old_vocab = cfg.vocab_size
        if vocab_size < old_vocab:
            raise ValueError(f"cannot shrink the vocabulary from {old_vocab} to {vocab_size}")
        if vocab_size == old_vocab:
            return
        old = self.transformer.wte.weight
        cfg.vocab_size = vocab_size
        if cfg.padded_vocab_size != old.shape[0]:
            new = nn.Embedding(cfg.padded_vocab_size, cfg.n_embd, device=old.device, dtype=old.dtype)
            new.weight.zero_()
            new.weight[: old_vocab] = old[:old_vocab]
            self.transformer.wte = new
        w = self.transformer.wte.weight
        w[old_vocab:vocab_size] = w[:old_vocab].float().mean(0).to(w.dtype)

    # ---------------------------------------------------------------------------------------------- forward
    def hidden_states(self, input_ids, position_ids=None, cu_seqlens=None, max_seqlen=None, attention_mask=None,
                      kv_cache=None):
        """Final LayerNorm output `[B, S, n_embd]`. With `kv_cache`, the tokens are appended to the cache (prefill or
        decode) and `attention_mask [B, S]` marks which of them are real (left padding). A cache implements
        `begin(new_mask) -> position ids`, `attend(layer, q, k, v, scale) -> y` and `advance()`: the engine's slot
        cache (wizardcoder/engine/cache.py), and a simple left-padded one in the tests (tests/_kv_cache.py)."""
        cfg = self.config
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
        seq = SeqInfo(cu_seqlens, max_seqlen, attention_mask, kv_cache)
        delta = self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)  # (B, S, d)
        residual = None
        for block in self.transformer.h:
            delta, residual = block(delta, residual, seq)
        ln_f = self.transformer.ln_f
        h, _ = ops.add_layer_norm(delta, residual, ln_f.weight, ln_f.bias, cfg.layer_norm_epsilon, cfg.kernel_backend)
        if kv_cache is not None:
            kv_cache.advance()
        return h

    def lm_head_weight(self) -> torch.Tensor:
        """The tied LM head without the padding rows: `[vocab_size, n_embd]`."""
        return self.transformer.wte.weight[: self.config.vocab_size]

    def forward(self, input_ids, position_ids=None, cu_seqlens=None, max_seqlen=None, attention_mask=None,
                labels=None, reduction: str = "mean", kv_cache=None):
        """Logits `[B, S, vocab_size]`, or, when `labels` is given, the LM loss alone (the fused path never holds
        the logits). `labels` follow HF: aligned with `input_ids`, -100 where no loss is taken; the shift happens here,
        and in the packed form the last token of a document never predicts the first of the next."""
        h = self.hidden_states(input_ids, position_ids, cu_seqlens, max_seqlen, attention_mask, kv_cache)
        if labels is None:
            return F.linear(h, self.lm_head_weight())
        if labels.dim() == 1:
            labels = labels[None]
        targets = shift_labels(labels, cu_seqlens)
        return ops.linear_cross_entropy(h.flatten(0, 1), self.lm_head_weight(), targets.flatten(),
                                        reduction=reduction, backend=self.config.kernel_backend)


@torch.no_grad()
def init_parameter_(name: str, p: torch.Tensor, cfg: StarCoderConfig, generator: torch.Generator | None = None) -> None:
    """Initialise the parameter called `name` (HF name, full shape) in place. Parameters are initialised one at a
    time in `named_parameters()` order from one generator, so a sharded model built on the meta device can draw each
    full tensor in a bounded buffer and keep its slice, and get the same weights as an unsharded one."""
    std = cfg.initializer_range
    if name.endswith("c_proj.weight"):
        p.normal_(0.0, std / math.sqrt(2 * cfg.n_layer), generator=generator)
    elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        p.fill_(1.0)
    elif name.endswith(".bias"):
        p.zero_()
    else:
        p.normal_(0.0, std, generator=generator)
    if name == "transformer.wte.weight":
        p[cfg.vocab_size :].zero_()  # the padding rows


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
