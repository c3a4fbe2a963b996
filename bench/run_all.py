"""Run every `bench/bench_*.py` and print one table per benchmark, headed by the device.

    PYTHONPATH=. python -m bench.run_all [--quick] [--only NAME ...]
    wizardcoder bench [--quick] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from bench.common import print_table, save_rows, stamp

HERE = os.path.dirname(os.path.abspath(__file__))


def discover() -> list[str]:
    return sorted(f[len("bench_") : -3] for f in os.listdir(HERE) if f.startswith("bench_") and f.endswith(".py"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small shapes and few iterations (a smoke run)")
    p.add_argument("--only", nargs="*", default=None, help=f"benchmarks to run (default all: {', '.join(discover())})")


def run(args: argparse.Namespace) -> int:
    s = stamp()
    print(f"device: {s['device']}  commit: {s['commit']}  date: {s['date']}")
    failed = 0
    for name in args.only or discover():
        print(f"\n== {name}")
        try:
            rows = importlib.import_module(f"bench.bench_{name}").run(quick=args.quick)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed += 1
            continue
        print_table(rows)
        print(f"(rows appended to {save_rows(rows, name)})")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
