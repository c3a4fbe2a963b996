"""What every model family (StarCoder, Llama) offers the rest of the package, so that the trainer, FSDP2 wrapping,
activation checkpointing, MFU, checkpoint I/O and export never branch on a family.

`ModelConfig` is what is read off a model's config (shapes for the cache and the plan, FLOPs for MFU, config.json);
`CausalLM` is what is asked of the model. `CausalLMBase` holds the parts both families share (construction, HF
checkpoints through wizardcoder.checkpoint, the forward's logits-or-loss, decay groups); a family subclasses it and
defines its blocks, its `hidden_states`, its LM head and its init.
"""
from __future__ import annotations

from typing import ClassVar, Iterator, Protocol

import torch
import torch.nn as nn

from .layout import logits_or_loss


class ModelConfig(Protocol):
    model_type: ClassVar[str]  # config.json's model_type: gpt_bigcode, llama
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | list[int] | None
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int  # K/V heads (the cache's width: 1 for MQA, fewer than n_head for GQA)
    head_dim: int
    n_positions: int

    def num_params(self, embeddings: bool = True) -> int: ...
    def matmul_params(self) -> int: ...  # weights in a matmul per token (MFU)
    def flops_per_token(self, seq_len: int) -> float: ...
    def to_hf_dict(self) -> dict: ...
    def save_json(self, folder: str) -> None: ...


class CausalLM(Protocol):
    config: ModelConfig
    config_class: ClassVar[type]
    ignored_suffixes: ClassVar[tuple[str, ...]]  # buffers some checkpoints carry, recomputed here

    def blocks(self) -> list[nn.Module]: ...  # the repeated blocks: FSDP2 units, activation checkpointing
    def vocab_rows(self) -> tuple[str, ...]: ...  # parameters with one row per token (grown with the vocabulary)
    def stores(self, name: str) -> bool: ...  # whether a checkpoint tensor of this name is one of ours
    def init_parameter_(self, name: str, p: torch.Tensor, generator: torch.Generator | None = None) -> None: ...
    def parameter_groups(self, weight_decay: float) -> list[dict]: ...
    def save_pretrained(self, folder: str, max_shard_bytes: int = ...) -> None: ...
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...
    def state_dict(self) -> dict: ...


class CausalLMBase(nn.Module):
    """The shared half of a family's model class (see the module docstring)."""

    config_class: ClassVar[type]
    ignored_suffixes: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------------------------------ construction
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Every parameter in `named_parameters()` order from one generator (`init_parameter_`), so a sharded model
        built on the meta device can draw each full tensor in turn, keep its slice and get the same weights."""
        for name, p in self.named_parameters():
            self.init_parameter_(name, p, generator)

    @classmethod
    def from_config(cls, cfg, dtype: torch.dtype | None = None, device=None, seed: int | None = None):
        """A randomly initialised model, built on the meta device and materialised once, in place, on `device`."""
        with torch.device("meta"):
            model = cls(cfg)
        model.to_empty(device=device or "cpu")
        gen = torch.Generator(device=device or "cpu").manual_seed(seed) if seed is not None else None
        model.init_weights(gen)
        return model.to(dtype) if dtype is not None else model

    @classmethod
    def from_preset(cls, name: str, dtype=None, device=None, seed: int | None = None, **overrides):
        return cls.from_config(cls.config_class.from_preset(name, **overrides), dtype=dtype, device=device, seed=seed)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, dtype: torch.dtype | None = None, device=None, **config_overrides):
        """Load a HF checkpoint of this family (local folder or hub id; safetensors or .bin, single or sharded)."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, path_or_hub_id, dtype=dtype, device=device, **config_overrides)

    def save_pretrained(self, folder: str, max_shard_bytes: int = 5 * 2**30) -> None:
        """Write safetensors (sharded with an index above `max_shard_bytes`) + config.json + generation_config.json
        that transformers' class for this family loads with the same logits."""
        from .checkpoint import save_pretrained

        save_pretrained(self, folder, max_shard_bytes=max_shard_bytes)

    # ---------------------------------------------------------------------------------------------- training
    def stores(self, name: str) -> bool:
        return not name.endswith(self.ignored_suffixes)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups as HF's Trainer makes them: decay on the matrices (embeddings and projections), none on
        biases and norm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, input_ids, position_ids=None, cu_seqlens=None, max_seqlen=None, attention_mask=None,
                labels=None, reduction: str = "mean", kv_cache=None):
        """Logits `[B, S, vocab_size]`, or, when `labels` is given, the LM loss alone (layout.logits_or_loss)."""
        h = self.hidden_states(input_ids, position_ids, cu_seqlens, max_seqlen, attention_mask, kv_cache)
        return logits_or_loss(h, self.lm_head_weight(), labels, cu_seqlens, reduction, self.config.kernel_backend)
