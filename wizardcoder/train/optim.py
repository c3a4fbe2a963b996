"""Optimizers for sharded parameters, and fp16 loss scaling.

- `adamw`: torch AdamW on the FSDP2 (DTensor) parameters: fused on CUDA, foreach on CPU (and under CPU offload,
  where the sharded parameters and their state live in host memory).
- `adamw8bit`, `paged_adamw8bit`: bitsandbytes' blockwise 8-bit AdamW. Its kernels take plain tensors, not DTensors,
  so `LocalShardOptimizer` hands it each parameter's local shard (a tensor sharing the DTensor's storage, so the
  update lands in the parameter; re-pointed before each step, since FSDP2's lazy init moves offloaded shards into
  new pinned storage) and, before each step, that shard's gradient. The 8-bit state (two uint8 moments
  plus an fp32 absmax per 256 values) is per local shard: about a quarter of AdamW's 8 bytes per parameter.
  Tensors under bitsandbytes' `min_8bit_size` (4096 values: biases, LayerNorm gains) keep 32-bit state.
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def build_optimizer(groups: list[dict], cfg, device: torch.device):
    """The optimizer `cfg` names over parameter groups (the model's `parameter_groups`: each with its weight decay)."""
    if cfg.optimizer == "adamw":
        fused = device.type == "cuda" and not cfg.offload
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 fused=fused or None, foreach=None if fused else True)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(f"--optimizer {cfg.optimizer} needs bitsandbytes, which is not installed; "
                          "`pip install bitsandbytes` or use --optimizer adamw.") from None
    cls = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw8bit": bnb.optim.PagedAdamW8bit}[cfg.optimizer]
    return LocalShardOptimizer(groups, lambda local: cls(local, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps))


class LocalShardOptimizer:
    """An optimizer that only understands plain tensors, run on the local shards of (DTensor) parameters (in the
    same groups)."""

    def __init__(self, groups: list[dict], make):
        from torch.distributed.tensor import DTensor

        def local(p):  # same storage as the parameter's shard
            return torch.nn.Parameter(p.to_local().detach() if isinstance(p, DTensor) else p.detach())

        local_groups = [{**g, "params": [local(p) for p in g["params"]]} for g in groups]
        self.params = [p for g in groups for p in g["params"]]
        self.locals = [p for g in local_groups for p in g["params"]]
        self.inner = make(local_groups)

    @property
    def param_groups(self):
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    def step(self) -> None:
        from torch.distributed.tensor import DTensor

        for p, local in zip(self.params, self.locals):
            # Re-point at the live shard: FSDP2's lazy init (the first forward) moves offloaded shards into new,
            # pinned storage, so a tensor taken at construction would be a stale copy. Same object, so the inner
            # optimizer's state (keyed by it) stays.
            live = p.to_local() if isinstance(p, DTensor) else p
            if local.data_ptr() != live.data_ptr():
                local.data = live.detach()
            g = p.grad
            local.grad = None if g is None else (g.to_local() if isinstance(g, DTensor) else g)
        self.inner.step()
        for local in self.locals:
            local.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.inner.load_state_dict(sd)


def state_bytes(optimizer) -> int:
    """Bytes of optimizer state tensors held by this rank (local shards of DTensor state included)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for st in optimizer.state.values():
        for v in st.values():
            if isinstance(v, DTensor):
                v = v.to_local()
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total


class LossScaler:
    """Dynamic loss scaling for fp16 compute (bf16 and fp32 need none): the loss is multiplied by `scale` before
    backward; a step whose gradients hold inf/nan (on any rank) is skipped and halves the scale; `growth_interval`
    clean steps in a row double it. Gradients are fp32 (the sharded master gradients), so unscaling is exact."""

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_interval: int = 2000):
        self.enabled, self.scale, self.growth_interval, self._good = enabled, init_scale if enabled else 1.0, growth_interval, 0

    def unscale_(self, params) -> torch.Tensor | None:
        """Divide the (local shards of the) gradients by the scale in place, in one fused kernel; return a 1-element
        fp32 tensor on the gradients' device, nonzero where some gradient holds inf/nan. No host sync: the caller
        all-reduces it with the step's other figures and reads them all at once. None when scaling is off."""
        if not self.enabled:
            return None
        from torch.distributed.tensor import DTensor

        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params if p.grad is not None]
        device = grads[0].device if grads else torch.device("cpu")  # all on one (the GPU, or host memory offloaded)
        found_inf = torch.zeros(1, device=device)
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf,
                                                              torch.full((1,), 1.0 / self.scale, device=device))
        return found_inf

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        if not finite:
            self.scale, self._good = max(self.scale / 2, 1.0), 0
        else:
            self._good += 1
            if self._good % self.growth_interval == 0 and math.isfinite(self.scale * 2):
                self.scale *= 2

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good": self._good}

    def load_state_dict(self, sd: dict) -> None:
        self.scale, self._good = float(sd["scale"]), int(sd["good"])
