"""Llama-architecture code models (CodeLlama, DeepSeek-Coder, WizardCoder-Python / -33B), written by hand: RMSNorm,
rotary position embeddings (any base theta, linear position scaling), grouped-query attention, SwiGLU MLP, untied LM
head. Parameter names are HF's (`model.layers.N.self_attn.q_proj.weight`, ...), so a checkpoint loads as is.

The same input forms as StarCoder (wizardcoder/layout.py: dense, packed, decoding with a cache), through the same
attention entry (ops.attention); packed, RoPE rotates by the per-document positions, so each document sees exactly
what it would alone. With a cache, K/V are stored after RoPE, with n_kv_head heads (GQA keeps the cache small). What
the rest of the package asks of a model is wizardcoder/protocol.py's; checkpoints go through wizardcoder/checkpoint.py.

Unlike StarCoder's, the embedding is not padded to a multiple of 128 rows: the LM head is its own matrix here, and
the released vocabularies (32000, 32256) already are multiples of 128; 32001 / 32016 cost a ragged last tile.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import llama_ops, ops
from .layout import SeqInfo, seq_layout
from .llama_config import LlamaConfig
from .protocol import CausalLMBase


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=False)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def forward(self, x: torch.Tensor, seq: SeqInfo, position_ids: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.n_head, self.head_dim)  # (B, S, Hq, hd)
        k = self.k_proj(x).view(B, S, self.n_kv_head, self.head_dim)  # (B, S, Hkv, hd)
        v = self.v_proj(x).view(B, S, self.n_kv_head, self.head_dim)
        q, k = llama_ops.rope(q, k, position_ids, inv_freq, self.cfg.kernel_backend)
        if seq.kv_cache is not None:
            y = seq.kv_cache.attend(self.layer_idx, q, k, v, self.scale)
        elif seq.cu_seqlens is not None:  # packed: one stream of T tokens
            y = ops.attention(q[0], k[0], v[0], scale=self.scale, cu_seqlens=seq.cu_seqlens,
                              max_seqlen=seq.max_seqlen, backend=self.cfg.attn_backend)[None]
        else:
            y = ops.attention(q, k, v, scale=self.scale, key_padding_mask=seq.attention_mask,
                              backend=self.cfg.attn_backend)
        return self.o_proj(y.reshape(B, S, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(llama_ops.swiglu(self.gate_proj(x), self.up_proj(x), self.cfg.kernel_backend))


class RMSNorm(nn.Module):
    """The parameter holder (HF's name `weight`); the computation is llama_ops.add_rms_norm, fused with the add."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps


class Block(nn.Module):
    """Pre-norm block in the fused-residual form (as StarCoder's): takes the residual stream and the previous block's
    output separately so each add-then-RMSNorm is one kernel. Equivalent to
        x = x + attn(rms_1(x)); x = x + mlp(rms_2(x))."""

    def __init__(self, cfg: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, delta, residual, seq: SeqInfo, position_ids, inv_freq):
        eps, kb = self.cfg.rms_norm_eps, self.cfg.kernel_backend
        h, residual = llama_ops.add_rms_norm(delta, residual, self.input_layernorm.weight, eps, kb)
        a = self.self_attn(h, seq, position_ids, inv_freq)
        h, residual = llama_ops.add_rms_norm(a, residual, self.post_attention_layernorm.weight, eps, kb)
        return self.mlp(h), residual


class Llama(CausalLMBase):
    config_class = LlamaConfig
    ignored_suffixes = (".rotary_emb.inv_freq",)  # a buffer some converted checkpoints carry (computed here)

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers)),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
        ))
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._inv_freq: dict[torch.device, torch.Tensor] = {}
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ------------------------------------------------------------------------------------------ the protocol
    def blocks(self) -> list[nn.Module]:
        return list(self.model.layers)

    def vocab_rows(self) -> tuple[str, ...]:
        return ("model.embed_tokens.weight",) + (() if self.config.tie_word_embeddings else ("lm_head.weight",))

    def stores(self, name: str) -> bool:
        return not (name == "lm_head.weight" and self.config.tie_word_embeddings) and super().stores(name)

    @torch.no_grad()
    def init_parameter_(self, name: str, p: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """HF Llama init of the parameter `name` (full shape) in place: N(0, initializer_range) for every matrix,
        unit RMSNorm gains."""
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, self.config.initializer_range, generator=generator)

    @torch.no_grad()
    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow the vocabulary to `vocab_size` (CodeLlama-Python's 32000 + WizardCoder's [PAD] = 32001). New rows of
        the embedding and of the LM head start at the mean of their existing rows, as WizardCoder's training script
        (smart_tokenizer_and_embedding_resize) initialises them."""
        old_vocab = self.config.vocab_size
        if vocab_size < old_vocab:
            raise ValueError(f"cannot shrink the vocabulary from {old_vocab} to {vocab_size}")
        if vocab_size == old_vocab:
            return
        self.config.vocab_size = vocab_size
        emb = self.model.embed_tokens
        self.model.embed_tokens = nn.Embedding(vocab_size, emb.embedding_dim, device=emb.weight.device, dtype=emb.weight.dtype)
        _grow_rows(self.model.embed_tokens.weight, emb.weight)
        if not self.config.tie_word_embeddings:
            head = self.lm_head
            self.lm_head = nn.Linear(head.in_features, vocab_size, bias=False, device=head.weight.device, dtype=head.weight.dtype)
            _grow_rows(self.lm_head.weight, head.weight)

    # ---------------------------------------------------------------------------------------------- forward
    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """RoPE inverse frequencies `[head_dim / 2]` fp32 on `device` (computed on CPU once, as HF does, then cached)."""
        if device not in self._inv_freq:
            self._inv_freq[device] = self.config.inv_freq().to(device)
        return self._inv_freq[device]

    def hidden_states(self, input_ids, position_ids=None, cu_seqlens=None, max_seqlen=None, attention_mask=None,
                      kv_cache=None):
        """Final RMSNorm output `[B, S, hidden_size]` for any input form (wizardcoder.layout)."""
        cfg = self.config
        input_ids, position_ids, seq = seq_layout(input_ids, position_ids, cu_seqlens, max_seqlen, attention_mask,
                                                  kv_cache)
        position_ids = position_ids.expand(input_ids.shape)
        inv_freq = self.inv_freq(input_ids.device)
        delta, residual = self.model.embed_tokens(input_ids), None  # (B, S, d)
        for block in self.model.layers:
            delta, residual = block(delta, residual, seq, position_ids, inv_freq)
        h, _ = llama_ops.add_rms_norm(delta, residual, self.model.norm.weight, cfg.rms_norm_eps, cfg.kernel_backend)
        if kv_cache is not None:
            kv_cache.advance()
        return h

    def lm_head_weight(self) -> torch.Tensor:
        """`[vocab_size, hidden_size]`: the LM head (the embedding when tied)."""
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight


def _grow_rows(new: torch.Tensor, old: torch.Tensor) -> None:
    n = old.shape[0]
    new[:n] = old
    new[n:] = old.float().mean(0).to(new.dtype)
