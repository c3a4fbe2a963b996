"""Profiling built into the verbs: a torch.profiler window over chosen steps, named ranges (NVTX too on CUDA), a CUDA
memory snapshot, and the per-step time breakdown that training writes to metrics.jsonl.

    --profile [--profile-wait 1 --profile-warmup 1 --profile-active 3]

What each part is:
- `ProfileConfig`: the flags, a dataclass the verbs' configs inherit (`TrainConfig`, generate's `GenerationSettings`, serve's `Config`).
- `Profile`: torchtitan's scheme. A `torch.profiler.schedule(wait, warmup, active)` over steps (training steps, or
  the engine's `step()` calls); when the active window closes, each rank writes `rank{R}.step{S}.trace.json.gz` (a
  Chrome trace: Perfetto and chrome://tracing open it as is). On CUDA it also records the allocator's history from the start and dumps
  `rank{R}.step{S}.memory.pickle` with the trace, which https://pytorch.org/memory_viz opens.
- `phase(name)` / `@ranged(name)`: a named range, both a `record_function` (the torch trace) and an NVTX range on
  CUDA (so `nsys profile -t cuda,nvtx` shows the same names). They cost one flag test when no profile runs.
- `StepTimer`: where a training step's time goes (data, forward, backward, optimizer, exposed communication), timed
  by CUDA events on the compute stream that are read once, when the metrics row is written (no host sync per phase);
  on CPU by the wall clock. Its phases are also the trace's top-level ranges.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

_on = False  # a Profile is running: phase ranges are recorded


@dataclass
class ProfileConfig:
    """The profiling flags, shared by the verbs (a base class of their configs)."""

    profile: bool = False  # record a torch.profiler trace of steps wait+warmup+1 .. wait+warmup+active into profile/
    profile_wait: int = 1  # steps skipped before the profiler warms up
    profile_warmup: int = 1  # steps the profiler runs but discards (its own start-up cost stays out of the trace)
    profile_active: int = 3  # steps recorded in the trace
    profile_dir: str | None = None  # where --profile writes (default: OUT/profile; generate: profile/ beside --out; serve: ./profile)

    def check_profile(self) -> None:
        for name, low in (("profile_wait", 0), ("profile_warmup", 0), ("profile_active", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < low:
                raise ConfigError(f"--{name.replace('_', '-')} {v}: must be a whole number >= {low}.")


# ------------------------------------------------------------------------------------------------------- ranges
class _Range:
    """A record_function range, plus an NVTX range on CUDA; opened and closed on the same thread."""

    __slots__ = ("name", "_rf")

    def __init__(self, name: str):
        self.name, self._rf = name, None

    def __enter__(self):
        import torch  # here, not at the top: the verbs' configs import this module before torch is needed

        self._rf = torch.autograd.profiler.record_function(self.name)
        self._rf.__enter__()
        if torch.cuda.is_available():
            torch.cuda.nvtx.range_push(self.name)
        return self

    def __exit__(self, *exc):
        import torch

        if torch.cuda.is_available():
            torch.cuda.nvtx.range_pop()
        self._rf.__exit__(*exc)
        return False


class _NoRange:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_RANGE = _NoRange()


def phase(name: str):
    """`with phase("prefill"): ...`: a named range while a Profile runs, nothing otherwise."""
    return _Range(name) if _on else _NO_RANGE


def ranged(name: str):
    """Decorator: every call of the function is the range `name` while a Profile runs (one flag test otherwise)."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if not _on:
                return fn(*args, **kwargs)
            with _Range(name):
                return fn(*args, **kwargs)
        return call
    return wrap


