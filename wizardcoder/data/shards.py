"""Packed token-stream shards on disk: memory-mapped .npy arrays plus one metadata.json.

A shard folder holds, for each shard k (a run of whole packs):

    tokens-K.npy     uint16 (int32 when the vocabulary exceeds 65536) [n_tokens]   token ids, pack after pack
    loss_mask-K.npy  uint8 [n_tokens]          1 where the label is the token itself (response and EOS), 0 on prompt
    doc_offsets-K.npy  int64 [n_docs + 1]      document d is tokens[doc_offsets[d]:doc_offsets[d+1]]
    pack_offsets-K.npy int64 [n_packs + 1]     pack p holds documents pack_offsets[p]:pack_offsets[p+1]
    source-K.npy     int64 [n_docs]            each document's index in the input (read order over all files)

and `metadata.json` (format, version, seq_len, token dtype, tokenizer identity, template, seed, per-shard counts,
totals and the pack summary). Packs are stored unpadded; the loader pads each to seq_len.

Writing is atomic (`wizardcoder.outdir.atomic_dir`): everything goes into a hidden temporary folder beside the target,
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
from ..io import read_json

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
    with open(path, "wb") as f:  # (outdir.atomic_dir fsyncs every file before it renames the folder into place)
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
    """Write packs into shard files inside `folder` (call it inside `outdir.atomic_dir`), metadata.json last.

    The inputs hold the documents in storage order: pack p is documents pack_offsets[p]:pack_offsets[p+1], document
    d is tokens[doc_offsets[d]:doc_offsets[d+1]] (and loss_mask likewise), source[d] its input index. Returns the
    metadata written."""
    if packs_per_shard < 1:
        raise DataError(f"--packs-per-shard must be at least 1, got {packs_per_shard}.")
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
        meta = read_json(path, "metadata file", DataError, "run `wizardcoder pack` again")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not meta.get("complete"):
            raise DataError(f"{path}: not a complete {FORMAT} metadata file; run `wizardcoder pack` again.")
        if meta.get("version") != VERSION:
            raise DataError(f"{path}: shard format version {meta.get('version')}, this code reads {VERSION}; re-pack.")
        try:
            self.seq_len = int(meta["seq_len"])
            listed = [(int(s["index"]), int(s["packs"]), int(s["docs"]), int(s["tokens"])) for s in meta["shards"]]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: malformed metadata ({type(e).__name__}: {e}); run `wizardcoder pack` again.") from None
        self.meta = meta
        self._arrays = []
        for k, n_packs, n_docs, n_tokens in listed:
            arrs = {}
            for name in ARRAYS:
                p = os.path.join(folder, f"{name}-{k:05d}.npy")
                try:
                    arrs[name] = np.load(p, mmap_mode="r")
                except (OSError, ValueError, EOFError) as e:
                    raise DataError(f"{p}: missing, empty or truncated ({e}); the shard folder is damaged, re-pack.") from None
            expect = {"tokens": n_tokens, "loss_mask": n_tokens, "doc_offsets": n_docs + 1,
                      "pack_offsets": n_packs + 1, "source": n_docs}
            for name, n in expect.items():
                if arrs[name].shape != (n,):
                    raise DataError(
                        f"{folder}: {name}-{k:05d}.npy has shape {arrs[name].shape}, metadata says ({n},); re-pack."
                    )
            self._arrays.append(arrs)
        self._pack_starts = np.concatenate([[0], np.cumsum([n for _, n, _, _ in listed])]).astype(np.int64)

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


# ---------------------------------------------------------------------------------------------- validation
def validate(folder: str, *, vocab_size: int | None = None, max_positions: int | None = None) -> PackedShards:
    """Check a shard folder end to end before training on it; raise a DataError (one sentence naming the file and
    what to do) at the first problem, else return the opened `PackedShards`.

    Checks: metadata and array shapes (`PackedShards`), at least one pack, document and pack offsets that cut the
    token stream into non-empty, in-order pieces, packs no longer than seq_len, the stored content hash (sha256 over
    every array, in write order), token ids inside [0, vocab_size), and seq_len (the length every pack is padded to,
    so the bound on every document's and padding segment's positions) within max_positions. One pass over the arrays through their memory maps:
    the hash streams from the page cache and the id check is one numpy max per shard."""
    shards = PackedShards(folder)
    if shards.num_packs == 0:
        raise DataError(f"{folder}: holds no packs (no shards); run `wizardcoder pack` again with --packs-per-shard >= 1.")
    seq_len = shards.seq_len
    if max_positions is not None and seq_len > max_positions:
        raise DataError(f"{folder}: packed to --seq-len {seq_len}, longer than the model's {max_positions} positions; "
                        f"re-pack with --seq-len {max_positions} or less.")
    digest = hashlib.sha256()
    for k, a in enumerate(shards._arrays):
        where = f"{folder}: shard {k:05d}"
        for name in ARRAYS:
            digest.update(np.ascontiguousarray(a[name]))  # a memmap is contiguous: hashed in place, no copy
        tokens, docs, packs = a["tokens"], np.asarray(a["doc_offsets"]), np.asarray(a["pack_offsets"])
        doc_lens = np.diff(docs)
        if docs[0] != 0 or docs[-1] != len(tokens) or (doc_lens <= 0).any():
            raise DataError(f"{where}: corrupt document offsets (doc_offsets-{k:05d}.npy does not cut the "
                            f"{len(tokens)} tokens into non-empty documents in order); re-pack.")
        if packs[0] != 0 or packs[-1] != len(docs) - 1 or (np.diff(packs) <= 0).any():
            raise DataError(f"{where}: corrupt pack offsets (pack_offsets-{k:05d}.npy does not group the "
                            f"{len(docs) - 1} documents into non-empty packs in order); re-pack.")
        longest_pack = int((docs[packs[1:]] - docs[packs[:-1]]).max())
        if longest_pack > seq_len:
            raise DataError(f"{where}: a pack of {longest_pack} tokens, longer than the folder's seq_len {seq_len}; "
                            "the shards are damaged, re-pack.")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0:
            raise DataError(f"{where}: negative token id {lo} in tokens-{k:05d}.npy; the shards are damaged, re-pack.")
        if vocab_size is not None and hi >= vocab_size:
            raise DataError(f"{where}: token id {hi} is outside the model's vocabulary of {vocab_size}; re-pack "
                            "with the model's tokenizer.")
        if int(np.asarray(a["loss_mask"]).max(initial=0)) > 1:
            raise DataError(f"{where}: loss_mask-{k:05d}.npy holds values other than 0 and 1; re-pack.")
    if digest.hexdigest() != shards.meta.get("content_sha256"):
        raise DataError(f"{folder}: the arrays do not match the content hash in metadata.json (changed or damaged "
                        "since they were packed); re-pack.")
    return shards
