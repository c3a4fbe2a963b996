"""Starting a pool's sandbox workers before their config is known: one fork server (worker.py --fork) that imports
the sandbox and preloads the common modules while the evaluator imports the rest of itself and reads its inputs.

    server = ForkServer(3)                    # now: a fresh interpreter (~40 ms of imports and preloads)
    ...                                       # meanwhile: the evaluator's own work
    server.configure(config_fields, uids)     # then: it preloads the task's modules and forks the 3 workers
    for proc, cmd_w, rep_r in server.workers():   # once they are forked: each worker and our ends of its pipes

Light on purpose (no dataclasses, no jobs.py): `evaluate` starts the server before it imports anything else.
"""
from __future__ import annotations

import json
import os
import select
import signal
import site
import subprocess
import sys
import threading

from ..errors import ConfigError, UserError
from . import worker

WORKERS_PER_CORE = 4  # the most sandbox workers per CPU core this process may use


def max_workers() -> int:
    return WORKERS_PER_CORE * len(os.sched_getaffinity(0))


def default_workers() -> int:
    """One sandbox worker per core this process may use, plus one: a worker waits while its program starts and ends
    (and for the evaluator), and with one per core a core then idles; one more scored HumanEval 25-30% faster on 2
    cores (bench/RESULTS.md, 2026-12-04). Programs' limits are CPU time, so sharing cores changes no verdict."""
    return len(os.sched_getaffinity(0)) + 1


def check_workers(workers, flag: str = "--workers") -> None:
    """Sandbox workers: a whole number in [1, max_workers()] (None: default_workers())."""
    if workers is None:
        return
    if not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1):
        raise ConfigError(f"{flag} {workers}: give a whole number >= 1 (or leave it out for one per core plus one).")
    if workers > max_workers():
        raise ConfigError(f"{flag} {workers}: at most {max_workers()} here ({WORKERS_PER_CORE} per CPU core this "
                          "process may use); each worker is a process holding its programs' memory.")


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


def worker_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """argv (worker.py's `main` and `args`: its two forms) and environment of a worker process. `-S`: it does not run
    site again (its .pth files, an editable install's import hook: ~20 ms a process) but takes the import path site
    gave this process (_import_path)."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[worker.PATH_VARIABLE] = json.dumps(_import_path(pkg_parent))
    return [sys.executable, "-S", "-c", "from wizardcoder.eval.worker import main; main()", *args], env


class Spawner:
    """Starts worker processes. A worker (and the fork server) asks for PDEATHSIG, which the kernel ties to the
    *thread* that forked it: they are started from the main thread, which lives as long as the process, or, called
    from any other thread, from one thread of the pool's own (a short-lived caller's thread would kill them when it
    ends)."""

    def __init__(self):
        self._executor = None

    def __call__(self, fn, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            return fn(*args, **kwargs)
        if self._executor is None:
            import concurrent.futures

            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wizardcoder-sandbox-spawner")
        return self._executor.submit(fn, *args, **kwargs).result()

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)


class Forked:
    """A worker the fork server started: not our child, so waited for and killed through a pidfd."""

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


FAILED = "the sandbox workers failed to start; run `python -m wizardcoder.eval.worker 0 '{}'` to see why."


class ForkServer:
    """The fork server of `n` workers, started now. It imports the sandbox and preloads sandbox.PRELOAD, then waits
    for `configure` (the SandboxConfig's fields and the workers' uids, one JSON line on its stdin), preloads the
    config's modules, does what is the same for every worker once, and forks the workers, each on a pair of pipes
    made here; it stays their parent (their PDEATHSIG fires when it dies) until all are gone."""

    def __init__(self, n: int, spawner: Spawner):
        self.n = n
        self.spawner = spawner
        self.mine: list[tuple[int, int]] = []  # our ends: (command write, reply read) per worker
        self.procs: list[Forked] | None = None  # workers()
        self.server = self._config_w = self._pids_r = None
        ends, specs = [], []  # the server's ends: the workers' (passed at their numbers), its stdin and stdout
        try:
            for index in range(n):
                cmd_r, cmd_w = os.pipe()  # evaluator -> the worker's stdin
                rep_r, rep_w = os.pipe()  # the worker's stdout -> evaluator
                ends += [cmd_r, rep_w]
                self.mine.append((cmd_w, rep_r))
                specs.append([index, cmd_r, rep_w])
            config_r, self._config_w = os.pipe()
            ends.append(config_r)
            self._pids_r, pids_w = os.pipe()
            ends.append(pids_w)
            argv, env = worker_command("--fork", json.dumps(specs))
            self.server = spawner(subprocess.Popen, argv, stdin=config_r, stdout=pids_w, env=env, cwd="/",
                                  pass_fds=ends[:-2])
        except BaseException:
            self.close()
            raise
        finally:
            for fd in ends:
                os.close(fd)

    def configure(self, config: dict, uids: list[int]) -> None:
        """Send the workers' config (every SandboxConfig field) and uids; they are forked once it arrives."""
        try:
            # a blocking write: all of it, however long
            os.write(self._config_w, json.dumps({"config": config, "uids": uids}).encode() + b"\n")
        except OSError:
            pass  # the server died: workers() says so
        os.close(self._config_w)
        self._config_w = None

    def workers(self) -> list[tuple[Forked, int, int]]:
        """(worker, command write end, reply read end) per worker, once the server has forked them all (it says
        their pids); UserError when it failed, or was never configured. Ours to close from then on."""
        if self._config_w is not None:  # never configured: it ends without forking
            os.close(self._config_w)
            self._config_w = None
        if self.procs is None:
            if self._pids_r is None:  # it failed before
                raise UserError(FAILED)
            with os.fdopen(self._pids_r, "rb") as f:  # one line, once every worker is forked; nothing on failure
                self._pids_r = None
                line = f.readline()
            try:
                pids = json.loads(line)
                procs = [Forked(pid) for pid in pids]
            except (ValueError, TypeError, OSError):
                procs = None
            if not isinstance(procs, list) or len(procs) != self.n:
                self.close()
                raise UserError(FAILED)
            self.procs = procs
        mine, self.mine = self.mine, []
        return [(proc, cmd_w, rep_r) for proc, (cmd_w, rep_r) in zip(self.procs, mine)]

    def close(self, timeout: float = 10) -> None:
        """Close what is still ours; wait for the server (killed after `timeout` seconds, or at once when it was never
        configured): it exits once the workers it forked are gone."""
        configured = self._config_w is None
        for fd in (self._config_w, self._pids_r, *(fd for pair in self.mine for fd in pair)):
            if fd is not None:
                os.close(fd)
        self._config_w = self._pids_r = None
        self.mine = []
        if self.server is None:
            return
        if not configured:  # nothing to wait for: no worker, and no preload to finish
            self.server.kill()
        try:
            self.server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server = None
