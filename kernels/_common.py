"""What every kernel file shares: the `torch.library` registration with autocast off, and the one Triton
interpreter fix the CPU tests need. The package is described in `wizardcoder/kernels/__init__.py` and docs/kernels.md.
"""
from __future__ import annotations

import functools
import os

import torch


def _fix_interpreter_scalar_index() -> None:
    """Triton 3.6's interpreter turns a loaded scalar into a 1-element numpy array and then calls `int()` on it to
    use it as a loop bound, which numpy >= 2 refuses ("only 0-dimensional arrays can be converted"). Our kernels take
    their loop bounds from `cu_seqlens`, so under TRITON_INTERPRET=1 patch `__index__` to read the single element.
    No effect on compiled (GPU) kernels."""
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_wizardcoder", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._wizardcoder = True
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET", "0") == "1":
    _fix_interpreter_scalar_index()


def _autocast_off(fn):
    """`fn` with autocast disabled on the device of its first tensor argument. The ops layer (wizardcoder/ops.py)
    picks each kernel's compute dtypes from the autocast policy and casts before the call; inside, the launchers'
    own torch ops (the cross-entropy's chunk matmuls, reductions) must run in exactly the dtypes they are given,
    which autocast would otherwise change (custom ops fall through autocast, so its state is still on here)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if not torch.is_autocast_enabled(dev):
            return fn(*args, **kwargs)
        with torch.autocast(dev, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def custom_op(name: str, fn, fake, mutates_args=()):
    """`torch.library.custom_op("wizardcoder::<name>")` running `fn` with autocast off, with its fake (meta)
    implementation registered so `torch.compile` traces through it. The kernel files have one import identity
    (`wizardcoder.kernels.<file>`), so each op is registered exactly once."""
    op = torch.library.custom_op(f"wizardcoder::{name}", _autocast_off(fn), mutates_args=mutates_args)
    op.register_fake(fake)
    return op
