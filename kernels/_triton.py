"""Triton, or a stand-in when it is not installed. Each kernel file also holds the plain-torch reference that
wizardcoder/ops.py's `torch` backend runs, so the files must import on machines without Triton (macOS, CPU-only
installs). The stand-in only lets the kernel definitions be read (decorators, configs, constexpr constants); launching
a kernel through it raises an ImportError that says what to install. With Triton present this is Triton itself."""
from __future__ import annotations

import functools

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False
    MISSING = ("the fused kernels need Triton (pip install triton, Linux); without it use the torch backends "
               "(--kernel-backend torch --attn-backend torch)")

    class _Unavailable:
        """A @triton.jit function on a machine without Triton: indexing it with a grid (a launch) raises."""

        def __init__(self, fn):
            functools.update_wrapper(self, fn)

        def __getitem__(self, grid):
            raise ImportError(MISSING)

        __call__ = __getitem__

    class _Triton:
        Config = staticmethod(lambda *args, **kwargs: (args, kwargs))
        jit = staticmethod(lambda fn=None, **kwargs: _Unavailable(fn) if fn is not None else _Unavailable)
        autotune = staticmethod(lambda *args, **kwargs: (lambda fn: fn))

        def __getattr__(self, name):  # anything a launcher uses (next_power_of_2, cdiv, ...)
            raise ImportError(MISSING)

    class _Language:
        constexpr = staticmethod(lambda value=None: value)

    triton, tl = _Triton(), _Language()

__all__ = ["HAS_TRITON", "tl", "triton"]
