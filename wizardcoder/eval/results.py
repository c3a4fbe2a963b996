"""The parts `evaluate` (scoring.py) puts together: samples read and checked, a benchmark's sandbox config and work
run in the pool, results rows checked for resuming, and the summary (pass@k, verdicts, failures by kind, groups).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
from collections import Counter, defaultdict
from typing import Iterator, Sequence

from ..benchmarks import SAMPLE_FIELDS, Benchmark, Problem, Work
from ..errors import DataError
from ..io import read_jsonl
from . import passk
from .jobs import VERDICTS, IsolationReport, Result, SandboxConfig
from .pool import MAX_ERROR, SandboxPool

try:  # CPython's own SHA-1, the same digests: hashlib would load OpenSSL for it (~3 ms of the evaluator's start)
    from _sha1 import sha1
except ImportError:  # a Python built without it
    from hashlib import sha1


def read_samples(path: str, bench: Benchmark, problems: dict[str, Problem]) -> list[dict]:
    """The samples of a JSONL file, task ids normalised; every sample names a task of `bench`."""
    samples = []
    for i, s in enumerate(read_jsonl(path)):
        if "task_id" not in s:
            raise DataError(f"{path}: sample {i + 1} has no task_id; every line needs task_id and one of "
                            f"{', '.join(SAMPLE_FIELDS)}.")
        field = next((f for f in SAMPLE_FIELDS if f in s), None)
        if field is None or not isinstance(s[field], str):
            raise DataError(f"{path}: sample {i + 1} ({s['task_id']}) needs a string completion, solution or "
                            "response.")
        tid = bench.normalize_id(s["task_id"])
        if tid not in problems:
            raise DataError(f"{path}: sample {i + 1} has task_id {s['task_id']!r}, which is not a {bench.name} task; "
                            "check --task and --data.")
        samples.append({**s, "task_id": tid})
    if not samples:
        raise DataError(f"{path}: no samples (the file is empty); give one JSON object per line with task_id and one "
                        f"of {', '.join(SAMPLE_FIELDS)}.")
    return samples


def _digest(tid: str, code: str) -> str:
    return sha1(f"{tid}\0{code}".encode()).hexdigest()[:16]


def _failure_kind(row: dict) -> str:
    """`failed: <exception name>` (the name as a program's error starts with it; `other` when that is no name), or
    the verdict."""
    status = row["status"]
    if status != "failed":
        return status
    err = row.get("error", "")
    m = re.match(r"(?:base|plus) test \d+: (.*)", err, re.S)
    if m:
        err = m.group(1)
    name = err.split(":", 1)[0].split(" (", 1)[0].strip()
    if not name:
        return "failed: unknown"
    return f"failed: {name}" if _KIND_NAME.fullmatch(name) else "failed: other"


_KIND_NAME = re.compile(r"[A-Za-z_][\w.]{0,79}|wrong output(?: type)?")


def valid_row(row, bench: Benchmark) -> bool:
    """A results.jsonl row this version wrote: the fields summarize reads, of the right types (a row from a run that
    crashed, or from an older version that let a program's report through, is scored again)."""
    def text(v):
        return isinstance(v, str) and len(v) <= 4 * MAX_ERROR

    ok = (isinstance(row, dict) and type(row.get("sample")) is int and isinstance(row.get("hash"), str)
          and type(row.get("passed")) is bool and row.get("status") in VERDICTS and text(row.get("error"))
          and isinstance(row.get("seconds"), (int, float)) and not isinstance(row.get("seconds"), bool)
          and math.isfinite(row["seconds"]) and row["seconds"] >= 0)
    if ok and len(bench.parts) > 1:
        ok = all(row.get(f"{part}_status") in VERDICTS and text(row.get(f"{part}_error")) for part in bench.parts)
    return ok


def summarize(bench: Benchmark, rows: list[dict], problems: dict[str, Problem], ks: Sequence[int],
              isolation: dict, extra: dict | None = None, skipped: dict[str, str] | None = None) -> dict:
    """summary.json: pass@k over tasks (and, for tasks with several parts, pass@k up to each part: HumanEval+'s
    `base` and `plus`; for tasks with groups, pass@k per group: DS-1000's libraries), verdict counts, failures by
    kind with an example, per-task figures, isolation. `skipped`: {task_id: why} of the problems this machine
    cannot run, whose samples were not scored."""
    skipped = skipped or {}
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task_id"]].append(r)
    counts = {t: (len(rs), sum(r["passed"] for r in rs)) for t, rs in by_task.items()}
    summary: dict = {"task": bench.name, "n_samples": len(rows), "n_tasks": len(by_task),
                     "missing_tasks": len(set(problems) - set(by_task) - set(skipped))}
    summary.update(passk.overall(counts, ks))
    if skipped:
        summary["skipped_tasks"] = skipped
    groups = group_scores(bench, problems, counts, skipped, ks)
    if groups:
        summary["groups"] = groups
    per_task = passk.per_task(counts, ks)
    if len(bench.parts) > 1:
        for j, part in enumerate(bench.parts):  # a sample passes up to `part` when it passed it and all before
            upto = bench.parts[: j + 1]
            c = {t: (len(rs), sum(all(r[f"{q}_status"] == "passed" for q in upto) for r in rs))
                 for t, rs in by_task.items()}
            summary[part] = passk.overall(c, ks)
            if j < len(bench.parts) - 1:
                for t, (_, n_pass) in c.items():
                    per_task[t][f"{part}_c"] = n_pass
    summary["verdicts"] = {v: sum(r["status"] == v for r in rows) for v in VERDICTS}
    kinds = Counter(_failure_kind(r) for r in rows if not r["passed"])
    examples: dict[str, str] = {}
    for r in rows:
        if not r["passed"]:
            examples.setdefault(_failure_kind(r), r["task_id"])
    summary["failures"] = {k: {"count": c, "example": examples[k]} for k, c in kinds.most_common()}
    summary["per_task"] = per_task
    summary["isolation"] = isolation
    summary.update(extra or {})
    return summary


def group_scores(bench: Benchmark, problems: dict[str, Problem], counts: dict[str, tuple[int, int]],
                 skipped: dict[str, str], ks: Sequence[int]) -> dict[str, dict]:
    """{group: {"n_tasks", pass@k over its scored problems, and "skipped": {"n_tasks", "reason"} when some of its
    problems could not run}} in dataset order; {} for a task without groups."""
    scored: dict[str, dict] = defaultdict(dict)
    why: dict[str, list[str]] = defaultdict(list)
    order: dict[str, None] = {}
    for t, p in problems.items():
        if t in counts or t in skipped:
            g = bench.group(p)
            if g is None:
                continue
            order[g] = None
            if t in counts:
                scored[g][t] = counts[t]
            else:
                why[g].append(skipped[t])
    out = {}
    for g in order:
        out[g] = {"n_tasks": len(scored[g]), **passk.overall(scored[g], ks)}
        if why[g]:
            out[g]["skipped"] = {"n_tasks": len(why[g]), "reason": Counter(why[g]).most_common(1)[0][0]}
    return out


def run_work(pool: SandboxPool, work: Work) -> Iterator[Result]:
    """Hand `work`'s task data to the pool and yield its jobs' results as they complete."""
    for key, data in work.tasks.items():
        pool.add_task(key, data)
    try:
        yield from pool.run(work.jobs)
    finally:
        for key in work.tasks:
            pool.drop_task(key)


def sandbox_config(bench: Benchmark, config: SandboxConfig | None, timeout: float | None) -> SandboxConfig:
    """The pool's config for `bench`: the caller's (never changed), its time limit and the modules it preloads."""
    cfg = dataclasses.replace(config) if config else SandboxConfig()
    if timeout is not None or bench.timeout is not None:
        cfg.timeout = timeout or bench.timeout
    cfg.preload = tuple(dict.fromkeys(tuple(cfg.preload) + bench.preload))
    cfg.read_paths = tuple(dict.fromkeys(tuple(cfg.read_paths) + tuple(bench.read_paths)))
    return cfg


def isolation_summary(pool: SandboxPool) -> dict:
    """The pool's isolation for summary.json; each layer this machine refused is said once on stderr."""
    report: IsolationReport = pool.isolation
    for layer in report.degraded():
        print(f"warning: sandbox {layer.name} not in force ({layer.detail}); instead: {layer.fallback}",
              file=sys.stderr)
    return report.to_json()


def _progress(total: int, name: str, show: bool):
    """tqdm's bar on stderr, or None when not shown: tqdm is imported only then (with what it imports, logging and
    importlib.metadata among them, it was about a quarter of the evaluator's start)."""
    if not show:
        return contextlib.nullcontext()
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc=f"evaluate {name}", file=sys.stderr)
