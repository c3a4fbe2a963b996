"""Llama-architecture code models (CodeLlama, DeepSeek-Coder, WizardCoder-Python / -33B), written by hand: RMSNorm,
rotary position embeddings (any base theta, linear position scaling), grouped-query attention, SwiGLU MLP, untied LM
head. Parameter names are HF's (`model.layers.N.self_attn.q_proj.weight`, ...), so a checkpoint loads as is.

The same two input forms as StarCoder (wizardcoder/model.py), through the same attention entry (ops.attention):
- dense `input_ids [B, S]` (optionally `attention_mask [B, S]`, 1 = real token; left padding counts positions over
  real tokens only);
- packed `input_ids [1, T]` with `position_ids [1, T]` restarting at 0 per document and `cu_seqlens` int32
  `[n_docs + 1]`; RoPE rotates by those per-document positions, so each document sees exactly what it would alone.
With a `kv_cache` (the engine's slot cache, the tests' simple cache, or any object with its begin / attend / advance protocol) tokens are appended and
attend over everything cached; K/V are stored after RoPE, with n_kv_head heads (GQA keeps the cache small).

Unlike StarCoder's, the embedding is not padded to a multiple of 128 rows: the LM head is its own matrix here, and
the released vocabularies (32000, 32256) already are multiples of 128; 32001 / 32016 cost a ragged last tile.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import llama_ops, ops
from .errors import CheckpointError
from .llama_config import LlamaConfig
from .model import SeqInfo, positions_from_cu_seqlens, shift_labels


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


class Llama(nn.Module):
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

    # ------------------------------------------------------------------------------------------ construction
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """HF Llama init: N(0, initializer_range) for every matrix, unit RMSNorm gains."""
        for name, p in self.named_parameters():
            init_parameter_(name, p, self.config, generator)

    @classmethod
    def from_config(cls, cfg: LlamaConfig, dtype: torch.dtype | None = None, device=None, seed: int | None = None) -> "Llama":
        """A randomly initialised model, built on the meta device and materialised once, in place, on `device`."""
        with torch.device("meta"):
            model = cls(cfg)
        model.to_empty(device=device or "cpu")
        gen = torch.Generator(device=device or "cpu").manual_seed(seed) if seed is not None else None
        model.init_weights(gen)
        return model.to(dtype) if dtype is not None else model

    @classmethod
    def from_preset(cls, name: str, dtype=None, device=None, seed: int | None = None, **overrides) -> "Llama":
        return cls.from_config(LlamaConfig.from_preset(name, **overrides), dtype=dtype, device=device, seed=seed)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, dtype: torch.dtype | None = None, device=None, **config_overrides) -> "Llama":
        """Load a HF Llama checkpoint (local folder or hub id; safetensors or .bin, single or sharded)."""
        from .checkpoint import resolve_folder

        folder = resolve_folder(path_or_hub_id)
        return load_folder(cls, folder, dtype=dtype, device=device, **config_overrides)

    def save_pretrained(self, folder: str, max_shard_bytes: int = 5 * 2**30) -> None:
        """Write safetensors (sharded with an index above `max_shard_bytes`) + config.json + generation_config.json
        that `transformers.LlamaForCausalLM.from_pretrained` loads."""
        from .checkpoint import save_tensors

        save_tensors(hf_tensors(self), self.config, folder, max_shard_bytes)

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
        """Final RMSNorm output `[B, S, hidden_size]`. With `kv_cache`, the tokens are appended to the cache and
        `attention_mask [B, S]` marks which of them are real (left padding)."""
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
        position_ids = position_ids.expand(B, S)
        seq = SeqInfo(cu_seqlens, max_seqlen, attention_mask, kv_cache)
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

    def forward(self, input_ids, position_ids=None, cu_seqlens=None, max_seqlen=None, attention_mask=None,
                labels=None, reduction: str = "mean", kv_cache=None):
        """Logits `[B, S, vocab_size]`, or, when `labels` is given, the LM loss alone (the fused path never holds the
        logits). `labels` follow HF: aligned with `input_ids`, -100 where no loss is taken; the shift happens here,
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
def init_parameter_(name: str, p: torch.Tensor, cfg: LlamaConfig, generator: torch.Generator | None = None) -> None:
    """Initialise the parameter called `name` (HF name, full shape) in place, one at a time in `named_parameters()`
    order from one generator (so a sharded model can draw each full tensor and keep its slice)."""
    if name.endswith("norm.weight"):
        p.fill_(1.0)
    else:
        p.normal_(0.0, cfg.initializer_range, generator=generator)


