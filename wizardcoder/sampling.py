"""How to sample, and the per-row sampler the engine runs on the device.

`SamplingParams` (vLLM-like) describes one request. `sample_rows` draws the next token for a whole batch whose rows
may each have their own temperature / top-k / top-p / seed, all as tensors, with no host round-trip. Its noise is a
pure function of (seed, sample index, step): a counter-based hash, not a stateful generator, so a sample's tokens do
not depend on which other rows share the batch, on the row it sits in, or on how the work is split over processes.
Drawing is by inverse CDF: the first token whose cumulative probability (softmax(logits / T) restricted to the
top-k / top-p set) reaches u.

`generate(model, tokenizer, prompts, params)` is the short way to sample text: a thin call into the engine
(wizardcoder/engine), kept for the demo, the evaluation CLI and older callers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import ConfigError
from .profiling import ranged

MASK32 = 0xFFFFFFFF


@dataclass
class SamplingParams:
    """How to sample one request (per-request, so requests with different settings share a batch)."""

    n: int = 1  # completions drawn for the prompt; they share the prompt's K/V
    temperature: float = 0.0  # 0 = greedy (argmax); otherwise logits are divided by it
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p (1 keeps all)
    top_k: int = 0  # keep only the k most likely tokens (0 = off); applied before top_p
    max_new_tokens: int = 256  # generated tokens at most (finish_reason "length" when reached)
    stop: list[str] = field(default_factory=list)  # the completion ends before the first of these strings ("stop")
    seed: int | None = None  # same seed, prompt and settings: same samples, whatever shares the batch; None: random

    def __post_init__(self):
        def need_int(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name} must be an integer, got {v!r}.")
            if v < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {v}.")

        def need_float(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}.")
            setattr(self, name, float(v))

        need_int("n", 1)
        need_int("top_k", 0)
        need_int("max_new_tokens", 1)
        need_float("temperature")
        need_float("top_p")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}.")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop must be a list of non-empty strings, got {self.stop!r}.")
        self.stop = list(self.stop)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an integer or null, got {self.seed!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# ------------------------------------------------------------------------------------------ counter-based noise
def _mul32(x, c: int):
    """(x * c) mod 2**32 for x in [0, 2**32) without int64 overflow (python ints and int64 tensors alike)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def fmix32(x):
    """MurmurHash3's 32-bit finaliser (a bijection with full avalanche) on values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def sample_key(seed: int, index: int) -> int:
    """The 32-bit stream key of sample `index` of a request with `seed` (any python int)."""
    seed &= (1 << 64) - 1
    h = fmix32((seed & MASK32) ^ 0x9E3779B9)
    h = fmix32(h ^ fmix32((seed >> 32) ^ 0x7F4A7C15))
    return fmix32(h ^ fmix32((index & MASK32) ^ 0x2545F491))


def uniform_noise(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """u in (0, 1), `[B]` fp32: a pure function of (keys[b], steps[b]), 24 random bits each."""
    bits = fmix32(keys ^ fmix32((steps & MASK32) ^ 0x6A09E667)) >> 8
    return (bits.float() + 0.5) * (1.0 / (1 << 24))


# ------------------------------------------------------------------------------------------------ the sampler
@ranged("sampling")  # a named range in --profile traces
def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
                keys: torch.Tensor, steps: torch.Tensor, filtered: bool = True, random: bool = True) -> torch.Tensor:
    """Next token per row of `logits [B, V]`, each row with its own settings (all `[B]` tensors on the device).

    Steps: fp32 logits; divide by the row's temperature; with `filtered`, sort (stably, so ties keep token order),
    keep the top-k, then the smallest prefix whose renormalised mass reaches top-p (at least one token); softmax;
    draw by inverse CDF with one uniform per row from (keys, steps); rows with temperature 0 take the argmax.
    One uniform per row (not per token: a Gumbel-max draw would hash B x V values every step) keeps the noise
    cheap; the cumulative sum runs within a row, so the draw does not depend on the other rows. The caller may
    skip work it knows no row needs: `filtered` False (no top-k / top-p), `random` False (all greedy). No host
    sync."""
    logits = logits.float()
    if not random:
        return logits.argmax(-1)
    greedy = temperature <= 0
    x = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    order = None
    if filtered:
        x, order = x.sort(dim=-1, descending=True, stable=True)
        rank = torch.arange(x.shape[-1], device=x.device)[None, :]
        x = x.masked_fill((top_k[:, None] > 0) & (rank >= top_k[:, None]), float("-inf"))
        probs = x.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        x = x.masked_fill((before >= top_p[:, None]) & (rank > 0), float("-inf"))
    cdf = x.softmax(-1).cumsum(-1)
    u = uniform_noise(keys, steps) * cdf[:, -1]
    pick = torch.searchsorted(cdf, u[:, None]).clamp(max=x.shape[-1] - 1)  # first position with cdf >= u
    token = pick[:, 0] if order is None else order.gather(-1, pick)[:, 0]
    return torch.where(greedy, logits.argmax(-1), token)


def truncate_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def generate(model, tokenizer, prompts: list[str], params: SamplingParams, batch_size: int = 32,
             progress: bool = False) -> list[list[str]]:
    """`params.n` completions for every prompt (text after the prompt, cut at the first stop string), through the
    engine with `batch_size` sample slots."""
    from .engine import Engine

    encoded = tokenizer.encode_batch(prompts)
    max_len = max(len(p) for p in encoded) + params.max_new_tokens
    engine = Engine(model, tokenizer, max_slots=batch_size, max_len=min(max_len, model.config.n_positions))
    return [[c.text for c in samples] for samples in engine.generate(encoded, params, progress=progress)]
