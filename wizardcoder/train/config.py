"""`TrainConfig`: every training setting (one flag and one `[train]` key each, through wizardcoder.settings), the
named recipes and the learning-rate schedule. Imports nothing heavy (no torch): `plan` reads it without the trainer.

A recipe (`--recipe wizardcoder-15b`) is a set of field values laid under the settings given explicitly: the
precedence is dataclass defaults < recipe < `--config FILE` < flags (an explicit value wins even where it equals the
default; an explicit `--grad-accum` also drops the recipe's `global_batch_tokens`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from ..profiling import ProfileConfig

OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")
# wizardcoder.dtypes' spellings (resolved, on the run's device, by the trainer alone)
DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig(ProfileConfig):
    """Every training setting (the --profile flags from ProfileConfig: traces under OUT/profile/). Validated on construction: a bad value raises a ConfigError naming its flag."""

    model: str = "tiny"  # preset name (random init) or checkpoint folder / hub id, StarCoder or Llama family
    data: str = ""  # packed shard folder (`wizardcoder pack`)
    out: str = "runs/train"  # run folder: checkpoints/, final/, metrics.jsonl, loss.png
    recipe: str | None = None  # a released recipe (base values under the other settings): see RECIPES, docs/train.md
    tokenizer: str | None = None  # default: the checkpoint's own, else the bundled one
    micro_batch_packs: int = 1  # packs per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    global_batch_tokens: int | None = None  # tokens per optimizer step over all ranks; sets --grad-accum
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs
    lr: float = 2e-5  # peak learning rate
    min_lr: float = 0.0  # the cosine schedule's floor
    warmup_steps: int = 30  # linear warmup, then cosine
    weight_decay: float = 0.0
    beta1: float = 0.9  # Adam's beta1
    beta2: float = 0.999  # Adam's beta2 (HF Trainer's default, which WizardCoder's recipe used)
    eps: float = 1e-8  # Adam's epsilon
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = "adamw"  # 8-bit variants need bitsandbytes
    dtype: Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"] = "auto"  # compute dtype (auto: bfloat16 on CUDA, float32 on CPU; float16 adds loss scaling)
    seed: int = 0
    activation_checkpointing: Literal["none", "full", "selective"] = "none"  # recompute blocks in backward
    checkpoint_every: int = 2  # with selective checkpointing: every k-th block
    offload: bool = False  # FSDP2 CPU offload of parameters, gradients and optimizer state (CUDA only)
    compile: bool = False  # torch.compile each block
    log_every: int = 1  # steps between metrics.jsonl rows
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept
    save_final: bool = True  # write the last checkpoint and the HF export (final/) at the end (--no-save-final: benchmarks)
    attn_backend: Literal["auto", "torch", "triton", "flash"] = "auto"
    kernel_backend: Literal["auto", "torch", "triton"] = "auto"
    peak_tflops: float | None = None  # the device's dense peak for MFU (default: looked up by device name)
    progress: bool = True  # progress bar (--no-progress turns it off)

    def __post_init__(self):
        if isinstance(self.activation_checkpointing, bool):  # configs written before the three-way choice
            self.activation_checkpointing = "full" if self.activation_checkpointing else "none"
        _positive(self, "lr", "epochs", "eps")
        _at_least(self, 0, "min_lr", "weight_decay", "grad_clip", "warmup_steps", "save_every")
        _at_least(self, 1, "micro_batch_packs", "grad_accum", "log_every", "keep_checkpoints", "checkpoint_every")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps {self.max_steps}: must be at least 1 (or none to train for --epochs).")
        if self.global_batch_tokens is not None and self.global_batch_tokens < 1:
            raise ConfigError(f"--global-batch-tokens {self.global_batch_tokens}: must be a positive token count.")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"--{name} {v}: must be in [0, 1).")
        if self.min_lr > self.lr:
            raise ConfigError(f"--min-lr {self.min_lr} is above --lr {self.lr}; the schedule decays from --lr to --min-lr.")
        _choice(self, "dtype", DTYPES)
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "activation_checkpointing", ("none", "full", "selective"))
        _choice(self, "attn_backend", ("auto", "torch", "triton", "flash"))
        _choice(self, "kernel_backend", ("auto", "torch", "triton"))
        if self.peak_tflops is not None:
            _positive(self, "peak_tflops")
        self.check_profile()


def _recipe_under(init):
    """TrainConfig's constructor with `recipe=R`: R's values (RECIPES) under the explicitly given ones. Every way to
    a TrainConfig (settings.build from a config section and flags, tests, dataclasses.replace) goes through it."""
    @functools.wraps(init)
    def __init__(self, **given):
        recipe = given.get("recipe")
        base = {}
        if recipe is not None:
            if recipe not in RECIPES:
                raise ConfigError(f"--recipe {recipe!r} is unknown; choose one of {', '.join(RECIPES)}.")
            base = dict(RECIPES[recipe])
            if "grad_accum" in given and "global_batch_tokens" not in given:
                base.pop("global_batch_tokens", None)  # an explicit --grad-accum wins over the recipe's batch
        init(self, **{**base, **given})
    return __init__


TrainConfig.__init__ = _recipe_under(TrainConfig.__init__)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive(cfg, *names):
    for name in names:
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"{_flag(name)} {v}: must be a finite number above 0.")


def _at_least(cfg, low, *names):
    for name in names:
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= low):
            raise ConfigError(f"{_flag(name)} {v}: must be a finite number >= {low}.")


def _choice(cfg, name, choices):
    v = getattr(cfg, name)
    if v not in choices:
        raise ConfigError(f"{_flag(name)} {v!r}: choose one of {', '.join(choices)}.")


# WizardCoder's fine-tuning recipe (paper section 4.1 and the authors' training command): the HF Trainer under
# DeepSpeed with AdamW at HF's defaults (betas 0.9/0.999, eps 1e-8, weight decay 0, max grad norm 1.0), lr 2e-5,
# 30 warmup steps then cosine, 3 epochs, global batch 512 sequences of at most 2048 tokens. Packed, a global batch is
# counted in tokens: 512 x 2048 = 1,048,576 (see docs/train.md for how the step count compares). The Llama-family
# releases: WizardCoder-Python-7B/13B/34B-V1.0 (on CodeLlama-Python) were published with the same lr, batch, epochs,
# length, warmup and schedule; for WizardCoder-33B-V1.1 (on DeepSeek-Coder-33B) no hyperparameters were published
# and the same values are assumed (docs/train.md says which values are published and which assumed).
_WIZARDCODER = dict(lr=2e-5, min_lr=0.0, warmup_steps=30, weight_decay=0.0, beta1=0.9, beta2=0.999, eps=1e-8,
                    grad_clip=1.0, epochs=3.0, global_batch_tokens=512 * 2048)
RECIPES: dict[str, dict] = {
    "wizardcoder-15b": dict(model="bigcode/starcoder", micro_batch_packs=1, activation_checkpointing="full",
                            **_WIZARDCODER),
    "wizardcoder-7b": dict(model="bigcode/starcoderbase-7b", micro_batch_packs=1, activation_checkpointing="full",
                           **_WIZARDCODER),
    "wizardcoder-3b": dict(model="bigcode/starcoderbase-3b", micro_batch_packs=2, activation_checkpointing="selective",
                           **_WIZARDCODER),
    "wizardcoder-1b": dict(model="bigcode/starcoderbase-1b", micro_batch_packs=4, **_WIZARDCODER),
    "wizardcoder-python-7b": dict(model="codellama/CodeLlama-7b-Python-hf", micro_batch_packs=1,
                                  activation_checkpointing="full", **_WIZARDCODER),
    "wizardcoder-python-13b": dict(model="codellama/CodeLlama-13b-Python-hf", micro_batch_packs=1,
                                   activation_checkpointing="full", **_WIZARDCODER),
    "wizardcoder-python-34b": dict(model="codellama/CodeLlama-34b-Python-hf", micro_batch_packs=1,
                                   activation_checkpointing="full", **_WIZARDCODER),
    "wizardcoder-33b-v1.1": dict(model="deepseek-ai/deepseek-coder-33b-base", micro_batch_packs=1,
                                 activation_checkpointing="full", **_WIZARDCODER),
}


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine to min_lr at `total` (HF's cosine schedule)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def grad_accum_for(cfg: TrainConfig, world_size: int, seq_len: int) -> int:
    """Micro-batches per step: `--grad-accum`, or derived from `--global-batch-tokens`, which must divide evenly."""
    if cfg.global_batch_tokens is None:
        return cfg.grad_accum
    per_micro = world_size * cfg.micro_batch_packs * seq_len
    if cfg.global_batch_tokens % per_micro:
        raise ConfigError(
            f"--global-batch-tokens {cfg.global_batch_tokens} does not divide over {world_size} rank(s) x "
            f"--micro-batch-packs {cfg.micro_batch_packs} x {seq_len} tokens per pack = {per_micro} tokens per "
            f"micro-batch; choose a multiple of {per_micro} or change --micro-batch-packs / the number of ranks.")
    return cfg.global_batch_tokens // per_micro
