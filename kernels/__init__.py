"""Fused Triton kernels for StarCoder training, importable as `wizardcoder.kernels`.

- `flash_attention`: FlashAttention-2 forward/backward, packed varlen (cu_seqlens), MQA/GQA, causal.
- `layernorm`: fused residual-add + LayerNorm forward/backward.
- `gelu`: fused bias + GELU (tanh or exact) forward/backward.
- `cross_entropy`: fused LM-head projection + cross-entropy that never holds the [tokens, vocab] logits.

Each module holds `@triton.jit` kernels, a launcher, a `torch.autograd.Function`, a public function and the one
plain-torch reference of that kernel (`<name>_reference`), which wizardcoder/ops.py's torch backend, the tests and the
benches all use. The launchers are registered as `torch.library` custom ops (namespace `wizardcoder`) with fake
implementations, so `torch.compile` traces through them, and run with autocast off: ops.py picks each kernel's
dtypes from torch's autocast policy before the call. The modules import without Triton (`_triton.py` stands in), so
the references work everywhere. Submodules are imported on use, not here, so importing the package stays cheap. See
docs/kernels.md.
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
    """`torch.library.custom_op("wizardcoder::<name>")` running `fn` with autocast off, tolerating a second
    registration (the package is reachable as both `kernels` and `wizardcoder.kernels` in a source checkout): the
    first registration wins."""
    if hasattr(torch.ops, "wizardcoder") and hasattr(torch.ops.wizardcoder, name):
        return getattr(torch.ops.wizardcoder, name)
    op = torch.library.custom_op(f"wizardcoder::{name}", _autocast_off(fn), mutates_args=mutates_args)
    op.register_fake(fake)
    return op
