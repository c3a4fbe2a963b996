"""How to sample one request, and where every seed comes from: `SamplingParams` (torch-free, so a server can
validate requests without touching the device) and the counter-based keys. A sample's noise stream is keyed by
`sample_key(seed, index)`; `derived_seed(seed, name)` gives a named item (a benchmark problem) its own seed. Both are
pure functions, so no split of the work over batches, ranks or resumed runs changes a sample."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from ..errors import ConfigError

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




def derived_seed(seed: int, name: str) -> int:
    """The seed of item `name` (e.g. a task_id) of a run seeded with `seed`: a function of both alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8], "little") >> 1


def context_limit(positions: int, max_len: int | None = None) -> int:
    """Tokens one sample may hold, prompt + new (`max_len`: --max-len; None: the model's `positions`). The one check
    of a context setting: generate, serve and the Engine all call it."""
    limit = positions if max_len is None else int(max_len)
    if not 2 <= limit <= positions:
        raise ConfigError(f"--max-len {limit} is outside [2, {positions}] (one prompt token and one new token, at most "
                          "the model's positions); change it.")
    return limit


def check_context(prompt_tokens: int, max_new_tokens: int, limit: int, what: str = "the prompt") -> None:
    """Refuse, in one sentence, a prompt that leaves no room for its new tokens: the one context-length check of a
    request (the Engine runs it on every request; generate runs it on its longest prompt before any work)."""
    if prompt_tokens + max_new_tokens > limit:
        raise ConfigError(f"{what} ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) is over the {limit} "
                          "tokens a sample may hold (the model's positions, or --max-len); shorten the prompt or lower "
                          "--max-new-tokens.")
