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
import select
import signal
import site
import subprocess
import sys
import tempfile
import threading
from typing import Iterable, Iterator

from ..errors import UserError
from . import worker
from .jobs import VERDICTS, IsolationReport, Job, Layer, Result, SandboxConfig, check_workers, default_workers
from .sandbox import Channel
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


def _import_path(pkg_parent: str) -> list[str]:
    """The import path a fresh interpreter would have, from this one's (site has run here): this package's folder,
    PYTHONPATH, and the sys.path entries beneath the interpreter's prefixes (the standard library, site-packages and
    what their .pth files add there) or in the user's site-packages; not what this process added while running (a
    test runner's folders, a caller's sys.path.insert), which programs would then be allowed to read (view.py)."""
    prefixes = [os.path.join(os.path.abspath(p), "") for p in
                (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)]
    given = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    path = [pkg_parent]
    for p in sys.path:
        if not p or p in path:
            continue
        a = os.path.abspath(p)
        if a in given or a == user or any(os.path.join(a, "").startswith(pre) for pre in prefixes):
            path.append(p)
    return path


def _worker_command(config: SandboxConfig, first: str, last: str) -> tuple[list[str], dict[str, str]]:
    """argv (`first` CONFIG `last`: worker.py's two forms) and environment of a worker process, started as `python
    -S`: it does not run site again (its .pth files, an editable install's import hook: ~20 ms a process) but takes
    the import path site gave this process (_import_path)."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[worker.PATH_VARIABLE] = json.dumps(_import_path(pkg_parent))
    config = dataclasses.replace(config, tmp_root=config.tmp_root or tempfile.gettempdir())
    argv = [sys.executable, "-S", "-m", "wizardcoder.eval.worker", first, json.dumps(dataclasses.asdict(config)), last]
    return argv, env


class _Forked:
    """A worker the fork server started: not our child, so waited for and killed through a pidfd (opened while the
    fork server, which reaps it, still holds it)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd = os.pidfd_open(pid)

    def wait(self, timeout: float | None = None) -> None:
        if self.fd >= 0:
            if not select.select([self.fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"sandbox worker {self.pid}", timeout)
            os.close(self.fd)
            self.fd = -1

    def poll(self) -> int | None:
        """None while it runs; -1 once it has exited (its status is its parent's, the fork server's)."""
        return -1 if self.fd < 0 or select.select([self.fd], [], [], 0)[0] else None

    def kill(self) -> None:
        if self.fd >= 0:
            signal.pidfd_send_signal(self.fd, signal.SIGKILL)


def _fork_workers(handles: list[_WorkerHandle], config: SandboxConfig,
                  spawner: concurrent.futures.ThreadPoolExecutor) -> subprocess.Popen:
    """Start every worker at once through one fork server (worker.py --fork): it imports the sandbox and preloads
    once, then forks a worker per handle on the handle's pipes, so a pool's start costs one interpreter start, not
    one per worker. Returns the fork server (their parent, which outlives them)."""
    ends, specs, mine = [], [], []
    try:
        for h in handles:
            cmd_r, cmd_w = os.pipe()  # evaluator -> the worker's stdin
            rep_r, rep_w = os.pipe()  # the worker's stdout -> evaluator
            ends += [cmd_r, rep_w]
            mine.append((cmd_w, rep_r))
            specs.append([h.index, h.uid, cmd_r, rep_w])
        pids_r, pids_w = os.pipe()
        ends.append(pids_w)
        argv, env = _worker_command(config, "--fork", json.dumps(specs))
        server = spawner.submit(subprocess.Popen, argv, stdout=pids_w, env=env, cwd="/", pass_fds=ends).result()
    except BaseException:
        for fd in [*ends, *(fd for pair in mine for fd in pair)]:
            os.close(fd)
        raise
    for fd in ends:
        os.close(fd)
    with os.fdopen(pids_r, "rb") as f:  # one line, once every worker is forked; nothing when the server failed
        line = f.readline()
    try:
        pids = json.loads(line)
        procs = [_Forked(pid) for pid in pids]
    except (ValueError, TypeError, OSError):
        pids = procs = None
    if not isinstance(pids, list) or len(pids) != len(handles):
        for cmd_w, rep_r in mine:
            os.close(cmd_w)
            os.close(rep_r)
        server.kill()
        server.wait()
        raise UserError("the sandbox workers failed to start; run `python -m wizardcoder.eval.worker 0 '{}'` to see "
                        "why.")
    for h, proc, (cmd_w, rep_r) in zip(handles, procs, mine):
        h.attach(proc, cmd_w, rep_r)
    return server


class _Tasks(dict):
    """The pool's tasks ({key: data, or a callable returning it}) and the messages carrying them to the workers: every
    worker that runs a problem's jobs needs its data, so the message is made (data loaded, pickled) once and kept
    while it is one of the last few used, not made again for each worker."""

    KEEP, KEEP_BYTES = 3, 256 << 20  # messages kept; a bigger one is made again when another worker needs it

    def __init__(self):
        super().__init__()
        self.messages: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.lock = threading.Lock()

    def message(self, key: str) -> bytes:
        with self.lock:
            frame = self.messages.get(key)
            if frame is not None:
                self.messages.move_to_end(key)
                return frame
        data = self[key]
        frame = Channel.frame({"op": "task", "key": key, "data": data() if callable(data) else data})
        if len(frame) <= self.KEEP_BYTES:
            with self.lock:
                self.messages[key] = frame
                while len(self.messages) > self.KEEP:
                    self.messages.popitem(last=False)
        return frame

    def forget(self, key: str) -> None:
        with self.lock:
            self.pop(key, None)
            self.messages.pop(key, None)


class _WorkerHandle:
    """One worker process and the two pipes to it. Workers are started from the pool's one spawner thread: a worker
    (and the fork server that starts them together) asks for PDEATHSIG, which the kernel ties to the *thread* that
    forked it, so starting one from a short-lived dispatch thread would kill it when a `run` ends."""

    def __init__(self, index: int, config: SandboxConfig, spawner: concurrent.futures.ThreadPoolExecutor):
        self.index = index
        self.config = config
        self.spawner = spawner
        self.uid, self.uid_lock = (_claim_uid(config.uid_base) if os.geteuid() == 0 else (os.getuid(), None))
        self.loaded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.ready_lock = threading.Lock()  # the pool's caller and the worker's dispatch thread may both wait
        self.ready = False  # "ready" is read when the worker is first needed (await_ready)
        self.proc = None  # attach()

    def _start(self) -> None:
        """Start this worker alone (a restart): an interpreter of its own."""
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        argv, env = _worker_command(self.config, str(self.index), str(self.uid))
        try:
            proc = self.spawner.submit(subprocess.Popen, argv, stdin=cmd_r, stdout=rep_w, env=env, cwd="/",
                                       close_fds=True).result()
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
        """The worker process (a Popen, or _Forked) and our ends of its pipes."""
        self.proc = proc
        self.commands, self.replies = Channel(cmd_w), Channel(rep_r)
        self.ready = False
        # half the pipe: the job being read and the one queued behind it both fit
        self.queue_bytes = fcntl.fcntl(cmd_w, fcntl.F_GETPIPE_SZ) // 2

    def await_ready(self) -> None:
        """Read the worker's "ready" (its isolation report and scratch folder), once."""
        with self.ready_lock:
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
        if self.proc is None:
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
    """`workers` pre-started sandbox workers (default: one per core this process may run on, plus one)."""

    def __init__(self, workers: int | None = None, config: SandboxConfig | None = None):
        check_workers(workers, "workers")
        self.config = config or SandboxConfig()
        self.n = workers or default_workers()
        self.tasks = _Tasks()
        self.handles: list[_WorkerHandle] = []
        remove_stale_scratch(self.config.tmp_root)
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wizardcoder-sandbox-spawner")
        self._server: subprocess.Popen | None = None
        try:
            for i in range(self.n):
                self.handles.append(_WorkerHandle(i, self.config, self._spawner))
            self._server = _fork_workers(self.handles, self.config, self._spawner)
            # The first one's start says whether this machine can run the sandbox at all; each other one takes
            # jobs once it has started (run), so programs run while the rest are still starting.
            self.handles[0].await_ready()
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
        self.tasks.forget(key)  # a message made of earlier data
        self.tasks[key] = data
        for h in self.handles:
            h.loaded.pop(key, None)

    def drop_task(self, key: str) -> None:
        """Forget a task's data here (workers drop it when they need room)."""
        self.tasks.forget(key)

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
            try:
                h.await_ready()
            except UserError:  # the others take its share (the first one started: see __init__)
                return
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

    def stop_soon(self) -> None:
        """Ask every worker to exit without waiting (close() then waits): their exit (the watchdog, the scratch)
        overlaps whatever the caller does meanwhile. No job may be run after it."""
        for h in self.handles:
            h.ask_exit()

    def close(self) -> None:
        self.stop_soon()  # all at once: each worker's exit takes a while
        for h in self.handles:
            h.finish()
            h.release()
        self.handles = []
        if self._server is not None:  # it exits once the workers it forked are gone
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = None
        self._spawner.shutdown(wait=False)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
