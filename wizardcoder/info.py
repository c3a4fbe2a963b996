"""`wizardcoder info`: shapes, parameter count, FLOPs per token and memory of a preset or checkpoint of either family
(StarCoder, Llama), read through the model protocol (wizardcoder.protocol.ModelConfig)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .starcoder_config import HUB_PRESETS
from .errors import ConfigError
from .families import PRESET_FAMILIES
from .llama_config import LLAMA_HUB_PRESETS
from .plan import resolve_config
from .protocol import ModelConfig


@dataclass
class Config:
    model: str = field(default="", metadata={
        "positional": True, "help": f"a preset ({', '.join(PRESET_FAMILIES)}) or a checkpoint folder with config.json"})
    seq_len: int = 2048  # sequence length for the FLOPs figure
    json: bool = False  # print JSON instead of a table

    def __post_init__(self):
        if not self.model:
            raise ConfigError(f"info needs a model: a preset ({', '.join(PRESET_FAMILIES)}) or a checkpoint folder.")
        if self.seq_len < 1:
            raise ConfigError(f"--seq-len {self.seq_len}: must be at least 1.")


def describe(cfg: ModelConfig, seq_len: int) -> dict:
    """What `info` prints, read through the model protocol (either family)."""
    n = cfg.num_params()
    return {
        "family": cfg.model_type, "layers": cfg.n_layer, "d_model": cfg.n_embd, "heads": cfg.n_head,
        "kv_heads": cfg.n_kv_head, "head_dim": cfg.head_dim, "ffn": cfg.ffn_dim, "vocab": cfg.vocab_size,
        "positions": cfg.n_positions, "params": n, "params_bf16_GB": round(2 * n / 1e9, 3),
        "train_flops_per_token": cfg.flops_per_token(seq_len),
        "kv_cache_bytes_per_token_bf16": 2 * 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim,
        # the trainer's static state before sharding: fp32 master weights, fp32 grads, two fp32 AdamW moments
        # (per-GPU figures with activations and levers: `wizardcoder plan`)
        "train_state_GB_unsharded": round(n * (4 + 4 + 8) / 1e9, 2),
    }


def _config_of(model: str) -> ModelConfig:
    """A preset's config (either family; a hub id whose shapes are a preset counts as one), or a checkpoint folder's
    config.json read by the family it names; one sentence when `model` is neither."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ConfigError(f"{model} is a folder without a config.json; give a checkpoint folder.")
    elif model not in PRESET_FAMILIES and model not in HUB_PRESETS and model not in LLAMA_HUB_PRESETS:
        presets = ", ".join(PRESET_FAMILIES)
        if os.path.exists(model):
            raise ConfigError(f"{model} is a file; give the checkpoint folder that holds it, or a preset ({presets}).")
        if os.sep in model or model.startswith(("~", ".")):  # a path, not a preset name
            raise ConfigError(f"{model}: no such checkpoint folder; give a folder with config.json or a preset "
                              f"({presets}).")
        raise ConfigError(f"unknown preset {model!r}; choose one of {presets}.")
    return resolve_config(model)


def run(cfg: Config) -> int:
    d = describe(_config_of(cfg.model), cfg.seq_len)
    if cfg.json:
        print(json.dumps(d, indent=2))
    else:
        for k, v in d.items():
            print(f"{k:32s} {v:,}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k:32s} {v}")
    return 0
