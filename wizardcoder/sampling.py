"""Batched sampling from a StarCoder: left-padded prefill into a static KV cache, then one token per step for the
whole batch, with greedy / temperature / top-k / top-p sampling on fp32 logits and stop strings.

This is the plain-torch sampler (any device); the fast engine (CUDA graphs, continuous batching) builds on the same
`SamplingParams` and `sample_logits`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .model import KVCache, StarCoder


@dataclass
class SamplingParams:
    """How to sample. `n` completions per prompt; `temperature` 0 means greedy (argmax, n must be 1 for distinct
    outputs to make sense); `top_p` nucleus mass kept (1 keeps all); `top_k` 0 keeps all; generation stops at EOS, at
    `max_new_tokens`, or when the completion contains any of `stop` (the stop string and what follows is cut);
    `seed` makes sampling reproducible (None draws from torch's global generator)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_logits(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row of `logits [B, V]`. Steps: fp32; greedy if temperature == 0; divide by temperature; keep
    the top_k largest; keep the smallest set whose probability reaches top_p (always at least one); sample."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p.
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.inference_mode()
def generate_ids(model: StarCoder, prompts: list[list[int]], params: SamplingParams, eos_id: int | None,
                 pad_id: int = 0, generator: torch.Generator | None = None, should_stop=None) -> list[list[int]]:
    """New token ids for each prompt (one completion each; repeat prompts for n > 1). `should_stop(row, ids)` may
    end a row early (stop strings)."""
    device = next(model.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    if P + params.max_new_tokens > model.config.n_positions:
        raise ValueError(f"prompt ({P} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
                         f"{model.config.n_positions} positions; shorten the prompt or lower max_new_tokens.")
    ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(B, P, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):  # left padding: every row's last prompt token sits in the same slot
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = True
    cache = KVCache(model.config, B, P + params.max_new_tokens, dtype=next(model.parameters()).dtype, device=device)
    logits = model(ids, attention_mask=mask, kv_cache=cache)[:, -1]
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for _ in range(params.max_new_tokens):
        nxt = sample_logits(logits, params.temperature, params.top_p, params.top_k, generator)
        nxt_list = nxt.tolist()
        for i in range(B):
            if done[i]:
                continue
            if eos_id is not None and nxt_list[i] == eos_id:
                done[i] = True
                continue
            out[i].append(nxt_list[i])
            if should_stop is not None and should_stop(i, out[i]):
                done[i] = True
        if bool(done.all()):
            break
        logits = model(nxt[:, None], kv_cache=cache)[:, -1]
    return out


def generate(model: StarCoder, tokenizer, prompts: list[str], params: SamplingParams, batch_size: int = 32,
             progress: bool = False) -> list[list[str]]:
    """`params.n` completions for every prompt (text after the prompt, cut at the first stop string)."""
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(params.seed)
    encoded = tokenizer.encode_batch(prompts)
    jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(params.n)]
    # Similar lengths together: less left padding per batch.
    order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
    results: list[list[str]] = [[] for _ in prompts]
    texts: dict[int, str] = {}

    def should_stop(_row, ids):
        if not params.stop:
            return False
        tail = tokenizer.decode(ids[-16:])  # a stop string ends within the last few tokens
        return any(s in tail for s in params.stop)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="generate", unit="sample")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        new = generate_ids(model, [jobs[j][1] for j in chunk], params, tokenizer.eos_id,
                           pad_id=tokenizer.pad_id or 0, generator=gen, should_stop=should_stop)
        for j, ids in zip(chunk, new):
            texts[j] = truncate_at_stop(tokenizer.decode(ids), params.stop)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    for j in range(len(jobs)):
        results[jobs[j][0]].append(texts[j])
    return results


def truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
