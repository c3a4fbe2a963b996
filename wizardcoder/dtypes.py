"""One spelling of `--dtype` for every verb: `auto | float32 | bfloat16 | float16` (and the short forms fp32, bf16, fp16).

`auto` means bfloat16 on CUDA and float32 elsewhere: CPUs have no fast bf16 matmuls, and an fp32 run on CPU is the
reference every fast path is tested against.
"""
from __future__ import annotations

import torch

from .errors import ConfigError

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_NAMES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device | None = None, flag: str = "--dtype") -> torch.dtype:
    """The torch dtype `name` stands for on `device` (`auto`/None: bfloat16 on CUDA, float32 elsewhere)."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "", "auto"):
        return torch.bfloat16 if torch.device(device or "cpu").type == "cuda" else torch.float32
    try:
        return _NAMES[str(name).lower()]
    except KeyError:
        raise ConfigError(f"{flag} {name!r} is not a dtype; use one of {', '.join(DTYPE_CHOICES)}.") from None


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `bfloat16` (for logs, configs and summaries)."""
    return str(dtype).removeprefix("torch.")
