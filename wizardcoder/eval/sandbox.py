"""The sandbox worker: a pre-started Python process that forks one isolated child per program.

    evaluator ──pipe──> worker (python -m wizardcoder.eval.worker; modules pre-imported; when root: its own mount,
                        network and IPC namespaces, pivoted into a minimal read-only view of the filesystem, and a
                        watchdog process that kills the sandbox uid's processes when the worker dies)
                          └─ fork per job ─> child: new session/process group, rlimits, private temp folder,
                                             unprivileged uid with no capabilities (when root), PDEATHSIG,
                                             no_new_privs, Landlock (reads and writes), seccomp, then runs the job
                                             (wizardcoder/eval/checks.py)
                                             command jobs (other languages): the child runs only checks.py, and
                                             each compile or run step it starts takes Landlock and seccomp itself
                                             before it execs (its own pid in the filter, its own /proc/self)

Each layer is used when this machine permits it, probed by each worker (the uid probe once for all, by the fork
server) and reported as an `IsolationReport`
(jobs.py): one `Layer` per name below, `active=False` with the fallback named when the machine refused it. The threat
model, what each layer stops and what holds without root, is docs/sandbox.md.
  process     every program in its own forked process and process group, never in the evaluator; the worker is a
              child subreaper and SIGKILLs the group (and, with forks allowed, every process of the sandbox uid)
              when the program ends or runs out of time
  lifetime    nothing outlives the evaluator: PDEATHSIG evaluator -> worker -> program (set after the uid switch,
              which clears it); when root, a watchdog kills every process of the worker's own sandbox uid once the
              worker is gone, and the uids are swept before the workers start
  limits      RLIMIT_AS, RLIMIT_NOFILE, RLIMIT_FSIZE (output and files), RLIMIT_CORE=0, RLIMIT_NPROC (own uid);
              the job's limit in user CPU seconds (polled by the worker; RLIMIT_CPU is a backstop at the wall-clock
              limit) and a wall-clock limit of wall_factor times that + 1 s
  user        when root: an unprivileged uid of its own per worker (claimed by the pool), no groups, no capability
              in any set (bounding, ambient, inheritable, permitted, effective)
  view        when root: the minimal filesystem view of view.py (no /root, /home, /etc/shadow ...), proc with
              hidepid=invisible, a size-capped tmpfs for the temp folders, a private IPC namespace
  filesystem  Landlock: reads only the allowlist of view.py and the program's own folder; writes, creates,
              deletes and renames only beneath that folder (and writes to /dev/null); other processes' /proc files
              and signals are out of the domain
  network     a network namespace with no interfaces; seccomp: no socket() of any family, socketpair() AF_UNIX
              only; Landlock TCP rules (ABI >= 4) and abstract-socket scoping (ABI >= 6)
  syscalls    seccomp: no fork/vfork/non-thread clone (stops a fork bomb outright), signals only to itself, no
              ptrace/process_vm/unshare/setns/mount/io_uring/bpf/keyrings/System V IPC
"""
from __future__ import annotations

import errno
import functools
import gc
import json
import math
import os
import pickle
import signal
import struct
import sys
import time

import _signal

from . import checks, values, view
from .checks import VERDICTS
from .compare import Comparison, HiddenOutputs
from .scratch import remove_tree

try:
    from .. import _sandbox
except ImportError:  # the C extension was not built; the Python layers still apply
    _sandbox = None

REFERENCE_VARIABLE = "WIZARDCODER_SANDBOX_REFERENCE"  # "1": every job through Worker.run_job (see Worker.receive)
SPLITS = {b"b": "base", b"p": "plus"}  # a plus job's split as its frame names it (Channel.job_frame)
NONCE_LEN = 16  # bytes of the per-job key a verdict must carry (_sandbox.judge's SB_NONCE_LEN)

# Modules imported once in the worker so programs find them ready. A bigger worker costs more per fork (page tables,
# copy-on-write, teardown), so numpy is preloaded only for the tasks whose programs use it (DS-1000), and neither
# `random` nor anything importing it (tempfile, statistics) is: random reseeds itself in every forked child
# (os.register_at_fork), about 40 page faults per program, where the few tests that use random (4 of HumanEval's 164)
# import it themselves.
PRELOAD = ("math", "re", "string", "collections", "itertools", "functools", "heapq", "bisect", "typing", "fractions",
           "decimal", "hashlib", "copy", "operator", "datetime", "json")
# One thread for every threaded library a program may load (BLAS, OpenMP, numexpr, torch, tensorflow): the pool runs
# one program per worker. Set before the preloads too: OpenBLAS sizes its thread pool when numpy is imported.
THREADS = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                            "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}


def _why(e: BaseException) -> str:
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) and e.errno else str(e)


def _write_all(fd: int, data: bytes) -> None:
    view_ = memoryview(data)
    while view_:
        n = os.write(fd, view_)
        view_ = view_[n:]


class Channel:
    """One direction of the evaluator <-> worker pipe: an 8-byte length, then a pickle (only the evaluator and the
    worker, which trust each other, speak on it; programs never see it). Not multiprocessing's Connection, which
    frames the same way: importing it grows the fork server by about 40 modules, and every program's fork and exit
    then costs about 0.5 ms more CPU (bench/RESULTS.md)."""

    def __init__(self, fd: int):
        self.fd = fd

    @staticmethod
    def frame(obj) -> bytes:
        """`obj` as it goes down the pipe (what `send` writes)."""
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return struct.pack("<Q", len(data)) + data

    @staticmethod
    def job_frame(kind: str, code: str, timeout: float | None, task_key: str | None = None,
                  split: str | None = None) -> bytes:
        """A script or plus job's frame: not a pickle but what the worker's C loop reads (_sandbox.job_loop: 'S' or
        'P', the CPU seconds (0: the worker's default), a plus job's split and task key, the source), so the worker
        runs it without unpickling; `recv` gives it as the job dict a pickled one would be."""
        data = (b"S" if kind == "script" else b"P") + struct.pack("<d", timeout or 0.0)
        if kind == "plus":
            key = task_key.encode()
            data += split[:1].encode() + struct.pack("<H", len(key)) + key
        data += code.encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(data)) + data

    def send(self, obj) -> None:
        self.send_frame(self.frame(obj))

    def send_frame(self, frame: bytes) -> None:
        _write_all(self.fd, frame)

    def recv(self):
        """The next message; EOFError when the other side is gone. A script or plus job's frame (job_frame) and the C
        loop's reply ('R', the seconds, then 0 and the program's verdict or 1, the index of the worker's own status in
        VERDICTS and its error) are read as the dicts the pickled forms would be."""
        (n,) = struct.unpack("<Q", self._exact(8))
        data = self._exact(n)
        if data[:1] in (b"S", b"P"):
            (timeout,) = struct.unpack_from("<d", data, 1)
            job, at = {"kind": "script" if data[:1] == b"S" else "plus", "timeout": timeout or None}, 9
            if job["kind"] == "plus":
                (n,) = struct.unpack_from("<H", data, 10)
                job.update(split=SPLITS[data[9:10]], task_key=data[12:12 + n].decode())
                at = 12 + n
            job["code"] = data[at:].decode("utf-8", "surrogatepass")
            return {"op": "job", "job": job}
        if data[:1] == b"R":
            (seconds,) = struct.unpack_from("<d", data, 1)
            if data[9] == 0:
                return {"raw": data[10:], "seconds": round(seconds, 4)}
            return {"status": VERDICTS[data[10]], "error": data[11:].decode(), "seconds": round(seconds, 4)}
        return pickle.loads(data)

    def _exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            b = os.read(self.fd, min(n - got, 1 << 20))
            if not b:
                raise EOFError("sandbox pipe closed")
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def closed(self) -> bool:
        return self.fd < 0


def _layer(name: str, active: bool, detail: str, fallback: str | None = None) -> tuple:
    """One isolation layer as the worker reports it: the fields of jobs.Layer, which the pool builds (the worker does
    not import jobs.py: its dataclasses would grow every program's fork)."""
    return name, active, detail, fallback


# ------------------------------------------------------------------------------------------------ worker

class Worker:
    """The worker's state: isolation probed at start, task data received from the evaluator, the job loop."""

    def __init__(self, index: int, config: SandboxConfig, uid: int | None = None):
        self.index = index
        self.config = config
        self.tasks: dict[str, dict] = {}  # what a job's child may see: inputs, limits, toolchain steps
        self.expected: dict[str, dict] = {}  # the + tasks' expected outputs, kept from the children (add_task)
        self.runners: dict[tuple[str, str], object] = {}  # (task, split) -> checks.plus_runner's program (_runner)
        self.decode = values.decoder(None)  # the + tasks' outputs (stateless: one for every Comparison)
        self.pid = os.getpid()
        self.root = os.geteuid() == 0
        self.uid = (uid if uid is not None else config.uid_base + index) if self.root else os.getuid()
        self.gid = self.uid if self.root else os.getgid()
        self.tmp_root = _scratch_root(config.tmp_root)
        self.folder = os.path.join(self.tmp_root, "job")  # each program's own, made and removed around it
        reference = os.environ.get(REFERENCE_VARIABLE) == "1"  # read before _setup clears the environment
        self.isolation = self._setup()
        self.in_c = hasattr(_sandbox, "job_loop") and not (config.allow_fork and self.root) and not reference

    def _setup(self) -> list[tuple]:
        c = self.config
        layers = [_layer("process", True, "fork per program from a pre-started worker; own session and process "
                                          "group; group SIGKILLed at the end and on timeout")]
        if _sandbox is not None:
            try:
                _sandbox.subreaper()
                _sandbox.pdeathsig(signal.SIGKILL)
            except OSError:
                pass
        if os.getppid() == 1:  # the evaluator died before PDEATHSIG was set
            os._exit(1)
        self.pydirs = view.python_dirs()
        # what the view binds and Landlock allows besides the system folders: Python, and a task's toolchain
        self.allowed = self.pydirs + [p for p in c.read_paths if os.path.exists(p)]
        self.tools = "the task's toolchain folders, " if len(self.allowed) > len(self.pydirs) else ""  # for the report
        # forked by the pool's fork server, which probed the uid and swept the uids once for all its workers (_probed)
        if self.root and not (_probed or _probe_uid(self.uid, self.gid))["setuid"]:
            # uid 0 without CAP_SETUID (a capability-dropped container): stay as we are
            self.root, self.uid, self.gid = False, os.getuid(), os.getgid()
        self.watchdog = self.watchdog_pid = None
        if self.root:
            if _probed is None:
                self._sweep()  # leftovers of an evaluator whose watchdog did not finish
            self.watchdog_pid, self.watchdog = self._start_watchdog()
        layers.append(self._lifetime_layer())

        has_view, scratch_on_tmpfs, netns, why = self._namespaces()
        self.keep_read = False
        if self.root:  # can the uid, without capabilities, list the import folders in the filesystem it will see?
            probed = _probed or _probe_uid(self.uid, self.gid, self.allowed)  # in our namespaces, by path
            self.keep_read = not probed["view" if has_view and _probed else "paths"]
            if hasattr(_sandbox, "bound"):  # once here rather than ~40 credential commits in every child's drop_to
                _sandbox.bound(self.keep_read)
        self.landlock_abi = _sandbox.landlock_abi() if _sandbox is not None else 0
        self.read_paths = view.read_paths(self.allowed, in_view=has_view)
        self.rule_fds = self._rule_fds()

        layers.append(self._user_layer())
        if has_view:
            layers.append(_layer("view", True, "own mount namespace pivoted into a read-only view holding only the "
                                               f"Python installation, {self.tools}/usr, /lib*, /bin, six /etc files, "
                                               "harmless devices, CPU info and the scratch tmpfs; proc with "
                                               "hidepid=invisible; own IPC namespace"))
        else:
            layers.append(_layer("view", False, f"the host's filesystem and IPC namespace ({why['view']})",
                                 "Landlock read rules and uid permissions decide what can be read"))
        scratch = f"private temp folder per program (cwd, HOME, TMPDIR) under {self.tmp_root}, removed after"
        if scratch_on_tmpfs:
            layers.append(_layer("scratch", True, f"{scratch}, on a private {c.scratch >> 20} MiB tmpfs"))
        else:
            layers.append(_layer("scratch", False, f"{scratch}, on disk (no private tmpfs: {why['view']})",
                                 "RLIMIT_FSIZE bounds each file; the disk's free space bounds the total"))
        layers.append(self._filesystem_layer())
        layers.append(self._network_layer(netns, why.get("network", "")))
        layers.append(self._syscalls_layer())
        lim = [f"address space {c.memory >> 20} MiB", f"output/file size {c.max_output >> 20} MiB",
               f"{c.max_files} open files", "no core files", "CPU and wall-clock time"]
        if self.root:
            lim.append(f"{c.max_procs} processes (RLIMIT_NPROC)")
        layers.append(_layer("limits", True, ", ".join(lim)))

        preload(c.preload)
        # Programs see a minimal environment, none of the evaluator's (set once here; the child adds HOME, TMPDIR).
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MPLBACKEND": "Agg", **THREADS,
                           "HOME": self.folder, "TMPDIR": self.folder})
        if "tempfile" in sys.modules:  # a preload imported it: its cached folder is the program's too
            sys.modules["tempfile"].tempdir = self.folder
        # A fork server's heap must stay shared: without this the child's first garbage collection walks (and so
        # copies on write) every object the worker holds, several ms per program.
        gc.collect()
        gc.freeze()
        return layers

    def _rule_fds(self) -> tuple[int, ...]:
        """/dev/null (written by programs) and the Landlock read paths opened once as O_PATH descriptors, numbered
        lo..hi: () when Landlock or an extension that takes them is missing, or the numbers are not one range. Each
        child keeps them through `enter` and closes them once its rules are in force: a path lookup per rule per
        program was about a quarter of Landlock's cost. A path the worker cannot open gets no rule (stays denied); one
        the program's uid may not reach stays unreachable (Landlock only narrows what its permissions allow)."""
        if not self.landlock_abi or not getattr(_sandbox, "FD_RULES", 0):
            return ()
        fds = []
        for path in [os.devnull, *self.read_paths]:
            try:
                fds.append(os.open(path, os.O_PATH | os.O_CLOEXEC))
            except OSError:
                if path == os.devnull:
                    for fd in fds:
                        os.close(fd)
                    return ()
        # Opened in the lowest free numbers, they are one range only when no other descriptor sat in between (the
        # fork server leaves gaps): else moved to the first free run of numbers above them (dup2 onto numbers
        # checked free; not fcntl's F_DUPFD: its module would be 5 more mappings in every worker, each copied at
        # every fork)
        if fds[0] < 5 or fds != list(range(fds[0], fds[0] + len(fds))):
            start = max(fds) + 1
            while any(_open_fd(fd) for fd in range(start, start + len(fds))):
                start += 1
            try:
                moved = [os.dup2(fd, start + i, inheritable=False) for i, fd in enumerate(fds)]
            except OSError:  # past the descriptor limit: the paths then go to Landlock by name
                moved = []
            for fd in fds:
                os.close(fd)
            if not moved:
                return ()
            fds = moved
        return fds[0], fds[-1]

    def _namespaces(self) -> tuple[bool, bool, bool, dict[str, str]]:
        """Root only: own mount + IPC namespaces pivoted into the view (else just a tmpfs scratch), own network
        namespace. Returns (view built, scratch on tmpfs, network namespace, {layer: why refused})."""
        if _sandbox is None:
            return False, False, False, dict.fromkeys(("view", "network"), "wizardcoder._sandbox is not built")
        if not self.root:
            return False, False, False, dict.fromkeys(("view", "network"), "not root")
        has_view = scratch_on_tmpfs = netns = False
        why: dict[str, str] = {}
        try:
            _sandbox.unshare(_sandbox.CLONE_NEWNS | _sandbox.CLONE_NEWIPC)
            try:  # the view's root is mounted on our temp folder; the scratch sits at the same path inside it
                view.build_view(self.tmp_root, self.tmp_root, self.config.scratch, self.allowed)
                has_view = True
            except OSError as e:
                why["view"] = _why(e)
                self._plain_tmpfs()  # the private mount namespace still allows a bounded scratch
            scratch_on_tmpfs = True
        except OSError as e:
            why.setdefault("view", _why(e))
        if not self.config.network:
            try:
                _sandbox.unshare(_sandbox.CLONE_NEWNET)
                netns = True
            except OSError as e:
                why["network"] = _why(e)
        return has_view, scratch_on_tmpfs, netns, why

    # -------------------------------------------------------------------------------------------- the report

    def _lifetime_layer(self) -> tuple:
        if _sandbox is None:
            return _layer("lifetime", False, "no PDEATHSIG (wizardcoder._sandbox is not built)",
                          "the worker kills each program's process group; programs left running when the evaluator "
                          "is killed end only at their CPU limit")
        detail = "PDEATHSIG evaluator -> worker -> program"
        if self.watchdog is not None:
            return _layer("lifetime", True, detail + f"; a watchdog kills every process of uid {self.uid} when the "
                                                     "worker is gone; the uid is swept when a worker starts")
        what = ("the program is one process (seccomp refuses forks)" if not self.config.allow_fork else
                "with --allow-fork, a program's daemonized grandchildren can outlive the evaluator")
        return _layer("lifetime", False, detail + f"; no uid of its own to sweep (not root): {what}",
                      "PDEATHSIG and the process-group kill")

    def _user_layer(self) -> tuple:
        if not self.root:
            return _layer("user", False, f"same uid as the evaluator ({self.uid}): not root, or not allowed to switch "
                                         "uid", "Landlock read/write rules and seccomp")
        if _sandbox is None:
            return _layer("user", False, f"uid {self.uid} without no_new_privs or a capability check "
                                         "(wizardcoder._sandbox is not built)",
                          "NOTHING: a setuid binary can regain root")
        if self.keep_read:
            return _layer("user", False, f"uid {self.uid} gid {self.gid}, no groups, keeping CAP_DAC_READ_SEARCH "
                                         "(the Python installation is not readable by other users and no view could "
                                         "be built)",
                          "Landlock read rules confine reads to the allowlist" if self.landlock_abi
                          else "NOTHING: the program can read every file")
        return _layer("user", True, f"uid {self.uid} gid {self.gid} (unprivileged, one per worker), no groups, no "
                                    "capability in any set (bounding, ambient, inheritable, permitted, effective)")

    def _filesystem_layer(self) -> tuple:
        if not self.landlock_abi or _sandbox is None:
            return _layer("filesystem", False, "no Landlock (kernel without it, or wizardcoder._sandbox not built)",
                          "the view and uid permissions" if self.root else
                          "NOTHING beyond the private working folder: the program can read and write what the "
                          "evaluating user can")
        return _layer("filesystem", True, f"Landlock ABI {self.landlock_abi}: reads only beneath the Python "
                                          f"installation, {self.tools}system library folders, a few /etc files, "
                                          "harmless devices and its own folder; writes only beneath its own folder "
                                          "(and /dev/null)")

    def _network_layer(self, netns: bool, why: str) -> tuple:
        if self.config.network:
            return _layer("network", False, "allowed (SandboxConfig.network=True)", "none: network on purpose")
        parts = []
        if _sandbox is not None:
            parts.append("seccomp: no socket() of any address family, socketpair() AF_UNIX only")
        if self.landlock_abi >= 4:
            parts.append("Landlock denies TCP bind/connect")
        if self.landlock_abi >= 6:
            parts.append("Landlock scopes abstract Unix sockets")
        if netns:
            return _layer("network", True, "network namespace without interfaces; " + "; ".join(parts))
        return _layer("network", False, f"no network namespace ({why})", "; ".join(parts) or "NOTHING")

    def _syscalls_layer(self) -> tuple:
        if _sandbox is None:
            return _layer("syscalls", False, "no seccomp (wizardcoder._sandbox is not built)", "NOTHING")
        detail = "seccomp: signals only to itself, no ptrace/unshare/mount/io_uring/bpf/keyrings/System V IPC"
        if not self.config.allow_fork:
            detail += ", no new processes"
        return _layer("syscalls", True, detail)

    # -------------------------------------------------------------------------------------------- setup helpers

    def _plain_tmpfs(self) -> None:
        """The scratch as a tmpfs in our mount namespace, when the full view could not be built."""
        s = _sandbox
        try:
            s.umount(self.tmp_root, s.MNT_DETACH)  # whatever a half-built view left there
        except OSError:
            pass
        s.mount(None, "/", None, s.MS_REC | s.MS_PRIVATE, None)
        s.mount("tmpfs", self.tmp_root, "tmpfs", s.MS_NOSUID | s.MS_NODEV, f"size={self.config.scratch},mode=0711")

    def _start_watchdog(self) -> tuple[int, int]:
        """A process that outlives this worker by one task: when the worker is gone (the pipe's write end, which
        only the worker holds, closes), kill every process of the sandbox uid, then exit. Returns its pid and the
        write end."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()  # out of the terminal's process group: a Ctrl-C must not stop the sweep
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
                    _signal.signal(sig, _signal.SIG_IGN)
                os.closerange(0, r)  # our copies of the evaluator's pipes would hide the worker's death from it
                os.closerange(r + 1, 1 << 16)
                while True:
                    try:
                        if not os.read(r, 1):
                            break
                    except InterruptedError:
                        continue
                self._sweep(rounds=1000)  # a few seconds at most, even against a bomb
                remove_tree(self.tmp_root)  # an empty mount point here, unless no view
            finally:
                os._exit(0)
        os.close(r)
        return pid, w

    # -------------------------------------------------------------------------------------------- one job

    def add_task(self, key: str, data: dict) -> None:
        """Keep a task's data for its jobs: a + task's expected outputs apart, where no child can read them
        (compare.HiddenOutputs; the objects they came in are freed here)."""
        names = [k for k in data if k.endswith("_expected")]
        leaves = values.loaded_leaves()  # numpy's types if unpickling the outputs imported it (values.py)
        self.expected[key] = {k: HiddenOutputs(data.pop(k), leaves) for k in names}
        self.tasks[key] = data
        self._forget_runners(key)

    def drop_task(self, key: str) -> None:
        self.tasks.pop(key, None)
        self.expected.pop(key, None)
        self._forget_runners(key)

    def _forget_runners(self, key: str) -> None:
        for split in SPLITS.values():
            self.runners.pop((key, split), None)

    def _runner(self, key: str, split: str):
        """checks.plus_runner's program(source) for this task's split, made once in the worker (the first time by
        _comparison, before a fork) and then found in every child's copy."""
        runner = self.runners.get((key, split))
        if runner is None:
            runner = self.runners[key, split] = checks.plus_runner(self.tasks[key], split, values.encoder(None),
                                                                   values.digester(None))
        return runner

    def _comparison(self, key: str, split: str) -> Comparison:
        """The worker's half of a plus job (compare.py): its own inputs and expected outputs. Made before the fork
        (its nonce after): what the worker allocates while the child lives costs copy-on-write faults. The child's
        half (_runner) is made here too, the first time."""
        task = self.tasks[key]
        self._runner(key, split)
        return Comparison(split, task[f"{split}_input"], self.expected[key][f"{split}_expected"], task["oracle"],
                          task["atol"], b"", self.decode)

    def run_job(self, job: dict) -> dict:
        """Run one job in a forked child; the reply (script and plus jobs: what _sandbox.job_loop decides the same
        way)."""
        jobdir = self.folder  # the program's cwd, HOME and TMPDIR (set once by _setup)
        os.mkdir(jobdir, 0o700)
        if self.root:
            os.chown(jobdir, self.uid, self.gid)
        cpu = float(self.config.cpu_timeout or job.get("timeout") or self.config.timeout)
        timeout = cpu * self.config.wall_factor + 1.0
        judged = job["kind"] != "record"  # the canonical solutions' own outputs are trusted
        plus = job["kind"] == "plus"
        limits = self._limits(cpu)
        compare = self._comparison(job["task_key"], job["split"]) if plus else None
        r, w = os.pipe()
        nonce_r, nonce_w = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:  # ------------------------------------------------------------- child
            try:
                gc.freeze()
                os.close(r)
                os.close(nonce_w)
                self._child(job, w, nonce_r, limits)
            finally:
                os._exit(101)
        os.close(w)
        os.close(nonce_r)
        # The verdict's key, made after the fork: it is not in the child's copy of our memory; the child's judge reads
        # it into C memory before the program runs, and a verdict counts only behind it (see _sandbox.judge).
        nonce = os.urandom(NONCE_LEN)
        try:
            os.write(nonce_w, nonce)  # 16 bytes into an empty pipe: never blocks
        except OSError:
            pass  # the child is already gone
        os.close(nonce_w)
        if compare is not None:
            compare.nonce = nonce
        try:
            reply = self._watch(pid, r, t0, timeout, cpu, big=not judged, feed=compare and compare.feed)
        finally:
            os.close(r)
            self._cleanup(pid, forks=job["kind"] == "command")
        if plus:
            reply = compare.verdict(reply)
        elif judged and "raw" in reply:
            raw = reply.pop("raw")
            if raw[:NONCE_LEN] == nonce:
                reply["raw"] = raw[NONCE_LEN:]
            else:
                reply.update(status="crashed", error="no verdict from the harness: the program wrote on its result "
                                                      "channel or exited before its tests ended")
        reply["seconds"] = round(time.monotonic() - t0, 4)
        return reply

    def _limits(self, cpu: float) -> list[tuple[int, int, int]]:
        """A program's (resource, soft, hard) limits (made before the fork: the child only applies them). The CPU
        time's comes first (job_loop's child plan sets it per job, the others as they are here)."""
        c, r = self.config, _rlimits()
        backstop = _cpu_secs(cpu * c.wall_factor + 1.0)  # the user-time limit is the worker's (_watch)
        limits = [(r.RLIMIT_CPU, backstop, backstop + 1), (r.RLIMIT_CORE, 0, 0),
                  (r.RLIMIT_FSIZE, c.max_output, c.max_output), (r.RLIMIT_NOFILE, c.max_files, c.max_files)]
        if c.memory:
            limits.append((r.RLIMIT_AS, c.memory, c.memory))
        if self.root:  # the sandbox uid is its own: count its processes
            limits.append((r.RLIMIT_NPROC, c.max_procs, c.max_procs))
        return limits

    def _child_plan(self) -> tuple | None:
        """_child's steps for script and plus jobs as job_loop's child takes them in C (struct child_plan in
        csrc/sandbox.c), or None where _child takes them: without the Landlock rule descriptors (then Landlock's
        rules go by path). Same order and arguments as _child and _confine."""
        if not (self.rule_fds and self.landlock_abi and hasattr(_sandbox, "job_loop")):
            return None
        lo, hi = self.rule_fds
        resets = tuple((sig, _signal.SIG_DFL) for sig in _RESET_SIGNALS)
        return (checks.script_run, self._plus_run, gc.freeze, _signal.signal, resets, self._limits(0.0)[1:], lo, hi,
                self.root, self.uid, self.gid, self.keep_read, not self.config.allow_fork, not self.config.network)

    def _plus_run(self, code: str, key: str, split: str) -> tuple:
        """A plus job's (run, describe), in a child that job_loop confined (it then judges them)."""
        return self._runner(key, SPLITS[split.encode()])(code)

    def _child(self, job: dict, w: int, nonce_r: int, limits: list) -> None:
        c, jobdir = self.config, self.folder
        # own session; fds 0 /dev/null, 1-2 the output file, 3 the result pipe, 4 the nonce pipe, the Landlock rule
        # descriptors (closed by _confine), no other (the command pipes and the watchdog's among them); limits; cwd
        # in one C call where the extension has it: every Python-level call here costs copy-on-write faults
        _enter(os.path.join(jobdir, ".output"), self.uid if self.root else -1, self.gid, w, nonce_r, limits, jobdir,
               *self.rule_fds)
        for sig in _RESET_SIGNALS:  # the C function: signal.signal's enum wrapping costs ~0.2 ms per fork
            _signal.signal(sig, _signal.SIG_DFL)
        if self.root:
            if _sandbox is not None:
                _sandbox.drop_to(self.uid, self.gid, self.keep_read)
            else:
                os.setgroups([])
                os.setgid(self.gid)
                os.setuid(self.uid)
        if _sandbox is not None:
            _sandbox.pdeathsig(signal.SIGKILL)  # after the uid switch, which clears it
            if os.getppid() != self.pid:  # the worker died before that: nothing would kill us
                os._exit(1)
            _sandbox.no_new_privs()
        kind = job["kind"]
        if kind == "command":  # this process runs no program: each step confines itself (checks.command_job)
            if self.keep_read and _sandbox is not None:  # the steps read the toolchain as Python would (see view)
                _sandbox.ambient_read()
            run, describe = checks.command_job(job, self.tasks[job["task_key"]],
                                               functools.partial(self._confine, jobdir))
        else:
            self._confine(jobdir, not c.allow_fork)
        if kind == "record":  # trusted code: its outputs come back as pickle
            try:
                _write_all(3, pickle.dumps(checks.run_record(job, self.tasks[job["task_key"]])))
            except OSError:
                os._exit(102)
            os._exit(0)
        if kind != "command":
            run, describe = self._runs(job)
        (_sandbox.judge if _sandbox is not None else _judge_reference)(3, 4, run, describe)

    def _runs(self, job: dict) -> tuple:
        """A script or plus job's (run, describe) (checks.py)."""
        if job["kind"] == "script":
            return checks.script_run(job["code"])
        return self._runner(job["task_key"], job["split"])(job["code"])

    def _confine(self, jobdir: str, block_fork: bool) -> None:
        """Landlock and seccomp for the calling process: a Python program's child, or one step of a command job
        (after its fork: /proc/self and the pid its signals are limited to are its own)."""
        if _sandbox is None:
            return
        c = self.config
        if self.landlock_abi:
            # /dev/null is written by torch and others; /proc/self opened here is this process's own folder
            if self.rule_fds:
                lo, hi = self.rule_fds
                _sandbox.landlock([*range(lo + 1, hi + 1), "/proc/self"], [jobdir, lo], not c.network, True)
                os.closerange(lo, hi + 1)
            else:
                _sandbox.landlock(self.read_paths + ["/proc/self"], [jobdir, os.devnull], not c.network, True)
        _sandbox.seccomp(os.getpid(), block_fork, not c.network)

    def _watch(self, pid: int, r: int, t0: float, timeout: float, cpu: float, big: bool, feed=None) -> dict:
        """Collect the child's result until it exits, its user CPU time reaches the limit (polled: the kernel's
        RLIMIT_CPU counts system time too, and a memory-hungry program spends seconds of it having its pages zeroed,
        more on a busy machine) or its wall time runs out. `feed` (a plus job's Comparison.feed) takes the bytes
        instead, as they come, and stops the child once it returns True (its verdict is known); {} then."""
        import select  # here: the C loop watches script and plus jobs, and a module is mappings every fork copies

        cap = (1 << 30) if big else (1 << 20)
        limit = _cpu_secs(cpu)
        chunks, got, status, why = [], 0, None, None
        pidfd = os.pidfd_open(pid)
        try:
            fds = [pidfd, r]
            next_poll = t0 + CPU_POLL  # most programs end before the first poll
            while status is None:
                now = time.monotonic()
                left = timeout - (now - t0)
                if now >= next_poll:
                    next_poll = now + CPU_POLL
                    if _user_seconds(pid) >= limit:
                        why = "cpu"
                if left <= 0 or why:
                    why = why or "wall"
                    _killpg(pid)
                    status = os.waitpid(pid, 0)[1]
                    break
                ready, _, _ = select.select(fds, [], [], max(0.0, min(left, next_poll - now)))
                if r in ready:
                    b = os.read(r, 1 << 20)
                    if not b:
                        fds = [pidfd]
                    elif feed is not None:
                        got += len(b)
                        if feed(b):
                            why = "verdict"
                            _killpg(pid)
                            status = os.waitpid(pid, 0)[1]
                            break
                    elif got < cap:
                        chunks.append(b)
                        got += len(b)
                if pidfd in ready:
                    status = os.waitpid(pid, 0)[1]
        finally:
            os.close(pidfd)
        # drain what is still in the pipe (the child has exited; a grandchild could hold it open, so no blocking)
        os.set_blocking(r, False)
        try:
            while why != "verdict" and (got < cap or feed is not None):
                b = os.read(r, 1 << 20)
                if not b:
                    break
                got += len(b)
                if feed is None:
                    chunks.append(b)
                elif feed(b):
                    break
        except BlockingIOError:
            pass
        data = b"".join(chunks)
        if why == "verdict":
            return {}
        if why == "wall":
            return {"status": "timeout", "error": f"wall time limit {timeout:g}s"}
        if why == "cpu":
            return {"status": "timeout", "error": f"CPU time limit {limit}s"}
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:  # the backstop: user + system time of all its threads
                return {"status": "timeout", "error": f"CPU time limit {limit}s (user and system time)"}
            if sig == signal.SIGXFSZ:
                return {"status": "crashed", "error": f"output/file size limit {self.config.max_output >> 20} MiB"}
            return {"status": "crashed", "error": f"killed by {signal.Signals(sig).name}"}
        code = os.WEXITSTATUS(status)
        if code != 0 or not got:
            return {"status": "crashed", "error": f"exited with status {code} before reporting a result"}
        return {"raw": data}

    def _cleanup(self, pid: int, forks: bool = False) -> None:
        """Kill what the job left (`forks`: a command job, whose steps run in process groups of their own) and
        remove its folder."""
        _killpg(pid)
        if forks or (self.config.allow_fork and self.root):
            self._sweep(ours=True)  # processes that left the group (setsid) still carry the sandbox uid
        self._reap()
        try:  # the usual case: the program left only its output file
            os.unlink(os.path.join(self.folder, ".output"))
            os.rmdir(self.folder)
        except OSError:
            self.clear_folder()

    def clear_folder(self) -> None:
        """Remove what a program left in its folder; what cannot be removed is moved aside (the next program gets
        the folder new)."""
        remove_tree(self.folder)
        if os.path.lexists(self.folder):
            os.rename(self.folder, f"{self.folder}-left-{os.urandom(4).hex()}")

    def receive(self, commands: Channel, replies: Channel) -> dict | None:
        """The evaluator's next message for Python; None when it is gone. Script and plus jobs are run by the C loop
        (_sandbox.job_loop: no Python object is touched between a script job's forks; a plus job calls Python for its
        comparison) until a message needs Python, and in a job's forked child this runs the program and never
        returns. The loop is not used with forks allowed as root (their leftovers are swept by uid: run_job), nor with
        WIZARDCODER_SANDBOX_REFERENCE=1 (every job by run_job, the reference the C loop is tested against)."""
        if not self.in_c:
            try:
                return commands.recv()
            except EOFError:
                return None
        c, owner = self.config, (self.uid, self.gid) if self.root else (-1, -1)
        # made once: a plus job comes back here after each program, and what Python touches between forks is copied
        args = (commands.fd, replies.fd, self.folder, os.path.join(self.folder, ".output"), *owner, float(c.timeout),
                float(c.cpu_timeout or 0.0), float(c.wall_factor), int(c.max_output), self._comparison,
                self._child_plan())
        while True:
            what, value = _sandbox.job_loop(*args)
            if what == "message":
                return pickle.loads(value)
            if what == "eof":
                return None
            if what == "plus":  # the child is gone: the comparison's verdict
                compare, reply, seconds, leftover = value
                reply = compare.verdict(reply)
                reply["seconds"] = round(seconds, 4)
                replies.send(reply)
                if leftover:
                    self.clear_folder()
                continue
            if what == "leftover":
                self.clear_folder()
                continue
            try:  # "child": the program's process
                gc.freeze()
                kind, code, cpu, w, nonce_r, key, split = value
                self._child(_loop_job(kind, code, key, split), w, nonce_r, self._limits(cpu))
            finally:
                os._exit(101)

    def _sweep(self, rounds: int = 200, ours: bool = False) -> None:
        """Kill every process of the sandbox uid until none is left (a bomb may fork while we sweep), reaping what
        comes back to us; bounded. `ours`: all of them are our descendants (after a program: we are its child
        subreaper, so whatever it left is, or becomes, our child), and our own children list says when the sweep
        is done; otherwise (leftovers of another worker) /proc is searched for the uid."""
        for _ in range(rounds):
            if self.root:
                self._kill_uid()
            else:  # no uid of its own: what is left of the program is reparented to us (the subreaper)
                for child in self._children_left():
                    _killpg(child)
                    _kill(child)
            self._reap()
            left = self._children_left() if ours else processes_of(self.uid)
            if not left:
                return
            time.sleep(0.002)

    def _children_left(self) -> list[int]:
        """Our children other than the watchdog (/proc/<pid>/task/<pid>/children; where the kernel lacks that
        file, a scan of /proc for the sandbox uid when it is ours alone, else nothing: the uid is the evaluator's)."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(p) for p in f.read().split() if int(p) != self.watchdog_pid]
        except OSError:
            return processes_of(self.uid) if self.root else []

    def _kill_uid(self) -> None:
        _kill_as(self.uid)

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
        try:
            names = os.listdir(self.tmp_root)
        except OSError:
            return
        for name in names:
            remove_tree(os.path.join(self.tmp_root, name))


_RESET_SIGNALS = tuple(int(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU,
                                        signal.SIGALRM))


def _rlimits():
    """Where the RLIMIT_* numbers come from: the extension, which exports those enter applies, so that a worker never
    loads the resource module (every module's mappings are copied at every fork: ~3 us of fork and exit each), else
    the resource module."""
    if hasattr(_sandbox, "RLIMIT_CPU"):
        return _sandbox
    import resource

    return resource


def _open_fd(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _loop_job(kind: str, code: str, key: str | None, split: str | None) -> dict:
    """The job dict of a job_loop frame's fields (Channel.job_frame's kind 'S' or 'P')."""
    if kind == "S":
        return {"kind": "script", "code": code}
    return {"kind": "plus", "code": code, "task_key": key, "split": SPLITS[split.encode()]}


def _scratch_root(root: str | None) -> str:
    """A new folder wizardcoder-sandbox-<pid>-<random> (the name remove_stale_scratch reads) in `root`, mode 0711.
    Not tempfile.mkdtemp: importing tempfile imports random, whose at-fork reseed every program would pay (PRELOAD).
    The pool always passes its root; only a worker started by hand falls back to the system temp folder."""
    if root is None:
        import tempfile

        root = tempfile.gettempdir()
    for _ in range(100):
        path = os.path.join(root, f"wizardcoder-sandbox-{os.getpid()}-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o711)
        return path
    raise FileExistsError(f"no free scratch folder name in {root}")


def _enter_reference(output: str, owner_uid: int, owner_gid: int, result_fd: int, nonce_fd: int, limits: list,
                     folder: str) -> None:
    """_sandbox.enter in Python, for a machine without the extension."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if owner_uid >= 0:
        os.fchown(out, owner_uid, owner_gid)
    for fd, target in ((null, 0), (out, 1), (out, 2), (result_fd, 3), (nonce_fd, 4)):
        os.dup2(fd, target)
    os.closerange(5, 1 << 16)
    import resource

    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))
    os.chdir(folder)


