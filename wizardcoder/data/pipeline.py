"""`pack_dataset`: read instruction files, format, tokenize, pack with best-fit-decreasing and write shards atomically.
This is what `wizardcoder pack` runs."""
from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .. import __version__
from ..errors import DataError
from .packing import MAX_CAPACITY as MAX_SEQ_LEN, best_fit_decreasing, packing_efficiency, padded_efficiency
from .readers import ReadStats, read_examples, resolve_data_files
from ..outdir import atomic_dir, check_out_dir
from .shards import gather_ranges, write_shards
from .templates import Template, get_template
from .tokenize import TokenizedSamples, resolve_boundary, tokenize_examples


@dataclass
class PackedArrays:
    """Documents in storage order: pack p is documents pack_offsets[p]:pack_offsets[p+1], document d is
    tokens[doc_offsets[d]:doc_offsets[d+1]] (loss_mask likewise), source[d] its example index."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    doc_offsets: np.ndarray
    pack_offsets: np.ndarray
    source: np.ndarray

    @property
    def num_packs(self) -> int:
        return len(self.pack_offsets) - 1


def pack_samples(samples: TokenizedSamples, seq_len: int, seed: int = 0) -> PackedArrays:
    """Best-fit-decreasing packs of `samples`, stored in a seeded random order (so that even a sequential reader
    sees mixed lengths), with every array gathered into that order."""
    lengths = samples.lengths
    items, bfd_offsets = best_fit_decreasing(lengths, seq_len)
    order = np.random.default_rng(seed).permutation(len(bfd_offsets) - 1)
    docs = items[gather_ranges(bfd_offsets, order)]
    tok_idx = gather_ranges(samples.offsets, docs)
    return PackedArrays(
        tokens=samples.tokens[tok_idx],
        loss_mask=samples.loss_mask()[tok_idx],
        doc_offsets=np.concatenate([[0], np.cumsum(lengths[docs])]).astype(np.int64),
        pack_offsets=np.concatenate([[0], np.cumsum(np.diff(bfd_offsets)[order])]).astype(np.int64),
        source=samples.source[docs],
    )


def pack_dataset(
    data: str | Iterable[str],
    tokenizer,
    seq_len: int,
    out: str,
    template: str | Template = "alpaca",
    overlong: str = "truncate",
    on_bad: str = "error",
    on_empty: str = "drop",
    field_map: dict[str, str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    packs_per_shard: int = 65536,
    batch_size: int = 2048,
    recipe_batch_size: int = 16,
    progress: bool = True,
    boundary: str = "auto",
) -> dict:
    """Turn instruction data into packed shards in `out`; returns the metadata written (its "summary" holds the
    counts). `tokenizer` is a `wizardcoder.Tokenizer` or anything `Tokenizer.from_pretrained` takes."""
    if not 2 <= seq_len <= MAX_SEQ_LEN:
        raise DataError(f"--seq-len {seq_len} is outside [2, {MAX_SEQ_LEN}]; a pack is one training sequence, so give "
                        "the model's context length (e.g. 2048).")
    if packs_per_shard < 1:
        raise DataError(f"--packs-per-shard must be at least 1, got {packs_per_shard}.")
    check_out_dir(out, "pack", overwrite, error=DataError)
    template = get_template(template)
    files = resolve_data_files(data)  # every input found before the tokenizer is fetched
    if isinstance(tokenizer, str):
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer.from_pretrained(tokenizer)
    if tokenizer.eos_id is None:
        raise DataError(f"tokenizer {tokenizer.name!r} has no EOS token; the response must end with one.")
    seconds = {}

    t = time.perf_counter()
    stats = ReadStats()
    examples = read_examples(files, field_map=field_map, on_bad=on_bad, on_empty=on_empty, stats=stats)
    seconds["read"] = time.perf_counter() - t
    if not examples:
        raise DataError(f"no usable records in {data!r} ({stats.records} read, skipped {dict(stats.skipped)}).")

    t = time.perf_counter()
    boundary = resolve_boundary(boundary, tokenizer)  # the metadata names the one used
    samples = tokenize_examples(examples, tokenizer, template, seq_len, overlong, batch_size, progress, boundary)
    seconds["tokenize"] = time.perf_counter() - t
    if not len(samples):
        raise DataError(f"every sample was dropped ({dict(samples.dropped)}); raise --seq-len or use --overlong truncate.")

    t = time.perf_counter()
    packed = pack_samples(samples, seq_len, seed)
    seconds["pack"] = time.perf_counter() - t
    lengths, n_packs, loss_mask = samples.lengths, packed.num_packs, packed.loss_mask

    n_tokens = int(lengths.sum())
    n_loss = int(loss_mask.sum())
    dropped = dict(stats.skipped)
    for k, v in samples.dropped.items():
        dropped[k] = dropped.get(k, 0) + v
    summary = {
        "records_read": stats.records,
        "samples_kept": len(samples),
        "truncated": int(samples.truncated.sum()),
        "dropped": dropped,
        "dropped_examples": stats.skipped_examples,
        "tokens": n_tokens,
        "loss_tokens": n_loss,
        "prompt_tokens": n_tokens - n_loss,
        "packs": n_packs,
        "seq_len": seq_len,
        "packing_efficiency": packing_efficiency(lengths, n_packs, seq_len),
        "padded_recipe": {"batch_size": recipe_batch_size, "seed": seed,
                          "efficiency": padded_efficiency(lengths, recipe_batch_size, seed)},
        "length": {
            "mean": float(lengths.mean()), "median": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max()), "min": int(lengths.min()),
        },
        "seconds": seconds,
    }
    metadata = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wizardcoder_version": __version__,
        "seq_len": seq_len,
        "seed": seed,
        "tokenizer": {
            "name": tokenizer.name, "fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
            "bos_id": tokenizer.bos_id if tokenizer.add_bos_token else None,  # first in every sample (null: none)
        },
        # Padding is filled with EOS: always inside the base model's vocabulary, and never trained on (label -100).
        "pad_token_id": tokenizer.eos_id,
        "template": template.to_dict(),
        "options": {"boundary": boundary, "overlong": overlong, "on_bad": on_bad, "on_empty": on_empty, "field_map": field_map or {}},
        "inputs": stats.files,
        "summary": summary,
    }
    t = time.perf_counter()
    with atomic_dir(out, "pack", overwrite, error=DataError) as tmp:
        meta = write_shards(tmp, packed.tokens, packed.loss_mask, packed.doc_offsets, packed.pack_offsets,
                            packed.source, metadata, tokenizer.vocab_size, packs_per_shard, progress)
    meta["summary"]["seconds"]["write"] = time.perf_counter() - t  # (after the fact: not in the file)
    return meta


def format_summary(meta: dict) -> str:
    s = meta["summary"]
    lines = [
        f"records read     {s['records_read']:,}",
        f"samples packed   {s['samples_kept']:,}  (truncated {s['truncated']:,})",
        f"dropped          {sum(s['dropped'].values()):,}" + (
            "  (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(s["dropped"].items())) + ")" if s["dropped"] else ""),
        f"tokens           {s['tokens']:,}  (loss on {s['loss_tokens']:,}, prompt {s['prompt_tokens']:,})",
        f"length           mean {s['length']['mean']:.0f}, median {s['length']['median']:.0f}, "
        f"p90 {s['length']['p90']:.0f}, max {s['length']['max']:,}",
        f"packs            {s['packs']:,} x {s['seq_len']:,} tokens in {len(meta['shards'])} shard(s)",
        f"packing eff.     {100 * s['packing_efficiency']:.2f}% real tokens  "
        f"(padded batches of {s['padded_recipe']['batch_size']}: {100 * s['padded_recipe']['efficiency']:.1f}%)",
        "time             " + ", ".join(f"{k} {v:.2f}s" for k, v in s["seconds"].items()),
    ]
    for ex in s["dropped_examples"][:5]:
        lines.append(f"  skipped: {ex}")
    return "\n".join(lines)
