"""Evaluation: HumanEval, HumanEval+, MBPP, MBPP+ and DS-1000 scored with pass@k in a sandbox.

    from wizardcoder.eval import evaluate, pass_at_k, SandboxPool, SandboxConfig
    summary = evaluate("humaneval", "samples.jsonl", "runs/he")        # runs/he/{results.jsonl,summary.json}

    with SandboxPool(workers=2) as pool:                                 # run programs directly
        for r in pool.run([Job(id=0, kind="script", code="assert 1 + 1 == 2")]):
            print(r.status)                                              # passed

    bench = get_benchmark("mbpp")                                        # one object per task
    problems = bench.load(); prompt = bench.prompt(problems["11"]); stop = bench.stop

Modules: postprocessing (answers -> code, sanitizer), jobs (Job, Result, IsolationReport), sandbox + worker (the
isolated executor), launch (the workers' fork server, started before its config is known), pool (workers from the
evaluator's side), checks (what runs inside the sandbox), passk (the estimator), results (samples, rows, summary),
scoring (the pipeline: `evaluate`), cli (`wizardcoder evaluate`).
"""
# Names are imported on first use: the sandbox worker imports this package too, and every module it holds makes each
# fork per program slower.
_LAZY = {
    "evaluate": ".scoring", "summarize": ".results", "pass_at_k": ".passk", "VERDICTS": ".jobs", "Job": ".jobs",
    "Result": ".jobs", "IsolationReport": ".jobs", "SandboxPool": ".pool", "sanitize": ".postprocessing",
    "SandboxConfig": ".jobs", "TASKS": "..benchmarks", "get_benchmark": "..benchmarks",
    "Benchmark": "..benchmarks", "Problem": "..benchmarks",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
