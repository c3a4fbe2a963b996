"""StarCoder (GPTBigCode) configuration: a typed dataclass, named presets, and conversion to and from HF config.json
(the file I/O shared with LlamaConfig: `HFConfigFile`)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar

from .errors import ConfigError

# HF activation names -> whether GELU uses the tanh approximation.
GELU_TANH = {"gelu_pytorch_tanh": True, "gelu_new": True, "gelu_fast": True, "gelu": False}
ATTN_BACKENDS = ("auto", "torch", "triton", "flash")
KERNEL_BACKENDS = ("auto", "torch", "triton")


class HFConfigFile:
    """config.json in and out for a family's config dataclass (which defines `from_hf_dict` and `to_hf_dict`)."""

    @classmethod
    def from_json_file(cls, path: str, **overrides):
        from .io import read_json

        if not os.path.isfile(path):
            raise ConfigError(f"{path}: no such file; a checkpoint folder needs a config.json.")
        d = read_json(path, "config.json", ConfigError, "fix the file")
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object; fix the file.")
        return cls.from_hf_dict(d, source=path, **overrides)

    def check_backends(self) -> None:
        """The backend settings every family's config has (ops.py reads them)."""
        if self.attn_backend not in ATTN_BACKENDS:
            raise ConfigError(f"attn_backend {self.attn_backend!r} is unknown; use one of {ATTN_BACKENDS}.")
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ConfigError(f"kernel_backend {self.kernel_backend!r} is unknown; use one of {KERNEL_BACKENDS}.")

    def save_json(self, folder: str) -> None:
        from .io import atomic_write_json

        atomic_write_json(os.path.join(folder, "config.json"), self.to_hf_dict())


@dataclass
class StarCoderConfig(HFConfigFile):
    """Shapes and numerics of a GPTBigCode model. Field names follow HF's config.json, so a checkpoint's config maps
    one to one; the fields after `eos_token_id` are ours and never written to config.json."""

    model_type: ClassVar[str] = "gpt_bigcode"

    vocab_size: int = 49152
    n_positions: int = 8192
    n_embd: int = 2048
    n_layer: int = 24
    n_head: int = 16
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    multi_query: bool = True  # one K/V head shared by all query heads (MQA); False is plain multi-head attention
    activation_function: str = "gelu_pytorch_tanh"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    bos_token_id: int = 0
    eos_token_id: int = 0
    # --- ours ---
    attn_backend: str = "auto"  # auto | torch | triton | flash: who computes attention
    kernel_backend: str = "auto"  # auto | torch | triton: LayerNorm, bias-GELU and the fused LM-head loss
    vocab_multiple: int = 128  # the embedding is padded to a multiple of this for fast matmuls; logits are not

    def __post_init__(self):
        if self.activation_function not in GELU_TANH:
            raise ConfigError(
                f"activation_function {self.activation_function!r} is not supported; use one of {sorted(GELU_TANH)}."
            )
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}).")
        self.check_backends()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_kv_head(self) -> int:
        return 1 if self.multi_query else self.n_head

    @property
    def ffn_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def gelu_tanh(self) -> bool:
        return GELU_TANH[self.activation_function]

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.vocab_multiple)
        return (self.vocab_size + m - 1) // m * m

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count as the checkpoint stores it (tied LM head counted once)."""
        d, f, kv = self.n_embd, self.ffn_dim, self.n_kv_head * self.head_dim
        per_layer = (d * (d + 2 * kv) + d + 2 * kv) + (d * d + d) + (2 * d * f + f + d) + 4 * d
        n = self.n_layer * per_layer + 2 * d
        if embeddings:
            n += self.vocab_size * d + self.n_positions * d
        return n

    def matmul_params(self) -> int:
        """Weights that take part in a matmul per token (the LM head included, position embeddings not)."""
        d, f, kv = self.n_embd, self.ffn_dim, self.n_kv_head * self.head_dim
        return self.n_layer * (d * (d + 2 * kv) + d * d + 2 * d * f) + d * self.vocab_size

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), counting matmuls and causal attention, as in
        the PaLM appendix: 6 * N_matmul + 6 * n_layer * seq_len * n_embd (causal halves the 12 * L * S * d)."""
        return 6 * self.matmul_params() + 6 * self.n_layer * seq_len * self.n_head * self.head_dim

    def block_activation_bytes(self, itemsize: int) -> int:
        """Bytes one block keeps for backward per token, tensors in a dtype of `itemsize` bytes (wizardcoder plan):
        the residual stream and the LayerNorm output at each of the two norms, the fused QKV, the attention output,
        the MLP's pre- and post-GELU in that dtype; the two norms' mean and rstd and attention's log-sum-exp per
        head in fp32. No RoPE: the learned position embedding is the root's."""
        d, f, kv = self.n_embd, self.ffn_dim, self.n_kv_head * self.head_dim
        return itemsize * (4 * d + (d + 2 * kv) + d + 2 * f) + 4 * (self.n_head + 4)

    # --- HF config.json ---
    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json", **overrides) -> "StarCoderConfig":
        model_type = d.get("model_type")
        archs = d.get("architectures") or []
        if model_type != "gpt_bigcode" and "GPTBigCodeForCausalLM" not in archs:
            raise ConfigError(
                f"{source}: model_type {model_type!r} (architectures {archs}) is not a GPTBigCode (StarCoder) "
                "checkpoint."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names and k not in ("attn_backend", "kernel_backend", "vocab_multiple")}
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for ours in ("attn_backend", "kernel_backend", "vocab_multiple"):
            d.pop(ours)
        d.update(
            model_type=self.model_type,
            architectures=["GPTBigCodeForCausalLM"],
            attention_softmax_in_fp32=True,
            scale_attention_softmax_in_fp32=True,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            resid_pdrop=0.0,
            use_cache=True,
            tie_word_embeddings=True,
        )
        return d

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "StarCoderConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, StarCoderConfig] = {
    # CPU tests and the demo: two layers, the real tokenizer's vocab.
    "tiny": StarCoderConfig(n_positions=1024, n_embd=64, n_layer=2, n_head=4, vocab_size=49153),
    "starcoderbase-1b": StarCoderConfig(n_embd=2048, n_layer=24, n_head=16),
    "starcoderbase-3b": StarCoderConfig(n_embd=2816, n_layer=36, n_head=22),
    "starcoderbase-7b": StarCoderConfig(n_embd=4096, n_layer=42, n_head=32),
    "starcoder-15b": StarCoderConfig(n_embd=6144, n_layer=40, n_head=48, n_inner=24576, activation_function="gelu"),
    "wizardcoder-15b": StarCoderConfig(
        n_embd=6144, n_layer=40, n_head=48, n_inner=24576, activation_function="gelu", vocab_size=49153
    ),
}

# Hub ids whose shapes are presets, so `wizardcoder plan` needs no network for them.
HUB_PRESETS: dict[str, str] = {
    "bigcode/starcoder": "starcoder-15b",
    "bigcode/starcoderbase": "starcoder-15b",
    "bigcode/starcoderbase-1b": "starcoderbase-1b",
    "bigcode/starcoderbase-3b": "starcoderbase-3b",
    "bigcode/starcoderbase-7b": "starcoderbase-7b",
    "WizardLM/WizardCoder-15B-V1.0": "wizardcoder-15b",
}
