"""The engine's thread: the only code that touches the engine (it is not thread-safe).

The event loop hands jobs over through `inbox` (add / abort) and wakes the thread; the thread adds each job's
prompts as engine requests (each validated alone by `Engine.add_request`, so a bad one fails only its own job),
steps the engine while anything is unfinished, and posts every job's new outputs back to the loop with
`loop.call_soon_threadsafe`, once per job per step. Requests with different sampling settings share the engine's
batch: the engine holds per-row parameters. The thread makes the engine's CUDA device its current device first
(CUDA's current device is per thread: without it, `--device cuda:1` would launch work and capture graphs on 0).

An error inside `engine.step()` fails only the request that caused it. A request that has produced output has run
through a step, so the suspects are the engine requests with no output yet (a request's first step admits it:
prefill and its rows' settings, where a request's own data can break the step). They are aborted in the engine; a
lone suspect is the culprit and its job alone is answered 500; several are re-added one at a time (no other new
request joins the engine meanwhile) until the one that fails alone is found; the others carry on unaware (nothing
of theirs had been sent, and a seeded one samples the same tokens). A step that fails with no suspect means
the engine itself is broken: every request is answered 500, as before. (The engine could name the culprit itself,
and admit a request atomically, so that a failure in one request's admission never leaves another's row half-set;
see docs/serve.md.)

Memory is bounded by `max_queued_samples`: the samples (prompts x n) accepted and not yet answered; a job that
would go beyond is refused with 429 before anything is queued (and before its prompts are tokenized:
`check_room`).
"""
from __future__ import annotations

import asyncio
import collections
import queue
import sys
import threading
import traceback
from dataclasses import dataclass

from ..errors import UserError
from .protocol import ACCEPTED, ApiError, ApiRequest

IDLE_WAIT_S = 0.5  # how long the idle thread sleeps before looking at its stop flag again


@dataclass
class _Route:
    """Where an engine request's outputs go: one prompt of a job, and how many of its n samples are unfinished."""

    job: ApiRequest
    prompt_index: int
    unfinished: int
    proven: bool = False  # it has produced output: it ran through a step, so it is not a suspect of a failed one
    in_engine: bool = True  # False while it waits to be re-added after a failed step

    @property
    def rid(self) -> str:
        return f"{self.job.id}/{self.prompt_index}"


