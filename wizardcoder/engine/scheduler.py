"""The engine's scheduler: which request's samples sit in which rows, which prompt sits in which prompt slot, and the
sizes of the next round of decode steps. Host bookkeeping only; it touches no tensor.

Admission is FIFO: a request with n > 1 samples first takes a prompt slot and its prompt (all but the last token) is
prefilled ONCE into it; its samples then take rows as rows come free, each starting from the prompt's last token. A
request with one sample (or no free prompt slot when sharing is off) keeps its prompt in its own row. Rows and slots
are taken lowest first, so the ones in use sit at the front and a step computes only those.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .params import SamplingParams


@dataclass(eq=False)
class Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    seed: int
    prompt_slot: int | None = None  # its prompt slot once admitted (None: the prompt lives in each row)
    admitted: bool = False
    next_index: int = 0  # next sample to start
    live_rows: int = 0
    aborted: bool = False


@dataclass(eq=False)
class Row:
    req: Request
    index: int
    start_len: int  # tokens in the row before its first decode step
    tokens: list[int] = field(default_factory=list)
    checked: int = 0  # tokens already searched for stop strings


@dataclass
class Round:
    """The next round of decode steps: `steps` steps over the first `n_rows` rows, attending to the first
    `prefix_width` keys of the first `prefix_slots` prompt slots and the first `row_width` keys of each row;
    `groups[p]` = the rows whose prompt is in slot p (rows that hold their prompt themselves are in none)."""

    live: list[tuple[int, Row]]
    steps: int
    prefix_slots: int
    prefix_width: int
    row_width: int
    n_rows: int
    groups: list[list[int]]


class Scheduler:
    def __init__(self, max_slots: int, max_prompts: int, max_len: int, share_prompts: bool, sync_every: int,
                 width_step: int, pow2_rows: bool):
        self.B, self.max_len, self.share_prompts, self.sync_every = max_slots, max_len, share_prompts, sync_every
        self.width_step, self.pow2_rows = width_step, pow2_rows
        self.rows: list[Row | None] = [None] * max_slots
        self.free_prompt_slots = list(range(max_prompts))
        self.prompt_slot_len = [0] * max_prompts
        self.queue: list[Request] = []
        self.requests: dict[str, Request] = {}

    def add(self, req: Request) -> None:
        self.requests[req.id] = req
        self.queue.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.queue) or any(r is not None for r in self.rows)

    def admit(self) -> tuple[list[tuple[str, int, list[int]]], list[tuple[int, Row]]]:
        """Move queued work into free rows: (prefills to run: (kind "prefix" | "row", index, tokens), rows started)."""
        free = [b for b, r in enumerate(self.rows) if r is None]
        prefills: list[tuple[str, int, list[int]]] = []
        started: list[tuple[int, Row]] = []
        for req in list(self.queue):
            if not free:
                break
            if not req.admitted:
                if self.share_prompts and req.params.n > 1 and len(req.prompt) > 1:
                    if not self.free_prompt_slots:
                        continue  # waits for a prompt slot; requests behind it may start meanwhile
                    req.prompt_slot = self.free_prompt_slots.pop(0)
                    self.prompt_slot_len[req.prompt_slot] = len(req.prompt) - 1
                    prefills.append(("prefix", req.prompt_slot, req.prompt[:-1]))
                req.admitted = True
            while free and req.next_index < req.params.n:
                b = free.pop(0)
                own = req.prompt_slot is None
                row = Row(req, req.next_index, start_len=len(req.prompt) - 1 if own else 0)
                if own and row.start_len:
                    prefills.append(("row", b, req.prompt[:-1]))
                req.next_index += 1
                req.live_rows += 1
                self.rows[b] = row
                started.append((b, row))
            if req.next_index == req.params.n:
                self.queue.remove(req)
        return prefills, started

    def sampling_flags(self) -> tuple[bool, bool, bool]:
        """(any row filters by top-k / top-p, any row draws at random, any row uses top-k): work the sampler skips."""
        sampled = [r.req.params for r in self.rows if r is not None and r.req.params.temperature > 0]
        return (any(p.top_k > 0 or p.top_p < 1 for p in sampled), bool(sampled), any(p.top_k > 0 for p in sampled))

    def next_round(self) -> Round | None:
        live = [(b, r) for b, r in enumerate(self.rows) if r is not None]
        if not live:
            return None
        # Sync where the first row reaches its length, so that row is refilled without idle steps, but after no
        # fewer than sync_every / 2 steps (each sync costs host work per row); rows still end on the device.
        first_end = min(r.req.params.max_new_tokens - len(r.tokens) for _, r in live)
        k = min(self.sync_every, max(first_end, self.sync_every // 2, 1))
        slots = 1 + max((i for i, n in enumerate(self.prompt_slot_len) if n), default=-1)
        prefix_w = self._bucket(max(self.prompt_slot_len[:slots], default=1))
        row_w = self._bucket(max(r.start_len + len(r.tokens) for _, r in live) + k)
        n = live[-1][0] + 1  # exactly the used rows; on CUDA the next power of two (fewer graphs)
        nb = n if not self.pow2_rows else min(self.B, 1 << (n - 1).bit_length())
        groups: list[list[int]] = [[] for _ in range(slots)]
        for b, r in live:
            if r.req.prompt_slot is not None:
                groups[r.req.prompt_slot].append(b)
        return Round(live, k, slots, prefix_w, row_w, nb, groups)

    def _bucket(self, n: int) -> int:
        g = self.width_step
        return max(1, min(self.max_len, math.ceil(n / g) * g))

    def free_row(self, b: int) -> None:
        row = self.rows[b]
        if row is not None:
            row.req.live_rows -= 1
            self.rows[b] = None
            self.release_if_done(row.req)

    def abort(self, req: Request) -> list[int]:
        """Drop a request: queued samples never start; returns the rows it held (now free)."""
        req.aborted = True
        if req in self.queue:
            self.queue.remove(req)
        rows = [b for b, r in enumerate(self.rows) if r is not None and r.req is req]
        for b in rows:
            self.free_row(b)
        self.release_if_done(req)
        return rows

    def release_if_done(self, req: Request) -> None:
        """Give the prompt slot back once no sample of the request is running or left to start."""
        finished = req.aborted or req.next_index == req.params.n
        if finished and req.live_rows == 0:
            if req.prompt_slot is not None:
                self.prompt_slot_len[req.prompt_slot] = 0
                self.free_prompt_slots.append(req.prompt_slot)
                self.free_prompt_slots.sort()
                req.prompt_slot = None
            self.requests.pop(req.id, None)