# ------------------------------------------------------------------------------------------------------ profile
class Profile:
    """torch.profiler over a window of steps: `start()`, `step()` after every step, `stop()` (or use as a context
    manager). Writes into `folder`, one set of files per rank (see the module docstring)."""

    def __init__(self, folder: str, rank: int = 0, wait: int = 1, warmup: int = 1, active: int = 3,
                 device: torch.device | str = "cpu"):
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule

        self.folder, self.rank, self.steps, self.running = folder, rank, 0, False
        self.window = wait + warmup + active
        self.cuda = torch.device(device).type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self._prof = profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
                             on_trace_ready=self._write, record_shapes=True)

    @classmethod
    def from_config(cls, cfg: ProfileConfig, folder: str, rank: int, device) -> "Profile | NoProfile":
        """The profile `cfg` asks for, writing to --profile-dir or else `folder`; a NoProfile without --profile."""
        if not cfg.profile:
            return NoProfile()
        return cls(cfg.profile_dir or folder, rank, cfg.profile_wait, cfg.profile_warmup, cfg.profile_active, device)

    def start(self) -> None:
        import torch

        global _on
        if self.running:
            return
        self.running = True
        os.makedirs(self.folder, exist_ok=True)
        if self.cuda:  # from the first step: the snapshot then shows where each block live in the window came from
            torch.cuda.memory._record_memory_history(max_entries=100_000)
        _on = True
        self._prof.start()

    def step(self) -> None:
        self.steps += 1
        self._prof.step()

    def stop(self) -> None:
        """End the profile (a window the work cut short is written as far as it got); again: nothing."""
        import torch

        global _on
        if not self.running:
            return
        self.running = False
        self._prof.stop()
        _on = False
        if self.cuda:
            torch.cuda.memory._record_memory_history(enabled=None)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def around_steps(self, step_fn):
        """`step_fn` (an engine's `step`) profiling itself, on the thread that calls it: the first call starts this
        profile, every call advances the schedule, and the call that closes the window stops it. Call `stop()`
        when the work ends, in case it ended inside the window."""
        @functools.wraps(step_fn)
        def step(*args, **kwargs):
            if self.steps == 0:
                self.start()
            try:
                return step_fn(*args, **kwargs)
            finally:
                if self.running:
                    self.step()
                    if self.steps >= self.window:
                        self.stop()
        return step

    def _write(self, prof) -> None:
        """The active window closed: its trace and (CUDA) the memory snapshot, each written atomically. (No table of
        ops: building one parses every event in Python, seconds per 10k events; the trace holds it all.)"""
        import torch

        base = os.path.join(self.folder, f"rank{self.rank}.step{self.steps}")
        tmp = os.path.join(self.folder, f".tmp-{os.getpid()}.trace.json")
        prof.export_chrome_trace(tmp)  # plain, then gzipped in large blocks: torch's own .gz path writes line by line
        with open(tmp, "rb") as src, gzip.open(tmp + ".gz", "wb", compresslevel=3) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        os.unlink(tmp)
        os.replace(tmp + ".gz", base + ".trace.json.gz")
        written = [base + ".trace.json.gz"]
        if self.cuda:
            tmp = os.path.join(self.folder, f".tmp-{os.getpid()}.memory.pickle")
            torch.cuda.memory._dump_snapshot(tmp)
            os.replace(tmp, base + ".memory.pickle")
            written.append(base + ".memory.pickle")
            torch.cuda.memory._record_memory_history(enabled=None)
        print(f"profile: wrote {', '.join(written)}", file=sys.stderr, flush=True)


