"""Sampling, the short way: `generate(model, tokenizer, prompts, params)` gives text for text through the engine
(kept for the demo, the evaluation CLI and older callers), and the sampler's public names (wizardcoder/engine/
params.py and sampler.py hold them; this module only imports the engine, never the other way round)."""
from __future__ import annotations

from .engine import Engine
from .engine.params import SamplingParams, derived_seed, fmix32, sample_key
from .engine.sampler import keep_top_k_top_p, sample_rows, sample_rows_sorted, truncate_at_stop, uniform_noise

__all__ = ["generate", "SamplingParams", "derived_seed", "fmix32", "sample_key", "keep_top_k_top_p", "sample_rows",
           "sample_rows_sorted", "truncate_at_stop", "uniform_noise"]


def generate(model, tokenizer, prompts: list[str], params: SamplingParams, batch_size: int = 32,
             progress: bool = False) -> list[list[str]]:
    """`params.n` completions for every prompt (text after the prompt, cut at the first stop string), through the
    engine with `batch_size` sample slots."""
    encoded = tokenizer.encode_batch(prompts)
    max_len = max(len(p) for p in encoded) + params.max_new_tokens
    engine = Engine(model, tokenizer, max_slots=batch_size, max_len=min(max_len, model.config.n_positions))
    return [[c.text for c in samples] for samples in engine.generate(encoded, params, progress=progress)]
