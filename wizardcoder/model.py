"""StarCoder (GPTBigCode), written by hand: multi-query attention, learned absolute positions, pre-LayerNorm blocks,
GELU MLP, LM head tied to the token embedding. Parameter names are HF's, so a checkpoint's state dict loads as is.

The input forms (dense, packed, decoding with a cache) are wizardcoder/layout.py's; what the rest of the package
asks of a model (blocks, vocabulary rows, init, parameter groups, checkpoints) is wizardcoder/protocol.py's.

The embedding is padded to a multiple of `config.vocab_multiple` rows (zeros) so the LM-head matmul has a friendly
shape; callers never see it: logits have the checkpoint's vocab size. Distribution (FSDP2), checkpoint I/O and the
fused kernels live beside this file, not in it (see parallel.py, checkpoint.py, ops.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import ops
from .starcoder_config import StarCoderConfig
from .layout import SeqInfo, seq_layout
from .protocol import CausalLMBase


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

    def forward(self, x: torch.Tensor, seq: SeqInfo) -> torch.Tensor:
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

    def forward(self, delta: torch.Tensor, residual: torch.Tensor | None, seq: SeqInfo):
        eps, kb = self.cfg.layer_norm_epsilon, self.cfg.kernel_backend
        h, residual = ops.add_layer_norm(delta, residual, self.ln_1.weight, self.ln_1.bias, eps, kb)
        h, residual = ops.add_layer_norm(self.attn(h, seq), residual, self.ln_2.weight, self.ln_2.bias, eps, kb)
        return self.mlp(h), residual


class StarCoder(CausalLMBase):
    config_class = StarCoderConfig
    ignored_suffixes = (".attn.bias", ".attn.masked_bias")  # buffers some older GPTBigCode checkpoints carry

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

    # ------------------------------------------------------------------------------------------ the protocol
    def blocks(self) -> list[nn.Module]:
        return list(self.transformer.h)

    def vocab_rows(self) -> tuple[str, ...]:
        return ("transformer.wte.weight",)  # padded to padded_vocab_size rows; checkpoints hold vocab_size

    def stores(self, name: str) -> bool:
        return name != "lm_head.weight" and super().stores(name)  # the head is tied to wte

    @torch.no_grad()
    def init_parameter_(self, name: str, p: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """GPT-2 / HF GPTBigCode init of the parameter `name` (full shape) in place: N(0, 0.02), output projections
        scaled by 1/sqrt(2 * n_layer), zero biases, unit LayerNorm gains; the embedding's padding rows stay zero."""
        cfg = self.config
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
        """Final LayerNorm output `[B, S, n_embd]` for any input form (wizardcoder.layout)."""
        cfg = self.config
        input_ids, position_ids, seq = seq_layout(input_ids, position_ids, cu_seqlens, max_seqlen, attention_mask,
                                                  kv_cache)
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
