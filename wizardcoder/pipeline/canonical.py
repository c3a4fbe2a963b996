"""`[run] check_canonical`: score the benchmark's own canonical solutions for the problems the run generated for,
through the same evaluate verb. A correct evaluator gives pass@1 = 1.0 here (the check printed beside the model's
pass@k in the report)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from ..io import read_jsonl, write_jsonl
from .stages import NOT_HASHED, Stage

# evaluate settings the check shares with the model's evaluation (how programs run, not what they are)
_SHARED = ("timeout", "memory_mb", "workers", "progress")


def canonical_stage(evaluate: Stage, out: str) -> Stage:
    """One more evaluate stage, after `evaluate`, that scores the canonical solutions of the problems it scored;
    its hook writes that samples file before evaluate runs."""
    task, data = evaluate.section["task"], evaluate.section.get("data")
    section = {"task": task, "samples": os.path.join(out, "samples.jsonl"), "out": out, "k": [1],
               **({"data": data} if data else {}),
               **{k: evaluate.section[k] for k in _SHARED if k in evaluate.section}}
    # the samples evaluate scored (evaluate --model writes its own into its folder)
    model_samples = evaluate.section.get("samples") or os.path.join(evaluate.section["out"], "samples.jsonl")

    @contextlib.contextmanager
    def write_samples(stage: Stage) -> Iterator[None]:
        from ..benchmarks import get_benchmark

        bench = get_benchmark(task)
        problems = bench.load(data)
        ids = list(dict.fromkeys(bench.normalize_id(r["task_id"]) for r in read_jsonl(model_samples)))
        ids = [t for t in ids if t in problems] or list(problems)
        write_jsonl(stage.section["samples"], [{"task_id": t, "solution": problems[t].canonical} for t in ids])
        yield

    settings = {"verb": "evaluate", "section": {k: v for k, v in section.items() if k not in NOT_HASHED},
                "after": evaluate.hash, "canonical": True}
    return Stage("canonical", "evaluate", section, settings, os.path.join(out, "summary.json"),
                 inputs={"samples (the model's)": model_samples}, owned=out, hooks=[write_samples])
