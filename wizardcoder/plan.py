"""`wizardcoder plan`: how many bytes each GPU needs to train a model with given levers, without allocating any.

The model is built on the meta device (shapes only). Per GPU (rank 0, which holds the largest shards: FSDP2 cuts
dim 0 of every tensor as torch.chunk does, ceil(rows / world) rows first):

- params: the fp32 master shards (4 bytes per local value);
- grads: their fp32 gradients (same size; FSDP2 reduce-scatters in fp32);
- optimizer: AdamW's two fp32 moments and a 0-dim fp32 step per tensor; 8-bit AdamW's two uint8 moments, an fp32
  absmax per 256 values and two 256-entry fp32 quantile maps per tensor (tensors under 4096 values: 32-bit state);
- activations: what backward keeps for one micro-batch of T = micro_batch_packs * seq_len tokens in the compute dtype:
  per block the family's own count, `ModelConfig.block_activation_bytes` (StarCoder: residuals and LayerNorm
  outputs, fused QKV, attention output, pre- and post-GELU; Llama: residuals and RMSNorm outputs, q and GQA's
  smaller k/v after RoPE, attention output, SwiGLU's gate, up and product; norm statistics and attention's
  log-sum-exp in fp32), plus the root's final-norm input, output and its gradient; a checkpointed block keeps its
  two inputs, and one block's activations exist again while it is recomputed;
- transient: the largest short-lived buffers: the root's gathered embedding and two gathered blocks (FSDP2 prefetches
  one ahead; a world of one keeps every block's compute-dtype copy), one block's unsharded fp32 gradients before the
  reduce-scatter, and the loss (fused kernel: a logits chunk, the hidden state's gradient and an fp32 LM-head
  gradient; torch: fp32 logits and their gradient).

With `--offload` the first three live in host memory (`host_per_rank`), not on the GPU. `fits` compares the total with
90% of `--gpu-memory-gb` (the rest for the CUDA context, NCCL buffers and allocator fragmentation). When it does not
fit, `advice` names the first lever (in the order selective, then full checkpointing, micro-batch 1, 8-bit AdamW,
offload, twice the GPUs) whose plan fits. The trainer checks the static part (params, grads, optimizer) against the
tensors a run holds after its first step; the activation estimate is checked on a GPU by bench/bench_train.py.

The compute dtype is `--dtype` as resolved for `--device` (wizardcoder.dtypes: auto is bfloat16 on cuda, the
default, and float32 on cpu). A training run passes the dtype it resolved itself (`plan_memory(..., dtype=)`), so
its plan counts the bytes of the tensors it makes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Literal

import torch

from .dtypes import dtype_name, resolve_dtype
from .errors import ConfigError
from .train.config import RECIPES  # the training settings only: nothing of the trainer is imported

HEADROOM = 0.9  # the fraction of --gpu-memory-gb the plan may fill
# The fields a training recipe sets, and their values without --recipe (a None field takes the recipe's value).
RECIPE_FIELDS = {"model": "starcoder-15b", "micro_batch_packs": 1, "activation_checkpointing": "none"}


@dataclass
class Config:
    """A training run to plan, and how to print the plan. `--recipe` is a base under the flags: a field left None
    (model, micro_batch_packs, activation_checkpointing) takes the recipe's value, else RECIPE_FIELDS'; a value given
    on the command line or in the config file wins (done in __post_init__, so every way of building a Config agrees)."""

    model: str | None = field(default=None, metadata={
        "help": "preset, checkpoint folder or hub id (config.json only); default: the recipe's, else starcoder-15b"})
    recipe: str | None = field(default=None, metadata={
        "help": "take model, micro-batch and checkpointing from a training recipe (wizardcoder train --recipe); "
                "flags override"})
    world_size: int = 8  # GPUs (FSDP2 ranks)
    gpu_memory_gb: float = 80.0  # memory of one GPU in GB (1e9 bytes)
    seq_len: int = 2048  # tokens per pack
    micro_batch_packs: int | None = None  # packs per micro-batch per rank; default: the recipe's, else 1
    activation_checkpointing: Literal["none", "full", "selective"] | None = field(default=None, metadata={
        "help": "recompute blocks in backward; default: the recipe's, else none"})
    checkpoint_every: int = 2  # with selective checkpointing: every k-th block
    offload: bool = False  # FSDP2 CPU offload of parameters, gradients and optimizer state
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = "adamw"
    dtype: str = "auto"  # compute dtype (auto: bfloat16 on cuda, float32 on cpu; see --device)
    device: Literal["cuda", "cpu"] = "cuda"  # the device the plan is for: it decides what --dtype auto means
    kernel_backend: Literal["auto", "torch", "triton"] = "auto"  # auto: the fused loss kernel (as on CUDA)
    vocab_size: int | None = None  # grow the vocabulary to this (a tokenizer with added tokens)
    json: bool = False  # print JSON (bytes) instead of a table

    def __post_init__(self):
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ConfigError(f"--recipe {self.recipe!r} is unknown; choose one of {', '.join(RECIPES)}.")
        recipe = RECIPES[self.recipe] if self.recipe else {}
        for name, default in RECIPE_FIELDS.items():
            if getattr(self, name) is None:
                setattr(self, name, recipe.get(name, default))
        for name in ("world_size", "seq_len", "micro_batch_packs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1.")
        if not (math.isfinite(self.gpu_memory_gb) and self.gpu_memory_gb > 0):
            raise ConfigError(f"--gpu-memory-gb {self.gpu_memory_gb}: must be a positive number of GB.")
        resolve_dtype(self.dtype)  # raises naming --dtype

    @classmethod
    def from_train(cls, cfg, world_size: int, seq_len: int) -> "Config":
        """The plan of a training run (a TrainConfig) on this machine's first GPU (80 GB without one). Its dtype
        is the run's setting; the run passes the dtype it resolved to `plan_memory`."""
        gb = torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else 80.0
        return cls(model=cfg.model, world_size=world_size, gpu_memory_gb=gb, seq_len=seq_len,
                   micro_batch_packs=cfg.micro_batch_packs, activation_checkpointing=cfg.activation_checkpointing,
                   checkpoint_every=cfg.checkpoint_every, offload=cfg.offload, optimizer=cfg.optimizer,
                   dtype=cfg.dtype, kernel_backend=cfg.kernel_backend)


def resolve_config(model: str, vocab_size: int | None = None):
    """The config (either family's, wizardcoder.protocol.ModelConfig) of a preset, a local checkpoint folder, a hub
    id whose shapes are a preset (offline), or any hub id (its config.json alone is downloaded). The family comes
    from wizardcoder.families: the preset's, else config.json's model_type."""
    from .starcoder_config import HUB_PRESETS
    from .families import PRESET_FAMILIES, _read_config, class_for, model_class
    from .llama_config import LLAMA_HUB_PRESETS

    hub_presets = {**HUB_PRESETS, **LLAMA_HUB_PRESETS}
    name = hub_presets.get(model, model)
    if name in PRESET_FAMILIES:
        cfg = class_for(PRESET_FAMILIES[name]).config_class.from_preset(name)
    else:
        if os.path.isdir(model):
            folder = model
        else:
            from .hub import download_files, is_hub_id

            if not is_hub_id(model):
                raise ConfigError(f"--model {model!r}: not a preset ({', '.join(PRESET_FAMILIES)}), a checkpoint "
                                  "folder or a hub id.")
            folder = download_files(model, ["config.json"])
        config, path = _read_config(folder)
        cfg = model_class(config, path).config_class.from_hf_dict(config, source=path)
    if vocab_size and vocab_size > cfg.vocab_size:
        cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    return cfg


def _shard_rows(rows: int, world: int) -> int:
    """Rows of rank 0's shard (torch.chunk: ceil(rows / world), at most rows)."""
    return min(rows, math.ceil(rows / world))


def _optimizer_bytes(n: int, optimizer: str) -> int:
    if optimizer == "adamw":
        return 8 * n + 4
    if n < 4096:  # bitsandbytes' min_8bit_size: 32-bit state
        return 8 * n
    return 2 * n + 2 * 4 * math.ceil(n / 256) + 2 * 256 * 4


