"""`wizardcoder evaluate`: score samples (or generate them with a checkpoint first) with pass@k.

    wizardcoder evaluate --task humaneval --samples samples.jsonl --out runs/he
    wizardcoder evaluate --task mbpp+ --samples s.jsonl --data MbppPlus.jsonl.gz --out runs/mbppp --k 1 10
    wizardcoder evaluate --task humaneval --model ckpt/ --num-samples 20 --temperature 0.2 --top-p 0.95 --out runs/he20

Flags come from `EvaluateConfig` (scoring) and, for --model, from `wizardcoder.generate.GenerateConfig` (which
`wizardcoder generate` uses too: same prompts, sampler and samples file); an `[evaluate]` section of `--config` sets
the same names.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Literal

from ..cli_args import add_dataclass_arguments, dataclass_from_args, flag_name
from ..errors import ConfigError
from .benchmarks import TASKS, get_benchmark
from .jobs import IsolationReport, check_timeout, check_workers
from .postprocessing import STYLES as POSTPROCESS


@dataclasses.dataclass
class EvaluateConfig:
    """What to score and how."""

    task: Literal[TASKS] | None = None  # benchmark to score on (required)
    samples: str | None = None  # JSONL to score: task_id and one of completion / solution / response per line
    model: str | None = None  # checkpoint folder, preset or hub id: generate samples first, then score them
    data: str | None = None  # the benchmark's dataset file (upstream format); none: a package, a local cache, the hub
    out: str | None = None  # output folder: results.jsonl, summary.json (and samples.jsonl with --model) (required)
    k: list[int] = dataclasses.field(default_factory=lambda: [1, 10, 100])  # pass@k to report (those <= n)
    postprocess: Literal[POSTPROCESS] = "wizardcoder"  # how `response` samples become code
    workers: int | None = None  # sandbox workers; none: one per CPU core
    timeout: float | None = dataclasses.field(default=None, metadata={"help": (
        "CPU seconds per program (not wall-clock), > 0; none: 3 HumanEval, 10 MBPP, 60 DS-1000 (the + tasks use "
        "evalplus's per-input limits)")})
    memory_mb: int = 4096  # address-space cap per program (MiB)
    allow_fork: bool = False  # let programs fork (bounded by RLIMIT_NPROC only)
    progress: bool = True  # progress bar on stderr (--no-progress: none)

    def __post_init__(self):
        if self.task is None:
            raise ConfigError(f"--task is required; choose one of {', '.join(TASKS)}.")
        get_benchmark(self.task)  # names the choices when a config file gives a wrong one
        if (self.samples is None) == (self.model is None):
            raise ConfigError("give exactly one of --samples FILE (score samples) or --model CKPT (generate, then "
                              "score).")
        if not self.out:
            raise ConfigError("--out is required: the folder for results.jsonl and summary.json.")
        check_timeout(self.timeout)
        check_workers(self.workers)
        if not (_is_int(self.memory_mb) and self.memory_mb >= 64):
            raise ConfigError(f"--memory-mb {self.memory_mb}: give a whole number of MiB >= 64 per program.")
        if not isinstance(self.k, list) or not self.k or not all(_is_int(k) and k >= 1 for k in self.k):
            raise ConfigError(f"--k {self.k}: give one or more whole numbers, every k >= 1.")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Fields of GenerateConfig that evaluate sets itself (or shares with EvaluateConfig).
GENERATE_OWN = ("model", "task", "data", "out", "progress", "prompts")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..generate import GenerateConfig

    add_dataclass_arguments(p, EvaluateConfig)
    add_dataclass_arguments(p.add_argument_group("generation (with --model; see `wizardcoder generate`)"),
                            GenerateConfig, exclude=GENERATE_OWN)


def format_report(summary: dict) -> str:
    lines = [f"{summary['task']}: {summary['n_samples']} samples over {summary['n_tasks']} problems"
             + (f" ({summary['missing_tasks']} problems without samples)" if summary.get("missing_tasks") else "")]
    parts = [k for k in ("base", "plus") if isinstance(summary.get(k), dict)]
    if parts:
        for part in parts:
            label = "base tests:  " if part == parts[0] else "base + plus: "
            lines.append(f"  {label}" + "  ".join(f"{k} {100 * v:.2f}" for k, v in summary[part].items()))
    else:
        lines.append("  " + "  ".join(f"{k} {100 * summary[k]:.2f}" for k in summary if k.startswith("pass@")))
    lines.append("  verdicts: " + ", ".join(f"{v} {c}" for v, c in summary["verdicts"].items() if c))
    if summary["failures"]:
        lines.append("  failures by kind:")
        for kind, f in summary["failures"].items():
            lines.append(f"    {f['count']:6d}  {kind}  (e.g. {f['example']})")
    lines.append("  isolation:")
    lines += [f"    {line}" for line in IsolationReport.from_json(summary["isolation"]).lines()]
    return "\n".join(lines)


# GenerateConfig fields the samples do not depend on (a rerun that changes only these reuses them)
NOT_IN_SAMPLES = ("device", "batch_slots", "progress", "out")


def generate_once(args: argparse.Namespace, cfg: EvaluateConfig, task: str, data: str) -> str:
    """OUT/samples.jsonl from the checkpoint; a rerun with the same generation settings (a killed or repeated
    evaluation) reuses the finished file, and one killed mid-generation resumes from generate's journal."""
    from ..generate import GenerateConfig, generate_samples
    from ..io import atomic_write_json

    gen = dataclass_from_args(GenerateConfig, args, model=cfg.model, task=task, data=data, prompts=None,
                              out=os.path.join(cfg.out, "samples.jsonl"), progress=cfg.progress)
    settings = {k: v for k, v in dataclasses.asdict(gen).items() if k not in NOT_IN_SAMPLES}
    marker = os.path.join(cfg.out, "generation.json")
    if os.path.exists(gen.out) and os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == settings:
                print(f"reusing {gen.out} (generated with the same settings)", file=sys.stderr)
                return gen.out
    if os.path.exists(marker):
        os.unlink(marker)  # the samples about to be written are not the ones it describes
    samples = generate_samples(gen)
    atomic_write_json(marker, settings)
    return samples


def run(args: argparse.Namespace) -> int:
    from .sandbox import SandboxConfig
    from ..io import make_out_dir
    from .scoring import evaluate

    cfg = dataclass_from_args(EvaluateConfig, args)
    if cfg.samples is not None:
        from ..generate import GenerateConfig

        stray = [f.name for f in dataclasses.fields(GenerateConfig)
                 if f.name not in GENERATE_OWN and hasattr(args, f.name)]
        if stray:
            raise ConfigError(f"{flag_name(stray[0])} only applies with --model (generation); drop it when scoring "
                              "--samples.")
    bench = get_benchmark(cfg.task)
    path = bench.locate(cfg.data)
    samples = cfg.samples
    if cfg.model:
        make_out_dir(cfg.out)
        samples = generate_once(args, cfg, bench.name, path)
    config = SandboxConfig(memory=cfg.memory_mb << 20, allow_fork=cfg.allow_fork)
    summary = evaluate(bench, samples, cfg.out, data=path, postprocess=cfg.postprocess, ks=cfg.k,
                       workers=cfg.workers, timeout=cfg.timeout, config=config, progress=cfg.progress)
    print(format_report(summary), file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("pass@") or k in ("task", "n_samples")}))
    return 0
