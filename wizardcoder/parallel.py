"""Distribution, applied from outside the model (torchtitan's order): activation checkpointing, then compile, then
FSDP2 `fully_shard` per block and at the root with one mixed-precision policy.

One mixed-precision path for one GPU and many: a single process (no torchrun) trains as a world of one, through the
same `fully_shard` and `MixedPrecisionPolicy` as N ranks. Master weights, gradients and optimizer state are fp32
(the sharded parameters); each block's parameters are gathered in the compute dtype (bf16, fp16) for its forward and
backward, so every kernel sees one dtype (no autocast, no fp32 weight next to a half activation), and gradients are
reduced in fp32. A world of one costs one cast-copy per block per pass, the copy autocast would make anyway.
"""
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


def init_distributed(device: str | None = None, world_of_one: bool = False) -> Dist:
    """Under torchrun (RANK/WORLD_SIZE set): one process group (NCCL on CUDA, gloo on CPU), one GPU per local rank.
    Without torchrun: a single process, and with `world_of_one` a process group of one (an in-memory store, no
    network) so that FSDP2 and torch.distributed.checkpoint run exactly as under torchrun."""
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    # gloo beside NCCL on GPUs: with --offload the sharded gradients (and so clipping's norm and the fp16 overflow
    # check) are CPU tensors, which NCCL cannot reduce.
    backend = "cuda:nccl,cpu:gloo" if cuda else "gloo"
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        if world_of_one and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(0)
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return Dist(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    dev = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def checkpointed_blocks(n_layer: int, mode: str, every: int = 2) -> list[int]:
    """Which blocks recompute their activations in backward: none, all (`full`), or every `every`-th
    (`selective`: blocks 0, every, 2 * every, ...)."""
    if mode == "full":
        return list(range(n_layer))
    if mode == "selective":
        return list(range(0, n_layer, every))
    return []


def _checkpoint_forward(block: torch.nn.Module) -> None:
    """Recompute `block` in backward. The block's forward is replaced in place (no wrapper module), so parameter
    names stay HF's and checkpoints need no renaming."""
    from torch.utils.checkpoint import checkpoint

    forward = block.forward

    def checkpointed(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

    block.forward = checkpointed


def parallelize(model: torch.nn.Module, d: Dist, param_dtype: torch.dtype | None, activation_checkpointing: str = "none",
                checkpoint_every: int = 2, compile: bool = False, offload: bool = False):
    """Wrap `model` in place for training and return it. `param_dtype` is the compute dtype (None or float32: compute
    in fp32); `offload` keeps sharded parameters, gradients and optimizer state in host memory (FSDP2
    CPUOffloadPolicy; the optimizer then steps on the CPU). The units are the model's `blocks()` (any family, see
    wizardcoder.protocol), then the root. Needs a process group (`init_distributed`)."""
    blocks = model.blocks()
    for i in checkpointed_blocks(len(blocks), activation_checkpointing, checkpoint_every):
        _checkpoint_forward(blocks[i])
    if compile:
        for block in blocks:
            block.compile()
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    half = param_dtype if param_dtype not in (None, torch.float32) else None
    mp = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32)
    off = CPUOffloadPolicy(pin_memory=d.device.type == "cuda") if offload else OffloadPolicy()
    # Resharding after forward frees a block's gathered (compute-dtype, on-GPU) copy until backward. The last block's
    # parameters are needed again at once; a world of one on the GPU keeps every copy (no communication to save,
    # 2 bytes per parameter), unless its shards are offloaded to host memory.
    reshard = d.world_size > 1 or offload
    for i, block in enumerate(blocks):
        fully_shard(block, mp_policy=mp, offload_policy=off, reshard_after_forward=reshard and i < len(blocks) - 1)
    fully_shard(model, mp_policy=mp, offload_policy=off, reshard_after_forward=reshard)
    return model


def all_reduce_host(values: list[float], d: Dist, op: str = "sum") -> list[float]:
    """Host numbers (token counts, seconds, bytes) summed or maxed over ranks in one collective on a CPU tensor (gloo,
    also beside NCCL): no device work, so no wait for the GPU."""
    if d.world_size == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj, d: Dist):
    """Rank 0's `obj` on every rank (a path, a small dict)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def local_shard(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A parameter's local piece and the global index of its first row: FSDP2 shards dim 0 over ranks as
    torch.chunk does (rank r holds rows r * ceil(n / W) onward); a plain tensor is its own shard at row 0."""
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        return t.data, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local = t.to_local().detach()  # shares the parameter's storage: writes land in the parameter
    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return local, int(offset[0]) if len(offset) else 0


def reset_peak_memory(device: torch.device) -> None:
    """Start the CUDA allocator's peak afresh, so a run's peak is its own, not that of whatever ran before it in the
    same process (another training run, a benchmark's peer). The resident-set peak on CPU cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """The CUDA allocator's peak on GPU (since `reset_peak_memory`); the process's peak resident set on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
