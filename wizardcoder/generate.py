"""`wizardcoder generate`: sample completions for a benchmark's prompts (or a prompts file) into a samples file that
`wizardcoder evaluate --samples` reads as is.

    wizardcoder generate --model ckpt/ --task humaneval --num-samples 20 --temperature 0.2 --top-p 0.95 --out samples.jsonl
    torchrun --nproc_per_node 8 -m wizardcoder.generate --model ckpt/ --task mbpp --num-samples 200 --out s.jsonl

Every prompt's seed is derived from (--seed, task_id) alone and the engine's noise is counter-based, so the same seed
gives the same samples however the prompts are split over ranks, batched or resumed. Each finished prompt is appended
(and fsynced) to a journal beside the output (`OUT.journal/part-RANK.jsonl`, its settings in a `resume.Marker`,
`settings.json`); a killed run started again with the same settings skips the prompts the journal holds (other
settings: one sentence naming what changed), and rank 0 merges everything into OUT atomically at the end (then
removes the journal). Under torchrun the remaining prompts are split over ranks (one GPU each, or CPU processes with
gloo); ranks that do not share a file system still work, since the merge gathers records over the process group.

`Config` is the verb's settings; its `generation` group (`GenerationSettings`: prompt style, samples per prompt,
sampler, length, seed, dtype, device, slots) is also `wizardcoder evaluate --model`'s. `sample(...)` is the part that
both call with prompts already resolved (evaluate hands it the Benchmark and the dataset file it located).
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Literal

from .benchmarks import TASKS, Benchmark, get_benchmark
from .errors import ConfigError
from .io import JsonlAppender, read_jsonl, write_jsonl
from .profiling import Profile, ProfileConfig
from .resume import Marker

JOURNAL_VERSION = 2
MAX_SAMPLES = 10_000  # per prompt; pass@k as published needs at most 200
MAX_BATCH_SLOTS = 16_384  # beyond this the per-step host work dominates whatever the device (and memory runs out first)


@dataclass
class GenerationSettings(ProfileConfig):  # --profile: a trace of engine steps in profile/ beside --out
    """How samples are drawn: `wizardcoder generate`'s settings and `wizardcoder evaluate --model`'s, one group."""

    limit: int | None = None  # only the first K problems
    prompt_style: Literal["wizardcoder", "plain"] = "wizardcoder"  # wizardcoder: Alpaca prompt, answers -> response
    n: int = field(default=1, metadata={"flags": ("--num-samples", "--n"), "help": (
        "samples per prompt (--n is an alias; torchrun's own parser refuses --n as ambiguous, --num-samples works "
        "for one process and under torchrun alike)")})
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling mass (1: off)
    top_k: int = 0  # keep the k most likely tokens (0: off)
    max_new_tokens: int = 512  # generated tokens per sample at most
    seed: int = 0  # random seed; each prompt's seed is derived from it and the task_id
    dtype: str = "auto"  # model dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16
    device: str | None = None  # cuda, cpu (default: the local rank's GPU when there is one)
    batch_slots: int = 64  # samples decoded together (the engine's slots)
    deterministic: bool = False  # batch-invariant decoding: the same samples whatever the ranks, --batch-slots or resume (slower)

    def __post_init__(self):
        for flag, value, lo, hi in (("--num-samples", self.n, 1, MAX_SAMPLES), ("--top-k", self.top_k, 0, None),
                                    ("--max-new-tokens", self.max_new_tokens, 1, None),
                                    ("--batch-slots", self.batch_slots, 1, MAX_BATCH_SLOTS)):
            if value < lo or (hi is not None and value > hi):
                raise ConfigError(f"{flag} must be {f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'}, got {value}.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}.")
        if not (self.temperature >= 0 and self.temperature != float("inf")):
            raise ConfigError(f"--temperature must be a finite number >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}.")
        self.check_profile()

    def identity(self) -> dict:
        """What each prompt's samples depend on (not where, how fast or for how many prompts they are made): a resumed
        run must match it."""
        keep = ("prompt_style", "n", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "dtype",
                "deterministic")
        return {k: getattr(self, k) for k in keep}


@dataclass
class Config:
    model: str = ""  # checkpoint folder, hub id, or a preset name (random weights, bundled tokenizer; smoke runs)
    task: Literal[TASKS] | None = None  # benchmark whose prompts to sample (WizardCoder's prompt and stop words)
    data: str | None = None  # the benchmark's dataset file (default: its package, cache or the hub)
    prompts: str | None = None  # instead of --task: JSONL with task_id and prompt per line (optional stop list)
    generation: GenerationSettings = field(default_factory=GenerationSettings, metadata={"title": "generation"})
    progress: bool = True  # progress bar with samples/s and tokens/s
    out: str = "samples.jsonl"  # the samples file (task_id, response or completion, finish_reason)
    bench: Benchmark | None = field(default=None, init=False, repr=False, compare=False)  # --task, resolved once

    def __post_init__(self):
        if not self.model:
            raise ConfigError("--model is required: a checkpoint folder, hub id or preset name.")
        if (self.task is None) == (self.prompts is None):
            raise ConfigError("give exactly one of --task (a benchmark) or --prompts (a JSONL file of prompts).")
        if self.task is not None:
            self.bench = get_benchmark(self.task)
        if os.path.isdir(self.out):
            raise ConfigError(f"--out {self.out} is a folder; give the samples file's path (e.g. {self.out}/samples.jsonl).")


@dataclass
class Prompt:
    """One prompt to sample."""

    task_id: str
    prompt: str
    stop: list[str] = field(default_factory=list)


def prompt_seed(seed: int, task_id: str) -> int:
    """The seed of one prompt: a function of (--seed, task_id) alone, so no split of the work changes it."""
    from .engine.params import derived_seed

    return derived_seed(seed, task_id)


def benchmark_prompts(bench: Benchmark, path: str, g: GenerationSettings) -> tuple[list[Prompt], str]:
    """The benchmark's prompts in dataset order (its dataset file at `path`), and the samples field answers go in."""
    problems = list(bench.read(path).values())[: g.limit]
    stop = bench.stop_words(g.prompt_style)
    jobs = [Prompt(p.task_id, bench.prompt(p, g.prompt_style), list(stop)) for p in problems]
    return jobs, bench.answer_field(g.prompt_style)


def file_prompts(path: str, g: GenerationSettings) -> tuple[list[Prompt], str]:
    """The prompts of a --prompts file in order, and the samples field answers go in."""
    jobs, seen = [], set()
    for i, rec in enumerate(read_jsonl(path), 1):
        tid, prompt, stop = rec.get("task_id"), rec.get("prompt"), rec.get("stop", [])
        if not isinstance(tid, (str, int)) or not isinstance(prompt, str) or not prompt:
            raise ConfigError(f"--prompts {path}: record {i} needs a task_id and a non-empty string prompt.")
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ConfigError(f"--prompts {path}: record {i} ({tid}): stop must be a list of non-empty strings.")
        if str(tid) in seen:
            raise ConfigError(f"--prompts {path}: record {i}: task_id {tid!r} appears twice; ids must be unique.")
        seen.add(str(tid))
        jobs.append(Prompt(str(tid), prompt, stop))
    if not jobs:
        raise ConfigError(f"--prompts {path}: no prompts in the file.")
    return jobs[: g.limit], "response" if g.prompt_style == "wizardcoder" else "completion"


# ---------------------------------------------------------------------------------------------------- journal
def _read_journal(folder: str) -> dict[str, dict]:
    """{task_id: record} from every part file (a torn last line, left by a kill, is skipped)."""
    done: dict[str, dict] = {}
    if not os.path.isdir(folder):
        return done
    for name in sorted(os.listdir(folder)):
        if name.startswith("part-") and name.endswith(".jsonl"):
            for rec in read_jsonl(os.path.join(folder, name), skip_bad=True):
                done.setdefault(rec["task_id"], rec)
    return done


def _check_journal(folder: str, settings: dict) -> None:
    """Resume only a journal made with `settings` (its marker, settings.json); start one when there is none."""
    marker = Marker(os.path.join(folder, "settings.json"))
    if os.path.exists(marker.path) and not marker.exists():
        raise ConfigError(f"{marker.path} cannot be read; delete {folder} to start over.")
    if marker.exists():
        marker.check(settings, folder, "rerun with those settings to resume it, or delete the folder to start over")
    else:
        os.makedirs(folder, exist_ok=True)
        marker.write(settings, state="running")


# ----------------------------------------------------------------------------------------------------- the run
def generate_samples(cfg: Config) -> str:
    """Sample every prompt of cfg.task (or cfg.prompts) into cfg.out; returns the path written."""
    if cfg.bench is not None:
        path = cfg.bench.locate(cfg.data)
        jobs, answer_field = benchmark_prompts(cfg.bench, path, cfg.generation)
        source = {"task": cfg.bench.name, "data": path}
    else:
        jobs, answer_field = file_prompts(cfg.prompts, cfg.generation)
        source = {"prompts": cfg.prompts}
    return sample(cfg.model, jobs, answer_field, cfg.generation, cfg.out, cfg.progress, source)


