"""The engine's model runner: the device side. It holds the static KV cache (cache.py) and every row's sampling
settings and state as tensors, runs packed prefills, and runs decode steps entirely on the device: forward one token
per row (shared-prefix cascade attention), sample with each row's own settings (sampler.py), append the token, mark
rows done on EOS or length. On CUDA each step is a captured CUDA graph. `read` is the one host sync of a round.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..profiling import ranged
from .cache import SlotCache
from .invariant import RowTiledLinear
from .params import sample_key
from .sampler import sample_rows


def check_memory(cfg, max_slots: int, max_prompts: int, max_len: int, dtype, device) -> None:
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


class ModelRunner:
    def __init__(self, model, max_slots: int, max_prompts: int, max_len: int, eos_id: int | None, mode: str,
                 deterministic: bool):
        param = next(model.parameters())
        self.model, self.device, self.dtype, self.max_len, self.eos_id = model, param.device, param.dtype, max_len, eos_id
        check_memory(model.config, max_slots, max_prompts, max_len, self.dtype, self.device)
        self.cache = SlotCache(model.config, max_slots, max_prompts, max_len, self.dtype, self.device)
        self.cache.invariant = deterministic
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
        self.out_tokens = torch.zeros(B, max_len, dtype=torch.long, device=dev)
        self.flags = (False, False, False)  # (filtered, random, any_top_k): see Scheduler.sampling_flags
        self.graphs_on = self.device.type == "cuda" and mode in ("auto", "graph", "compile")
        self.step_fn = self.decode_step if not deterministic else self._invariant_step
        if mode == "compile":  # one compile per decode shape (checked on CPU: the same tokens as eager)
            self.step_fn = torch.compile(self.decode_step, dynamic=False,
                                         mode="max-autotune-no-cudagraphs" if self.graphs_on else None)
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._warm: set[tuple] = set()
        self._pool = torch.cuda.graph_pool_handle() if self.graphs_on else None

    @ranged("prefill")
    def prefill(self, prefills: list[tuple[str, int, list[int]]], max_tokens: int) -> int:
        """Packed forwards of at most `max_tokens` tokens (a longer prompt goes alone); returns the tokens run."""
        if not prefills:
            return 0
        slots = [(idx, len(toks)) for kind, idx, toks in prefills if kind == "prefix"]
        if slots:
            idx = torch.tensor([s for s, _ in slots], device=self.device)
            self.cache.prefix_len[idx] = torch.tensor([n for _, n in slots], device=self.device)
        chunk: list = []
        total = 0
        for item in prefills + [None]:
            if chunk and (item is None or sum(len(t) for *_, t in chunk) + len(item[2]) > max_tokens):
                self.cache.set_prefill([(kind, idx, len(t)) for kind, idx, t in chunk])
                ids = torch.tensor([t for *_, toks in chunk for t in toks], device=self.device)[None]
                self.model.hidden_states(ids, kv_cache=self.cache)
                total += ids.shape[1]
                chunk = []
            if item is not None:
                chunk.append(item)
        return total

    def start_rows(self, started) -> None:
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

    def mark_done(self, rows: list[int]) -> None:
        if rows:
            self.done[torch.tensor(rows, device=self.device)] = True

    def decode(self, rnd) -> None:
        """Launch a round of `rnd.steps` decode steps (no host sync: on CUDA the host returns at once)."""
        self.cache.set_decode(rnd.prefix_slots, rnd.prefix_width, rnd.row_width, rnd.n_rows, rnd.groups)
        key = (rnd.prefix_slots, rnd.prefix_width, rnd.row_width, rnd.n_rows, self.cache.group_width, *self.flags)
        for _ in range(rnd.steps):
            self._run_decode(key)

    def decode_step(self) -> None:
        """One token for each of the first cache.n_rows rows, on the device only (static shapes for a given
        (widths, n_rows); captured as a CUDA graph on CUDA). All state is updated in place."""
        nb = self.cache.n_rows
        input_tok, n_gen, done, hit_eos = self.input_tok[:nb], self.n_gen[:nb], self.done[:nb], self.hit_eos[:nb]
        h = self.model.hidden_states(input_tok[:, None], kv_cache=self.cache)[:, -1]
        logits = F.linear(h, self.model.lm_head_weight())
        nxt = sample_rows(logits, self.temperature[:nb], self.top_p[:nb], self.top_k[:nb], self.keys[:nb], n_gen,
                          *self.flags)
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
            self.decode_step()

    @ranged("decode")
    def _run_decode(self, key: tuple) -> None:
        if not self.graphs_on:
            self.step_fn()
            return
        graph = self.graphs.get(key)
        if graph is None:
            if key not in self._warm:  # first time at this shape: run it for real on a side stream (warm-up)
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    self.step_fn()
                torch.cuda.current_stream().wait_stream(s)
                self._warm.add(key)
                return
            graph = torch.cuda.CUDAGraph()  # second time: capture (records, runs nothing), then replay below
            try:
                with torch.cuda.graph(graph, pool=self._pool):
                    self.step_fn()
            except Exception as e:  # a kernel that cannot be captured: keep going eagerly, say so once
                import warnings

                warnings.warn(f"CUDA graph capture of the decode step failed ({type(e).__name__}: {e}); "
                              "decoding without graphs.", RuntimeWarning, stacklevel=2)
                self.graphs_on = False
                torch.cuda.synchronize()
                self.step_fn()
                return
            self.graphs[key] = graph
        graph.replay()

    @ranged("sync")
    def read(self, rows: list[int], have: list[int], k: int) -> list[list[int]]:
        """The one host sync of a round: per row [n_gen, done, hit_eos, its next k output tokens after `have`]."""
        d = self.device
        idx = torch.tensor(rows, device=d)
        cols = (torch.tensor(have, device=d)[:, None] + torch.arange(k, device=d)[None]).clamp(max=self.max_len - 1)
        return torch.cat([self.n_gen[idx, None], self.done[idx, None].long(), self.hit_eos[idx, None].long(),
                          self.out_tokens[idx[:, None], cols]], 1).tolist()
