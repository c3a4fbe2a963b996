"""Packed token-stream shards on disk: memory-mapped .npy arrays plus one metadata.json.

A shard folder holds, for each shard k (a run of whole packs):

    tokens-K.npy     uint16 (int32 when the vocabulary exceeds 65536) [n_tokens]   token ids, pack after pack
    loss_mask-K.npy  uint8 [n_tokens]          1 where the label is the token itself (response and EOS), 0 on prompt
    doc_offsets-K.npy  int64 [n_docs + 1]      document d is tokens[doc_offsets[d]:doc_offsets[d+1]]
    pack_offsets-K.npy int64 [n_packs + 1]     pack p holds documents pack_offsets[p]:pack_offsets[p+1]
    source-K.npy     int64 [n_docs]            each document's index in the input (read order over all files)

and `metadata.json` (format, version, seq_len, token dtype, tokenizer identity, template, seed, per-shard counts,
totals and the pack summary). Packs are stored unpadded; the loader pads each to seq_len.

Writing is atomic (`wizardcoder.io.atomic_dir`): everything goes into a hidden temporary folder beside the target,
metadata.json last, and the folder is renamed into place at the end. An interrupted pack leaves only that hidden
folder (removed by the next pack into the same target), never a folder that `PackedShards` would open: it requires
metadata.json with `complete: true` and checks every array against it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

FORMAT = "wizardcoder-packed"
VERSION = 1
ARRAYS = ("tokens", "loss_mask", "doc_offsets", "pack_offsets", "source")


@dataclass
class Pack:
    """One pack, unpadded: its documents back to back."""

    tokens: np.ndarray  # [n] token ids
    loss_mask: np.ndarray  # [n] uint8
    doc_lens: np.ndarray  # [n_docs] int64
    source: np.ndarray  # [n_docs] int64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


# ---------------------------------------------------------------------------------------------- writing
def _save(path: str, arr: np.ndarray, digest) -> None:
    with open(path, "wb") as f:  # (io.atomic_dir fsyncs every file before it renames the folder into place)
        np.save(f, arr)
    digest.update(np.ascontiguousarray(arr).tobytes())


def gather_ranges(offsets: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Indices of the ranges offsets[i]:offsets[i+1] for i in `idx`, concatenated in that order."""
    idx = np.asarray(idx, np.int64)
    starts = offsets[idx]
    lens = offsets[idx + 1] - starts
    before = np.cumsum(lens) - lens
    return np.repeat(starts - before, lens) + np.arange(int(lens.sum()), dtype=np.int64)


