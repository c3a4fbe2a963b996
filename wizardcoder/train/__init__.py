"""`wizardcoder train` / `torchrun --nproc_per_node N -m wizardcoder.train`: fine-tune a code model (StarCoder or
Llama family: any wizardcoder.protocol.CausalLM) on packed shards.

The recipe is WizardCoder's (AdamW, lr 2e-5, 30 warmup steps then cosine, 3 epochs, loss on responses only), on
packed token streams instead of right-padded batches. Modules: config (TrainConfig, recipes, schedule; no torch),
loop (the trainer), optim (AdamW / 8-bit AdamW on shards, fp16 loss scaling), state (checkpoints, HF export). The
verb's settings are `Config` (= TrainConfig; flags and `[train]` keys through wizardcoder.settings). Importing this
package imports no torch: the trainer is imported when `run` / `train` is called. See docs/train.md.
"""
from __future__ import annotations

import os

from .config import RECIPES, TrainConfig

Config = TrainConfig

__all__ = ["Config", "RECIPES", "TrainConfig", "run", "train"]


def train(cfg: TrainConfig) -> dict:
    """Train as `cfg` says; the last step's metrics row."""
    from .loop import train as _train

    return _train(cfg)


def run(cfg: TrainConfig) -> int:
    last = train(cfg)
    if last and int(os.environ.get("RANK", 0)) == 0:
        print(f"final step {last['step']}: loss {last['loss']:.4f}, {last['tok_per_s']:.0f} tok/s")
    return 0
