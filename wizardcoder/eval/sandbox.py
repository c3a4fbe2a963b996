"""The sandbox worker: a pre-started Python process that forks one isolated child per program.

    evaluator ──pipe──> worker (python -m wizardcoder.eval.worker; modules pre-imported, in its own network
                        namespace when permitted)
                          └─ fork per job ─> child: new session/process group, rlimits, private temp folder,
                                             unprivileged uid (when root), no_new_privs, Landlock, seccomp,
                                             then runs the job (wizardcoder/eval/checks.py)

Layers, each used when this machine permits it (probed once per worker and reported by `isolation`):
  process     every program in its own forked process and process group, never in the evaluator; the worker is a
              child subreaper and SIGKILLs the group (and, with forks allowed, every process of the sandbox uid)
              when the program ends or runs out of time; PDEATHSIG ties child -> worker -> evaluator
  time        RLIMIT_CPU (the job's limit, whole seconds) and a wall-clock limit of wall_factor times that + 1 s
  limits      RLIMIT_AS (memory), RLIMIT_NOFILE, RLIMIT_FSIZE (output and files), RLIMIT_CORE=0, RLIMIT_NPROC (when
              running under a uid of its own)
  user        when root: an unprivileged uid of its own per worker (claimed by the pool), no groups; only
              CAP_DAC_READ_SEARCH is kept when that uid could not read the Python installation
  scratch     a private temp folder per program (cwd, HOME, TMPDIR) on a size-capped tmpfs in the worker's own mount
              namespace, removed after the program
  network     a network namespace with no interfaces (unshare CLONE_NEWNET); Landlock TCP rules (ABI >= 4); a
              seccomp filter that allows socket() for AF_UNIX only
  filesystem  Landlock: writes, creates, deletes and renames only beneath the temp folder (and writes to /dev/null)
  syscalls    seccomp: no fork/vfork/non-thread clone (stops a fork bomb outright), signals only to itself, no
              ptrace/process_vm/unshare/setns/mount
"""
from __future__ import annotations

import dataclasses
import errno
import gc
import json
import math
import os
import pickle
import resource
import select
import shutil
import signal
import struct
import tempfile
import time
from json.encoder import encode_basestring_ascii as _json_str

import _signal

from . import checks

try:
    from .. import _sandbox
except ImportError:  # the C extension was not built; the Python layers still apply
    _sandbox = None

# Modules imported once in the worker so programs find them ready. A bigger worker costs more per fork (page tables,
# copy-on-write, teardown), so numpy is preloaded only for the tasks whose checks use it.
PRELOAD = ("math", "re", "string", "collections", "itertools", "functools", "heapq", "bisect", "typing", "random",
           "statistics", "fractions", "decimal", "hashlib", "copy", "operator", "datetime", "json")


@dataclasses.dataclass
class SandboxConfig:
    """Limits and switches for every program a worker runs. Times in seconds, sizes in bytes."""

    # Time: a program gets `timeout` seconds of CPU (RLIMIT_CPU, rounded up to whole seconds) and wall_factor times
    # that (plus 1 s) of wall clock, which catches programs that sleep or block. CPU time, unlike wall time, does not
    # grow when the machine is busy, so a loaded machine does not turn slow-but-correct programs into timeouts.
    timeout: float = 3.0  # per program (jobs may carry their own: the + tasks compute theirs from the task)
    cpu_timeout: float | None = None  # overrides the CPU limit of every job
    wall_factor: float = 3.0
    memory: int = 4 << 30  # RLIMIT_AS
    max_output: int = 16 << 20  # RLIMIT_FSIZE: stdout+stderr file and any file the program writes
    max_files: int = 256  # RLIMIT_NOFILE
    max_procs: int = 64  # RLIMIT_NPROC, when the program runs under a uid of its own
    allow_fork: bool = False  # False: seccomp refuses new processes; True: only RLIMIT_NPROC bounds them
    network: bool = False  # True disables every network layer (for programs that legitimately need it)
    uid_base: int = 61000  # when root, each worker runs programs under the first free uid from here (flock-claimed)
    scratch: int = 512 << 20  # size of the worker's private tmpfs holding the temp folders (when permitted)
    tmp_root: str | None = None  # where private temp folders go (default: the system temp dir)
    preload: tuple = ()  # modules to import in the worker besides PRELOAD (e.g. numpy for the + tasks)


# ------------------------------------------------------------------------------------------------ framing

def send_msg(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, struct.pack("<Q", len(data)) + data)


def recv_msg(fd: int):
    head = _read_exact(fd, 8)
    if head is None:
        return None
    (n,) = struct.unpack("<Q", head)
    body = _read_exact(fd, n)
    if body is None:
        raise EOFError("worker pipe closed mid-message")
    return pickle.loads(body)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            return None if got == 0 else b"".join(chunks)
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------------ worker

