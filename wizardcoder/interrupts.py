"""Ctrl-C: one SIGINT stops a verb, which says what stopped and exits 130 (cli.main), by that exit status and never
by the signal, and the interrupt is never turned into some other error on the way.

- `stopping()`, where cli.main reports an interrupt: further SIGINTs are ignored, so a second Ctrl-C cannot cut the
  report or the exit short, and CPython's mark of an unhandled KeyboardInterrupt is cleared. A KeyboardInterrupt that
  leaves an `exec`/`eval` of a string sets that mark even when a caller catches the exception (dataclasses build
  their methods so, and importing torch.distributed defines hundreds of them: the first seconds of `train`);
  `python -m` checks it after finalizing and then kills itself with SIGINT instead of exiting with the status given
  to `sys.exit` (a parent sees -2, not 130). Every string exec clears the mark when it starts, so an empty one does
  (Python/pythonrun.c, run_eval_code_obj).
- `deferred()`, around a block that an interrupt must not cut in half because a library inside it would turn the
  KeyboardInterrupt into an error of its own (torch.distributed.checkpoint's save: a CheckpointException, exit 1).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator


def stopping() -> None:
    """Call first where a KeyboardInterrupt is reported for good, just before the process exits: see the module's
    docstring. SIGINT stays ignored afterwards (the caller is exiting)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    exec("")  # clears the unhandled-KeyboardInterrupt mark, as every string exec does first


@contextlib.contextmanager
def deferred(note: str) -> Iterator[None]:
    """Run the block whole: a SIGINT that arrives inside it prints `note` (once) and is raised as KeyboardInterrupt
    when the block ends. Off the main thread, or when SIGINT is not Python's default handler (ignored, or someone
    else's), the block just runs."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    held = []

    def hold(signum, frame):
        if not held:
            print(note, file=sys.stderr, flush=True)
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt
