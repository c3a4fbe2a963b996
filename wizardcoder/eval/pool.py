"""The evaluator's side of the sandbox: a pool of pre-started workers, one thread each, fed from one queue.

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
import concurrent.futures
import dataclasses
import fcntl
import json
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
from typing import Iterable, Iterator

from ..errors import UserError
from .jobs import VERDICTS, IsolationReport, Job, Result, check_workers, default_workers
from .sandbox import Channel, SandboxConfig
from .scratch import remove_tree

__all__ = ["SandboxPool", "VERDICTS", "decode", "remove_stale_scratch"]


QUEUED = 1  # jobs a worker is sent beyond the one it runs (small ones only: _WorkerHandle.queueable)
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


class _WorkerHandle:
    """One worker process and the two pipes to it. Workers are started from the pool's one spawner thread: a worker
    asks for PDEATHSIG, which the kernel ties to the *thread* that forked it, so starting one from a short-lived
    dispatch thread would kill it when a `run` ends."""

    def __init__(self, index: int, config: SandboxConfig, spawner: concurrent.futures.ThreadPoolExecutor):
        self.index = index
        self.config = config
        self.spawner = spawner
        self.uid, self.uid_lock = (_claim_uid(config.uid_base) if os.geteuid() == 0 else (os.getuid(), None))
        self.loaded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._launch()  # the pool waits for "ready" once all its workers are launched

    def _start(self) -> None:
        self._launch()
        self._await_ready()

    def _launch(self) -> None:
        pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        config = dataclasses.replace(self.config, tmp_root=self.config.tmp_root or tempfile.gettempdir())
        argv = [sys.executable, "-m", "wizardcoder.eval.worker", str(self.index),
                json.dumps(dataclasses.asdict(config)), str(self.uid)]
        cmd_r, cmd_w = os.pipe()  # evaluator -> the worker's stdin
        rep_r, rep_w = os.pipe()  # the worker's stdout -> evaluator
        try:
            self.proc = self.spawner.submit(subprocess.Popen, argv, stdin=cmd_r, stdout=rep_w, env=env, cwd="/",
                                            close_fds=True).result()
        except BaseException:
            os.close(cmd_w)
            os.close(rep_r)
            raise
        finally:
            os.close(cmd_r)
            os.close(rep_w)
        self.commands, self.replies = Channel(cmd_w), Channel(rep_r)
        self.tmp_root: str | None = None  # its scratch folder, which it names when ready
        # half the pipe: the job being read and the one queued behind it both fit
        self.queue_bytes = fcntl.fcntl(cmd_w, fcntl.F_GETPIPE_SZ) // 2

    def _await_ready(self) -> None:
        try:
            hello = self.replies.recv()
        except (EOFError, OSError):
            hello = None
        if not isinstance(hello, dict) or hello.get("op") != "ready":
            raise UserError("the sandbox worker failed to start; run `python -m wizardcoder.eval.worker 0 '{}'` "
                            "to see why.")
        self.isolation = IsolationReport(tuple(hello["isolation"]))
        self.tmp_root = hello["tmp_root"]
        self.loaded = collections.OrderedDict()

    def send(self, job: Job, tasks: dict, frame: bytes) -> None:
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
                data = tasks[key]
                self.commands.send({"op": "task", "key": key, "data": data() if callable(data) else data})
                self.loaded[key] = None
        self.commands.send_frame(frame)

    @staticmethod
    def message(job: Job) -> bytes:
        """The job's message as it goes down the pipe (made once: `queueable` sizes it, `send` writes it)."""
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
        try:
            self.commands.send({"op": "exit"})
            self.commands.close()
        except (OSError, ValueError):
            pass  # gone already: finish() reaps it

    def finish(self) -> None:
        """Wait for the worker asked to exit (killed after 10 s), close its pipes, remove its scratch folder."""
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for conn in (self.commands, self.replies):
            if not conn.closed:
                conn.close()
        if self.tmp_root:  # (not ready: stopped while starting; the next pool removes what it left)
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
    """`workers` pre-started sandbox workers (default: one per core this process may run on, plus one)."""

    def __init__(self, workers: int | None = None, config: SandboxConfig | None = None):
        check_workers(workers, "workers")
        self.config = config or SandboxConfig()
        self.n = workers or default_workers()
        self.tasks: dict[str, dict] = {}
        self.handles: list[_WorkerHandle] = []
        remove_stale_scratch(self.config.tmp_root)
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wizardcoder-sandbox-spawner")
        try:
            for i in range(self.n):  # launch all, then wait: workers start in parallel
                self.handles.append(_WorkerHandle(i, self.config, self._spawner))
            for h in self.handles:
                h._await_ready()
        except BaseException:
            self.close()
            raise

    @property
    def isolation(self) -> IsolationReport:
        """What isolation is in force, as the first worker probed it (all workers run the same code)."""
        return self.handles[0].isolation

    def add_task(self, key: str, data) -> None:
        """Data that jobs with this `task_key` need: a dict, or a callable returning it (called when a worker first
        needs it, so large data is only in memory while being sent)."""
        self.tasks[key] = data
        for h in self.handles:
            h.loaded.pop(key, None)

    def drop_task(self, key: str) -> None:
        """Forget a task's data here (workers drop it when they need room)."""
        self.tasks.pop(key, None)

    def run(self, jobs: Iterable[Job | dict]) -> Iterator[Result | dict]:
        """Run jobs on all workers; yield results as they complete (a Result per Job, a dict per dict job)."""
        todo: queue.Queue = queue.Queue()
        done: queue.Queue = queue.Queue()
        as_dict: set[int] = set()
        n = 0
        for job in jobs:
            if isinstance(job, dict):
                as_dict.add(n)
            todo.put((n, Job.coerce(job)))
            n += 1
        if n == 0:
            return

        def loop(h: _WorkerHandle) -> None:
            # Up to QUEUED jobs sent ahead: the worker starts the next program as soon as one ends, without waiting
            # for this thread to read the reply and send again (see _WorkerHandle.queueable). Only while there are
            # jobs enough for every worker: a job queued behind a long program must not wait while a worker idles.
            sent: collections.deque = collections.deque()
            held = None  # a job that waits until the worker has nothing queued
            dead = False
            while True:
                while len(sent) <= QUEUED:
                    if held is None:
                        if sent and todo.qsize() < len(self.handles):
                            break
                        try:
                            held = todo.get_nowait()
                        except queue.Empty:
                            break
                    i, job = held
                    if dead:
                        done.put((i, Result(job.id, "crashed", "sandbox worker could not restart")))
                        held = None
                        continue
                    frame = h.message(job)
                    if sent and not h.queueable(job, frame):
                        break
                    held = None
                    sent.append((i, job))
                    try:
                        h.send(job, self.tasks, frame)
                    except OSError:  # the worker is gone: receive() below says so
                        break
                if not sent:
                    if held is None:
                        return
                    continue
                i, job = sent.popleft()
                try:
                    done.put((i, decode(job, h.receive())))
                except (EOFError, OSError, pickle.UnpicklingError) as e:
                    done.put((i, Result(job.id, "crashed", f"sandbox worker failed: {e or type(e).__name__}")))
                    while sent:  # queued behind the one that was running: never started, so run them again
                        todo.put(sent.pop())
                    try:
                        h.restart()
                    except Exception:  # noqa: BLE001
                        dead = True

        threads = [threading.Thread(target=loop, args=(h,), daemon=True) for h in self.handles]
        for t in threads:
            t.start()
        for _ in range(n):
            i, res = done.get()
            yield res.to_dict() if i in as_dict else res
        for t in threads:
            t.join()

    def close(self) -> None:
        for h in self.handles:  # all at once: each worker's exit takes a while (the watchdog, the scratch)
            h.ask_exit()
        for h in self.handles:
            h.finish()
            h.release()
        self.handles = []
        self._spawner.shutdown(wait=False)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
