"""The generation engine: a fixed set of sample slots over a static KV cache, continuous batching, one host sync
per round of decode steps. Laid out like vLLM's: this `Engine` composes the scheduler (scheduler.py: which sample
sits in which row, the sizes of the next round), the model runner (runner.py: the device state, prefill, the decode
steps, the sampler's call) and the output processor (outputs.py: stop strings, finished samples).

One `step()`:
1. the scheduler admits queued work into free rows (FIFO; the prompt of a request with n > 1 samples is prefilled
   ONCE into a shared prompt slot); the runner prefills the new prompts in packed forwards and loads the new rows;
2. the runner launches up to `sync_every` decode steps for all rows at once, entirely on the device (on CUDA each a
   captured graph);
3. while the device runs them, the host searches the tokens of the previous round for stop strings (outputs.py);
4. one host sync reads the new tokens; rows done on the device (EOS or length) finish, and are refilled by the next
   `step()` at once: a long sample never holds the others back.

A sample's tokens are a function of (model, prompt, params, seed, sample index) alone: the noise is counter-based,
so neither the batch it shares nor the row it sits in changes it (bitwise so with `deterministic=True`, see
invariant.py). The engine is not thread-safe: drive it from one thread.
"""
from __future__ import annotations

import functools
import itertools
import time

import torch

from ..errors import ConfigError
from ..profiling import ranged
from .outputs import Completion, EngineStats, RequestOutput, find_stop
from .params import SamplingParams, check_context, context_limit
from .runner import ModelRunner
from .scheduler import Request, Row, Scheduler


DECODE_CONTEXT = 8  # prompt tokens a sample's text is decoded after


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
        self.model, self.tokenizer = model, tokenizer
        self.max_len = context_limit(cfg.n_positions, max_len)
        if max_slots < 1 or sync_every < 1:
            raise ConfigError(f"max_slots and sync_every must be >= 1, got {max_slots} and {sync_every}.")
        if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size} "
                              "embeddings; use the tokenizer saved with this checkpoint.")
        eos_id = eos_id if eos_id is not None else (tokenizer.eos_id if tokenizer is not None else None)
        mode = {True: "compile", False: "off", None: "off"}.get(compile, compile)
        if mode not in ("auto", "graph", "compile", "off"):
            raise ConfigError(f"compile must be auto, compile or off, got {compile!r}.")
        self.deterministic = bool(deterministic)
        self.max_prefill_tokens = max_prefill_tokens
        if deterministic:
            mode, self.max_prefill_tokens = "off", 1  # eager steps; each prompt prefilled alone
        P = max_prompts or max(2, max_slots // 8)
        self.runner = ModelRunner(model, max_slots, P, self.max_len, eos_id, mode, self.deterministic)
        self.device = self.runner.device
        cuda = self.device.type == "cuda"
        self.scheduler = Scheduler(max_slots, P, self.max_len, share_prompts, sync_every, 256 if cuda else 16,
                                   pow2_rows=self.runner.graphs_on)
        self._tokenizer = tokenizer
        self._unchecked: list[tuple[int, Row]] = []  # running rows whose newest tokens await the stop-string check
        self._ids = itertools.count()
        self.stats = EngineStats()

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
        check_context(len(prompt_ids), params.max_new_tokens, self.max_len)
        if params.stop and self.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer; this engine was built without one.")
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self.scheduler.requests:
            raise ConfigError(f"request id {request_id!r} is already in use.")
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)))
        self.scheduler.add(Request(request_id, list(prompt_ids), params, seed))
        return request_id

    def abort(self, request_id: str) -> None:
        """Drop a request: queued samples never start, running ones stop now (no further outputs)."""
        req = self.scheduler.requests.get(str(request_id))
        if req is not None:
            self.runner.mark_done(self.scheduler.abort(req))

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def num_waiting(self) -> int:
        return len(self.scheduler.queue)

    # --------------------------------------------------------------------------------------------------- steps
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Admit queued work into free rows (prefilling new prompts), launch up to `sync_every` decode steps, check
        the previous round's tokens for stop strings while they run, sync once; returns the outputs that changed."""
        sched, runner = self.scheduler, self.runner
        self._admit()
        rnd = sched.next_round()
        if rnd is None:
            return []
        runner.decode(rnd)
        self.stats.decode_steps += rnd.steps
        self.stats.row_steps += rnd.steps * len(rnd.live)
        outputs = self._check_stops()  # host work while the device decodes
        live = [(b, r) for b, r in rnd.live if sched.rows[b] is r]  # minus the rows a stop string just ended
        if not live:
            return outputs
        packed = runner.read([b for b, _ in live], [len(r.tokens) for _, r in live], rnd.steps)
        return outputs + self._process(live, packed)

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
    @ranged("scheduling")  # a named range in --profile traces
    def _admit(self) -> None:
        prefills, started = self.scheduler.admit()
        self.stats.prefill_tokens += self.runner.prefill(prefills, self.max_prefill_tokens)
        if started:
            self.runner.start_rows(started)
            self.runner.flags = self.scheduler.sampling_flags()

    def _check_stops(self) -> list[RequestOutput]:
        """The stop-string check of running rows' tokens from the last sync: a row whose text now holds a stop
        string finishes (with the tokens and text it had then) and leaves the device's rows."""
        outputs, stopped = [], []
        for b, row in self._unchecked:
            if self.scheduler.rows[b] is not row:  # aborted meanwhile
                continue
            text = find_stop(row, self._decoder(row))
            if text is not None:
                stopped.append(b)
                outputs.append(self._finish(b, row, [], "stop", text))
        self._unchecked = []
        self.runner.mark_done(stopped)
        return outputs

    def _process(self, live: list[tuple[int, Row]], packed: list[list[int]]) -> list[RequestOutput]:
        """The synced tokens: extend each row; a row done on the device finishes now (after its own stop-string
        check: a stop string may complete in its last tokens); the others' check waits for the next round."""
        outputs = []
        for (b, row), (n_gen, done, hit_eos, *window) in zip(live, packed):
            before = len(row.tokens)
            row.tokens.extend(window[: n_gen - before])
            new = row.tokens[before:]
            self.stats.generated_tokens += len(new)
            stop_text = None
            if row.req.params.stop:
                if done:
                    stop_text = find_stop(row, self._decoder(row))
                elif new:
                    self._unchecked.append((b, row))
            if stop_text is not None or done:
                reason = "stop" if stop_text is not None or hit_eos else "length"
                outputs.append(self._finish(b, row, row.tokens[before:], reason, stop_text))
            else:
                outputs.append(RequestOutput(row.req.id, row.index, new, row.tokens, False, None, len(row.req.prompt),
                                             None, self._decoder(row)))
        return outputs

    def _decoder(self, row: Row):
        """ids -> the text they add after the row's prompt. Decoded after the prompt's last tokens, not alone: a
        sentencepiece tokenizer drops the leading space of a text's first piece, so "    return" after a function's
        signature would lose an indent (byte-level BPE gives the same text either way)."""
        if self._tokenizer is None:
            return None
        return functools.partial(self._tokenizer.decode_after, row.req.prompt[-DECODE_CONTEXT:])

    def _finish(self, b: int, row: Row, new: list[int], reason: str, text: str | None) -> RequestOutput:
        decode = self._decoder(row)
        if text is None and decode is not None:
            text = decode(row.tokens)
        self.scheduler.free_row(b)
        return RequestOutput(row.req.id, row.index, new, row.tokens, True, reason, len(row.req.prompt), text, decode)
