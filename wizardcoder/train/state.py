"""Training checkpoints (torch.distributed.checkpoint folders) and the HF export.

`OUT/checkpoints/step_N` holds model, optimizer, step, data position, RNG and loss scale through DCP's Stateful
protocol, plus `run.json` (the run's identity: the model's family and shapes, as a wizardcoder.resume.Marker, checked
on resume) and, for the 8-bit optimizers whose state is per local
shard, `optim-rank{R}.pt`; `OUT/checkpoints/latest` names the newest complete one. Folders are written through
`outdir.AtomicDir`: rank 0 makes the temporary folder, every rank writes into it, rank 0 renames it into place.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import warnings

import torch

from ..errors import CheckpointError
from ..interrupts import deferred
from ..io import atomic_write_text
from ..outdir import AtomicDir
from ..parallel import Dist, barrier, broadcast_object
from ..resume import Marker
from .optim import LocalShardOptimizer


class TrainState:
    """What a checkpoint holds besides the shape check (torch.distributed.checkpoint Stateful)."""

    def __init__(self, model, optimizer, loader, scaler):
        self.model, self.optimizer, self.loader, self.scaler = model, optimizer, loader, scaler
        self.step = 0

    @property
    def _dcp_optimizer(self) -> bool:
        return not isinstance(self.optimizer, LocalShardOptimizer)

    def state_dict(self):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if self._dcp_optimizer:
            msd, osd = get_state_dict(self.model, self.optimizer)
        else:
            msd, osd = get_model_state_dict(self.model), {}
        return {"model": msd, "optim": osd, "step": self.step, "loader": self.loader.state_dict(),
                "rng": torch.get_rng_state(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, sd):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        if self._dcp_optimizer:
            set_state_dict(self.model, self.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        else:
            set_model_state_dict(self.model, sd["model"])
        self.step = int(sd["step"])
        self.loader.load_state_dict(sd["loader"])
        torch.set_rng_state(sd["rng"])
        self.scaler.load_state_dict(sd["scaler"])


def checkpoint_root(out: str) -> str:
    return os.path.join(out, "checkpoints")


def latest_checkpoint(out: str) -> str | None:
    p = os.path.join(checkpoint_root(out), "latest")
    if not os.path.isfile(p):
        return None
    name = open(p, encoding="utf-8").read().strip()
    path = os.path.join(checkpoint_root(out), name)
    return path if os.path.isdir(path) else None


def run_identity(mcfg, world_size: int, optimizer: str) -> dict:
    """What a checkpoint must match to be resumed: the model's family and shapes (wizardcoder.protocol.ModelConfig)
    and the optimizer (and, for per-shard 8-bit state, the number of ranks)."""
    ident = {"model_type": mcfg.model_type, **{k: getattr(mcfg, k) for k in (
        "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_kv_head", "head_dim", "ffn_dim")},
        "optimizer": optimizer}
    if optimizer != "adamw":
        ident["world_size"] = world_size
    return ident


def _marker(checkpoint: str) -> Marker:
    return Marker(os.path.join(checkpoint, "run.json"))


@contextlib.contextmanager
def _dcp_quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_checkpoint(state: TrainState, out: str, d: Dist, keep: int, identity: dict) -> str:
    import torch.distributed.checkpoint as dcp

    root = checkpoint_root(out)
    name = f"step_{state.step:07d}"
    folder = AtomicDir(os.path.join(root, name), made_by="train", overwrite=True, flag="--out")
    # written whole: DCP would turn a Ctrl-C inside its write into a CheckpointException (exit 1, not 130)
    with deferred(f"Ctrl-C: stopping once checkpoint {name} is written"):
        tmp = broadcast_object(folder.begin() if d.is_main else None, d)
        with _dcp_quiet():
            dcp.save({"train": state}, checkpoint_id=tmp)
        if not state._dcp_optimizer:
            torch.save(state.optimizer.state_dict(), os.path.join(tmp, f"optim-rank{d.rank}.pt"))
        barrier(d)
        if d.is_main:
            _marker(tmp).write(identity)
            folder.commit()
            atomic_write_text(os.path.join(root, "latest"), name + "\n")
            done = sorted(n for n in os.listdir(root) if n.startswith("step_"))
            for old in done[:-keep] if keep > 0 else []:
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
        barrier(d)
    return os.path.join(root, name)


def load_checkpoint(state: TrainState, path: str, d: Dist, identity: dict, out: str) -> None:
    import torch.distributed.checkpoint as dcp

    _marker(path).check(identity, f"--out {out}: its checkpoint {os.path.basename(path)}",
                        "resume with the same model and optimizer or choose a new --out")
    try:
        with _dcp_quiet(), deferred(f"Ctrl-C: stopping once checkpoint {os.path.basename(path)} is loaded"):
            dcp.load({"train": state}, checkpoint_id=path)  # whole: DCP makes a Ctrl-C inside it a CheckpointException
    except Exception as e:  # DCP reports a mismatch deep inside its planner
        raise CheckpointError(f"{path}: cannot be resumed into this run ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); resume with the same settings or choose a new "
                              "--out.") from None
    if not state._dcp_optimizer:
        state.optimizer.load_state_dict(torch.load(os.path.join(path, f"optim-rank{d.rank}.pt"), weights_only=False))


def export_hf(model, tokenizer, folder: str, d: Dist, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write an HF checkpoint (safetensors + config + tokenizer) to `folder`, gathering one tensor at a time to rank 0
    (each rank all-gathers a tensor, rank 0 keeps it until its shard file is written): no rank ever holds the whole
    model. Names come from the state-dict API (`get_model_state_dict`), which strips any wrapper prefixes."""
    import dataclasses

    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor

    from ..checkpoint import hf_tensors, save_tensors

    def gathered():
        for name, t in get_model_state_dict(model).items():
            full = t.full_tensor() if isinstance(t, DTensor) else t  # a collective: every rank takes part
            if d.is_main:
                yield name, full.float() if full.dtype != torch.float32 else full
            del full

    cfg = dataclasses.replace(model.config)
    target = AtomicDir(folder, made_by="train", overwrite=True, flag="--out")
    tmp = target.begin() if d.is_main else None
    try:
        if d.is_main:
            save_tensors(hf_tensors(model, gathered()), cfg, tmp, max_shard_bytes)
            tokenizer.save(tmp)
            target.commit()
        else:
            for _ in gathered():
                pass
    except BaseException:
        target.abort()
        raise
    barrier(d)
