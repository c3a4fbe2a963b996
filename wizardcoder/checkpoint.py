"""HF checkpoints in and out, for every model family (one loading path: wizardcoder.protocol says what differs).

Loading builds the model on the meta device and assigns each tensor straight into place (read through safetensors'
mmap, cast once), so a 15B checkpoint is never held twice; `load_sharded_` fills an FSDP2-sharded model with only its
local rows. Our parameter names are HF's; the only differences are what the model says it does not store
(`stores(name)`: a tied `lm_head.weight`, buffers some checkpoints carry) and rows of the `vocab_rows()` matrices
(StarCoder's embedding is padded: rows added on load, removed on save; rows past a checkpoint's vocabulary, for a
tokenizer with added tokens, start at the mean row when training). Formats: `model.safetensors`,
`model.safetensors.index.json` (sharded), `pytorch_model.bin` and its index; a hub id downloads one of them, the first
the repository has (`_download`). Nothing here imports a model: the model class (or instance) is an argument.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Iterable, Iterator

import torch

from .errors import CheckpointError
from .io import atomic_write_json

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)

def resolve_folder(path_or_hub_id: str) -> str:
    path = os.path.expanduser(path_or_hub_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path}: is a file; give the checkpoint folder (with config.json and the weights).")
    from .hub import is_hub_id

    if not is_hub_id(path_or_hub_id):
        raise CheckpointError(f"{path_or_hub_id}: no such checkpoint folder; check the path.")
    return _download(path_or_hub_id)


def _download(repo_id: str) -> str:
    """The snapshot folder of hub checkpoint `repo_id` with its JSON files, tokenizer files and ONE format's weights:
    the first of WEIGHT_FILES the repository has (safetensors before .bin, as transformers chooses; for an index, the
    shards it lists), so a repository shipping both formats is not downloaded twice. The file list is the hub's; when
    the hub cannot be reached (no network, HF_HUB_OFFLINE=1, the hub down), the one huggingface_hub recorded beside the
    cache at the last download, and without that the cached snapshot as it is; nothing then waits on the network."""
    from .hub import cached_files, download_files, repo_listing

    listing = repo_listing(repo_id)
    offline = listing is None
    listed_commit, listed = listing or (None, None)
    folder = download_files(repo_id, ["*.json", "tokenizer*"], local_files_only=offline)
    commit = os.path.basename(folder)  # huggingface_hub's snapshots/<commit hash>
    files = listed if listed_commit == commit else cached_files(repo_id, commit)
    if files is None:
        return folder
    name = next((n for n in WEIGHT_FILES if n in files), None)
    if name is None:
        raise CheckpointError(f"{repo_id}: the hub repository has no model weights (expected one of {', '.join(WEIGHT_FILES)}).")
    names = _index_shards(os.path.join(folder, name)) if name.endswith(".index.json") else [name]
    return download_files(repo_id, names, revision=commit, local_files_only=offline)


def _index_shards(path: str) -> list[str]:
    """The shard file names a `*.index.json` lists."""
    try:
        with open(path, encoding="utf-8") as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid shard index ({type(e).__name__}: {e}); re-save the checkpoint.") from None


def weight_files(folder: str) -> list[str]:
    for name in WEIGHT_FILES:
        p = os.path.join(folder, name)
        if not os.path.isfile(p):
            continue
        if name.endswith(".index.json"):
            shards = _index_shards(p)
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
    """A model of class `cls` (a wizardcoder.protocol.CausalLM) from a checkpoint folder or hub id."""
    folder = resolve_folder(path_or_hub_id)
    cfg = cls.config_class.from_json_file(os.path.join(folder, "config.json"), **config_overrides)
    device = torch.device(device or "cpu")
    with torch.device("meta"):
        model = cls(cfg)
    expected = dict(model.state_dict())
    vocab_rows = model.vocab_rows()
    state: dict[str, torch.Tensor] = {}
    for name, t in iter_tensors(weight_files(folder)):
        if not model.stores(name):
            continue
        _check_name(model, expected, name, folder)
        want = expected[name].shape
        if name in vocab_rows:
            if tuple(t.shape) != (cfg.vocab_size, *want[1:]):
                raise CheckpointError(f"{folder}: {name} has shape {tuple(t.shape)}, config.json says "
                                      f"({cfg.vocab_size}, {', '.join(map(str, want[1:]))}).")
            t = _pad_rows(t, want[0])
        elif t.shape != want:
            raise CheckpointError(f"{folder}: {name} has shape {tuple(t.shape)}, config.json implies {tuple(want)}.")
        state[name] = t.to(device=device, dtype=dtype or t.dtype)
    _check_complete(expected, state, folder)
    model.load_state_dict(state, assign=True, strict=True)
    return model


def _check_name(model, expected, name: str, folder: str) -> None:
    if name not in expected:
        raise CheckpointError(f"{folder}: unexpected tensor {name!r}; is this a {model.config.model_type} checkpoint "
                              "of this config?")


def _check_complete(expected, have, folder: str) -> None:
    missing = sorted(set(expected) - set(have))
    if missing:
        raise CheckpointError(f"{folder}: missing {len(missing)} tensors (first {missing[0]!r}); the checkpoint is incomplete.")


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def export_state_dict(model) -> dict[str, torch.Tensor]:
    """HF-layout state dict: the vocabulary matrices without padding rows; contiguous CPU tensors."""
    return dict(hf_tensors(model, model.state_dict().items()))


def hf_tensors(model, named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """`named` (a state dict's items, or tensors gathered one at a time from shards) in HF layout: contiguous CPU
    tensors, the model's vocabulary matrices cut to `config.vocab_size` rows."""
    vocab_rows, vocab = model.vocab_rows(), model.config.vocab_size
    for name, t in named:
        if name in vocab_rows:
            t = t[:vocab]
        yield name, t.detach().to("cpu").contiguous()


def save_pretrained(model, folder: str, max_shard_bytes: int = 5 * 2**30) -> None:
    """safetensors (sharded with an index above `max_shard_bytes`) + config.json + generation_config.json."""
    save_tensors(hf_tensors(model, model.state_dict().items()), model.config, folder, max_shard_bytes)


def save_tensors(named: Iterable[tuple[str, torch.Tensor]], config, folder: str,
                 max_shard_bytes: int = 5 * 2**30) -> None:
    """Write HF-layout tensors as they arrive (one shard of at most `max_shard_bytes` held at a time, so a sharded
    model can be gathered tensor by tensor) + config.json + generation_config.json. Every file is written
    atomically; the index (or the single file) last."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    config.save_json(folder)
    atomic_write_json(os.path.join(folder, "generation_config.json"),
                      {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id})
    parts: list[tuple[str, list[str], int]] = []  # (temporary file, names, bytes)
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush():
        nonlocal shard, size
        tmp = os.path.join(folder, f".part-{len(parts):05d}.safetensors")
        _save_atomic(save_file, shard, tmp)
        parts.append((tmp, list(shard), size))
        shard, size = {}, 0

    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
        shard[name] = t
        size += nbytes
    if shard or not parts:
        flush()
    if len(parts) == 1:
        os.replace(parts[0][0], os.path.join(folder, "model.safetensors"))
        return
    weight_map = {}
    for i, (tmp, names, _) in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        os.replace(tmp, os.path.join(folder, fname))
        weight_map.update({name: fname for name in names})
    total = sum(n for _, _, n in parts)
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


# ---------------------------------------------------------------------------------------------- sharded loading
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
READ_BUFFER_BYTES = 64 * 2**20  # the most a rank holds beyond its shard while loading


class RowReader:
    """Row ranges of a checkpoint's tensors, read on demand. safetensors files are read with plain positioned reads
    straight into the destination (no mmap, so the file's pages never count toward this process's resident memory);
    .bin files go through torch.load's mmap."""

    def __init__(self, files: list[str]):
        self.index: dict[str, tuple[str, torch.dtype, tuple[int, ...], int]] = {}  # name -> (file, dtype, shape, byte offset)
        self._bin: dict[str, torch.Tensor] = {}
        for path in files:
            if path.endswith(".safetensors"):
                self._read_header(path)
            else:
                self._bin.update(dict(iter_tensors([path])))

    def _read_header(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, info in header.items():
                if name != "__metadata__":
                    self.index[name] = (path, _ST_DTYPES[info["dtype"]], tuple(info["shape"]), 8 + n + info["data_offsets"][0])
        except (OSError, struct.error, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: corrupt or unsupported safetensors header ({type(e).__name__}: {e}); re-download it.") from None

    def names(self) -> list[str]:
        return list(self.index) + list(self._bin)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.index[name][2] if name in self.index else tuple(self._bin[name].shape)

    def read_rows(self, name: str, start: int, out: torch.Tensor) -> None:
        """out[:] = tensor `name`'s rows start .. start + len(out) (cast to out's dtype, moved to out's device)."""
        if name in self._bin:
            out.copy_(self._bin[name][start : start + out.shape[0]])
            return
        path, dtype, shape, offset = self.index[name]
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        direct = out.dtype == dtype and out.device.type == "cpu" and out.is_contiguous()
        step = out.shape[0] if direct else max(1, READ_BUFFER_BYTES // max(row_bytes, 1))
        with open(path, "rb", buffering=0) as f:
            for r0 in range(0, out.shape[0], step):
                r1 = min(out.shape[0], r0 + step)
                dst = out[r0:r1] if direct else torch.empty((r1 - r0, *shape[1:]), dtype=dtype)
                view = dst.reshape(-1).view(torch.uint8).numpy()
                f.seek(offset + (start + r0) * row_bytes)
                done = 0
                while done < len(view):
                    n = f.readinto(view[done:])
                    if not n:
                        raise CheckpointError(f"{path}: ends inside tensor {name!r}; the file is truncated, re-download it.")
                    done += n
                if not direct:
                    out[r0:r1].copy_(dst)


def load_sharded_(model, folder: str) -> None:
    """Fill each (FSDP2-sharded or plain) parameter of `model` with its rows of the checkpoint in `folder`, reading
    only the local shard's rows. Rows of the vocabulary matrices past the checkpoint's vocabulary (a tokenizer with
    added tokens: WizardCoder's [PAD]) start at the mean of the checkpoint's rows, as WizardCoder's script initialises
    them; padding rows past `config.vocab_size` are zero."""
    from .parallel import local_shard

    cfg = model.config
    reader = RowReader(weight_files(folder))
    params = dict(model.named_parameters())
    stored = [n for n in reader.names() if model.stores(n)]
    for name in stored:
        _check_name(model, params, name, folder)
    _check_complete(params, stored, folder)
    vocab_rows = model.vocab_rows()
    with torch.no_grad():
        for name, p in params.items():
            local, row0 = local_shard(p)
            have = reader.shape(name)
            if name not in vocab_rows:
                if have != tuple(p.shape):
                    raise CheckpointError(f"{folder}: {name} has shape {have}, config.json implies {tuple(p.shape)}.")
                reader.read_rows(name, row0, local)
                continue
            rows = have[0]  # the checkpoint's vocabulary; rows `rows` .. vocab_size are new tokens
            if have[1:] != tuple(p.shape[1:]) or rows > cfg.vocab_size:
                raise CheckpointError(f"{folder}: {name} has shape {have}, the model needs at most ({cfg.vocab_size}, {p.shape[1]}).")
            local.zero_()
            n_read = max(0, min(row0 + local.shape[0], rows) - row0)
            if n_read:
                reader.read_rows(name, row0, local[:n_read])
            lo, hi = max(row0, rows), min(row0 + local.shape[0], cfg.vocab_size)
            if hi > lo:
                local[lo - row0 : hi - row0] = _mean_row(reader, name, rows).to(local.dtype)


def _mean_row(reader: RowReader, name: str, rows: int) -> torch.Tensor:
    """The mean of a matrix's rows, read in bounded chunks."""
    cols = reader.shape(name)[1]
    total = torch.zeros(cols, dtype=torch.float64)
    step = max(1, READ_BUFFER_BYTES // (8 * cols))
    for r0 in range(0, rows, step):
        buf = torch.empty(min(step, rows - r0), cols, dtype=torch.float64)
        reader.read_rows(name, r0, buf)
        total += buf.sum(0)
    return total / rows


def init_sharded_(model, seed: int) -> None:
    """Random init of a (sharded) model: each full tensor drawn in turn from one CPU generator, the local rows kept,
    so every world size gets the same weights (`from_config(cfg, seed=...)`'s on CPU)."""
    from .parallel import local_shard

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            full = torch.empty(p.shape, dtype=torch.float32)
            model.init_parameter_(name, full, gen)
            local, row0 = local_shard(p)
            local.copy_(full[row0 : row0 + local.shape[0]])