class Worker:
    """The worker's state: isolation probed at start, task data received from the evaluator, the job loop."""

    def __init__(self, index: int, config: SandboxConfig, uid: int | None = None):
        self.index = index
        self.config = config
        self.tasks: dict[str, dict] = {}
        self.root = os.geteuid() == 0
        self.uid = (uid if uid is not None else config.uid_base + index) if self.root else os.getuid()
        self.gid = self.uid if self.root else os.getgid()
        self.tmp_root = tempfile.mkdtemp(prefix=f"wizardcoder-sandbox-{os.getpid()}-", dir=config.tmp_root)
        os.chmod(self.tmp_root, 0o711)
        self.jobs = 0
        self.isolation = self._setup()

    def _setup(self) -> dict:
        iso: dict = {"process": "fork per program from a pre-started worker; own session and process group; "
                                "group SIGKILLed at the end and on timeout"}
        if _sandbox is not None:
            try:
                _sandbox.subreaper()
                _sandbox.pdeathsig(signal.SIGKILL)
            except OSError:
                pass
        if os.getppid() == 1:  # the evaluator died before PDEATHSIG was set
            os._exit(1)
        self.keep_read = False
        if self.root:
            probe = self._probe_uid()
            if probe == "no-setuid":  # uid 0 without CAP_SETUID (a capability-dropped container): stay as we are
                self.root, self.uid, self.gid = False, os.getuid(), os.getgid()
            self.keep_read = probe == "unreadable"
        if self.root:
            iso["user"] = f"uid {self.uid} gid {self.gid} (unprivileged, one per worker)"
            if self.keep_read:
                iso["user"] += (" keeping only CAP_DAC_READ_SEARCH, because the Python installation is not readable "
                                "by other users (read any file, write none)")
        else:
            iso["user"] = (f"same uid as the evaluator ({self.uid}): not root, or not allowed to switch uid")
        iso["scratch"] = f"private temp folder per program under {self.tmp_root}, removed after"
        if _sandbox is not None:
            try:
                _sandbox.private_tmpfs(self.tmp_root, self.config.scratch)
                iso["scratch"] += f" (a private {self.config.scratch >> 20} MiB tmpfs in a mount namespace)"
            except OSError as e:
                iso["scratch"] += f" (on disk: no private tmpfs, {errno.errorcode.get(e.errno, e.errno)})"
        net = []
        if not self.config.network:
            if _sandbox is not None:
                try:
                    _sandbox.unshare_net()
                    net.append("network namespace without interfaces (unshare CLONE_NEWNET)")
                except OSError as e:
                    net.append(f"no network namespace ({errno.errorcode.get(e.errno, e.errno)})")
        self.landlock_abi = _sandbox.landlock_abi() if _sandbox is not None else 0
        if self.landlock_abi:
            iso["filesystem"] = (f"Landlock ABI {self.landlock_abi}: writes only beneath the private temp folder "
                                 "(and to /dev/null)" + (", plus uid permissions" if self.root else ""))
            if not self.config.network and self.landlock_abi >= 4:
                net.append("Landlock denies TCP bind/connect")
        else:
            iso["filesystem"] = ("uid permissions only (Landlock unavailable)" if self.root
                                 else "NONE beyond the private working folder (no Landlock, not root)")
        if _sandbox is not None:
            seccomp = "seccomp: signals only to itself, no ptrace/unshare/mount"
            if not self.config.allow_fork:
                seccomp += ", no new processes"
            if not self.config.network:
                seccomp += ", socket() for AF_UNIX only"
                net.append("seccomp allows AF_UNIX sockets only")
            iso["syscalls"] = seccomp
        else:
            iso["syscalls"] = "NONE: wizardcoder._sandbox is not built"
        iso["network"] = "; ".join(net) if not self.config.network else "allowed (network=True)"
        c = self.config
        lim = [f"address space {c.memory >> 20} MiB", f"output/file size {c.max_output >> 20} MiB",
               f"{c.max_files} open files", "no core files"]
        if self.root:
            lim.append(f"{c.max_procs} processes (RLIMIT_NPROC)")
        iso["limits"] = ", ".join(lim)
        for name in PRELOAD + tuple(self.config.preload):
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - a preload is an optimisation only
                pass
        # Programs see a minimal environment, none of the evaluator's (set once here; the child adds HOME, TMPDIR).
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
                           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        # A fork server's heap must stay shared: without this the child's first garbage collection walks (and so
        # copies on write) every object the worker holds, several ms per program.
        gc.collect()
        gc.freeze()
        return iso

    def _probe_uid(self) -> str:
        """Can we switch to the sandbox uid ("no-setuid" if not), and can that uid import from this interpreter's
        stdlib, site-packages and our package ("ok" or "unreadable")?"""
        import sysconfig

        paths = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                 os.path.dirname(os.path.abspath(__file__))]
        pid = os.fork()
        if pid == 0:
            try:
                if _sandbox is not None:
                    _sandbox.drop_to(self.uid, self.gid, False)
                else:
                    os.setgroups([])
                    os.setgid(self.gid)
                    os.setuid(self.uid)
            except BaseException:  # noqa: BLE001
                os._exit(2)
            try:
                for p in paths:
                    os.listdir(p)
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return {0: "ok", 1: "unreadable"}.get(code, "no-setuid")

    # -------------------------------------------------------------------------------------------- one job

    def run_job(self, job: dict) -> dict:
        self.jobs += 1
        jobdir = os.path.join(self.tmp_root, f"job{self.jobs}")
        os.mkdir(jobdir, 0o700)
        if self.root:
            os.chown(jobdir, self.uid, self.gid)
        cpu = float(self.config.cpu_timeout or job.get("timeout") or self.config.timeout)
        timeout = cpu * self.config.wall_factor + 1.0
        r, w = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:  # ------------------------------------------------------------- child
            try:
                os.close(r)
                self._child(job, jobdir, w, cpu)
            finally:
                os._exit(101)
        os.close(w)
        try:
            reply = self._watch(pid, r, t0, timeout, cpu, big=job["kind"] == "record")
        finally:
            os.close(r)
            self._cleanup(pid, jobdir)
        reply["seconds"] = round(time.monotonic() - t0, 4)
        return reply

    def _child(self, job: dict, jobdir: str, w: int, cpu: float) -> None:
        c = self.config
        os.setsid()
        if _sandbox is not None:
            _sandbox.pdeathsig(signal.SIGKILL)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(os.path.join(jobdir, ".output"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if self.root:
            os.fchown(out, self.uid, self.gid)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.dup2(w, 3)
        os.closerange(4, 1 << 16)
        for sig in _RESET_SIGNALS:  # the C function: signal.signal's enum wrapping costs ~0.2 ms per fork
            _signal.signal(sig, _signal.SIG_DFL)
        rl = resource.setrlimit
        rl(resource.RLIMIT_CORE, (0, 0))
        rl(resource.RLIMIT_CPU, (_cpu_secs(cpu), _cpu_secs(cpu) + 1))
        rl(resource.RLIMIT_FSIZE, (c.max_output, c.max_output))
        rl(resource.RLIMIT_NOFILE, (c.max_files, c.max_files))
        if c.memory:
            rl(resource.RLIMIT_AS, (c.memory, c.memory))
        os.chdir(jobdir)
        os.environ["HOME"] = os.environ["TMPDIR"] = jobdir  # the rest was set once by the worker (_setup)
        tempfile.tempdir = jobdir
        if self.root:
            rl(resource.RLIMIT_NPROC, (c.max_procs, c.max_procs))
            if _sandbox is not None:
                _sandbox.drop_to(self.uid, self.gid, self.keep_read)
            else:
                os.setgroups([])
                os.setgid(self.gid)
                os.setuid(self.uid)
        if _sandbox is not None:
            _sandbox.no_new_privs()
            if self.landlock_abi:
                _sandbox.landlock([jobdir, os.devnull], not c.network, True)  # torch and others write /dev/null
            _sandbox.seccomp(os.getpid(), not c.allow_fork, not c.network)
        kind = job["kind"]
        if kind == "script":
            result = checks.run_script(job)
        elif kind == "plus":
            result = checks.run_plus(job, self.tasks[job["task_key"]])
        elif kind == "record":
            result = checks.run_record(job, self.tasks[job["task_key"]])
        else:
            result = {"status": "crashed", "error": f"unknown job kind {kind}"}
        data = pickle.dumps(result) if kind == "record" else _flat_json(result).encode()
        try:
            _write_all(3, data)
        except OSError:
            os._exit(102)
        os._exit(0)

    def _watch(self, pid: int, r: int, t0: float, timeout: float, cpu: float, big: bool) -> dict:
        """Collect the child's result until it exits or its wall time runs out."""
        cap = (1 << 30) if big else (1 << 20)
        chunks, got, status, rusage, timed_out = [], 0, None, None, False
        pidfd = os.pidfd_open(pid)
        try:
            fds = [pidfd, r]
            while status is None:
                left = timeout - (time.monotonic() - t0)
                if left <= 0:
                    timed_out = True
                    _killpg(pid)
                    _, status, rusage = os.wait4(pid, 0)
                    break
                ready, _, _ = select.select(fds, [], [], left)
                if r in ready:
                    b = os.read(r, 1 << 20)
                    if not b:
                        fds = [pidfd]
                    elif got < cap:
                        chunks.append(b)
                        got += len(b)
                if pidfd in ready:
                    _, status, rusage = os.wait4(pid, 0)
        finally:
            os.close(pidfd)
        # drain what is still in the pipe (the child has exited; a grandchild could hold it open, so no blocking)
        os.set_blocking(r, False)
        try:
            while got < cap:
                b = os.read(r, 1 << 20)
                if not b:
                    break
                chunks.append(b)
                got += len(b)
        except BlockingIOError:
            pass
        data = b"".join(chunks)
        cpu_used = rusage.ru_utime + rusage.ru_stime if rusage else 0.0
        if timed_out:
            return {"status": "timeout", "error": f"wall time limit {timeout:g}s"}
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= _cpu_secs(cpu)):
                return {"status": "timeout", "error": f"CPU time limit {_cpu_secs(cpu)}s"}
            if sig == signal.SIGXFSZ:
                return {"status": "crashed", "error": f"output/file size limit {self.config.max_output >> 20} MiB"}
            return {"status": "crashed", "error": f"killed by {signal.Signals(sig).name}"}
        code = os.WEXITSTATUS(status)
        if code != 0 or not data:
            return {"status": "crashed", "error": f"exited with status {code} before reporting a result"}
        return {"raw": data}

    def _cleanup(self, pid: int, jobdir: str) -> None:
        _killpg(pid)
        if self.config.allow_fork and self.root:
            # Processes that left the group (setsid) still carry the sandbox uid: kill everything of that uid, as
            # that uid, until nothing is left (a bomb may fork while we sweep), reaping what comes back to us.
            for _ in range(500):
                left = self._sweep_uid()
                self._reap()
                if not left:
                    break
                time.sleep(0.002)
        self._reap()
        try:  # the usual case: the program left only its output file
            os.unlink(os.path.join(jobdir, ".output"))
            os.rmdir(jobdir)
        except OSError:
            shutil.rmtree(jobdir, onerror=_force_remove)

    def _sweep_uid(self) -> bool:
        """kill(-1, SIGKILL) as the sandbox uid; True when some process (alive or not yet reaped) was still there."""
        sweeper = os.fork()
        if sweeper == 0:
            try:
                os.setuid(self.uid)
                os.kill(-1, signal.SIGKILL)
                os._exit(0)
            except ProcessLookupError:
                os._exit(1)
            finally:
                os._exit(2)
        return os.waitpid(sweeper, 0)[1] == 0

    @staticmethod
    def _reap() -> None:
        """Reap orphans reparented to us (we are a child subreaper)."""
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass

    def close(self) -> None:
        """Empty the scratch folder; the evaluator removes the folder itself (here it may be a mount point)."""
        for name in os.listdir(self.tmp_root):
            shutil.rmtree(os.path.join(self.tmp_root, name), onerror=_force_remove)


_RESET_SIGNALS = tuple(int(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU,
                                        signal.SIGALRM))


def _flat_json(d: dict) -> str:
    """JSON for a flat dict of str/bool/int/float, written directly: json.dumps's first call in a fresh fork costs
    about 0.4 ms of page faults, more than the rest of the result handling."""
    parts = []
    for k, v in d.items():
        if isinstance(v, str):
            val = _json_str(v)
        elif isinstance(v, bool):
            val = "true" if v else "false"
        elif isinstance(v, (int, float)) and v == v and v not in (float("inf"), float("-inf")):
            val = repr(v)
        else:
            val = json.dumps(v)
        parts.append(f"{_json_str(k)}: {val}")
    return "{" + ", ".join(parts) + "}"


def _cpu_secs(cpu: float) -> int:
    return max(1, math.ceil(cpu))


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _force_remove(func, path, exc_info):
    """rmtree's error hook: a program may leave folders without write or search permission."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, onerror=_force_remove)
        else:
            func(path)
    except OSError:
        pass


def serve(index: int, config: SandboxConfig, uid: int | None = None) -> None:
    """The worker's main loop: messages from the evaluator on fd 0, replies on fd 1."""
    cmd_in, cmd_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    worker = Worker(index, config, uid)
    send_msg(cmd_out, {"op": "ready", "isolation": worker.isolation, "pid": os.getpid(), "tmp_root": worker.tmp_root})
    try:
        while True:
            msg = recv_msg(cmd_in)
            if msg is None or msg.get("op") == "exit":
                break
            if msg["op"] == "task":
                worker.tasks[msg["key"]] = msg["data"]
                gc.freeze()  # the task's inputs and expected outputs too (see Worker._setup)
                continue
            if msg["op"] == "drop":
                worker.tasks.pop(msg["key"], None)
                continue
            reply = worker.run_job(msg["job"])
            reply["id"] = msg["job"]["id"]
            send_msg(cmd_out, reply)
    finally:
        worker.close()