class EngineWorker:
    def __init__(self, engine, max_queued_samples: int):
        self.engine = engine
        self.max_queued_samples = max_queued_samples
        self.queued_samples = 0  # accepted and not yet released (event-loop thread only)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add" | "abort", ApiRequest)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._routes: dict[str, _Route] = {}  # engine request id -> its job; engine thread only
        self._retry: collections.deque[str] = collections.deque()  # suspects of a failed step, re-added one by one
        self._held: list[ApiRequest] = []  # jobs that arrived while suspects are being retried
        self._thread = threading.Thread(target=self._run, name="wizardcoder-engine", daemon=True)
        self.failure: str | None = None  # set when the thread died; the server then answers 503

    # ------------------------------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def check_room(self, n_samples: int) -> None:
        """Refuse a job of `n_samples` samples now: 503 when the engine is gone, 400 when it is larger than the
        whole queue, 429 when the queue is full. Cheap: the handler calls it before tokenizing the prompts."""
        if self.failure or not self._thread.is_alive():
            raise ApiError(503, f"the engine is not running ({self.failure or 'stopped'}).", type="server_error",
                           code="engine_unavailable")
        if n_samples > self.max_queued_samples:  # could never be queued: the request itself is too big
            raise ApiError(400, f"this request asks for {n_samples} samples (prompts x n); the server holds at "
                           f"most {self.max_queued_samples} at a time, so send fewer prompts or a smaller n.",
                           param="n")
        if self.queued_samples + n_samples > self.max_queued_samples:
            raise ApiError(429, f"the server is busy ({self.queued_samples} samples queued, at most "
                           f"{self.max_queued_samples}); retry shortly.", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"})

    def submit(self, job: ApiRequest) -> None:
        """Queue `job` or refuse it (`check_room`)."""
        self.check_room(job.n_samples)
        job.loop = asyncio.get_running_loop()
        job.events = asyncio.Queue()
        self.queued_samples += job.n_samples
        self._inbox.put(("add", job))
        self._wake.set()

    def release(self, job: ApiRequest) -> None:
        """The handler is done with `job` (answered, failed or its client went away): free its place in the
        queue and, if the engine is still working on it, abort it there."""
        self.queued_samples -= job.n_samples
        if not job.finished:
            self._inbox.put(("abort", job))
            self._wake.set()

    # ------------------------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        try:
            self._use_engine_device()
            while not self._stopping.is_set():
                self._wake.clear()
                self._drain_inbox()
                self._readd_suspect()
                if not self.engine.has_unfinished():
                    self._wake.wait(IDLE_WAIT_S)
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as e:  # a request the engine cannot run, or a device error: find out which
                    traceback.print_exc(file=sys.stderr)
                    self._step_failed(f"{type(e).__name__}: {e}")
                    continue
                self._deliver(outputs)
        except BaseException as e:  # the thread is gone: say so to every waiting request and to new ones
            self.failure = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
            self._fail_all(f"the engine stopped: {self.failure}")

    def _use_engine_device(self) -> None:
        """Make the engine's CUDA device this thread's current device (kernels, streams and CUDA graphs all go to
        the current device, and the current device is per thread)."""
        device = getattr(self.engine, "device", None)
        if device is not None and device.type == "cuda" and device.index is not None:  # a CUDA tensor's device
            import torch

            torch.cuda.set_device(device.index)

    def _drain_inbox(self) -> None:
        while True:
            try:
                op, job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if op == "add":
                if self._retry:  # suspects are being retried one at a time: nothing new joins them meanwhile
                    self._held.append(job)
                else:
                    self._add(job)
            else:
                self._abort(job)

    def _add(self, job: ApiRequest) -> None:
        ids = []
        try:
            for i, prompt in enumerate(job.prompts):
                route = _Route(job, i, job.params.n)
                self.engine.add_request(prompt, job.params, request_id=route.rid)
                self._routes[route.rid] = route
                ids.append(route.rid)
        except (UserError, ValueError) as e:  # this job's request is invalid; the others are untouched
            for rid in ids:
                self._forget(rid)
            self._post(job, ApiError(400, str(e)))
            return
        self._post(job, ACCEPTED)

    def _readd_suspect(self) -> None:
        """While suspects of a failed step remain: put the next one back into the engine once the one before has
        produced output (run through a step), so that a failing step has exactly one suspect. Then let the jobs
        held meanwhile in."""
        if any(r.in_engine and not r.proven for r in self._routes.values()):
            return
        while self._retry:
            route = self._routes.get(self._retry.popleft())
            if route is None:  # its job failed or was aborted meanwhile
                continue
            job = route.job
            try:
                self.engine.add_request(job.prompts[route.prompt_index], job.params, request_id=route.rid)
            except Exception as e:  # it was accepted once; if the engine now refuses it, it fails alone
                self._abort(job)
                self._post(job, ApiError(500, f"generation failed for this request: {type(e).__name__}: {e}",
                                         type="server_error", code="engine_error"))
                continue
            route.in_engine = True
            return
        held, self._held = self._held, []
        for job in held:
            self._add(job)

    def _step_failed(self, error: str) -> None:
        suspects = [r for r in self._routes.values() if r.in_engine and not r.proven]
        if not suspects:  # every request in the engine had run before: the engine itself is broken
            self._fail_all(f"generation failed: {error}")
            return
        for route in suspects:
            self._abort_in_engine(route)
        if len(suspects) == 1:
            job = suspects[0].job
            self._abort(job)
            self._post(job, ApiError(500, f"generation failed for this request: {error}", type="server_error",
                                     code="engine_error"))
            return
        self._retry.extendleft(r.rid for r in reversed(suspects))

    def _abort_in_engine(self, route: _Route) -> None:
        route.in_engine = False
        try:
            self.engine.abort(route.rid)
        except Exception:  # the engine may be broken; the next failed step (with no suspect) says so
            traceback.print_exc(file=sys.stderr)

    def _abort(self, job: ApiRequest) -> None:
        if job in self._held:
            self._held.remove(job)
        for i in range(len(job.prompts)):
            self._forget(f"{job.id}/{i}")

    def _forget(self, rid: str) -> None:
        route = self._routes.pop(rid, None)
        if route is not None and route.in_engine:
            self.engine.abort(rid)

    def _deliver(self, outputs) -> None:
        per_job: dict[int, tuple[ApiRequest, list]] = {}
        for out in outputs:
            route = self._routes.get(out.request_id)
            if route is None:  # aborted meanwhile
                continue
            route.proven = True
            job = route.job
            if job.stream and not out.finished:
                out.text  # decode here (RequestOutput decodes on first access), not on the event loop
            if job.stream or out.finished:  # a non-streaming handler only needs the final outputs
                per_job.setdefault(id(job), (job, []))[1].append((route.prompt_index, out))
            if out.finished:
                route.unfinished -= 1
                if route.unfinished == 0:  # all n samples of this prompt are done: the engine forgot it too
                    del self._routes[out.request_id]
        for job, items in per_job.values():
            self._post(job, items)

    def _fail_all(self, message: str) -> None:
        jobs = {id(r.job): r.job for r in self._routes.values()}
        jobs.update((id(j), j) for j in self._held)
        self._retry.clear()
        self._held = []
        for rid in list(self._routes):
            try:
                self._forget(rid)
            except Exception:  # the engine may be broken; the routes go either way
                self._routes.pop(rid, None)
        for job in jobs.values():
            self._post(job, ApiError(500, message, type="server_error", code="engine_error"))

    @staticmethod
    def _post(job: ApiRequest, item) -> None:
        try:
            job.loop.call_soon_threadsafe(job.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass
