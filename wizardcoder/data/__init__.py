"""Data stage: instruction records -> prompt/response token sequences with response-only loss -> best-fit-decreasing
packs -> memory-mapped shards -> a resumable, rank-sharded loader of packed micro-batches.

    from wizardcoder.data import pack_dataset, PackedLoader
    pack_dataset(["evol.json"], "bigcode/starcoder", seq_len=2048, out="shards/")
    loader = PackedLoader("shards/", micro_batch_size=2, rank=rank, world_size=world, seed=0)
    for batch in loader: ...   # input_ids, labels, position_ids, cu_seqlens, max_seqlen, counts

Modules: readers (files, hub ids, bad-input policy), templates (WizardCoder's Alpaca prompt), tokenize (loss
boundary), packing (best-fit-decreasing), shards (on-disk format, `validate`), loader, pipeline, cli (`pack`).
"""
from .loader import PackedLoader
from .packing import best_fit_decreasing, best_fit_decreasing_reference, packing_efficiency, padded_efficiency
from .pipeline import PackedArrays, format_summary, pack_dataset, pack_samples
from .readers import Example, ReadStats, read_examples, resolve_data_files
from .shards import PackedShards, validate as validate_shards
from .templates import ALPACA, TEMPLATES, Template, get_template, register_template
from .tokenize import TokenizedSamples, tokenize_examples

__all__ = [
    "ALPACA", "Example", "PackedArrays", "PackedLoader", "PackedShards", "ReadStats", "TEMPLATES", "Template", "TokenizedSamples",
    "best_fit_decreasing", "best_fit_decreasing_reference", "format_summary", "get_template", "pack_dataset",
    "pack_samples", "packing_efficiency", "padded_efficiency", "read_examples", "register_template", "resolve_data_files",
    "tokenize_examples", "validate_shards",
]
