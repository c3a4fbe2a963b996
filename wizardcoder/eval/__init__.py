"""Evaluation: HumanEval, HumanEval+, MBPP, MBPP+ and DS-1000 scored with pass@k in a sandbox.

    from wizardcoder.eval import evaluate, pass_at_k, SandboxPool, SandboxConfig
    summary = evaluate("humaneval", "samples.jsonl", "runs/he")        # runs/he/{results.jsonl,summary.json}

    with SandboxPool(workers=2) as pool:                                 # run programs directly
        for r in pool.run([{"id": 0, "kind": "script", "code": "assert 1 + 1 == 2"}]):
            print(r["status"])                                           # passed

Modules: tasks (datasets, programs), prompts (generation prompts), postprocess (answers -> code, sanitizer),
sandbox + worker (the isolated executor), pool (workers from the evaluator's side), checks (what runs inside the
sandbox), passk (the estimator), evaluate (the pipeline), cli (`wizardcoder evaluate`).
"""
from .evaluate import evaluate, summarize
from .passk import pass_at_k
from .pool import VERDICTS, SandboxPool
from .postprocess import postprocess, sanitize
from .prompts import build_prompt
from .sandbox import SandboxConfig
from .tasks import TASKS, load_problems

__all__ = ["evaluate", "summarize", "pass_at_k", "SandboxPool", "SandboxConfig", "VERDICTS", "postprocess",
           "sanitize", "build_prompt", "TASKS", "load_problems"]