# an extension built before `enter` existed still works (rebuild it: setup.py build_ext --inplace)
_enter = getattr(_sandbox, "enter", None) or _enter_reference


def _judge_reference(result_fd: int, nonce_fd: int, run, describe) -> None:
    """_sandbox.judge in Python, for a machine without the extension: the same verdicts, but the nonce lives in a
    Python frame the program can reach (the isolation report says the verdict is forgeable then)."""
    nonce = b""
    while len(nonce) < NONCE_LEN:
        b = os.read(nonce_fd, NONCE_LEN - len(nonce))
        if not b:
            os._exit(103)
        nonce += b
    os.close(nonce_fd)
    try:
        tests = run()
        body = {"status": "passed"}
        if type(tests) is int and tests >= 0:
            body["tests"] = tests
    except BaseException as e:  # noqa: BLE001 - any escape (SystemExit, KeyboardInterrupt...) is a failure
        try:
            status, error, failed_test = describe(e)
        except BaseException:  # noqa: BLE001
            status, error, failed_test = "failed", "", None
        body = {"status": status if status in VERDICTS and status != "passed" else "failed",
                "error": error[:1000] if isinstance(error, str) else ""}
        if type(failed_test) is int and failed_test >= 0:
            body["failed_test"] = failed_test
    try:
        _write_all(result_fd, nonce + json.dumps(body).encode())
    except OSError:
        os._exit(102)
    os._exit(0)


