"""The generation engine: a fixed set of sample slots over a static KV cache, continuous batching, one host sync
every few tokens.

Work flows like this (gpt-fast's prefill / decode-one-token split; vLLM's request/slot bookkeeping):
1. `add_request(prompt_ids, params)` validates the request alone and queues it.
2. `step()` admits queued work into free rows, FIFO: a request with n > 1 samples first takes a prompt slot and its
   prompt (all but the last token) is prefilled ONCE into it; its samples then take rows as rows come free, each
   row starting from the prompt's last token. A request with one sample (or no free prompt slot when sharing is
   off) keeps its prompt in its own row. Several prompts are prefilled in one packed forward.
3. `step()` then runs up to `sync_every` decode steps for all rows at once, entirely on the device: forward one
   token per row (shared-prefix attention), sample with each row's own settings (engine/sampler.py: sample_rows),
   append the token, and mark rows done on EOS or length. On CUDA each step is a captured CUDA graph.
4. One host sync per `step()` reads the new tokens, checks stop strings on the decoded text, finishes rows (finish
   reason "stop" for EOS or a stop string, "length" at max_new_tokens) and frees them, so the next `step()` refills
   them at once: a long sample never holds the others back.

A sample's tokens are a function of (model, prompt, params, seed, sample index) alone: the noise is counter-based,
so neither the batch it shares nor the row it sits in changes it. The engine is not thread-safe: drive it from one
thread.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..profiling import ranged
from .params import SamplingParams, sample_key
from .sampler import sample_rows, truncate_at_stop
from .cache import SlotCache
from .invariant import RowTiledLinear


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


@dataclass(eq=False)
class _Request:
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
class _Row:
    req: _Request
    index: int
    start_len: int  # tokens in the row before its first decode step
    tokens: list[int] = field(default_factory=list)
    checked: int = 0  # tokens already searched for stop strings


@dataclass
class EngineStats:
    decode_steps: int = 0  # batched decode steps run
    row_steps: int = 0  # sum over decode steps of the rows holding a live sample
    prefill_tokens: int = 0
    generated_tokens: int = 0


def _check_memory(cfg, max_slots: int, max_prompts: int, max_len: int, dtype, device) -> None:
    """Refuse, in one sentence, a cache that cannot fit in the device's free memory (rather than being killed)."""
    elem = torch.empty((), dtype=dtype).element_size()
    kv = 2 * cfg.n_layer * (max_slots + max_prompts) * max_len * cfg.n_kv_head * cfg.head_dim * elem
    need = kv + max_slots * max_len * 8  # + the generated tokens
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free:
        raise ConfigError(f"{max_slots} sample slots of {max_len} tokens need {need / 2**30:.1f} GiB of KV cache but "
                          f"the {device.type} device has {free / 2**30:.1f} GiB free; use fewer slots (generate's "
                          "--batch-slots, serve's --max-slots) or fewer tokens per sample.")


class Engine:
    def __init__(self, model, tokenizer=None, *, max_slots: int = 64, max_len: int | None = None,
                 max_prompts: int | None = None, device=None, compile: str | bool = "auto", sync_every: int = 8,
                 share_prompts: bool = True, max_prefill_tokens: int = 8192, eos_id: int | None = None,
                 deterministic: bool = False):
        """`max_slots` samples decode together; `max_len` bounds prompt + new tokens of one sample (default: the
        model's positions); `max_prompts` prompt slots (default max_slots // 8, at least 2); `compile`: "auto"
        captures each decode step as a CUDA graph on CUDA (nothing on CPU), "compile" also torch.compiles it
        (slow to start: one compile per decode shape), "off" runs eagerly; `sync_every` decode steps between host syncs.
        `deterministic`: batch-invariant steps (engine/invariant.py): a seeded sample's tokens do not depend on what
        shares the batch, the number of slots or ranks (at a cost; CUDA graphs and compile are off)."""
        cfg = model.config
        if device is not None:
            model = model.to(device)
        param = next(model.parameters())
        self.model, self.tokenizer, self.device, self.dtype = model, tokenizer, param.device, param.dtype
        self.max_len = int(max_len or cfg.n_positions)
        if not 2 <= self.max_len <= cfg.n_positions:
            raise ConfigError(f"max_len must be in [2, {cfg.n_positions}] (the model's positions), got {self.max_len}.")
        if max_slots < 1 or sync_every < 1:
            raise ConfigError(f"max_slots and sync_every must be >= 1, got {max_slots} and {sync_every}.")
        if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size} "
                              "embeddings; use the tokenizer saved with this checkpoint.")
        self.eos_id = eos_id if eos_id is not None else (tokenizer.eos_id if tokenizer is not None else None)
        self.B, self.sync_every, self.share_prompts = max_slots, sync_every, share_prompts
        self.max_prefill_tokens = max_prefill_tokens
        P = max_prompts or max(2, max_slots // 8)
        _check_memory(cfg, max_slots, P, self.max_len, self.dtype, self.device)
        self.cache = SlotCache(cfg, max_slots, P, self.max_len, self.dtype, self.device)
        self.deterministic = self.cache.invariant = bool(deterministic)
        if deterministic:
            compile, self.max_prefill_tokens = "off", 1  # eager steps; each prompt prefilled alone
        self._width_step = 256 if self.device.type == "cuda" else 16
        dev, B = self.device, max_slots
        # Per-row sampling settings and state, on the device (free rows are `done`).
        self.input_tok = torch.zeros(B, dtype=torch.long, device=dev)
        self.temperature = torch.zeros(B, device=dev)
        self.top_p = torch.ones(B, device=dev)
        self.top_k = torch.zeros(B, dtype=torch.long, device=dev)
        self.keys = torch.zeros(B, dtype=torch.long, device=dev)
        self.max_new = torch.ones(B, dtype=torch.long, device=dev)
        self.n_gen = torch.zeros(B, dtype=torch.long, device=dev)
        self.done = torch.ones(B, dtype=torch.bool, device=dev)
        self.hit_eos = torch.zeros(B, dtype=torch.bool, device=dev)
        self.out_tokens = torch.zeros(B, self.max_len, dtype=torch.long, device=dev)
        self._rows: list[_Row | None] = [None] * B
        self._free_prompt_slots = list(range(P))
        self._prompt_slot_len = [0] * P
        self._queue: list[_Request] = []
        self._requests: dict[str, _Request] = {}
        self._ids = itertools.count()
        self._filtered = self._random = self._any_top_k = False
        self.stats = EngineStats()
        mode = {True: "compile", False: "off", None: "off"}.get(compile, compile)
        if mode not in ("auto", "graph", "compile", "off"):
            raise ConfigError(f"compile must be auto, compile or off, got {compile!r}.")
        self._graphs_on = self.device.type == "cuda" and mode in ("auto", "graph", "compile")
        self._step_fn = self._decode_step if not deterministic else self._invariant_step
        if mode == "compile":  # one compile per decode shape (checked on CPU: the same tokens as eager)
            self._step_fn = torch.compile(self._decode_step, dynamic=False,
                                          mode="max-autotune-no-cudagraphs" if self._graphs_on else None)
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._warm: set[tuple] = set()
        self._pool = torch.cuda.graph_pool_handle() if self._graphs_on else None

    # ------------------------------------------------------------------------------------------------ requests
    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> str:
        """Validate this request alone (bad ones raise ConfigError and leave the others untouched) and queue it."""
        if not isinstance(params, SamplingParams):
            raise ConfigError(f"params must be a SamplingParams, got {type(params).__name__}.")
        if not isinstance(prompt_ids, (list, tuple)) or not prompt_ids:
            raise ConfigError("the prompt is empty; give at least one token.")
        V = self.model.config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < V for t in prompt_ids):
            raise ConfigError(f"prompt token ids must be integers in [0, {V}).")
        if len(prompt_ids) + params.max_new_tokens > self.max_len:
            raise ConfigError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) is over "
                              f"the {self.max_len} tokens a sample may hold; shorten the prompt or lower max_new_tokens.")
        if params.stop and self.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer; this engine was built without one.")
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self._requests:
            raise ConfigError(f"request id {request_id!r} is already in use.")
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)))
        req = _Request(request_id, list(prompt_ids), params, seed)
        self._requests[request_id] = req
        self._queue.append(req)
        return request_id

    def abort(self, request_id: str) -> None:
        """Drop a request: queued samples never start, running ones stop now (no further outputs)."""
        req = self._requests.get(str(request_id))
        if req is None:
            return
        req.aborted = True
        if req in self._queue:
            self._queue.remove(req)
        rows = [b for b, r in enumerate(self._rows) if r is not None and r.req is req]
        for b in rows:
            self._free_row(b)
        if rows:
            self.done[torch.tensor(rows, device=self.device)] = True
        self._maybe_release(req)

    def has_unfinished(self) -> bool:
        return bool(self._queue) or any(r is not None for r in self._rows)

    def num_waiting(self) -> int:
        return len(self._queue)

    # --------------------------------------------------------------------------------------------------- steps
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Admit queued work into free rows (prefilling new prompts), run up to `sync_every` decode steps, sync
        once; returns the outputs that changed."""
        self._admit()
        live = [(b, r) for b, r in enumerate(self._rows) if r is not None]
        if not live:
            return []
        # Sync where the first row reaches its length, so that row is refilled without idle steps, but after no
        # fewer than sync_every / 2 steps (each sync costs host work per row); rows still end on the device.
        first_end = min(r.req.params.max_new_tokens - len(r.tokens) for _, r in live)
        k = min(self.sync_every, max(first_end, self.sync_every // 2, 1))
        # Slots and rows are taken lowest first, so the ones in use sit at the front: compute only those.
        slots = 1 + max((i for i, n in enumerate(self._prompt_slot_len) if n), default=-1)
        prefix_w = self._bucket(max(self._prompt_slot_len[:slots], default=1))
        row_w = self._bucket(max(r.start_len + len(r.tokens) for _, r in live) + k)
        nb = self._rows_bucket(live[-1][0] + 1)
        self.cache.set_decode(slots, prefix_w, row_w, nb)
        for _ in range(k):
            self._run_decode((slots, prefix_w, row_w, nb, self._filtered, self._random, self._any_top_k))
        self.stats.decode_steps += k
        self.stats.row_steps += k * len(live)
        return self._sync(live, k)

    def generate(self, prompts, params, progress: bool = False, on_prompt_done=None) -> list[list[Completion]]:
        """Sample every prompt (text or token ids) with its params (one for all, or a list) until all finish;
        returns, per prompt, its n Completions in sample order. `on_prompt_done(i, completions)` is called as soon
        as prompt i's samples are all done. Meant for offline use: outputs of other queued requests are dropped."""
        params_list = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(params_list)} SamplingParams.")
        if self.tokenizer is None and any(isinstance(p, str) for p in prompts):
            raise ConfigError("text prompts need a tokenizer; this engine was built without one (give token ids).")
        ids = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        rids = [self.add_request(p, sp) for p, sp in zip(ids, params_list)]
        where = {rid: i for i, rid in enumerate(rids)}
        results: list[list[Completion | None]] = [[None] * sp.n for sp in params_list]
        left = [sp.n for sp in params_list]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(left), desc="generate", unit="sample", dynamic_ncols=True)
        t0, tokens = time.perf_counter(), 0
        while self.has_unfinished():
            for out in self.step():
                i = where.get(out.request_id)
                if i is None or not out.finished:
                    continue
                results[i][out.index] = Completion(out.text, out.token_ids, out.finish_reason, out.prompt_tokens)
                tokens += len(out.token_ids)
                left[i] -= 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{tokens / (time.perf_counter() - t0):.0f} tok/s", refresh=False)
                if left[i] == 0 and on_prompt_done is not None:
                    on_prompt_done(i, results[i])
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------------ internals
    def _bucket(self, n: int) -> int:
        g = self._width_step
        return max(1, min(self.max_len, math.ceil(n / g) * g))

    def _rows_bucket(self, n: int) -> int:
        """Rows a step computes: exactly the used ones on CPU; the next power of two on CUDA (fewer graphs)."""
        return n if not self._graphs_on else min(self.B, 1 << (n - 1).bit_length())

    @ranged("scheduling")  # a named range in --profile traces
    def _admit(self) -> None:
        free = [b for b, r in enumerate(self._rows) if r is None]
        if not free or not self._queue:
            return
        prefills: list[tuple[str, int, list[int]]] = []
        started: list[tuple[int, _Row]] = []
        for req in list(self._queue):
            if not free:
                break
            if not req.admitted:
                if self.share_prompts and req.params.n > 1 and len(req.prompt) > 1:
                    if not self._free_prompt_slots:
                        continue  # waits for a prompt slot; requests behind it may start meanwhile
                    req.prompt_slot = self._free_prompt_slots.pop(0)
                    self._prompt_slot_len[req.prompt_slot] = len(req.prompt) - 1
                    prefills.append(("prefix", req.prompt_slot, req.prompt[:-1]))
                req.admitted = True
            while free and req.next_index < req.params.n:
                b = free.pop(0)
                own = req.prompt_slot is None
                row = _Row(req, req.next_index, start_len=len(req.prompt) - 1 if own else 0)
                if own and row.start_len:
                    prefills.append(("row", b, req.prompt[:-1]))
                req.next_index += 1
                req.live_rows += 1
                self._rows[b] = row
                started.append((b, row))
            if req.next_index == req.params.n:
                self._queue.remove(req)
        self._prefill(prefills)
        if started:
            self._start_rows(started)
        sampled = [r.req.params for r in self._rows if r is not None and r.req.params.temperature > 0]
        self._random = bool(sampled)  # all greedy: no noise to draw
        self._filtered = any(p.top_k > 0 or p.top_p < 1 for p in sampled)
        self._any_top_k = any(p.top_k > 0 for p in sampled)

    @ranged("prefill")
    def _prefill(self, prefills: list[tuple[str, int, list[int]]]) -> None:
        """Packed forwards of at most max_prefill_tokens tokens (a longer prompt goes alone)."""
        if not prefills:
            return
        slots = [(idx, len(toks)) for kind, idx, toks in prefills if kind == "prefix"]
        if slots:
            idx = torch.tensor([s for s, _ in slots], device=self.device)
            self.cache.prefix_len[idx] = torch.tensor([n for _, n in slots], device=self.device)
        chunk: list = []
        for item in prefills + [None]:
            if chunk and (item is None or sum(len(t) for *_, t in chunk) + len(item[2]) > self.max_prefill_tokens):
                self.cache.set_prefill([(kind, idx, len(t)) for kind, idx, t in chunk])
                ids = torch.tensor([t for *_, toks in chunk for t in toks], device=self.device)[None]
                self.model.hidden_states(ids, kv_cache=self.cache)
                self.stats.prefill_tokens += ids.shape[1]
                chunk = []
            if item is not None:
                chunk.append(item)

    def _start_rows(self, started: list[tuple[int, _Row]]) -> None:
        """Load the new rows' settings and state onto the device (a few small host-to-device copies)."""
        d = self.device
        rows = torch.tensor([b for b, _ in started], device=d)
        reqs = [r.req for _, r in started]
        self.input_tok[rows] = torch.tensor([q.prompt[-1] for q in reqs], device=d)
        self.temperature[rows] = torch.tensor([q.params.temperature for q in reqs], device=d)
        self.top_p[rows] = torch.tensor([q.params.top_p for q in reqs], device=d)
        self.top_k[rows] = torch.tensor([q.params.top_k for q in reqs], device=d)
        self.keys[rows] = torch.tensor([sample_key(r.req.seed, r.index) for _, r in started], device=d)
        self.max_new[rows] = torch.tensor([q.params.max_new_tokens for q in reqs], device=d)
        self.n_gen[rows] = 0
        self.done[rows] = False
        self.hit_eos[rows] = False
        self.cache.row_len[rows] = torch.tensor([r.start_len for _, r in started], device=d)
        self.cache.row_prefix[rows] = torch.tensor([-1 if q.prompt_slot is None else q.prompt_slot for q in reqs],
                                                   device=d)

    def _decode_step(self) -> None:
        """One token for each of the first cache.n_rows rows, on the device only (static shapes for a given
        (widths, n_rows); captured as a CUDA graph on CUDA). All state is updated in place."""
        nb = self.cache.n_rows
        input_tok, n_gen, done, hit_eos = self.input_tok[:nb], self.n_gen[:nb], self.done[:nb], self.hit_eos[:nb]
        h = self.model.hidden_states(input_tok[:, None], kv_cache=self.cache)[:, -1]
        logits = F.linear(h, self.model.lm_head_weight())
        nxt = sample_rows(logits, self.temperature[:nb], self.top_p[:nb], self.top_k[:nb], self.keys[:nb], n_gen,
                          self._filtered, self._random, self._any_top_k)
        live = ~done
        is_eos = nxt == (self.eos_id if self.eos_id is not None else -1)
        keep = live & ~is_eos
        rows, col = self.cache.rows[:nb], n_gen.clamp(max=self.max_len - 1)
        self.out_tokens[rows, col] = torch.where(keep, nxt, self.out_tokens[rows, col])
        n_gen += keep
        self.cache.row_len[:nb] += live  # this step's input token now sits in the row
        hit_eos |= live & is_eos
        done |= hit_eos | (n_gen >= self.max_new[:nb])
        input_tok.copy_(torch.where(live, nxt, input_tok))

    def _invariant_step(self) -> None:
        with RowTiledLinear():
            self._decode_step()

    @ranged("decode")
    def _run_decode(self, key: tuple) -> None:
        if not self._graphs_on:
            self._step_fn()
            return
        graph = self._graphs.get(key)
        if graph is None:
            if key not in self._warm:  # first time at this shape: run it for real on a side stream (warm-up)
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    self._step_fn()
                torch.cuda.current_stream().wait_stream(s)
                self._warm.add(key)
                return
            graph = torch.cuda.CUDAGraph()  # second time: capture (records, runs nothing), then replay below
            try:
                with torch.cuda.graph(graph, pool=self._pool):
                    self._step_fn()
            except Exception as e:  # a kernel that cannot be captured: keep going eagerly, say so once
                import warnings

                warnings.warn(f"CUDA graph capture of the decode step failed ({type(e).__name__}: {e}); "
                              "decoding without graphs.", RuntimeWarning, stacklevel=2)
                self._graphs_on = False
                torch.cuda.synchronize()
                self._step_fn()
                return
            self._graphs[key] = graph
        graph.replay()

    @ranged("sync")
    def _sync(self, live: list[tuple[int, _Row]], k: int) -> list[RequestOutput]:
        """The one host sync of a step: new tokens, done / EOS flags; then stop strings and finished rows."""
        d = self.device
        rows = torch.tensor([b for b, _ in live], device=d)
        have = torch.tensor([len(r.tokens) for _, r in live], device=d)
        cols = (have[:, None] + torch.arange(k, device=d)[None]).clamp(max=self.max_len - 1)
        packed = torch.cat([self.n_gen[rows, None], self.done[rows, None].long(), self.hit_eos[rows, None].long(),
                            self.out_tokens[rows[:, None], cols]], 1).tolist()
        outputs, stopped = [], []
        decode = self.tokenizer.decode if self.tokenizer is not None else None
        for (b, row), (n_gen, done, hit_eos, *window) in zip(live, packed):
            before = len(row.tokens)
            row.tokens.extend(window[: n_gen - before])
            req, reason, text = row.req, None, None
            if req.params.stop:
                text = self._find_stop(row)
                if text is not None:
                    reason = "stop"
                    if not done:
                        stopped.append(b)
            new = row.tokens[before:]
            self.stats.generated_tokens += len(new)
            if reason is None and done:
                reason = "stop" if hit_eos else "length"
            if reason is not None:
                if text is None and decode is not None:
                    text = decode(row.tokens)
                self._free_row(b)
                self._maybe_release(req)
            outputs.append(RequestOutput(req.id, row.index, new, row.tokens, reason is not None, reason,
                                         len(req.prompt), text if reason else None, decode))
        if stopped:
            self.done[torch.tensor(stopped, device=d)] = True
        return outputs

    @ranged("stop check")
    def _find_stop(self, row: _Row) -> str | None:
        """If the row's text now holds a stop string: the text cut before it, and the row's tokens are cut to the
        shortest prefix whose text already holds it; else None. Only the tail since the last check (plus an
        overlap as long as the longest stop string can span) is decoded."""
        stops, toks, decode = row.req.params.stop, row.tokens, self.tokenizer.decode
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

    def _free_row(self, b: int) -> None:
        row = self._rows[b]
        if row is not None:
            row.req.live_rows -= 1
            self._rows[b] = None

    def _maybe_release(self, req: _Request) -> None:
        """Give the prompt slot back once no sample of the request is running or left to start."""
        finished = req.aborted or req.next_index == req.params.n
        if finished and req.live_rows == 0:
            if req.prompt_slot is not None:
                self._prompt_slot_len[req.prompt_slot] = 0
                self._free_prompt_slots.append(req.prompt_slot)
                self._free_prompt_slots.sort()
                req.prompt_slot = None
            self._requests.pop(req.id, None)
