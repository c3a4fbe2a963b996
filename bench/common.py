"""What every benchmark shares: the device, the commit and the date for each row; a timer that uses CUDA events (or
wall time on CPU) and reports the median after warm-up; a table printer; a JSONL results file.

A benchmark module `bench/bench_<name>.py` defines `run(quick: bool = False) -> list[dict]`: each row a figure with
at least `bench`, `case`, `impl` (ours / the peer), and the measured values. `python -m bench.run_all` runs them all."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except ImportError:
        pass
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def stamp() -> dict:
    return {"device": device_name(), "commit": commit(), "date": datetime.date.today().isoformat()}


def timeit(fn: Callable[[], object], warmup: int = 3, iters: int = 10) -> float:
    """Median seconds per call of `fn`, after `warmup` calls. CUDA work is timed with events."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    if not rows:
        return
    columns = columns or [c for c in rows[0] if c not in ("device", "commit", "date")]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).ljust(widths[c]) for c in columns))


def save_rows(rows: list[dict], name: str, out_dir: str | None = None) -> str:
    """Append rows (stamped with device, commit, date) to `bench/out/<name>.jsonl` (or $OUT when set)."""
    out_dir = out_dir or os.environ.get("OUT") or os.path.join(REPO, "bench", "out")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.jsonl")
    s = stamp()
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({**s, **r}) + "\n")
    return path
