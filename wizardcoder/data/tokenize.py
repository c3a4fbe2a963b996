"""Tokenize examples into (prompt + response + EOS) token sequences with a loss boundary.

The prompt and the response are encoded separately and concatenated, then the EOS id is appended:

    ids    = encode(prompt) + encode(output) + [eos_id]
    labels = [-100] * len(encode(prompt)) + encode(output) + [eos_id]       (unshifted, HF style)

so the loss covers exactly the response and its EOS, and decoding the response tokens gives back the response text.
At inference the prompt is encoded alone and the model continues it, which this matches token for token. (WizardCoder's
script encodes prompt+output+"<|endoftext|>" as one string and masks the first len(encode(prompt)) tokens; where BPE
merges across the prompt/response boundary -- about 6% of the evolved data with StarCoder's tokenizer -- that gives
a slightly different split. Appending the EOS id, not the text "<|endoftext|>", also keeps a literal "<|endoftext|>"
inside a response from being read as end of text.)

`boundary="joint"` reproduces WizardCoder's script instead: ids = encode(prompt + output) + [eos_id], with the first
len(encode(prompt)) tokens masked. `boundary="auto"` (the `pack` default) is "joint" for a sentencepiece tokenizer
(CodeLlama's tokenizer.model) and "separate" for any other: sentencepiece gives a separately encoded response a
leading "dummy prefix" space ("\ndef" alone is "▁", "<0x0A>", ...), a token the model never sees after the prompt
at inference, where it continues the prompt's pieces; the joined text has no such piece.

BOS: a tokenizer whose release puts BOS before every text (`tokenizer.add_bos_token`: CodeLlama, WizardCoder-Python,
DeepSeek-Coder; not StarCoder) gets its BOS id first in every sample, as the HF tokenizer call of WizardCoder's
script gives it (`tokenizer(prompt + output)` and `tokenizer(prompt)` both start with BOS): the BOS is part of the
prompt (no loss), and the model sees at training what generation feeds it, [BOS] + encode(prompt).

The tokenizer: a `wizardcoder.Tokenizer`, or any object with its `encode_batch(texts)`, `eos_id`, `bos_id`,
`add_bos_token` and `kind` ("sentencepiece" or anything else).

Over-long samples (more than `seq_len` tokens) follow `overlong`:
  "truncate" keeps the first seq_len tokens (the recipe's truncation: the response is cut and its EOS lost); a sample
             whose prompt alone leaves no response token is dropped as "prompt_too_long".
  "drop"     drops the sample, counted as "too_long".
"""
from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .readers import Example
from .templates import Template


@dataclass
class TokenizedSamples:
    """All kept samples in one flat token array. Sample i is tokens[offsets[i]:offsets[i+1]]; its first
    prompt_lens[i] tokens are prompt (no loss), the rest response (+ EOS unless truncated). `source[i]` is the
    sample's index in the example list it came from."""

    tokens: np.ndarray  # int32 [total]
    offsets: np.ndarray  # int64 [n + 1]
    prompt_lens: np.ndarray  # int32 [n]
    source: np.ndarray  # int64 [n]
    truncated: np.ndarray  # bool [n]
    dropped: collections.Counter = field(default_factory=collections.Counter)

    def __len__(self) -> int:
        return len(self.prompt_lens)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def loss_mask(self) -> np.ndarray:
        """uint8 [total]: 1 on response and EOS tokens."""
        n = len(self)
        pos = np.arange(len(self.tokens)) - np.repeat(self.offsets[:-1], self.lengths)
        return (pos >= np.repeat(self.prompt_lens, self.lengths)).astype(np.uint8) if n else np.zeros(0, np.uint8)


BOUNDARIES = ("auto", "separate", "joint")


def resolve_boundary(boundary: str, tokenizer) -> str:
    """"separate" or "joint": `auto` is joint for a sentencepiece tokenizer, separate otherwise (module docstring)."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {', '.join(BOUNDARIES)}, not {boundary!r}")
    if boundary == "auto":
        return "joint" if tokenizer.kind == "sentencepiece" else "separate"
    return boundary


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer,
    template: Template,
    seq_len: int,
    overlong: str = "truncate",
    batch_size: int = 2048,
    progress: bool = False,
    boundary: str = "auto",
) -> TokenizedSamples:
    """Encode every example through the tokenizer's parallel batch path (`tokenizer.encode_batch`)."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', not {overlong!r}")
    boundary = resolve_boundary(boundary, tokenizer)
    eos = tokenizer.eos_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; the response must be closed by one")
    bos = [tokenizer.bos_id] if tokenizer.add_bos_token and tokenizer.bos_id is not None else []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), unit="sample", desc="tokenize", dynamic_ncols=True)
    # Python lists live for one batch only; each batch is kept as one int32 array (80k samples of evolved data are
    # ~26M tokens: ~100 MB as int32, over 1 GB as Python ints).
    parts, lengths, prompt_lens, sources, truncated = [], [], [], [], []
    dropped: collections.Counter = collections.Counter()
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        texts = [template.prompt(e.instruction, e.input) for e in batch]
        prompts = tokenizer.encode_batch(texts)
        if boundary == "separate":
            outputs = tokenizer.encode_batch([e.output for e in batch])
        else:  # the recipe: the joined text, its first len(prompt) tokens masked
            joined = tokenizer.encode_batch([t + e.output for t, e in zip(texts, batch)])
            outputs = [ids[len(p):] for ids, p in zip(joined, prompts)]
            prompts = [ids[: len(p)] for ids, p in zip(joined, prompts)]
        if bos:
            prompts = [bos + p for p in prompts]
        batch_ids = []
        for j, (p, o) in enumerate(zip(prompts, outputs)):
            n = len(p) + len(o) + 1
            if n > seq_len:
                if overlong == "drop":
                    dropped["too_long"] += 1
                    continue
                if len(p) >= seq_len:
                    dropped["prompt_too_long"] += 1
                    continue
                ids = (p + o)[:seq_len]
                truncated.append(True)
            else:
                ids = p + o
                ids.append(eos)
                truncated.append(False)
            batch_ids.append(ids)
            lengths.append(len(ids))
            prompt_lens.append(len(p))
            sources.append(start + j)
        n_batch = sum(map(len, batch_ids))
        parts.append(np.fromiter(itertools.chain.from_iterable(batch_ids), dtype=np.int32, count=n_batch))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(np.asarray(lengths, np.int64), out=offsets[1:])
    tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return TokenizedSamples(
        tokens=tokens,
        offsets=offsets,
        prompt_lens=np.asarray(prompt_lens, np.int32),
        source=np.asarray(sources, np.int64),
        truncated=np.asarray(truncated, bool),
        dropped=dropped,
    )