def write_shards(
    folder: str,
    tokens: np.ndarray,
    loss_mask: np.ndarray,
    doc_offsets: np.ndarray,
    pack_offsets: np.ndarray,
    source: np.ndarray,
    metadata: dict,
    vocab_size: int,
    packs_per_shard: int = 65536,
    progress: bool = False,
) -> dict:
    """Write packs into shard files inside `folder` (call it inside `io.atomic_dir`), metadata.json last.

    The inputs hold the documents in storage order: pack p is documents pack_offsets[p]:pack_offsets[p+1], document
    d is tokens[doc_offsets[d]:doc_offsets[d+1]] (and loss_mask likewise), source[d] its input index. Returns the
    metadata written."""
    dtype = token_dtype(vocab_size)
    n_packs = len(pack_offsets) - 1
    digest = hashlib.sha256()
    shards = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_packs, unit="pack", desc="write", dynamic_ncols=True)
    for k, p0 in enumerate(range(0, n_packs, packs_per_shard)):
        p1 = min(p0 + packs_per_shard, n_packs)
        d0, d1 = int(pack_offsets[p0]), int(pack_offsets[p1])
        t0, t1 = int(doc_offsets[d0]), int(doc_offsets[d1])
        arrays = {
            "tokens": tokens[t0:t1].astype(dtype),
            "loss_mask": loss_mask[t0:t1].astype(np.uint8),
            "doc_offsets": (doc_offsets[d0 : d1 + 1] - t0).astype(np.int64),
            "pack_offsets": (pack_offsets[p0 : p1 + 1] - d0).astype(np.int64),
            "source": source[d0:d1].astype(np.int64),
        }
        for name in ARRAYS:
            _save(os.path.join(folder, f"{name}-{k:05d}.npy"), arrays[name], digest)
        shards.append({"index": k, "packs": p1 - p0, "docs": d1 - d0, "tokens": t1 - t0})
        if bar is not None:
            bar.update(p1 - p0)
    if bar is not None:
        bar.close()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **metadata,
        "token_dtype": dtype.name,
        "num_packs": int(n_packs),
        "num_docs": int(sum(s["docs"] for s in shards)),
        "num_tokens": int(sum(s["tokens"] for s in shards)),
        "shards": shards,
        "content_sha256": digest.hexdigest(),
        "complete": True,
    }
    path = os.path.join(folder, "metadata.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return meta


# ---------------------------------------------------------------------------------------------- reading
class PackedShards:
    """Read a shard folder through memory maps. `pack(i)` returns pack i (global index over all shards)."""

    def __init__(self, folder: str):
        self.folder = folder
        path = os.path.join(folder, "metadata.json")
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: no such folder; run `wizardcoder pack` first.")
        if not os.path.isfile(path):
            raise DataError(
                f"{folder}: no metadata.json, so not a complete packed-shard folder (an interrupted pack?); "
                "run `wizardcoder pack` again."
            )
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); run `wizardcoder pack` again.") from None
        if meta.get("format") != FORMAT or not meta.get("complete"):
            raise DataError(f"{path}: not a complete {FORMAT} metadata file; run `wizardcoder pack` again.")
        if meta.get("version") != VERSION:
            raise DataError(f"{path}: shard format version {meta.get('version')}, this code reads {VERSION}; re-pack.")
        self.meta = meta
        self.seq_len = int(meta["seq_len"])
        self._arrays = []
        for s in meta["shards"]:
            k = s["index"]
            arrs = {}
            for name in ARRAYS:
                p = os.path.join(folder, f"{name}-{k:05d}.npy")
                try:
                    arrs[name] = np.load(p, mmap_mode="r")
                except (OSError, ValueError) as e:
                    raise DataError(f"{p}: missing or unreadable ({e}); the shard folder is damaged, re-pack.") from None
            expect = {"tokens": s["tokens"], "loss_mask": s["tokens"], "doc_offsets": s["docs"] + 1,
                      "pack_offsets": s["packs"] + 1, "source": s["docs"]}
            for name, n in expect.items():
                if arrs[name].shape != (n,):
                    raise DataError(
                        f"{folder}: {name}-{k:05d}.npy has shape {arrs[name].shape}, metadata says ({n},); re-pack."
                    )
            self._arrays.append(arrs)
        self._pack_starts = np.concatenate([[0], np.cumsum([s["packs"] for s in meta["shards"]])]).astype(np.int64)

    @property
    def num_packs(self) -> int:
        return int(self._pack_starts[-1])

    @property
    def num_docs(self) -> int:
        return int(self.meta["num_docs"])

    def __len__(self) -> int:
        return self.num_packs

    def pack(self, i: int) -> Pack:
        if not 0 <= i < self.num_packs:
            raise IndexError(f"pack {i} out of range [0, {self.num_packs})")
        k = int(np.searchsorted(self._pack_starts, i, side="right") - 1)
        a, j = self._arrays[k], i - int(self._pack_starts[k])
        d0, d1 = int(a["pack_offsets"][j]), int(a["pack_offsets"][j + 1])
        offs = np.asarray(a["doc_offsets"][d0 : d1 + 1])
        t0, t1 = int(offs[0]), int(offs[-1])
        return Pack(
            tokens=np.asarray(a["tokens"][t0:t1]),
            loss_mask=np.asarray(a["loss_mask"][t0:t1]),
            doc_lens=np.diff(offs),
            source=np.asarray(a["source"][d0:d1]),
        )

    def documents(self):
        """Yield (source_index, tokens, loss_mask) for every stored document, in storage order."""
        for a in self._arrays:
            offs = np.asarray(a["doc_offsets"])
            for d in range(len(offs) - 1):
                yield int(a["source"][d]), np.asarray(a["tokens"][offs[d] : offs[d + 1]]), np.asarray(
                    a["loss_mask"][offs[d] : offs[d + 1]]
                )

    def check_tokenizer(self, tokenizer) -> None:
        """Raise a DataError unless `tokenizer` is the one these shards were made with."""
        want = self.meta.get("tokenizer", {}).get("fingerprint")
        if want and getattr(tokenizer, "fingerprint", None) != want:
            raise DataError(
                f"{self.folder}: packed with tokenizer {self.meta['tokenizer'].get('name')!r} "
                f"(fingerprint {want[:12]}), not {getattr(tokenizer, 'name', '?')!r}; re-pack with the model's tokenizer."
            )