def _grow_rows(new: torch.Tensor, old: torch.Tensor) -> None:
    n = old.shape[0]
    new[:n] = old
    new[n:] = old.float().mean(0).to(new.dtype)


# ------------------------------------------------------------------------------------------------ checkpoints
# Buffers some converted Llama checkpoints carry (recomputed here from config.json); not parameters.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def hf_tensors(model: Llama):
    """(name, tensor) pairs in HF layout: contiguous CPU tensors (a tied head is not stored, as HF does not)."""
    for name, t in model.state_dict().items():
        yield name, t.detach().to("cpu").contiguous()


def load_folder(cls, folder: str, dtype: torch.dtype | None = None, device=None, **config_overrides) -> Llama:
    """Build on the meta device and assign each tensor into place as it is read (safetensors mmap, cast once)."""
    from .checkpoint import iter_tensors, weight_files

    cfg = LlamaConfig.from_json_file(os.path.join(folder, "config.json"), **config_overrides)
    device = torch.device(device or "cpu")
    with torch.device("meta"):
        model = cls(cfg)
    expected = dict(model.state_dict())
    state: dict[str, torch.Tensor] = {}
    for name, t in iter_tensors(weight_files(folder)):
        if name.endswith(IGNORED_SUFFIXES) or (name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        if name not in expected:
            raise CheckpointError(f"{folder}: unexpected tensor {name!r}; is this a Llama checkpoint of this config?")
        if t.shape != expected[name].shape:
            raise CheckpointError(f"{folder}: {name} has shape {tuple(t.shape)}, config.json implies {tuple(expected[name].shape)}.")
        state[name] = t.to(device=device, dtype=dtype or t.dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{folder}: missing {len(missing)} tensors (first {missing[0]!r}); the checkpoint is incomplete.")
    model.load_state_dict(state, assign=True, strict=True)
    return model


def load_sharded_(model: Llama, folder: str) -> None:
    """Fill each (FSDP2-sharded or plain) parameter of `model` with its rows of the checkpoint in `folder`, reading only
    the local shard's rows (checkpoint.RowReader). Rows of `embed_tokens` and `lm_head` past the checkpoint's
    vocabulary (a tokenizer with added tokens: WizardCoder-Python's [PAD] on CodeLlama-Python's 32000) start at the
    mean of the checkpoint's rows, as `resize_token_embeddings` and WizardCoder's training code initialise them."""
    from .checkpoint import RowReader, _mean_row, weight_files
    from .parallel import local_shard

    cfg = model.config
    reader = RowReader(weight_files(folder))
    params = dict(model.named_parameters())
    stored_names = [n for n in reader.names()
                    if not n.endswith(IGNORED_SUFFIXES) and not (n == "lm_head.weight" and cfg.tie_word_embeddings)]
    unexpected = [n for n in stored_names if n not in params]
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensor {unexpected[0]!r}; is this a Llama checkpoint of this config?")
    missing = sorted(set(params) - set(stored_names))
    if missing:
        raise CheckpointError(f"{folder}: missing {len(missing)} tensors (first {missing[0]!r}); the checkpoint is incomplete.")
    vocab_rows = ("model.embed_tokens.weight", "lm_head.weight")
    with torch.no_grad():
        for name, p in params.items():
            local, row0 = local_shard(p)
            have = reader.shape(name)
            if name not in vocab_rows:
                if have != tuple(p.shape):
                    raise CheckpointError(f"{folder}: {name} has shape {have}, config.json implies {tuple(p.shape)}.")
                reader.read_rows(name, row0, local)
                continue
            stored = have[0]  # the checkpoint's vocabulary; rows stored .. vocab_size are new tokens
            if have[1:] != tuple(p.shape[1:]) or stored > cfg.vocab_size:
                raise CheckpointError(f"{folder}: {name} has shape {have}, the model needs at most ({cfg.vocab_size}, {p.shape[1]}).")
            n_read = max(0, min(row0 + local.shape[0], stored) - row0)
            if n_read:
                reader.read_rows(name, row0, local[:n_read])
            lo, hi = max(row0, stored), min(row0 + local.shape[0], cfg.vocab_size)
            if hi > lo:
                local[lo - row0 : hi - row0] = _mean_row(reader, name, stored).to(local.dtype)
