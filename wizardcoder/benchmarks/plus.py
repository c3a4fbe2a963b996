"""The EvalPlus tasks (HumanEval+, MBPP+): differential tests against the canonical solution's outputs.

A sample runs two jobs, `base` and `plus` (the two input sets); it passes when both pass. The expected outputs come
from running the canonical solution in the sandbox once per dataset file (`reference_work`, cached under
~/.cache/wizardcoder/eval/<task>-<file digest>/, one pickle per problem: some are hundreds of MB), and the time limit
of each input is max(1 s, 4 x the canonical solution's time on it), as evalplus 0.3.1 does.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from typing import Iterable

from ..errors import DataError
from ..io import atomic_open
from ..eval.jobs import Job, Result
from .base import Benchmark, Problem, Work
from .sources import cache_dir

PLUS_MIN_TIME_LIMIT = 1.0  # evalplus DEFAULT_MIN_TIME_LIMIT
PLUS_TIME_FACTOR = 4.0  # evalplus DEFAULT_GT_TIME_LIMIT_FACTOR
PLUS_MAX_TIMEOUT = 60.0  # evalplus EVALPLUS_TIMEOUT_PER_TASK
RECORD_TIMEOUT = 600.0  # CPU seconds for the canonical solution on all inputs of one problem


class PlusBenchmark(Benchmark):
    timeout = None  # per problem and input set, from the canonical solution's times
    # no numpy in the workers: it made every program's fork ~0.5 ms dearer; the comparison needs it only for outputs
    # np.allclose takes that compare._allclose does not (imported then), and programs that use it import it
    preload = ()
    parts = ("base", "plus")
    required = ("task_id", "prompt", "canonical_solution", "entry_point", "base_input", "plus_input", "atol")

    def oracle(self, problem: Problem) -> str | None:
        """The special output check this problem needs (checks.check_output), None for equality with `atol`."""
        return None

    def task_data(self, problem: Problem, expected: dict | None) -> dict:
        """What a worker needs to run `plus` (with expected) or `record` (without) jobs for one problem."""
        r = problem.raw
        data = {"entry_point": problem.entry_point, "oracle": self.oracle(problem), "atol": r["atol"],
                "base_input": r["base_input"], "plus_input": r["plus_input"]}
        if expected is not None:
            for split in self.parts:
                data[f"{split}_expected"] = expected[f"{split}_expected"]
                data[f"{split}_limits"] = plus_limits(expected, split)
        return data

    # ------------------------------------------------------------------------------------------- reference

    def expected_dir(self, path: str) -> str:
        """Cache folder of a dataset file's expected outputs (keyed by the file's content)."""
        return os.path.join(cache_dir(), f"{self.name.replace('+', 'plus')}-{file_digest(path)[:16]}")

    def reference_work(self, path: str, problems: dict[str, Problem], task_ids: Iterable[str]) -> Work:
        """`record` jobs for the problems of `task_ids` whose expected outputs are not cached yet."""
        folder = self.expected_dir(path)
        missing = [t for t in dict.fromkeys(task_ids) if not os.path.exists(os.path.join(folder, _cache_name(t)))]
        tasks = {f"record:{self.name}:{t}": self.task_data(problems[t], None) for t in missing}
        return Work(tasks, [Job(t, "record", problems[t].canonical, RECORD_TIMEOUT, f"record:{self.name}:{t}")
                            for t in missing])

    def store_reference(self, path: str, results: list[Result]) -> None:
        """Cache each problem's expected outputs and times; a canonical solution that failed is a broken file."""
        folder = self.expected_dir(path)
        bad = [f"{r.id} ({r.status}: {r.error})" for r in results if not r.passed]
        for r in results:
            if not r.passed:
                continue
            rec = r.record
            with atomic_open(os.path.join(folder, _cache_name(r.id)), "wb") as f:
                pickle.dump(rec, f, protocol=pickle.HIGHEST_PROTOCOL)
            with atomic_open(os.path.join(folder, _cache_name(r.id) + ".times.json"), "w") as f:
                json.dump({k: rec[k] for k in ("base_time", "plus_time")}, f)
        if bad:
            raise DataError(f"{path}: the canonical solution failed on its own inputs for {', '.join(bad[:5])}; "
                            "is the dataset file intact?")

    # ------------------------------------------------------------------------------------------- samples

    def sample_work(self, path: str, problems: dict[str, Problem], todo: list[tuple[int, str, str]],
                    timeout: float | None = None) -> Work:
        """Two jobs per sample; the problem's data (inputs, expected outputs) is loaded when a worker first needs
        it, so only a few problems' outputs are in memory at once. `timeout` is not used: limits are per input."""
        folder = self.expected_dir(path)
        tasks, limits = {}, {}
        for tid in dict.fromkeys(t for _, t, _ in todo):
            tasks[f"check:{self.name}:{tid}"] = functools.partial(self._check_data, problems[tid], folder)
            times = load_times(folder, tid)
            limits[tid] = {s: plus_timeout(times, s) for s in self.parts}
        jobs = [Job((i, split), "plus", code, limits[tid][split], f"check:{self.name}:{tid}", split)
                for i, tid, code in todo for split in self.parts]
        return Work(tasks, jobs)

    def _check_data(self, problem: Problem, folder: str) -> dict:
        return self.task_data(problem, load_expected(folder, problem.task_id))

    def row(self, parts: dict[str, Result]) -> dict:
        b, p = parts["base"], parts["plus"]
        first_bad = b if not b.passed else p
        return {"passed": b.passed and p.passed, "status": first_bad.status, "error": first_bad.error,
                "base_status": b.status, "base_error": b.error, "plus_status": p.status, "plus_error": p.error,
                "seconds": round(b.seconds + p.seconds, 4)}


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_name(task_id: str) -> str:
    return task_id.replace("/", "_") + ".pkl"


def load_expected(folder: str, task_id: str) -> dict:
    with open(os.path.join(folder, _cache_name(task_id)), "rb") as f:
        return pickle.load(f)


def load_times(folder: str, task_id: str) -> dict:
    """The canonical solution's seconds per input ({"base_time": [...], "plus_time": [...]}), without the outputs."""
    path = os.path.join(folder, _cache_name(task_id) + ".times.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    exp = load_expected(folder, task_id)
    return {k: exp[k] for k in ("base_time", "plus_time")}


def plus_limits(times: dict, split: str) -> list[float]:
    """Per-input limits: max(1 s, 4 x the canonical solution's time), as evalplus."""
    return [max(PLUS_MIN_TIME_LIMIT, PLUS_TIME_FACTOR * t) for t in times[f"{split}_time"]]


def plus_timeout(times: dict, split: str) -> float:
    """evalplus's whole-run limit for one input set: min(60, sum of per-input limits) + 1 (+1 for collection), here
    as CPU seconds (the sandbox adds its wall-clock margin)."""
    return min(PLUS_MAX_TIMEOUT, sum(plus_limits(times, split))) + 2.0