def plan_memory(mcfg, p: Config, dtype: torch.dtype | None = None) -> dict:
    """Per-GPU bytes of training `mcfg` (any family's config: the model is built through wizardcoder.families and
    its `blocks()` counted) under `p` (see the module docstring); no memory is allocated. `dtype` is the compute
    dtype: a training run passes the one it resolved; None resolves `p.dtype` for `p.device`."""
    from .families import class_for
    from .parallel import checkpointed_blocks

    dtype = resolve_dtype(p.dtype, p.device) if dtype is None else dtype
    with torch.device("meta"):
        model = class_for(mcfg.model_type)(mcfg)
    W, b = p.world_size, dtype.itemsize
    params = optimizer = 0
    for t in model.parameters():
        n = _shard_rows(t.shape[0], W) * math.prod(t.shape[1:])
        params += 4 * n
        optimizer += _optimizer_bytes(n, p.optimizer)
    grads = params

    d, L = mcfg.n_embd, mcfg.n_layer
    T = p.micro_batch_packs * p.seq_len
    full_block = T * mcfg.block_activation_bytes(b)
    n_ckpt = len(checkpointed_blocks(L, p.activation_checkpointing, p.checkpoint_every))
    activations = (L - n_ckpt) * full_block + n_ckpt * 2 * T * d * b + (full_block if n_ckpt else 0) + 3 * T * d * b

    block_params = sum(t.numel() for t in model.blocks()[0].parameters())
    root_params = sum(t.numel() for t in model.parameters()) - L * block_params
    gathered = (root_params + (L if W == 1 and not p.offload else 2) * block_params) * b
    V = mcfg.vocab_size
    if p.kernel_backend == "torch":
        loss = T * V * (4 + 4 + b)  # fp32 logits, their gradient, the half logits
    else:
        loss = 2 * T * d * b + 4 * V * d  # a logits chunk ~ the hidden state's size, grad_h, the fp32 LM-head grad
    transient = gathered + 4 * block_params + loss

    host = 0
    if p.offload:
        host, params, grads, optimizer = params + grads + optimizer, 0, 0, 0
    per_gpu = {"params": params, "grads": grads, "optimizer": optimizer, "activations": activations,
               "transient": transient}
    per_gpu["total"] = sum(per_gpu.values())
    fits = per_gpu["total"] <= HEADROOM * p.gpu_memory_gb * 1e9
    return {"model": p.model, "world_size": W, "gpu_memory_gb": p.gpu_memory_gb, "dtype": dtype_name(dtype),
            "tokens_per_micro_batch": T, "per_gpu": per_gpu, "host_per_rank": host, "fits": fits}


LEVERS = [  # (what to say, the change)
    ("--activation-checkpointing selective", dict(activation_checkpointing="selective")),
    ("--activation-checkpointing full", dict(activation_checkpointing="full")),
    ("--micro-batch-packs 1 (and more --grad-accum)", dict(micro_batch_packs=1)),
    ("--optimizer adamw8bit", dict(optimizer="adamw8bit")),
    ("--offload", dict(offload=True)),
]


def advise(mcfg, p: Config) -> str | None:
    """The first lever (cumulative, in LEVERS' order, then more GPUs) under which the plan fits; None if it fits."""
    if plan_memory(mcfg, p)["fits"]:
        return None
    q, pulled = p, []
    for say, change in LEVERS:
        if all(getattr(q, k) == v for k, v in change.items()):
            continue
        if say.startswith("--activation-checkpointing selective") and q.activation_checkpointing == "full":
            continue
        q = dataclasses.replace(q, **change)
        pulled.append(say)
        if plan_memory(mcfg, q)["fits"]:
            return "pull " + ", then ".join(pulled)
    for world in (2 * q.world_size, 4 * q.world_size, 8 * q.world_size):
        if plan_memory(mcfg, dataclasses.replace(q, world_size=world))["fits"]:
            return "pull " + ", then ".join(pulled + [f"train on {world} GPUs"])
    return "does not fit even with every lever and 8x the GPUs; use a smaller model or GPUs with more memory"


def format_side_by_side(plan: dict, measured: dict, device: str) -> str:
    """The plan next to what the run measured (GB), for the trainer's last lines."""
    peak = "CUDA allocator peak" if device == "cuda" else "peak resident memory (whole process)"
    rows = [f"{'per GPU (GB)':<14}{'plan':>10}{'measured':>12}"]
    for k in ("params", "grads", "optimizer"):
        got = measured.get(k)
        rows.append(f"{k:<14}{plan[k] / 1e9:>10.3f}{'' if got is None else f'{got / 1e9:>12.3f}'}")
    rows.append(f"{'activations':<14}{plan['activations'] / 1e9:>10.3f}")
    rows.append(f"{'transient':<14}{plan['transient'] / 1e9:>10.3f}")
    rows.append(f"{'total':<14}{plan['total'] / 1e9:>10.3f}{measured['peak_bytes'] / 1e9:>12.3f}  ({peak})")
    return "\n".join(rows)


def run(cfg: Config) -> int:
    mcfg = resolve_config(cfg.model, cfg.vocab_size)
    out = plan_memory(mcfg, cfg)
    out["advice"] = advise(mcfg, cfg)
    if cfg.json:
        print(json.dumps(out, indent=2))
        return 0
    g = out["per_gpu"]
    print(f"{cfg.model} on {cfg.world_size} GPU(s) of {cfg.gpu_memory_gb:g} GB, {out['dtype']}, "
          f"{out['tokens_per_micro_batch']} tokens per micro-batch, checkpointing {cfg.activation_checkpointing}, "
          f"{cfg.optimizer}{', offload' if cfg.offload else ''}:")
    for k, v in g.items():
        print(f"  {k:<12}{v / 1e9:>9.2f} GB")
    if out["host_per_rank"]:
        print(f"  host memory per rank (offloaded): {out['host_per_rank'] / 1e9:.2f} GB")
    print(f"fits: {'yes' if out['fits'] else 'no'}" + (f"; {out['advice']}" if out["advice"] else ""))
    return 0
