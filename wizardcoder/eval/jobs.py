"""The sandbox's protocol as typed values: what the evaluator asks (`Job`), what it gets back (`Result`), and what
isolation was in force (`IsolationReport`, one `Layer` per mechanism).

    pool.run([Job(id=0, kind="script", code="assert 1 + 1 == 2")])   ->  Result(id=0, status="passed", ...)
    pool.isolation.degraded()                                          ->  [Layer(name="user", active=False, ...)]

These are plain, picklable dataclasses: a Job travels to the worker process as it is; a Result is built on the
evaluator's side from the worker's reply (untrusted programs' verdicts arrive as JSON, never as pickle).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Hashable, Iterable

from ..errors import ConfigError
from .checks import VERDICTS

MAX_TIMEOUT = 3600.0  # CPU seconds one program may be given (an hour)


def check_timeout(timeout, flag: str = "--timeout") -> None:
    """CPU seconds per program: a number in (0, MAX_TIMEOUT] (None: the benchmark's default)."""
    if timeout is None:
        return
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and math.isfinite(timeout)
            and timeout > 0):
        raise ConfigError(f"{flag} {timeout!r}: give the CPU seconds per program as a number > 0 "
                          "(or leave it out for the task's default).")
    if timeout > MAX_TIMEOUT:
        raise ConfigError(f"{flag} {timeout!r}: at most {MAX_TIMEOUT:g} CPU seconds per program; a program that "
                          "needs more is not a benchmark sample.")


@dataclasses.dataclass
class SandboxConfig:
    """Limits and switches for every program a worker runs. Times in seconds, sizes in bytes."""

    # Time: a program gets `timeout` seconds of user CPU (rounded up to whole seconds) and wall_factor times
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
    read_paths: tuple = ()  # folders outside the allowlist programs may read (a compiled task's toolchain, view.py)


KINDS = ("script", "plus", "record", "command")
SPLITS = ("base", "plus")


@dataclasses.dataclass(frozen=True)
class Job:
    """One program to run in the sandbox."""

    id: Hashable  # the caller's key, handed back on the Result (e.g. (sample index, "base"))
    kind: str  # "script": run `code` to the end; "plus": evalplus differential test; "record": canonical outputs;
    # "command": `code` in another language, built and run by the steps its task data names (languages.py)
    code: str  # the whole program (script) or the solution whose entry point is called (plus, record)
    timeout: float | None = None  # CPU seconds; None: the pool's SandboxConfig.timeout
    task_key: str | None = None  # plus/record/command: the data sent once with pool.add_task (inputs, expected
    # outputs; a command job's toolchain steps)
    split: str | None = None  # plus: which input set, "base" or "plus"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Job.kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind != "script" and self.task_key is None:
            raise ValueError(f"a {self.kind!r} job needs a task_key (the data added with pool.add_task)")
        if self.kind == "plus" and self.split not in SPLITS:
            raise ValueError(f"a 'plus' job needs split in {SPLITS}, not {self.split!r}")

    @classmethod
    def coerce(cls, job: "Job | dict") -> "Job":
        """A Job from a Job or from the equivalent dict (the form pool.run took before these types)."""
        return job if isinstance(job, Job) else cls(**job)


@dataclasses.dataclass
class Result:
    """The verdict on one Job."""

    id: Hashable
    status: str  # one of VERDICTS
    error: str = ""  # why it did not pass (the failing assert, the signal, the limit hit), for the failure report
    seconds: float = 0.0  # wall time from fork to exit
    record: dict | None = None  # record jobs: the canonical solution's outputs and per-input times
    failed_test: int | None = None  # plus jobs: index of the first failing input
    tests: int | None = None  # plus jobs that passed: how many inputs were checked

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @classmethod
    def from_reply(cls, job_id: Hashable, reply: dict) -> "Result":
        """From the worker's reply dict; unknown keys are dropped, a missing or unknown status is a crash."""
        fields = {k: v for k, v in reply.items() if k in _REPLY_FIELDS}
        if fields.get("status") not in VERDICTS:
            fields.update(status="crashed", error=fields.get("error") or "no verdict from the sandbox")
        return cls(id=job_id, **fields)

    def to_dict(self) -> dict:
        """The dict form (id, status, error, seconds, and whichever optional fields are set)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v is not None or k in ("id", "status", "error", "seconds")}


_REPLY_FIELDS = frozenset(f.name for f in dataclasses.fields(Result)) - {"id"}  # what from_reply keeps


@dataclasses.dataclass(frozen=True)
class Layer:
    """One isolation mechanism as this machine allowed it."""

    name: str  # process, limits, user, view, filesystem, network, syscalls, lifetime, scratch
    active: bool  # False: the machine refused it (not root, kernel too old, extension not built)
    detail: str  # what is in force, in words
    fallback: str | None = None  # when not active: what holds instead


@dataclasses.dataclass(frozen=True)
class IsolationReport:
    """What isolation the sandbox's workers put around every program (probed by the first worker)."""

    layers: tuple[Layer, ...]

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return any(layer.name == name for layer in self.layers)

    def degraded(self) -> list[Layer]:
        """The layers this machine refused (each names its fallback)."""
        return [layer for layer in self.layers if not layer.active]

    def to_json(self) -> dict[str, dict[str, Any]]:
        """{name: {"active", "detail", "fallback"}} for summary.json."""
        return {layer.name: {"active": layer.active, "detail": layer.detail, "fallback": layer.fallback}
                for layer in self.layers}

    @classmethod
    def from_json(cls, data: dict[str, dict[str, Any]]) -> "IsolationReport":
        return cls(tuple(Layer(name, bool(v["active"]), v["detail"], v.get("fallback")) for name, v in data.items()))

    def lines(self) -> Iterable[str]:
        """One line per layer for a report: `name: detail` (and the fallback when refused)."""
        for layer in self.layers:
            yield (f"{layer.name}: {layer.detail}" if layer.active
                   else f"{layer.name}: NOT IN FORCE ({layer.detail}); instead: {layer.fallback}")
