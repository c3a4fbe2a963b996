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

import importlib
import os

from ..errors import ConfigError, DataError
from ..io import read_records
from .base import PROMPT_STYLES, SAMPLE_FIELDS, Benchmark, Problem, Work

# Every task (its --task name) and the module holding its class, imported when the task is first asked for: scoring
# one task needs one module (all of them cost the evaluator's start ~10 ms: MultiPL-E's languages module with hashlib
# and subprocess, DS-1000's configparser). The class is the module's attribute of that name, or for MultiPL-E one
# of its LANGUAGES (tests/test_eval_tasks.py checks this list against the modules' classes).
_MODULES = {"humaneval": ("humaneval", "HumanEval"), "humaneval+": ("humaneval", "HumanEvalPlus"),
            "mbpp": ("mbpp", "Mbpp"), "mbpp+": ("mbpp", "MbppPlus"), "ds1000": ("ds1000", "DS1000"),
            "ds1000-insertion": ("ds1000", "DS1000Insertion"),
            **{f"humaneval-{key}": ("multipl_e", None) for key in ("js", "cpp", "java", "rs", "go", "php")}}
TASKS = tuple(_MODULES)


def benchmark_class(name: str) -> type[Benchmark]:
    """The class of the task called `name` (KeyError for an unknown one)."""
    module, attr = _MODULES[name]
    m = importlib.import_module(f".{module}", __name__)
    return getattr(m, attr) if attr else next(c for c in m.LANGUAGES if c.name == name)


def get_benchmark(name: str | Benchmark, **options) -> Benchmark:
    """The benchmark called `name` (a --task value); `options` go to its constructor (mbpp: all_splits)."""
    if isinstance(name, Benchmark):
        return name
    try:
        cls = benchmark_class(name)
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}.") from None
    return cls(**options)


def recognize(path: str) -> Benchmark:
    """The benchmark whose upstream format the file at `path` is in (from its first record), or whose dataset the
    folder at `path` is."""
    if os.path.isdir(path):
        found = [cls for cls in map(benchmark_class, TASKS) if cls.recognizes_folder(path)]
        if found:
            return found[0]()
        raise DataError(f"{path}: a folder, but no benchmark's dataset folder (the one such release is DS-1000's "
                        "2022 ds1000_data, holding <Library>/Insertion/q<N>/); give a dataset in its upstream format.")
    first = next(iter(read_records(path)), None)
    for cls in map(benchmark_class, TASKS):
        if isinstance(first, dict) and cls.recognizes(first):
            return cls()
    *titles, last = (benchmark_class(t).title for t in TASKS)
    raise DataError(f"{path}: neither {', '.join(titles)} nor {last} (by the fields of its first record); give the "
                    "benchmark file in its upstream format.")


__all__ = ["TASKS", "PROMPT_STYLES", "SAMPLE_FIELDS", "Benchmark", "Problem", "Work", "benchmark_class",
           "get_benchmark", "recognize"]
