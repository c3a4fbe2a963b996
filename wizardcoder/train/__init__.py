"""`wizardcoder train` / `torchrun --nproc_per_node N -m wizardcoder.train`: fine-tune StarCoder on packed shards.

The recipe is WizardCoder's (AdamW, lr 2e-5, 30 warmup steps then cosine, 3 epochs, loss on responses only), on
packed token streams instead of right-padded batches. Modules: config (TrainConfig, recipes, schedule), loop (the
trainer), optim (AdamW / 8-bit AdamW on shards, fp16 loss scaling), state (checkpoints, HF export). Flags are derived
from TrainConfig (`wizardcoder.cli_args`). See docs/train.md.
"""
from __future__ import annotations

import argparse
import os

from .config import RECIPES, TrainConfig, lr_at

__all__ = ["RECIPES", "TrainConfig", "add_arguments", "lr_at", "run", "train"]


def train(cfg: TrainConfig) -> dict:
    from .loop import train as _train

    return _train(cfg)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli_args import add_dataclass_arguments

    add_dataclass_arguments(p, TrainConfig)


def run(args: argparse.Namespace) -> int:
    last = train(TrainConfig.from_args(args))
    if last and int(os.environ.get("RANK", 0)) == 0:
        print(f"final step {last['step']}: loss {last['loss']:.4f}, {last['tok_per_s']:.0f} tok/s")
    return 0
