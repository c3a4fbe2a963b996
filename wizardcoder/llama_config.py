"""Llama-architecture configuration (CodeLlama, DeepSeek-Coder, the WizardCoder releases built on them): a typed
dataclass, named presets with the released shapes, and conversion to and from HF config.json.

Field names are HF's `LlamaConfig` names, so a checkpoint's config.json maps one to one. RoPE is read from either
spelling HF has used: `rope_theta` + `rope_scaling {"type"|"rope_type": "linear", "factor": f}` (the released
checkpoints, transformers 4) or `rope_parameters {"rope_type", "rope_theta", "factor"}` (transformers 5); it is
written in the first, which both versions read. Only the default and `linear` RoPE types exist here (CodeLlama and
DeepSeek-Coder use nothing else); others are refused by name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .starcoder_config import HFConfigFile
from .errors import ConfigError

ROPE_TYPES = ("default", "linear")
_OURS = ("attn_backend", "kernel_backend")


@dataclass
class LlamaConfig(HFConfigFile):
    """Shapes and numerics of a Llama-architecture model. The fields after `tie_word_embeddings` are ours and never
    written to config.json."""

    model_type: ClassVar[str] = "llama"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008  # SwiGLU width
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: = num_attention_heads (multi-head); fewer: grouped-query
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 16384
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6  # CodeLlama's base; Llama 2's is 1e4, DeepSeek-Coder's 1e5
    rope_scaling: dict | None = None  # {"type": "linear", "factor": 4.0} (DeepSeek-Coder) or None
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    # --- ours ---
    attn_backend: str = "auto"  # auto | torch | triton | flash: who computes attention
    kernel_backend: str = "auto"  # auto | torch | triton: add+RMSNorm, RoPE, SwiGLU and the fused LM-head loss

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                                  f"({self.num_attention_heads}), or head_dim must be given.")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_key_value_heads}).")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for rotary embeddings.")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            factor = self.rope_scaling.get("factor")
            if kind not in ROPE_TYPES:
                raise ConfigError(f"rope_scaling type {kind!r} is not supported; use one of {ROPE_TYPES} (or null).")
            if kind == "linear" and not (isinstance(factor, (int, float)) and factor > 0):
                raise ConfigError(f"rope_scaling factor {factor!r} must be a positive number.")
            self.rope_scaling = None if kind == "default" else {"type": "linear", "factor": float(factor)}
        self.check_backends()

    # Names the rest of the package reads off any model's config (StarCoderConfig spells them so).
    @property
    def n_layer(self) -> int:
        return self.num_hidden_layers

    @property
    def n_embd(self) -> int:
        return self.hidden_size

    @property
    def n_head(self) -> int:
        return self.num_attention_heads

    @property
    def n_kv_head(self) -> int:
        return self.num_key_value_heads

    @property
    def n_positions(self) -> int:
        return self.max_position_embeddings

    @property
    def ffn_dim(self) -> int:
        return self.intermediate_size

    @property
    def rope_scale(self) -> float:
        """Linear position scaling: positions are divided by this (1.0 without scaling)."""
        return self.rope_scaling["factor"] if self.rope_scaling else 1.0

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count as the checkpoint stores it (an untied LM head counted, a tied one once)."""
        d, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        per_layer = d * (q + 2 * kv) + q * d + 3 * d * f + 2 * d
        n = self.num_hidden_layers * per_layer + d
        if embeddings:
            n += self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return n

    def matmul_params(self) -> int:
        """Weights that take part in a matmul per token (the LM head included, the embedding lookup not)."""
        d, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return self.num_hidden_layers * (d * (q + 2 * kv) + q * d + 3 * d * f) + d * self.vocab_size

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), matmuls and causal attention, PaLM appendix
        style as StarCoderConfig counts them: 6 * N_matmul + 6 * n_layer * seq_len * (n_head * head_dim)."""
        return 6 * self.matmul_params() + 6 * self.num_hidden_layers * seq_len * self.num_attention_heads * self.head_dim

    def block_activation_bytes(self, itemsize: int) -> int:
        """Bytes one block keeps for backward per token, tensors in a dtype of `itemsize` bytes (wizardcoder plan):
        the residual stream and the RMSNorm output at each of the two norms, q after RoPE (n_head * head_dim) and the
        smaller GQA k and v (num_key_value_heads * head_dim each; RoPE is applied in place and keeps nothing per
        token), the attention output, SwiGLU's gate, up and their product; the two norms' rstd and attention's
        log-sum-exp per head in fp32."""
        d, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return itemsize * (4 * d + (q + 2 * kv) + q + 3 * f) + 4 * (self.num_attention_heads + 2)

    # --- HF config.json ---
    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json", **overrides) -> "LlamaConfig":
        model_type, archs = d.get("model_type"), d.get("architectures") or []
        if model_type != "llama" and "LlamaForCausalLM" not in archs:
            raise ConfigError(f"{source}: model_type {model_type!r} (architectures {archs}) is not a Llama checkpoint.")
        for flag in ("attention_bias", "mlp_bias"):
            if d.get(flag):
                raise ConfigError(f"{source}: {flag} is true; the Llama models here have no biases (CodeLlama and "
                                  "DeepSeek-Coder have none).")
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: hidden_act {d['hidden_act']!r} is not supported; Llama uses silu.")
        names = {f.name for f in dataclasses.fields(cls)} - set(_OURS)
        kwargs = {k: v for k, v in d.items() if k in names}
        params = d.get("rope_parameters")
        if isinstance(params, dict):  # transformers 5 folds theta and scaling into one dict
            kwargs.setdefault("rope_theta", params.get("rope_theta", cls.rope_theta))
            if params.get("rope_type", "default") != "default":
                kwargs.setdefault("rope_scaling", params)
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for ours in _OURS:
            d.pop(ours)
        d.update(model_type=self.model_type, architectures=["LlamaForCausalLM"], hidden_act="silu", attention_bias=False,
                 mlp_bias=False, attention_dropout=0.0, pretraining_tp=1, use_cache=True)
        return d

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LlamaConfig":
        if name not in LLAMA_PRESETS:
            raise ConfigError(f"unknown Llama preset {name!r}; choose one of {', '.join(LLAMA_PRESETS)}.")
        return dataclasses.replace(LLAMA_PRESETS[name], **overrides)

    def inv_freq(self):
        """RoPE inverse frequencies `[head_dim // 2]` in fp32, linear scaling folded in (1 / (theta^(2i/d) * factor)),
        computed as HF computes them so positions rotate identically."""
        import torch

        d = self.head_dim
        return 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)) / self.rope_scale


_LINEAR4 = {"type": "linear", "factor": 4.0}
_DEEPSEEK = dict(vocab_size=32256, max_position_embeddings=16384, rms_norm_eps=1e-6, rope_theta=1e5,
                 rope_scaling=_LINEAR4, bos_token_id=32013, eos_token_id=32014)

# The released shapes (config.json of each hub repository). CodeLlama's Python models keep Llama 2's 32000 tokens (no
# infilling tokens; the base 7B/13B add 16 and have 32016); WizardCoder-Python-V1.0 adds [PAD] (32001).
LLAMA_PRESETS: dict[str, LlamaConfig] = {
    # CPU tests: GQA 4:2, odd SwiGLU width, CodeLlama's rope base.
    "llama-tiny": LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    "codellama-7b": LlamaConfig(vocab_size=32016, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32),
    "codellama-13b": LlamaConfig(vocab_size=32016, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                 num_attention_heads=40),
    "codellama-34b": LlamaConfig(vocab_size=32000, hidden_size=8192, intermediate_size=22016, num_hidden_layers=48,
                                 num_attention_heads=64, num_key_value_heads=8),
    "codellama-7b-python": LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                       num_hidden_layers=32, num_attention_heads=32),
    "codellama-13b-python": LlamaConfig(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                                        num_hidden_layers=40, num_attention_heads=40),
    "codellama-34b-python": LlamaConfig(vocab_size=32000, hidden_size=8192, intermediate_size=22016,
                                        num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8),
    "wizardcoder-python-7b": LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008,
                                         num_hidden_layers=32, num_attention_heads=32),
    "wizardcoder-python-13b": LlamaConfig(vocab_size=32001, hidden_size=5120, intermediate_size=13824,
                                          num_hidden_layers=40, num_attention_heads=40),
    "wizardcoder-python-34b": LlamaConfig(vocab_size=32001, hidden_size=8192, intermediate_size=22016,
                                          num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8),
    "deepseek-coder-6.7b": LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                       num_attention_heads=32, **_DEEPSEEK),
    "deepseek-coder-33b": LlamaConfig(hidden_size=7168, intermediate_size=19200, num_hidden_layers=62,
                                      num_attention_heads=56, num_key_value_heads=8, **_DEEPSEEK),
    "wizardcoder-33b-v1.1": LlamaConfig(hidden_size=7168, intermediate_size=19200, num_hidden_layers=62,
                                        num_attention_heads=56, num_key_value_heads=8, **_DEEPSEEK),
}

# Hub ids whose shapes are presets, so sizing needs no network for them.
LLAMA_HUB_PRESETS: dict[str, str] = {
    "codellama/CodeLlama-7b-hf": "codellama-7b",
    "codellama/CodeLlama-13b-hf": "codellama-13b",
    "codellama/CodeLlama-34b-hf": "codellama-34b",
    "codellama/CodeLlama-7b-Python-hf": "codellama-7b-python",
    "codellama/CodeLlama-13b-Python-hf": "codellama-13b-python",
    "codellama/CodeLlama-34b-Python-hf": "codellama-34b-python",
    "WizardLMTeam/WizardCoder-Python-7B-V1.0": "wizardcoder-python-7b",
    "WizardLMTeam/WizardCoder-Python-13B-V1.0": "wizardcoder-python-13b",
    "WizardLMTeam/WizardCoder-Python-34B-V1.0": "wizardcoder-python-34b",
    "deepseek-ai/deepseek-coder-6.7b-base": "deepseek-coder-6.7b",
    "deepseek-ai/deepseek-coder-33b-base": "deepseek-coder-33b",
    "WizardLMTeam/WizardCoder-33B-V1.1": "wizardcoder-33b-v1.1",
}