def sample(model_name: str, jobs: list[Prompt], answer_field: str, g: GenerationSettings, out: str, progress: bool,
           source: dict) -> str:
    """Sample g.n completions for every job with the checkpoint `model_name` and write `out` (one line per sample,
    prompts in order); returns the path written. `source` names where the prompts came from (for the journal).
    Under torchrun every rank calls this; rank 0 writes the file."""
    import torch.distributed as dist

    from .engine import Engine, SamplingParams, load
    from .engine.params import check_context
    from .parallel import barrier, init_distributed

    d = init_distributed(g.device)
    device = g.device or d.device
    journal = out + ".journal"
    settings = {"version": JOURNAL_VERSION, "model": model_name, **source, **g.identity()}
    if d.is_main:
        _check_journal(journal, settings)
    barrier(d)
    if not d.is_main:
        _check_journal(journal, settings)  # a rank on another machine (no shared file system) keeps its own
    done = _read_journal(journal)
    done_ids = set(done)
    if d.enabled:  # every rank must agree on what is left, even when each sees only its own journal
        everyone: list = [None] * d.world_size
        dist.all_gather_object(everyone, sorted(done_ids))
        done_ids = set().union(*map(set, everyone))
    todo = [j for j in jobs if j.task_id not in done_ids]
    new: dict[str, dict] = {}
    if todo:
        model, tok = load(model_name, dtype=g.dtype, device=device, verb="sample from")
        # Every rank checks every remaining prompt, so a bad one stops all ranks alike (none waits forever).
        ids = tok.encode_prompts([j.prompt for j in todo])  # BOS first where the release adds one
        longest = max(range(len(todo)), key=lambda i: len(ids[i]))
        max_len = len(ids[longest]) + g.max_new_tokens
        check_context(len(ids[longest]), g.max_new_tokens, model.config.n_positions,
                      f"prompt {todo[longest].task_id}")
        mine = todo[d.rank :: d.world_size]
        params = [SamplingParams(n=g.n, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                                 max_new_tokens=g.max_new_tokens, stop=j.stop, seed=prompt_seed(g.seed, j.task_id))
                  for j in mine]
        if g.deterministic:  # the cache width must not depend on which prompts are left (resume) either
            max_len = model.config.n_positions
        engine = Engine(model, tok, max_slots=g.batch_slots, max_len=max_len, deterministic=g.deterministic)
        prof = Profile.from_config(g, os.path.join(os.path.dirname(out) or ".", "profile"), d.rank, device)
        engine.step = prof.around_steps(engine.step)  # --profile: a window of engine steps
        with JsonlAppender(os.path.join(journal, f"part-{d.rank}.jsonl"), fsync=True) as log:
            def finished(i, completions):
                rec = {"task_id": mine[i].task_id, "texts": [c.text for c in completions],
                       "finish_reasons": [c.finish_reason for c in completions],
                       "tokens": [len(c.token_ids) for c in completions]}
                log.write(rec)
                new[rec["task_id"]] = rec

            engine.generate(ids[d.rank :: d.world_size], params, progress=progress and d.is_main,
                            on_prompt_done=finished)
        prof.stop()

    records = {**done, **new}
    if d.enabled:  # rank 0 collects every rank's records (from its journal and from this run)
        gathered: list = [None] * d.world_size
        dist.gather_object(records, gathered if d.is_main else None, dst=0)
        if d.is_main:
            for part in gathered:
                for tid, rec in part.items():
                    records.setdefault(tid, rec)
    if d.is_main:
        missing = [j.task_id for j in jobs if j.task_id not in records]
        if missing:
            raise RuntimeError(f"no samples for {len(missing)} prompts (e.g. {missing[0]}); the journal in "
                               f"{journal} is kept, run again to finish.")
        write_jsonl(out, ({"task_id": j.task_id, answer_field: text, "finish_reason": reason,
                           "completion_tokens": n_tok}
                          for j in jobs
                          for text, reason, n_tok in zip(records[j.task_id]["texts"],
                                                         records[j.task_id]["finish_reasons"],
                                                         records[j.task_id]["tokens"])))
    barrier(d)
    shutil.rmtree(journal, ignore_errors=True)  # every rank: nodes without a shared file system each hold one
    if d.enabled and dist.is_initialized() and "RANK" in os.environ:
        dist.destroy_process_group()
    return out


def run(cfg: Config) -> int:
    path = generate_samples(cfg)
    if "RANK" not in os.environ or os.environ.get("RANK") == "0":
        print(path)
    return 0


if __name__ == "__main__":  # torchrun --nproc_per_node N -m wizardcoder.generate ...
    from .cli import main

    sys.exit(main(["generate", *sys.argv[1:]]))
