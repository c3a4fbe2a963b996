"""Distribution, applied from outside the model (torchtitan's order): activation checkpointing, then compile, then
FSDP2 `fully_shard` per block and at the root with a mixed-precision policy. One process without torchrun gets the
same model untouched."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def init_distributed(device: str | None = None) -> Dist:
    """Under torchrun (RANK/WORLD_SIZE set): one process group (NCCL on CUDA, gloo on CPU), one GPU per local rank.
    Without torchrun: a single process, no process group."""
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    dev = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def parallelize(model, d: Dist, param_dtype: torch.dtype | None, activation_checkpointing: bool = False,
                compile: bool = False):
    """Wrap `model` in place for training and return it."""
    blocks = model.transformer.h
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    if compile:
        for block in blocks:
            block.compile()
    if d.enabled:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
        for i, block in enumerate(blocks):
            # The last block's parameters are needed again at once by backward: keep them gathered.
            fully_shard(block, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
        fully_shard(model, mp_policy=mp)
    return model


def all_reduce_sum(x: float | int, d: Dist) -> float:
    if not d.enabled:
        return x
    t = torch.tensor(float(x), dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.item()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
