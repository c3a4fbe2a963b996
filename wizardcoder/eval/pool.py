"""The evaluator's side of the sandbox: a pool of pre-started workers, fed jobs by one loop in the caller's thread.

    with SandboxPool() as pool:                           # one worker per core, plus one
        pool.add_task("HumanEval+/0", task_data)          # sent once to each worker that needs it
        for result in pool.run(jobs):                       # results in completion order
            ...
    pool.isolation                                          # an IsolationReport: what this machine allowed

Jobs and results are the typed values of jobs.py (a `Job` in, a `Result` out). The dict forms (`id`, `kind`,
`code`, `timeout`, `task_key`, `split` in; `id`, `status`, `error`, `seconds`, ... out) are still accepted: a dict
job gets a dict result (`Result.to_dict()`), so callers can move over one at a time.
"""
from __future__ import annotations

import collections
import dataclasses
import fcntl
import json
import os
import pickle
import select
import subprocess
import tempfile
from typing import Iterable, Iterator

from ..errors import UserError
from .jobs import VERDICTS, IsolationReport, Job, Layer, Result, SandboxConfig
from .launch import FAILED, ForkServer, Spawner, check_workers, default_workers, worker_command
from .sandbox import Channel
from .scratch import remove_tree

__all__ = ["SandboxPool", "VERDICTS", "decode", "remove_stale_scratch"]


QUEUED = 1  # jobs a worker is sent beyond the one it runs (small ones only: _WorkerHandle.queueable)
AFFINITY = 64  # jobs looked at for one of a task the worker already holds (SandboxPool.run)
KEEP_TASKS = 8  # problems' data (inputs, expected outputs) a worker holds at once; some are hundreds of MB


def _claim_uid(start: int) -> tuple[int, int]:
    """A sandbox uid no other evaluator on this machine is using (held by an flock until the pool closes), so two
    concurrent pools never share RLIMIT_NPROC counts or kill each other's programs when sweeping a uid."""
    folder = os.path.join(tempfile.gettempdir(), "wizardcoder-sandbox-uids")
    os.makedirs(folder, exist_ok=True)
    for uid in range(start, start + 4096):
        fd = os.open(os.path.join(folder, f"{uid}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except BlockingIOError:
            os.close(fd)
    raise UserError(f"no free sandbox uid in {start}..{start + 4095}; is another evaluator leaking workers?")


def remove_stale_scratch(root: str | None = None) -> None:
    """Remove scratch folders of workers that are gone (an evaluator killed with SIGKILL cannot clean up; its workers
    die with it through PDEATHSIG). Folders are named wizardcoder-sandbox-<worker pid>-*; live workers' are kept.
    Whatever a program left in one cannot make this fail (scratch.remove_tree); what cannot be removed stays."""
    root = root or tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if not name.startswith("wizardcoder-sandbox-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (OSError, OverflowError, ValueError):  # not ours to judge (EPERM), or no pid at all
            continue
        remove_tree(os.path.join(root, name))


def worker_config(config: SandboxConfig) -> dict:
    """Every field of `config` as a worker reads it (JSON), its scratch root given."""
    return dataclasses.asdict(dataclasses.replace(config, tmp_root=config.tmp_root or tempfile.gettempdir()))


class _Tasks(dict):
    """The pool's tasks ({key: data, or a callable returning it}) and the messages carrying them to the workers: every
    worker that runs a problem's jobs needs its data, so the message is made (data loaded, pickled) once and kept
    while it is one of the last few used, not made again for each worker."""

    KEEP, KEEP_BYTES = 3, 256 << 20  # messages kept; a bigger one is made again when another worker needs it

    def __init__(self):
        super().__init__()
        self.messages: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def message(self, key: str) -> bytes:
        frame = self.messages.get(key)
        if frame is not None:
            self.messages.move_to_end(key)
            return frame
        data = self[key]
        frame = Channel.frame({"op": "task", "key": key, "data": data() if callable(data) else data})
        if len(frame) <= self.KEEP_BYTES:
            self.messages[key] = frame
            while len(self.messages) > self.KEEP:
                self.messages.popitem(last=False)
        return frame

    def forget(self, key: str) -> None:
        self.pop(key, None)
        self.messages.pop(key, None)


class _WorkerHandle:
    """One worker process and the two pipes to it (attach), its uid, and the jobs sent to it whose replies are still
    to come (`sent`: (the caller's index, or None once the `run` that sent it is over; the Job), in order)."""

    def __init__(self, index: int, config: SandboxConfig, spawner: Spawner):
        self.index = index
        self.config = config
        self.spawner = spawner
        self.uid, self.uid_lock = (_claim_uid(config.uid_base) if os.geteuid() == 0 else (os.getuid(), None))
        self.loaded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.sent: collections.deque = collections.deque()
        self.ready = False  # "ready" is read when the worker has said it (SandboxPool._first_ready, run)
        self.dead = False  # it failed to start, or to restart: no more jobs
        self.proc = None  # attach()

    def _start(self) -> None:
        """Start this worker alone (a restart): an interpreter of its own."""
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        argv, env = worker_command(str(self.index), json.dumps(worker_config(self.config)), str(self.uid))
        try:
            proc = self.spawner(subprocess.Popen, argv, stdin=cmd_r, stdout=rep_w, env=env, cwd="/", close_fds=True)
        except BaseException:
            os.close(cmd_w)
            os.close(rep_r)
            raise
        finally:
            os.close(cmd_r)
            os.close(rep_w)
        self.attach(proc, cmd_w, rep_r)
        self.await_ready()

    def attach(self, proc, cmd_w: int, rep_r: int) -> None:
        """The worker process (a Popen, or launch.Forked) and our ends of its pipes."""
        self.proc = proc
        self.commands, self.replies = Channel(cmd_w), Channel(rep_r)
        self.ready = False
        self.sent.clear()
        # half the pipe: the job being read and the one queued behind it both fit
        self.queue_bytes = fcntl.fcntl(cmd_w, fcntl.F_GETPIPE_SZ) // 2

    def await_ready(self) -> None:
        """Read the worker's "ready" (its isolation report and scratch folder), once."""
        if self.ready:
            return
        try:
            hello = self.replies.recv()
        except (EOFError, OSError):
            hello = None
        if not isinstance(hello, dict) or hello.get("op") != "ready":
            raise UserError("the sandbox worker failed to start; run `python -m wizardcoder.eval.worker 0 '{}'` "
                            "to see why.")
        self.isolation = IsolationReport(tuple(Layer(*layer) for layer in hello["isolation"]))
        self.tmp_root = hello["tmp_root"]
        self.loaded = collections.OrderedDict()
        self.ready = True

    def send(self, job: Job, tasks: "_Tasks", frame: bytes) -> None:
        """Send a job, `frame` its message (`message`); first its task's data, when this worker does not hold it yet.
        Its reply comes in order."""
        key = job.task_key
        if key is not None:
            if key in self.loaded:
                self.loaded.move_to_end(key)
            else:
                while len(self.loaded) >= KEEP_TASKS:
                    old, _ = self.loaded.popitem(last=False)
                    self.commands.send({"op": "drop", "key": old})
                self.commands.send_frame(tasks.message(key))
                self.loaded[key] = None
        self.commands.send_frame(frame)

    @staticmethod
    def message(job: Job) -> bytes:
        """The job's message as it goes down the pipe (made once: `queueable` sizes it, `send` writes it). A script
        or plus job goes in the frame the worker's C loop reads (Channel.job_frame); the others as pickles."""
        if job.kind in ("script", "plus"):
            return Channel.job_frame(job.kind, job.code, job.timeout, job.task_key, job.split)
        return Channel.frame({"op": "job", "job": dict(vars(job))})  # checks.py reads a job as a dict

    def queueable(self, job: Job, frame: bytes) -> bool:
        """Can this job (its message `frame`) be sent while another one runs? Only when it is one small write (the
        worker's data for it already there): then the pipe holds both without blocking, whatever the worker is
        doing, so a worker blocked on a long reply can never be waiting for us while we wait for it."""
        if job.task_key is not None and job.task_key not in self.loaded:
            return False
        return len(frame) <= self.queue_bytes

    def receive(self) -> dict:
        return self.replies.recv()  # EOFError when the worker died

    def restart(self) -> None:
        self.stop()
        self._start()

    def stop(self) -> None:
        self.ask_exit()
        self.finish()

    def ask_exit(self) -> None:
        if self.proc is None or self.commands.closed:
            return
        try:
            self.commands.send({"op": "exit"})
            self.commands.close()
        except (OSError, ValueError):
            pass  # gone already: finish() reaps it

    def finish(self) -> None:
        """Wait for the worker asked to exit (killed after 10 s), close its pipes, remove its scratch folder."""
        if self.proc is None:
            return
        try:  # a worker never used still says where its scratch is (it reads "exit" after saying "ready")
            self.await_ready()
        except UserError:
            pass  # it died starting: the next pool's remove_stale_scratch finds its folder
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for conn in (self.commands, self.replies):
            if not conn.closed:
                conn.close()
        if self.ready:
            remove_tree(self.tmp_root)

    def release(self) -> None:
        if self.uid_lock is not None:
            os.close(self.uid_lock)
            self.uid_lock = None


MAX_ERROR = 1000  # characters of a program's error text kept (the judge sends at most this many)
MAX_COUNT = 1 << 31  # bound on the input indices and test counts a verdict may name


def decode(job: Job, reply: dict) -> Result:
    """Turn a worker reply into a Result. The worker's own fields (status and error for limits and signals, seconds)
    are trusted. The child's bytes are pickle only for `record` jobs, which run the dataset's canonical solutions;
    a program's verdict is JSON, read by `verdict_fields`, and whatever is wrong with it fails that job alone."""
    out = {k: v for k, v in reply.items() if k != "raw"}
    raw = reply.get("raw")
    if raw is not None:
        if job.kind == "record":
            try:
                body = pickle.loads(raw)
            except Exception:  # noqa: BLE001
                body = None
            ok = isinstance(body, dict) and body.get("status") in VERDICTS
            out.update(body if ok else {"status": "crashed", "error": "the canonical solution sent no result"})
        else:
            out.update(verdict_fields(raw))
    return Result.from_reply(job.id, out)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def verdict_fields(raw: bytes) -> dict:
    """The fields of a verdict a program's judge wrote ({"status", "error", "failed_test", "tests"}), validated:
    JSON (no NaN), a known status, an error string (cut to MAX_ERROR characters), counts as whole numbers in
    [0, MAX_COUNT); other keys are dropped (`seconds` is the worker's measure, never the program's). A verdict that
    fails any of this is `crashed`."""
    corrupt = {"status": "crashed", "error": "the program corrupted its result channel"}
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return corrupt
    if not isinstance(body, dict) or not isinstance(body.get("status"), str) or body["status"] not in VERDICTS:
        return corrupt
    error = body.get("error", "")
    if not isinstance(error, str):
        return corrupt
    fields = {"status": body["status"], "error": error[:MAX_ERROR]}
    for name in ("failed_test", "tests"):
        v = body.get(name)
        if v is not None:
            if type(v) is not int or not 0 <= v < MAX_COUNT:
                return corrupt
            fields[name] = v
    return fields


class SandboxPool:
    """`workers` pre-started sandbox workers (default: one per core this process may run on, plus one).

    `server`: a launch.ForkServer already started for it (evaluate starts one before it reads its inputs; `workers`
    is then its size): the pool sends it the config and returns at once; the first worker's start is waited for
    when the pool is first used. Without one, the pool starts its own and waits until a worker has started, so a
    machine that cannot run the sandbox at all fails here."""

    def __init__(self, workers: int | None = None, config: SandboxConfig | None = None,
                 server: ForkServer | None = None):
        check_workers(workers, "workers")
        self.config = config or SandboxConfig()
        self.tasks = _Tasks()
        self.handles: list[_WorkerHandle] = []
        self._spawner = server.spawner if server is not None else Spawner()
        self._server = server
        try:
            if server is None:
                self._server = ForkServer(workers or default_workers(), self._spawner)
            for i in range(self._server.n):
                self.handles.append(_WorkerHandle(i, self.config, self._spawner))
            self._server.configure(worker_config(self.config), [h.uid for h in self.handles])
            remove_stale_scratch(self.config.tmp_root)  # while the server forks (the new workers' pids are alive)
            if server is None:
                self._first_ready()
        except BaseException:
            self.close()
            raise

    @property
    def isolation(self) -> IsolationReport:
        """What isolation is in force, as the first worker to start probed it (all workers run the same code)."""
        return self._first_ready().isolation

    def _attach(self) -> None:
        """Our ends of the forked workers' pipes, once the fork server has forked them (UserError if it failed)."""
        if self._server is not None and self.handles and self.handles[0].proc is None:
            for h, (proc, cmd_w, rep_r) in zip(self.handles, self._server.workers()):
                h.attach(proc, cmd_w, rep_r)

    def _first_ready(self) -> _WorkerHandle:
        """A worker that has started (the first to say so); UserError when none could."""
        self._attach()
        while True:
            starting = []
            for h in self.handles:
                if h.ready:
                    return h
                if not h.dead:
                    starting.append(h)
            if not starting:
                raise UserError(FAILED)
            poll = select.poll()  # not select(): any descriptor number
            for h in starting:
                poll.register(h.replies.fd, select.POLLIN)
            readable = {fd for fd, _ in poll.poll()}
            for h in starting:
                if h.replies.fd in readable:
                    try:
                        h.await_ready()
                    except UserError:
                        h.dead = True

    def add_task(self, key: str, data) -> None:
        """Data that jobs with this `task_key` need: a dict, or a callable returning it (called when a worker first
        needs it, so large data is only in memory while being sent)."""
        self.tasks.forget(key)  # a message made of earlier data
        self.tasks[key] = data
        for h in self.handles:
            h.loaded.pop(key, None)

    def drop_task(self, key: str) -> None:
        """Forget a task's data here (workers drop it when they need room)."""
        self.tasks.forget(key)

    def run(self, jobs: Iterable[Job | dict]) -> Iterator[Result | dict]:
        """Run jobs on all workers; yield results as they complete (a Result per Job, a dict per dict job).

        One loop in the calling thread polls every worker's reply pipe: a worker that says it is ready is sent jobs,
        a reply is a result and the worker is sent the next job. Up to QUEUED jobs are sent ahead (the worker starts
        the next program as soon as one ends, without waiting for us; see _WorkerHandle.queueable), only while there
        are jobs enough for every worker: a job queued behind a long program must not wait while a worker idles. A
        worker that dies fails its running job (`crashed`), its queued ones run again, and it is restarted (this
        loop waits for that); when no worker is left the remaining jobs are `crashed`."""
        todo: collections.deque = collections.deque()
        as_dict: set[int] = set()
        for n, job in enumerate(jobs):
            if isinstance(job, dict):
                as_dict.add(n)
            todo.append((n, Job.coerce(job)))
        left = len(todo)
        if not left:
            return
        self._attach()
        frames: dict[int, bytes] = {}  # messages made while a job waited for a worker that could take it
        poll, by_fd = select.poll(), {}

        def watch(h: _WorkerHandle) -> None:
            by_fd[h.replies.fd] = h
            poll.register(h.replies.fd, select.POLLIN)

        def unwatch(h: _WorkerHandle) -> None:
            poll.unregister(h.replies.fd)
            del by_fd[h.replies.fd]

        def next_for(h: _WorkerHandle) -> int:
            """Where in `todo` h's next job is. Jobs with task data go by task: the first one (within AFFINITY jobs)
            of a task h holds, else of a task no other worker holds, else the first; so each problem's data is sent
            to, unpickled by and held in about one worker rather than every one (for the + tasks that was most of the
            workers' own work). Other jobs go in order."""
            if todo[0][1].task_key is None:
                return 0
            held = {key for other in by_fd.values() if other is not h for key in other.loaded}
            free = None
            for i in range(min(len(todo), AFFINITY)):
                key = todo[i][1].task_key
                if key in h.loaded:
                    return i
                if free is None and key not in held:
                    free = i
            return free or 0

        def fill(h: _WorkerHandle) -> None:
            while todo and len(h.sent) <= QUEUED:
                if h.sent and len(todo) < len(by_fd):
                    return
                i = next_for(h)
                n, job = todo[i]
                frame = frames.pop(n, None) or _WorkerHandle.message(job)
                if h.sent and not h.queueable(job, frame):
                    frames[n] = frame
                    return
                del todo[i]
                h.sent.append((n, job))
                try:
                    h.send(job, self.tasks, frame)
                except OSError:  # the worker is gone: its reply pipe says so
                    return

        def replace(h: _WorkerHandle) -> None:
            """A worker died: its jobs still queued run again (never started), and it is restarted."""
            while h.sent:
                n, job = h.sent.pop()
                if n is not None:
                    todo.appendleft((n, job))
            unwatch(h)
            try:
                h.restart()
                watch(h)
            except Exception:  # noqa: BLE001
                h.dead = True

        for h in self.handles:
            if not h.dead:
                watch(h)
        try:
            while left:
                if not by_fd:  # no worker left
                    if not any(h.ready for h in self.handles):
                        raise UserError(FAILED)
                    while todo:
                        n, job = todo.popleft()
                        left -= 1
                        res = Result(job.id, "crashed", "sandbox worker could not restart")
                        yield res.to_dict() if n in as_dict else res
                    continue
                for h in by_fd.values():
                    if h.ready:
                        fill(h)
                for fd, _ in poll.poll():
                    h = by_fd.get(fd)
                    if h is None:  # no longer watched (it could not start or restart)
                        continue
                    if not h.ready:
                        try:
                            h.await_ready()
                        except UserError:  # the others take its share
                            unwatch(h)
                            h.dead = True
                        continue
                    if not h.sent:  # it died idle (a worker says nothing unasked)
                        replace(h)
                        continue
                    n, job = h.sent.popleft()
                    try:
                        res = decode(job, h.receive())
                    except (EOFError, OSError, pickle.UnpicklingError) as e:
                        res = Result(job.id, "crashed", f"sandbox worker failed: {e or type(e).__name__}")
                        replace(h)
                    if h.ready and not h.dead:
                        fill(h)  # before the caller sees the result: the worker is never kept waiting for it
                    if n is not None:
                        left -= 1
                        yield res.to_dict() if n in as_dict else res
        finally:  # replies still to come (the caller stopped early) belong to no run: later runs skip them
            for h in self.handles:
                h.sent = collections.deque((None, job) for _, job in h.sent)

    def stop_soon(self) -> None:
        """Ask every worker to exit without waiting (close() then waits): their exit (the watchdog, the scratch)
        overlaps whatever the caller does meanwhile. No job may be run after it."""
        try:
            self._attach()
        except UserError:
            pass
        for h in self.handles:
            h.ask_exit()

    def close(self) -> None:
        self.stop_soon()  # all at once: each worker's exit takes a while
        for h in self.handles:
            h.finish()
            h.release()
        self.handles = []
        if self._server is not None:  # it exits once the workers it forked are gone
            self._server.close()
            self._server = None
        self._spawner.shutdown()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
