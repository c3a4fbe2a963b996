"""One `Benchmark` per evaluation task: loading, task ids, prompts, stop words, post-processing, sandbox jobs, time
limits and preloaded modules (see base.py).

    from wizardcoder.benchmarks import get_benchmark
    bench = get_benchmark("humaneval+")
    problems = bench.load()                       # or bench.load("HumanEvalPlus.jsonl.gz")
    prompts = [bench.prompt(p) for p in problems.values()]; stop = bench.stop
    label, value = bench.headline(summary)        # "HumanEval+ pass@1", base + plus; bench.part_scores(summary)
    bench = recognize("mbpp.jsonl")               # the benchmark a dataset file belongs to

The package sits below `eval` (scoring), `generate` and `evol` (decontamination), which all take a Benchmark from it.
"""
from __future__ import annotations

import os

from ..errors import ConfigError, DataError
from ..io import read_records
from .base import PROMPT_STYLES, SAMPLE_FIELDS, Benchmark, Problem, Work
from .ds1000 import DS1000, DS1000Insertion
from .humaneval import HumanEval, HumanEvalPlus
from .mbpp import Mbpp, MbppPlus
from .multipl_e import LANGUAGES as MULTIPL_E

BENCHMARKS: dict[str, type[Benchmark]] = {b.name: b for b in (HumanEval, HumanEvalPlus, Mbpp, MbppPlus, DS1000,
                                                                DS1000Insertion, *MULTIPL_E)}
TASKS = tuple(BENCHMARKS)


def get_benchmark(name: str | Benchmark, **options) -> Benchmark:
    """The benchmark called `name` (a --task value); `options` go to its constructor (mbpp: all_splits)."""
    if isinstance(name, Benchmark):
        return name
    try:
        cls = BENCHMARKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}.") from None
    return cls(**options)


def recognize(path: str) -> Benchmark:
    """The benchmark whose upstream format the file at `path` is in (from its first record), or whose dataset the
    folder at `path` is."""
    if os.path.isdir(path):
        found = [cls for cls in BENCHMARKS.values() if cls.recognizes_folder(path)]
        if found:
            return found[0]()
        raise DataError(f"{path}: a folder, but no benchmark's dataset folder (the one such release is DS-1000's "
                        "2022 ds1000_data, holding <Library>/Insertion/q<N>/); give a dataset in its upstream format.")
    first = next(iter(read_records(path)), None)
    for cls in BENCHMARKS.values():
        if isinstance(first, dict) and cls.recognizes(first):
            return cls()
    *titles, last = (b.title for b in BENCHMARKS.values())
    raise DataError(f"{path}: neither {', '.join(titles)} nor {last} (by the fields of its first record); give the "
                    "benchmark file in its upstream format.")


__all__ = ["BENCHMARKS", "TASKS", "PROMPT_STYLES", "SAMPLE_FIELDS", "Benchmark", "Problem", "Work", "get_benchmark",
           "recognize"]
