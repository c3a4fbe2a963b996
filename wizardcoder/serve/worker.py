"""The engine's thread: the only code that touches the engine (it is not thread-safe).

The event loop hands jobs over through `inbox` (add / abort) and wakes the thread; the thread adds each job's
prompts as engine requests (each validated alone by `Engine.add_request`, so a bad one fails only its own job),
steps the engine while anything is unfinished, and posts every job's new outputs back to the loop with
`loop.call_soon_threadsafe`, once per job per step. Requests with different sampling settings share the engine's
batch: the engine holds per-row parameters.

Memory is bounded by `max_queued_samples`: the samples (prompts x n) accepted and not yet answered; a job that
would go beyond is refused with 429 before anything is queued.
"""
from __future__ import annotations

import asyncio
import queue
import sys
import threading
import traceback
from dataclasses import dataclass

from ..errors import UserError
from .protocol import ACCEPTED, ApiError, Job

IDLE_WAIT_S = 0.5  # how long the idle thread sleeps before looking at its stop flag again


@dataclass
class _Route:
    """Where an engine request's outputs go: one prompt of a job, and how many of its n samples are unfinished."""

    job: Job
    prompt_index: int
    unfinished: int


class EngineWorker:
    def __init__(self, engine, max_queued_samples: int):
        self.engine = engine
        self.max_queued_samples = max_queued_samples
        self.queued_samples = 0  # accepted and not yet released (event-loop thread only)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add" | "abort", Job)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._routes: dict[str, _Route] = {}  # engine request id -> its job; engine thread only
        self._thread = threading.Thread(target=self._run, name="wizardcoder-engine", daemon=True)
        self.failure: str | None = None  # set when the thread died; the server then answers 503

    # ------------------------------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue `job` or refuse it: 503 when the engine is gone, 400 when it is larger than the whole queue, 429
        when the queue is full."""
        if self.failure or not self._thread.is_alive():
            raise ApiError(503, f"the engine is not running ({self.failure or 'stopped'}).", type="server_error",
                           code="engine_unavailable")
        if job.n_samples > self.max_queued_samples:  # could never be queued: the request itself is too big
            raise ApiError(400, f"this request asks for {job.n_samples} samples (prompts x n); the server holds at "
                           f"most {self.max_queued_samples} at a time, so send fewer prompts or a smaller n.",
                           param="n")
        if self.queued_samples + job.n_samples > self.max_queued_samples:
            raise ApiError(429, f"the server is busy ({self.queued_samples} samples queued, at most "
                           f"{self.max_queued_samples}); retry shortly.", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"})
        job.loop = asyncio.get_running_loop()
        job.events = asyncio.Queue()
        self.queued_samples += job.n_samples
        self._inbox.put(("add", job))
        self._wake.set()

    def release(self, job: Job) -> None:
        """The handler is done with `job` (answered, failed or its client went away): free its place in the
        queue and, if the engine is still working on it, abort it there."""
        self.queued_samples -= job.n_samples
        if not job.finished:
            self._inbox.put(("abort", job))
            self._wake.set()

    # ------------------------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                self._drain_inbox()
                if not self.engine.has_unfinished():
                    self._wake.wait(IDLE_WAIT_S)
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as e:  # a bug or a device error: answer everyone, keep the server up
                    traceback.print_exc(file=sys.stderr)
                    self._fail_all(f"generation failed: {type(e).__name__}: {e}")
                    continue
                self._deliver(outputs)
        except BaseException as e:  # the thread is gone: say so to every waiting request and to new ones
            self.failure = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
            self._fail_all(f"the engine stopped: {self.failure}")

    def _drain_inbox(self) -> None:
        while True:
            try:
                op, job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if op == "add":
                self._add(job)
            else:
                self._abort(job)

    def _add(self, job: Job) -> None:
        ids = []
        try:
            for i, prompt in enumerate(job.prompts):
                rid = f"{job.id}/{i}"
                self.engine.add_request(prompt, job.params, request_id=rid)
                self._routes[rid] = _Route(job, i, job.params.n)
                ids.append(rid)
        except (UserError, ValueError) as e:  # this job's request is invalid; the others are untouched
            for rid in ids:
                self._forget(rid)
            self._post(job, ApiError(400, str(e)))
            return
        self._post(job, ACCEPTED)

    def _abort(self, job: Job) -> None:
        for i in range(len(job.prompts)):
            self._forget(f"{job.id}/{i}")

    def _forget(self, rid: str) -> None:
        if self._routes.pop(rid, None) is not None:
            self.engine.abort(rid)

    def _deliver(self, outputs) -> None:
        per_job: dict[int, tuple[Job, list]] = {}
        for out in outputs:
            route = self._routes.get(out.request_id)
            if route is None:  # aborted meanwhile
                continue
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
        for rid in list(self._routes):
            try:
                self._forget(rid)
            except Exception:  # the engine may be broken; the routes go either way
                self._routes.pop(rid, None)
        for job in jobs.values():
            self._post(job, ApiError(500, message, type="server_error", code="engine_error"))

    @staticmethod
    def _post(job: Job, item) -> None:
        try:
            job.loop.call_soon_threadsafe(job.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass
