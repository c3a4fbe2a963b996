"""`[run] check_canonical`: score the benchmark's own canonical solutions for the problems the run generated for,
through the same evaluate verb. A correct evaluator gives pass@1 = 1.0 here (the check printed beside the model's
pass@k in the report)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..io import read_jsonl, write_jsonl

if TYPE_CHECKING:
    from .run import Run, Stage


def canonical_stage(run: "Run", stages: list["Stage"]) -> list["Stage"]:
    """[] unless check_canonical is on and the run has an evaluate stage; else one more evaluate stage."""
    evaluate = next((s for s in stages if s.name == "evaluate"), None)
    if not run.opts.check_canonical or evaluate is None:
        return []
    task, data = evaluate.section["task"], evaluate.section.get("data")
    out = os.path.join(run.out, "canonical")
    section = {"task": task, "samples": os.path.join(out, "samples.jsonl"), "out": out, "k": [1]}
    if data:
        section["data"] = data
    for key in ("timeout", "memory_mb", "workers", "no_progress"):
        if key in evaluate.section:
            section[key] = evaluate.section[key]
    from .run import Stage, _hash

    # the samples evaluate scored (evaluate --model writes its own into its folder)
    model_samples = evaluate.section.get("samples") or os.path.join(evaluate.section["out"], "samples.jsonl")

    def write_samples(stage: "Stage") -> None:
        from ..benchmarks import get_benchmark

        bench = get_benchmark(task)
        problems = bench.load(data)
        ids = list(dict.fromkeys(bench.normalize_id(r["task_id"]) for r in read_jsonl(model_samples)))
        ids = [t for t in ids if t in problems] or list(problems)
        write_jsonl(stage.section["samples"], [{"task_id": t, "solution": problems[t].canonical} for t in ids])

    return [Stage("canonical", "evaluate", section, _hash(["canonical", section, evaluate.hash]),
                  os.path.join(out, "summary.json"), inputs={"samples (the model's)": model_samples},
                  prepare=write_samples)]
