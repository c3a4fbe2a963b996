"""Ctrl-C: one SIGINT stops a verb, which says what stopped and exits 130 (cli.main), by that exit status and never
by the signal, and the interrupt is never turned into some other error on the way.

- `handled()`, around a verb in cli.main: the first SIGINT raises KeyboardInterrupt and any more in the next
  IGNORE_S seconds are ignored, so a double Ctrl-C cannot land in the unwinding (a finally block; a destructor in
  torch that calls back into Python, where a KeyboardInterrupt aborts the process: returncode -6). Not for good: a
  library may swallow the first one (torch's C++ clears a Python error it meets, e.g. while it imports numpy), and
  the verb goes on; a Ctrl-C after that stops it.
- `stopping()`, where cli.main reports an interrupt: SIGINT ignored from there on (also when the KeyboardInterrupt
  came from elsewhere, e.g. asyncio's handler or a server's), and CPython's mark of an unhandled KeyboardInterrupt
  cleared. A KeyboardInterrupt that leaves an `exec`/`eval` of a string sets that mark even when a caller catches
  the exception (dataclasses build their methods so, and importing torch.distributed makes hundreds of them: the
  first seconds of `train`); `python -m` checks it after finalizing and then kills itself with SIGINT instead of
  exiting with the status given to `sys.exit` (a parent sees -2, not 130). Every string exec clears the mark when it
  starts, so an empty one does (Python/pythonrun.c, run_eval_code_obj).
- `deferred()`, around a block that an interrupt must not cut in half because a library inside it would turn the
  KeyboardInterrupt into an error of its own: torch.distributed.checkpoint wraps whatever a rank raises in a
  CheckpointException (a save would end the run with exit 1, a load with "cannot be resumed").
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from typing import Iterator

IGNORE_S = 2.0  # after a Ctrl-C, more are ignored this long (a double press; the verb unwinding)
_raised_at = -math.inf  # when `_stop` last raised KeyboardInterrupt


def _stop(signum, frame):
    global _raised_at
    if time.monotonic() - _raised_at < IGNORE_S:
        return  # the last Ctrl-C is still stopping the verb
    _raised_at = time.monotonic()
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT handled by `_stop` inside the block when it is Python's default handler now (on the main thread; left
    alone otherwise); Python's handler is back after it, unless `stopping()` turned SIGINT off for the exit."""
    own = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if own:
        global _raised_at
        _raised_at = -math.inf
        signal.signal(signal.SIGINT, _stop)
    try:
        yield
    finally:
        if own and signal.getsignal(signal.SIGINT) is _stop:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def stopping() -> None:
    """Call first where a KeyboardInterrupt is reported for good, just before the process exits: see the module's
    docstring. SIGINT stays ignored afterwards."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    exec("")  # clears the unhandled-KeyboardInterrupt mark, as every string exec does first


@contextlib.contextmanager
def deferred(note: str) -> Iterator[None]:
    """Run the block whole: a SIGINT that arrives inside it prints `note` (once) and goes to the handler it was held
    from when the block ends. Off the main thread, or when SIGINT has no Python handler (ignored, or the system's
    default), the block just runs."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    held = []

    def hold(signum, frame):
        if not held:
            print(note, file=sys.stderr, flush=True)
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        signal.raise_signal(signal.SIGINT)
