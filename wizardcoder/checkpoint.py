"""HF GPTBigCode checkpoints in and out.

Loading builds the model on the meta device and assigns each tensor straight into place (read through safetensors'
mmap, cast once), so a 15B checkpoint is never held twice. Our parameter names are HF's; the only changes are the
tied `lm_head.weight` (not stored by us; dropped on load) and the embedding's padding rows (added on load, removed on
save). Formats: `model.safetensors`, `model.safetensors.index.json` (sharded), `pytorch_model.bin` and its index.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

import torch

from .config import StarCoderConfig
from .errors import CheckpointError
from .io import atomic_write_json

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
# Buffers some older GPTBigCode checkpoints carry; not parameters.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def resolve_folder(path_or_hub_id: str) -> str:
    path = os.path.expanduser(path_or_hub_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path}: is a file; give the checkpoint folder (with config.json and the weights).")
    from .hub import download_files, is_hub_id

    if not is_hub_id(path_or_hub_id):
        raise CheckpointError(f"{path_or_hub_id}: no such checkpoint folder; check the path.")
    return download_files(path_or_hub_id, ["*.json", "*.safetensors", "*.bin", "tokenizer*"], what="checkpoint")


def weight_files(folder: str) -> list[str]:
    for name in WEIGHT_FILES:
        p = os.path.join(folder, name)
        if not os.path.isfile(p):
            continue
        if name.endswith(".index.json"):
            try:
                with open(p, encoding="utf-8") as f:
                    index = json.load(f)
                shards = sorted(set(index["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise CheckpointError(f"{p}: not a valid shard index ({type(e).__name__}: {e}); re-save the checkpoint.") from None
            missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
            if missing:
                raise CheckpointError(f"{p}: lists shard {missing[0]} which is not in {folder}; the download is incomplete.")
            return [os.path.join(folder, s) for s in shards]
        return [p]
    raise CheckpointError(f"{folder}: no model weights (expected one of {', '.join(WEIGHT_FILES)}).")


def iter_tensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs, each read lazily (safetensors mmap; torch.load with mmap for .bin)."""
    for path in files:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(path, framework="pt") as f:
                    for name in f.keys():
                        yield name, f.get_tensor(name)
            except Exception as e:
                if isinstance(e, CheckpointError):
                    raise
                raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({str(e).splitlines()[0]}); re-download it.") from None
        else:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise CheckpointError(f"{path}: unreadable PyTorch weights file ({str(e).splitlines()[0]}); re-download it.") from None
            yield from sd.items()


def load_pretrained(cls, path_or_hub_id: str, dtype: torch.dtype | None = None, device=None, **config_overrides):
    folder = resolve_folder(path_or_hub_id)
    cfg = StarCoderConfig.from_json_file(os.path.join(folder, "config.json"), **config_overrides)
    device = torch.device(device or "cpu")
    with torch.device("meta"):
        model = cls(cfg)
    expected = dict(model.state_dict())
    state: dict[str, torch.Tensor] = {}
    for name, t in iter_tensors(weight_files(folder)):
        if name == "lm_head.weight" or name.endswith(IGNORED_SUFFIXES):
            continue  # tied to wte / a buffer we compute
        if name not in expected:
            raise CheckpointError(f"{folder}: unexpected tensor {name!r}; is this a GPTBigCode checkpoint of this config?")
        want = expected[name].shape
        if name == "transformer.wte.weight":
            if t.shape != (cfg.vocab_size, cfg.n_embd):
                raise CheckpointError(f"{folder}: {name} has shape {tuple(t.shape)}, config.json says ({cfg.vocab_size}, {cfg.n_embd}).")
            t = _pad_rows(t, want[0])
        elif t.shape != want:
            raise CheckpointError(f"{folder}: {name} has shape {tuple(t.shape)}, config.json implies {tuple(want)}.")
        state[name] = t.to(device=device, dtype=dtype or t.dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{folder}: missing {len(missing)} tensors (first {missing[0]!r}); the checkpoint is incomplete.")
    model.load_state_dict(state, assign=True, strict=True)
    return model


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def export_state_dict(model) -> dict[str, torch.Tensor]:
    """HF-layout state dict: the embedding without padding rows; contiguous CPU tensors."""
    V = model.config.vocab_size
    out = {}
    for name, t in model.state_dict().items():
        if name == "transformer.wte.weight":
            t = t[:V]
        out[name] = t.detach().to("cpu").contiguous()
    return out


def save_pretrained(model, folder: str, max_shard_bytes: int = 5 * 2**30) -> None:
    """safetensors (sharded with an index above `max_shard_bytes`) + config.json + generation_config.json.
    Every file is written atomically; the index (or single file) is written last."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    sd = export_state_dict(model)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in sd.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    model.config.save_json(folder)
    atomic_write_json(
        os.path.join(folder, "generation_config.json"),
        {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id},
    )
    if len(shards) == 1:
        _save_atomic(save_file, shards[0], os.path.join(folder, "model.safetensors"))
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _save_atomic(save_file, shard, os.path.join(folder, fname))
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    atomic_write_json(os.path.join(folder, "model.safetensors.index.json"), {"metadata": {"total_size": total}, "weight_map": weight_map})


def _save_atomic(save_file, tensors: dict, path: str) -> None:
    """safetensors writes by path: write a temporary file beside `path`, then rename it into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