class NoProfile:
    """What `Profile.from_config` gives without --profile: every call does nothing."""

    def start(self) -> None: ...

    def step(self) -> None: ...

    def stop(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def around_steps(self, step_fn):
        return step_fn


def read_trace(path: str) -> dict:
    """A Chrome trace written by `Profile` (gzipped or not), as the dict json.load gives."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------- step breakdown
BREAKDOWN = ("data", "forward", "backward", "optimizer", "comm")  # metrics.jsonl: f"{name}_s" per step


class StepTimer:
    """Where each training step's time goes, phase by phase, without a host sync per phase.

    The loop marks where each phase begins (`begin("forward")`), in order; a phase runs until the next mark, and
    `end_step()` closes the step. `interrupt(name)` / `resume()` carve a nested phase out of the current one (the
    FSDP all-gather waits inside forward, see `time_fsdp_waits`). On CUDA each mark records an event on the current
    stream, so a phase's time is the device timeline between two marks: "data" is what the device sat idle waiting
    for the next batch, "comm" what it sat through waiting for collectives. The events are read once, by `read()`
    when the metrics row is written; it returns each phase's mean seconds per step since the previous read. On CPU
    the marks are wall-clock times. While a Profile runs, each phase is also a named range in the trace (and NVTX).
    """

    def __init__(self, device: torch.device | str):
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self._marks: list[tuple[str | None, object]] = []  # (phase that starts here, event or time); None: idle
        self._stack: list[str] = []  # phases interrupted, innermost last
        self._top: _Range | None = None  # the open top-level range
        self._nested: list[_Range] = []
        self._steps = 0
        self._totals = dict.fromkeys(BREAKDOWN, 0.0)  # seconds of the marks already folded in

    def _stamp(self):
        if not self.cuda:
            return time.perf_counter()
        import torch

        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def begin(self, name: str) -> None:
        """Phase `name` starts now (and the previous one ends)."""
        if self._top is not None:  # the previous range closes just before the mark, the next opens just after it
            self._top.__exit__(None, None, None)
            self._top = None
        self._marks.append((name, self._stamp()))
        if _on:
            self._top = _Range(name).__enter__()

    def interrupt(self, name: str) -> None:
        """Phase `name` starts inside the current one; `resume()` goes back to it."""
        current = self._marks[-1][0] if self._marks else None
        self._stack.append(current)
        self._marks.append((name, self._stamp()))
        self._nested.append(_Range(name).__enter__() if _on else None)

    def resume(self) -> None:
        rng = self._nested.pop()
        if rng is not None:
            rng.__exit__(None, None, None)
        self._marks.append((self._stack.pop(), self._stamp()))

    def end_step(self) -> None:
        if self._top is not None:
            self._top.__exit__(None, None, None)
            self._top = None
        self._marks.append((None, self._stamp()))
        self._steps += 1
        if len(self._marks) > 4096:  # a long --log-every: fold in what the device has finished, without waiting
            last_end = max(i for i, (name, _) in enumerate(self._marks[:-1]) if name is None)
            if not self.cuda or self._marks[last_end][1].query():
                self._fold(last_end)

    def _fold(self, upto: int) -> None:
        """Add the intervals from marks[0] to marks[upto] to the totals; keep marks[upto:]."""
        for (name, a), (_, b) in zip(self._marks[:upto], self._marks[1 : upto + 1]):
            if name is not None:
                self._totals[name] += a.elapsed_time(b) / 1e3 if self.cuda else b - a
        self._marks = self._marks[upto:]

    def read(self) -> dict[str, float]:
        """{f"{phase}_s": mean seconds per step} over the steps since the last read (one host sync on CUDA)."""
        if self._marks and self.cuda:
            self._marks[-1][1].synchronize()
        self._fold(len(self._marks) - 1)
        totals, steps = self._totals, max(self._steps, 1)
        self._marks, self._steps, self._totals = [], 0, dict.fromkeys(BREAKDOWN, 0.0)
        return {f"{k}_s": v / steps for k, v in totals.items()}


def time_fsdp_waits(model: torch.nn.Module, timer: StepTimer) -> int:
    """Count the time each FSDP module's pre-forward spends (waiting for its all-gather, copying it out) as exposed
    communication: a forward pre-hook placed before FSDP's interrupts the current phase with "comm", one placed
    after it resumes. Returns the number of modules hooked. (Backward's waits stay inside "backward"; the trace
    shows them as FSDP::pre_backward and FSDP::post_backward_rs_wait.)"""
    from torch.distributed.fsdp import FSDPModule

    hooked = 0
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.register_forward_pre_hook(lambda *_: timer.interrupt("comm"), prepend=True)
            m.register_forward_pre_hook(lambda *_: timer.resume())
            hooked += 1
    return hooked


def plot_breakdown(rows: list[dict], png: str) -> bool:
    """Stacked bars of each logged step's breakdown (seconds); False when the rows carry none."""
    rows = [r for r in rows if "step" in r and all(f"{k}_s" in r for k in BREAKDOWN)]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bottom = [0.0] * len(rows)
    labels = {"data": "data wait", "comm": "communication (exposed)"}
    for k in BREAKDOWN:
        vals = [r[f"{k}_s"] for r in rows]
        ax.bar(steps, vals, bottom=bottom, label=labels.get(k, k), width=0.8)
        bottom = [b + v for b, v in zip(bottom, vals)]
    if all("step_s" in r for r in rows):
        ax.plot(steps, [r["step_s"] for r in rows], color="black", marker=".", label="step (wall)")
    ax.set_xlabel("step")
    ax.set_ylabel("seconds per step")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True
