"""`wizardcoder evaluate`: score samples (or generate them with a checkpoint first) with pass@k.

    wizardcoder evaluate --task humaneval --samples samples.jsonl --out runs/he
    wizardcoder evaluate --task mbpp+ --samples s.jsonl --data MbppPlus.jsonl.gz --out runs/mbppp --k 1 10
    wizardcoder evaluate --task humaneval --model ckpt/ --num-samples 20 --temperature 0.2 --top-p 0.95 --out runs/he20

Flags come from `Config` (what to score and how) and its `generation` group, `wizardcoder.generate`'s
`GenerationSettings` (the same prompts, sampler and samples file as `wizardcoder generate`; only with --model); an
`[evaluate]` section of `--config` sets the same names. The Benchmark and its dataset file are resolved once here and
handed to generation and scoring.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Literal

from .. import settings
from ..benchmarks import TASKS, Benchmark, get_benchmark
from ..errors import ConfigError
from ..generate import GenerationSettings
from .jobs import IsolationReport, check_timeout
from .launch import check_workers
from .postprocessing import STYLES as POSTPROCESS


@dataclasses.dataclass
class Config:
    """What to score and how."""

    task: Literal[TASKS] | None = None  # benchmark to score on (required)
    samples: str | None = None  # JSONL to score: task_id and one of completion / solution / response per line
    model: str | None = None  # checkpoint folder, preset or hub id: generate samples first, then score them
    data: str | None = None  # the benchmark's dataset file (upstream format); none: a package, a local cache, the hub
    out: str | None = None  # output folder: results.jsonl, summary.json (and samples.jsonl with --model) (required)
    k: list[int] = dataclasses.field(default_factory=lambda: [1, 10, 100])  # pass@k to report (those <= n)
    postprocess: Literal[POSTPROCESS] = "wizardcoder"  # how `response` samples become code
    workers: int | None = None  # sandbox workers; none: one per CPU core, plus one
    timeout: float | None = dataclasses.field(default=None, metadata={"help": (
        "CPU seconds per program (not wall-clock), > 0; none: 3 HumanEval, 10 MBPP, 60 DS-1000 (the + tasks use "
        "evalplus's per-input limits)")})
    memory_mb: int = 4096  # address-space cap per program (MiB)
    allow_fork: bool = False  # let programs fork (bounded by RLIMIT_NPROC only)
    progress: bool = True  # progress bar on stderr (--no-progress: none)
    generation: GenerationSettings = dataclasses.field(default_factory=GenerationSettings, metadata={
        "title": "generation (with --model; see `wizardcoder generate`)"})
    bench: Benchmark | None = dataclasses.field(default=None, init=False, repr=False, compare=False)  # --task

    def __post_init__(self):
        if self.task is None:
            raise ConfigError(f"--task is required; choose one of {', '.join(TASKS)}.")
        self.bench = get_benchmark(self.task)  # names the choices when a config file gives a wrong one
        if (self.samples is None) == (self.model is None):
            raise ConfigError("give exactly one of --samples FILE (score samples) or --model CKPT (generate, then "
                              "score).")
        if self.samples is not None and self.generation != GenerationSettings():
            given = next(s for s in settings.settings(GenerationSettings).values()
                         if getattr(self.generation, s.key) != s.default)
            raise ConfigError(f"{given.flag} only applies with --model (generation); drop it when scoring --samples.")
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


def _problems(n: int) -> str:
    return f"{n} problem" + "s" * (n != 1)


def format_report(bench: Benchmark, summary: dict) -> str:
    lines = [f"{summary['task']}: {summary['n_samples']} samples over {summary['n_tasks']} problems"
             + (f" ({summary['missing_tasks']} problems without samples)" if summary.get("missing_tasks") else "")]
    if summary.get("skipped"):  # no toolchain for the language: not scored (never 0%)
        return "\n".join([*lines, f"  {summary['skipped']}"])
    parts = bench.part_scores(summary)  # the + tasks: pass@k on the base tests, then on base + plus
    names = list(parts)
    rows = [(" + ".join(names[: j + 1]) + ": ", parts[p]) for j, p in enumerate(names)] or [("", bench.scores(summary))]
    width = max(len(label) for label, _ in rows)
    for label, figures in rows:
        lines.append("  " + label.ljust(width) + "  ".join(f"{k} {100 * v:.2f}" for k, v in figures.items()))
    for group, f in summary.get("groups", {}).items():  # DS-1000: pass@k per library
        said = [_problems(f["n_tasks"]) + "  " + "  ".join(f"{k} {100 * v:.2f}" for k, v in f.items()
                                                         if k.startswith("pass@"))] if f["n_tasks"] else []
        if "skipped" in f:
            said.append(f"{_problems(f['skipped']['n_tasks'])} skipped: {f['skipped']['reason']}")
        lines.append(f"  {bench.group_name} {group}: " + "; ".join(said))
    if summary.get("skipped_tasks"):
        lines.append(f"  skipped (not run here): {_problems(len(summary['skipped_tasks']))}")
    lines.append("  verdicts: " + ", ".join(f"{v} {c}" for v, c in summary["verdicts"].items() if c))
    if summary["failures"]:
        lines.append("  failures by kind:")
        for kind, f in summary["failures"].items():
            lines.append(f"    {f['count']:6d}  {kind}  (e.g. {f['example']})")
    lines.append("  isolation:")
    lines += [f"    {line}" for line in IsolationReport.from_json(summary["isolation"]).lines()]
    return "\n".join(lines)


def generate_once(cfg: Config, path: str) -> str:
    """OUT/samples.jsonl from the checkpoint for cfg.bench's problems in the dataset file `path`; a rerun with the
    same generation settings (a killed or repeated evaluation) reuses the finished file (its marker,
    generation.json, records them), and one killed mid-generation resumes from generate's journal."""
    from ..generate import benchmark_prompts, sample
    from ..resume import Marker

    out = os.path.join(cfg.out, "samples.jsonl")
    source = {"task": cfg.bench.name, "data": path}
    made_by = {"model": cfg.model, **source, "limit": cfg.generation.limit, **cfg.generation.identity()}
    marker = Marker(os.path.join(cfg.out, "generation.json"))
    if os.path.exists(out) and marker.matches(made_by):
        print(f"reusing {out} (generated with the same settings)", file=sys.stderr)
        return out
    marker.remove()  # the samples about to be written are not the ones it describes
    jobs, answer_field = benchmark_prompts(cfg.bench, path, cfg.generation)
    sample(cfg.model, jobs, answer_field, cfg.generation, out, cfg.progress, source)
    marker.write(made_by)
    return out


def run(cfg: Config) -> int:
    from ..outdir import make_out_dir
    from .jobs import SandboxConfig
    from .scoring import evaluate

    path = cfg.bench.locate(cfg.data)
    samples = cfg.samples
    if cfg.model:
        make_out_dir(cfg.out)
        samples = generate_once(cfg, path)
    config = SandboxConfig(memory=cfg.memory_mb << 20, allow_fork=cfg.allow_fork)
    summary = evaluate(cfg.bench, samples, cfg.out, data=path, postprocess=cfg.postprocess, ks=cfg.k,
                       workers=cfg.workers, timeout=cfg.timeout, config=config, progress=cfg.progress)
    print(format_report(cfg.bench, summary), file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items()
                      if k.startswith("pass@") or k in ("task", "n_samples", "skipped")}))
    return 0