def _probe_uid(uid: int, gid: int, dirs=(), view_dirs=(), meanwhile=None) -> dict[str, bool]:
    """As `uid` with no capability (in a throw-away child: we stay root): can we switch to it at all ("setuid"); can
    it list the folders `dirs` by path, as this process sees them ("paths"); can it list those `view_dirs` names, as
    (O_PATH descriptor of the folder the view binds, the path beneath it), as the view will show them ("view"): their
    own permissions and those of the folders between count, not those above (the view's own folders there are
    0755). A folder readable but not searchable counts as unreadable there (Python cannot import from it anyway).
    `meanwhile(child pid)`: called here while the child probes."""
    pid = os.fork()
    if pid == 0:
        try:
            if _sandbox is not None:
                _sandbox.drop_to(uid, gid, False)
            else:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
        except BaseException:  # noqa: BLE001
            os._exit(4)
        code = 0
        try:
            for p in dirs:
                os.listdir(p)
        except BaseException:  # noqa: BLE001
            code |= 1
        try:
            for fd, rel in view_dirs:
                os.close(os.open(rel, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd))
        except BaseException:  # noqa: BLE001
            code |= 2
        os._exit(code)
    if meanwhile is not None:
        meanwhile(pid)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return {"setuid": 0 <= code < 4, "paths": code == 0 or code == 2, "view": code == 0 or code == 1}


