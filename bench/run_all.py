"""Run every `bench/bench_*.py` and print one table per benchmark, headed by the device.

    PYTHONPATH=. python -m bench.run_all [--quick] [--only NAME ...]
    wizardcoder bench [--quick] [--only NAME ...]
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass, field

from bench.common import print_table, save_rows, stamp
from wizardcoder.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))


def discover() -> list[str]:
    return sorted(f[len("bench_") : -3] for f in os.listdir(HERE) if f.startswith("bench_") and f.endswith(".py"))


@dataclass
class Config:
    quick: bool = False  # small shapes and few iterations (a smoke run)
    only: list[str] = field(default_factory=list, metadata={
        "help": f"benchmarks to run (none given: all of {', '.join(discover())})"})

    def __post_init__(self):
        unknown = [name for name in self.only if name not in discover()]
        if unknown:
            raise ConfigError(f"--only {unknown[0]!r} is not a benchmark; choose from {', '.join(discover())}.")


def run(cfg: Config) -> int:
    s = stamp()
    print(f"device: {s['device']}  commit: {s['commit']}  date: {s['date']}")
    failed = 0
    for name in cfg.only or discover():
        print(f"\n== {name}")
        try:
            rows = importlib.import_module(f"bench.bench_{name}").run(quick=cfg.quick)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed += 1
            continue
        print_table(rows)
        print(f"(rows appended to {save_rows(rows, name)})")
    return 1 if failed else 0


if __name__ == "__main__":  # the `bench` verb's own path: the same flags, checks and one-sentence errors
    from wizardcoder.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
