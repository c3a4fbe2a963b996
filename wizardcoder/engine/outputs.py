"""What the engine hands back, and the host work that makes it: `RequestOutput` per changed sample and step,
`Completion` per finished sample, and the stop-string check on decoded text (`find_stop`).

The stop-string check is host work (detokenizing), so it runs off the device's critical path: the tokens a sync
brings of a running sample are searched while the device runs the next round of decode steps (engine/core.py,
`Engine.step`). A stop string found then ends the sample with exactly the tokens and text it would have had if the
search had come first; its rows ran one round more, whose tokens are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..profiling import ranged
from .sampler import truncate_at_stop


@dataclass
class Completion:
    """One finished sample."""

    text: str  # decoded completion, cut before the first stop string
    token_ids: list[int]  # generated tokens (EOS excluded; through the token that completed a stop string)
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_new_tokens reached)
    prompt_tokens: int


class RequestOutput:
    """What one `step()` changed for sample `index` of request `request_id`. `token_ids` (all so far) and `text`
    (decoded; stop-truncated once finished) are made on first access, so a step costs no O(length) work per row."""

    __slots__ = ("request_id", "index", "new_token_ids", "finished", "finish_reason", "prompt_tokens",
                 "_tokens", "_n", "_ids", "_text", "_decode")

    def __init__(self, request_id, index, new_token_ids, tokens, finished, finish_reason, prompt_tokens,
                 text=None, decode=None):
        self.request_id, self.index, self.new_token_ids = request_id, index, new_token_ids
        self.finished, self.finish_reason, self.prompt_tokens = finished, finish_reason, prompt_tokens
        # the row's token list only grows while it runs, so its first _n entries are this step's token_ids
        self._tokens, self._n, self._ids = tokens, len(tokens), None
        self._text, self._decode = text, decode

    @property
    def token_ids(self) -> list[int]:
        if self._ids is None:
            self._ids = self._tokens[: self._n]
        return self._ids

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self._decode(self.token_ids) if self._decode else ""
        return self._text

    def __repr__(self) -> str:
        return (f"RequestOutput({self.request_id!r}, index={self.index}, tokens={len(self.token_ids)}, "
                f"finished={self.finished}, finish_reason={self.finish_reason!r})")


@dataclass
class EngineStats:
    decode_steps: int = 0  # batched decode steps run
    row_steps: int = 0  # sum over decode steps of the rows holding a live sample
    prefill_tokens: int = 0
    generated_tokens: int = 0


@ranged("stop check")  # a named range in --profile traces
def find_stop(row, decode) -> str | None:
    """If the row's text now holds one of its request's stop strings: the text cut before it, and the row's tokens
    are cut to the shortest prefix whose text already holds it; else None. Only the tail since the last check (plus
    an overlap as long as the longest stop string can span) is decoded."""
    stops, toks = row.req.params.stop, row.tokens
    overlap = 4 * max(len(s) for s in stops) + 4
    start = max(0, row.checked - overlap)
    row.checked = len(toks)
    if not any(s in decode(toks[start:]) for s in stops):
        return None
    for m in range(start + 1, len(toks) + 1):
        text = decode(toks[:m])
        cut = truncate_at_stop(text, stops)
        if len(cut) < len(text):
            del toks[m:]
            return cut
    return truncate_at_stop(decode(toks), stops)