def _kill_as(uid: int) -> None:
    """kill(-1, SIGKILL) as `uid`: every process of that uid (in a throw-away child: we stay root)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _sweep_uids(uids: set[int], rounds: int = 200) -> None:
    """Kill every process of these uids until none is left (a bomb may fork while we sweep); bounded. One /proc scan
    a round for all of them, and no kill when none is left (the usual case)."""
    for _ in range(rounds):
        if not processes_of(*uids):
            return
        for uid in uids:
            _kill_as(uid)
        Worker._reap()
        time.sleep(0.002)


def processes_of(*uids: int) -> list[int]:
    """Live (not zombie) processes whose real uid is one of `uids`, from /proc. kill(-1)'s own answer cannot tell: it
    reports success whenever any other process exists, even one it may not signal."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                state = uid_line = None
                for line in f:
                    if line.startswith(b"State:"):
                        state = line.split()[1]
                    elif line.startswith(b"Uid:"):
                        uid_line = line
                        break
        except OSError:  # gone meanwhile
            continue
        if uid_line is not None and int(uid_line.split()[1]) in uids and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


CPU_POLL = 0.05  # seconds between checks of a running program's user CPU time
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _user_seconds(pid: int) -> float:
    """User CPU seconds of a process (all its threads), from /proc/<pid>/stat; 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) / _CLOCK_TICKS  # field 14, utime, counting from the state (field 3)
    except (OSError, IndexError, ValueError):
        return 0.0


def _cpu_secs(cpu: float) -> int:
    return max(1, math.ceil(cpu))


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def preload(modules: tuple = ()) -> None:
    """Import what programs commonly import (PRELOAD, `modules`), with one thread for every threaded library."""
    os.environ.update(THREADS)
    for name in PRELOAD + tuple(modules):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a preload is an optimisation only
            pass
    checks.warm_up()


# The uid probe's answers (_probe_uid), when the fork server made it (and swept the workers' uids) once for all the
# workers it forks; None in a worker started alone, which does both itself.
_probed: dict[str, bool] | None = None


def fork_workers(specs: list, configure) -> None:
    """The pool's fork server, started before the evaluator knows the workers' config (launch.py): preload PRELOAD
    meanwhile; then `configure()` -> (config, the workers' uids); preload the config's modules; do once what is the same
    for every worker (when root: the uid probe and the sweep of the uids' leftover processes); fork one worker per spec
    [index, command fd, reply fd] (each serves on its own pipes, as fds 0 and 1); say their pids on fd 1 (one JSON
    line), then stay their parent until all are gone: a worker's PDEATHSIG fires when this process dies, and this
    process's when the evaluator's thread that started it does."""
    global _probed
    if _sandbox is not None:
        _sandbox.pdeathsig(signal.SIGKILL)
    if os.getppid() == 1:  # the evaluator died before PDEATHSIG was set
        os._exit(1)
    preload()
    gc.collect()  # while the evaluator decides the config; the collection before the fork then skips all this
    gc.freeze()
    config, uids = configure()
    preload(config.preload)
    if os.geteuid() == 0 and uids:
        dirs = view.python_dirs() + [p for p in config.read_paths if os.path.exists(p)]  # Worker.allowed
        roots = view.bound(dirs)
        view_dirs = []
        left = []  # the uids' leftover processes (an evaluator whose watchdogs did not finish), found meanwhile
        try:  # each folder as the view will show it: from the folder bound there (opened here, as root)
            for d in dirs:
                root = next(r for r in roots if d == r or d.startswith(r.rstrip("/") + "/"))
                view_dirs.append((os.open(root, os.O_PATH | os.O_CLOEXEC), os.path.relpath(d, root)))
            _probed = _probe_uid(uids[0], uids[0], dirs, view_dirs,
                                 lambda child: left.extend(p for p in processes_of(*uids) if p != child))
        finally:
            for fd, _ in view_dirs:
                os.close(fd)
        if _probed["setuid"] and left:
            _sweep_uids(set(uids))
    gc.collect()  # not skipped: garbage kept makes every program's fork dearer
    gc.freeze()  # shared with every worker: their collections do not walk (and copy) it
    fds = [fd for spec in specs for fd in spec[1:]]
    pids = []
    for (index, cmd, rep), uid in zip(specs, uids):
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(cmd, 0)
                os.dup2(rep, 1)
                for fd in fds:  # no other worker's pipe: its death must read as EOF to the evaluator
                    os.close(fd)
                serve(index, config, uid)
            finally:
                os._exit(0)
        pids.append(pid)
    for fd in fds:
        os.close(fd)
    _write_all(1, json.dumps(pids).encode() + b"\n")
    os.close(1)
    _signal.signal(signal.SIGINT, _signal.SIG_IGN)  # a Ctrl-C stops the workers (they see it), not their parent
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
    os._exit(0)


def serve(index: int, config: SandboxConfig, uid: int | None = None) -> None:
    """The worker's main loop: messages from the evaluator on fd 0, replies on fd 1."""
    cmd_in, cmd_out = Channel(os.dup(0)), Channel(os.dup(1))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    worker = Worker(index, config, uid)
    cmd_out.send({"op": "ready", "isolation": worker.isolation, "pid": os.getpid(), "tmp_root": worker.tmp_root})
    try:
        while True:
            msg = worker.receive(cmd_in, cmd_out)
            if msg is None:
                break
            if msg.get("op") == "exit":
                break
            if msg["op"] == "task":
                worker.add_task(msg["key"], msg["data"])
                gc.freeze()  # the task's inputs too (see Worker._setup); its expected outputs are not objects
                continue
            if msg["op"] == "drop":
                worker.drop_task(msg["key"])
                continue
            cmd_out.send(worker.run_job(msg["job"]))
    finally:
        worker.close()
