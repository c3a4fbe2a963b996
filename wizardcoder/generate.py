"""`wizardcoder generate`: sample completions for a benchmark's prompts (or a prompts file) into a samples file that
`wizardcoder evaluate --samples` reads as is.

    wizardcoder generate --model ckpt/ --task humaneval --num-samples 20 --temperature 0.2 --top-p 0.95 --out samples.jsonl
    torchrun --nproc_per_node 8 -m wizardcoder.generate --model ckpt/ --task mbpp --num-samples 200 --out s.jsonl

Every prompt's seed is derived from (--seed, task_id) alone and the engine's noise is counter-based, so the same seed
gives the same samples however the prompts are split over ranks, batched or resumed. Each finished prompt is appended
(and fsynced) to a journal beside the output (`OUT.journal/part-RANK.jsonl`); a killed run started again with the
same settings skips the prompts the journal holds, and rank 0 merges everything into OUT atomically at the end (then
removes the journal). Under torchrun the remaining prompts are split over ranks (one GPU each, or CPU processes with
gloo); ranks that do not share a file system still work, since the merge gathers records over the process group.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Literal

from .cli_args import add_dataclass_arguments, dataclass_from_args
from .errors import ConfigError
from .io import JsonlAppender, atomic_write_json, read_json, read_jsonl, write_jsonl
from .profiling import Profile, ProfileConfig

TASK_NAMES = Literal["humaneval", "humaneval+", "mbpp", "mbpp+", "ds1000"]
JOURNAL_VERSION = 1
MAX_SAMPLES = 10_000  # per prompt; pass@k as published needs at most 200
MAX_BATCH_SLOTS = 16_384  # beyond this the per-step host work dominates whatever the device (and memory runs out first)


@dataclass
class GenerateConfig(ProfileConfig):  # --profile: a trace of engine steps in profile/ beside --out
    model: str = ""  # checkpoint folder, hub id, or a preset name (random weights, bundled tokenizer; smoke runs)
    task: TASK_NAMES | None = None  # benchmark whose prompts to sample (WizardCoder's prompt and stop words)
    data: str | None = None  # the benchmark's dataset file (default: its package, cache or the hub)
    limit: int | None = None  # only the first K problems
    prompts: str | None = None  # instead of --task: JSONL with task_id and prompt per line (optional stop list)
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
    progress: bool = True  # progress bar with samples/s and tokens/s
    out: str = "samples.jsonl"  # the samples file (task_id, response or completion, finish_reason)

    def __post_init__(self):
        if not self.model:
            raise ConfigError("--model is required: a checkpoint folder, hub id or preset name.")
        if (self.task is None) == (self.prompts is None):
            raise ConfigError("give exactly one of --task (a benchmark) or --prompts (a JSONL file of prompts).")
        for name, lo, hi in (("num_samples", 1, MAX_SAMPLES), ("top_k", 0, None), ("max_new_tokens", 1, None),
                             ("batch_slots", 1, MAX_BATCH_SLOTS)):
            value = getattr(self, "n" if name == "num_samples" else name)
            if value < lo or (hi is not None and value > hi):
                bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ConfigError(f"--{name.replace('_', '-')} must be {bound}, got {value}.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}.")
        if not (self.temperature >= 0 and self.temperature != float("inf")):
            raise ConfigError(f"--temperature must be a finite number >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}.")
        self.check_profile()
        if os.path.isdir(self.out):
            raise ConfigError(f"--out {self.out} is a folder; give the samples file's path (e.g. {self.out}/samples.jsonl).")


@dataclass
class Job:
    """One prompt to sample."""

    task_id: str
    prompt: str
    stop: list[str] = field(default_factory=list)


def prompt_seed(seed: int, task_id: str) -> int:
    """The seed of one prompt: a function of (--seed, task_id) alone, so no split of the work changes it."""
    from .engine.params import derived_seed

    return derived_seed(seed, task_id)


def load_jobs(cfg: GenerateConfig) -> tuple[list[Job], str]:
    """The prompts in order, and the samples field their answers go in."""
    if cfg.task is not None:
        from .eval.benchmarks import get_benchmark

        bench = get_benchmark(cfg.task)
        if cfg.data and not os.path.exists(cfg.data):
            raise ConfigError(f"--data {cfg.data}: no such file.")
        problems = list(bench.load(cfg.data).values())[: cfg.limit]
        stop = bench.stop_words(cfg.prompt_style)
        jobs = [Job(p.task_id, bench.prompt(p, cfg.prompt_style), list(stop)) for p in problems]
        return jobs, bench.answer_field(cfg.prompt_style)
    jobs, seen = [], set()
    for i, rec in enumerate(read_jsonl(cfg.prompts), 1):
        tid, prompt, stop = rec.get("task_id"), rec.get("prompt"), rec.get("stop", [])
        if not isinstance(tid, (str, int)) or not isinstance(prompt, str) or not prompt:
            raise ConfigError(f"--prompts {cfg.prompts}: record {i} needs a task_id and a non-empty string prompt.")
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ConfigError(f"--prompts {cfg.prompts}: record {i} ({tid}): stop must be a list of non-empty strings.")
        if str(tid) in seen:
            raise ConfigError(f"--prompts {cfg.prompts}: record {i}: task_id {tid!r} appears twice; ids must be unique.")
        seen.add(str(tid))
        jobs.append(Job(str(tid), prompt, stop))
    if not jobs:
        raise ConfigError(f"--prompts {cfg.prompts}: no prompts in the file.")
    return jobs[: cfg.limit], "response" if cfg.prompt_style == "wizardcoder" else "completion"


# ---------------------------------------------------------------------------------------------------- journal
def _settings(cfg: GenerateConfig) -> dict:
    """What the samples depend on: a resumed run must match it."""
    keep = ("model", "task", "data", "prompts", "prompt_style", "n", "temperature", "top_p", "top_k",
            "max_new_tokens", "seed", "dtype", "deterministic")
    return {"version": JOURNAL_VERSION, **{k: getattr(cfg, k) for k in keep}}


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
    path = os.path.join(folder, "settings.json")
    if os.path.exists(path):
        old = read_json(path, "the journal's settings", ConfigError, "delete the folder to start over")
        if old != settings:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
            raise ConfigError(f"{folder} holds a run with other settings ({diff}); rerun with those settings to "
                              "resume it, or delete the folder to start over.")
    else:
        os.makedirs(folder, exist_ok=True)
        atomic_write_json(path, settings)


# ----------------------------------------------------------------------------------------------------- the run
def generate_samples(cfg: GenerateConfig) -> str:
    """Sample cfg.n completions for every prompt and write cfg.out (one line per sample, prompts in order);
    returns the path written. Under torchrun every rank calls this; rank 0 writes the file."""
    import torch.distributed as dist

    from .engine import Engine, SamplingParams, load
    from .engine.params import check_context
    from .parallel import barrier, init_distributed

    jobs, answer_field = load_jobs(cfg)
    d = init_distributed(cfg.device)
    device = cfg.device or d.device
    journal = cfg.out + ".journal"
    settings = _settings(cfg)
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
        model, tok = load(cfg.model, dtype=cfg.dtype, device=device, verb="sample from")
        # Every rank checks every remaining prompt, so a bad one stops all ranks alike (none waits forever).
        ids = [tok.encode(j.prompt) for j in todo]
        longest = max(range(len(todo)), key=lambda i: len(ids[i]))
        max_len = len(ids[longest]) + cfg.max_new_tokens
        check_context(len(ids[longest]), cfg.max_new_tokens, model.config.n_positions, f"prompt {todo[longest].task_id}")
        mine = todo[d.rank :: d.world_size]
        params = [SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                 max_new_tokens=cfg.max_new_tokens, stop=j.stop, seed=prompt_seed(cfg.seed, j.task_id))
                  for j in mine]
        if cfg.deterministic:  # the cache width must not depend on which prompts are left (resume) either
            max_len = model.config.n_positions
        engine = Engine(model, tok, max_slots=cfg.batch_slots, max_len=max_len, deterministic=cfg.deterministic)
        prof = Profile.from_config(cfg, os.path.join(os.path.dirname(cfg.out) or ".", "profile"), d.rank, device)
        engine.step = prof.around_steps(engine.step)  # --profile: a window of engine steps
        with JsonlAppender(os.path.join(journal, f"part-{d.rank}.jsonl"), fsync=True) as log:
            def finished(i, completions):
                rec = {"task_id": mine[i].task_id, "texts": [c.text for c in completions],
                       "finish_reasons": [c.finish_reason for c in completions],
                       "tokens": [len(c.token_ids) for c in completions]}
                log.write(rec)
                new[rec["task_id"]] = rec

            engine.generate(ids[d.rank :: d.world_size], params, progress=cfg.progress and d.is_main,
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
        write_jsonl(cfg.out, ({"task_id": j.task_id, answer_field: text, "finish_reason": reason,
                               "completion_tokens": n_tok}
                              for j in jobs
                              for text, reason, n_tok in zip(records[j.task_id]["texts"],
                                                             records[j.task_id]["finish_reasons"],
                                                             records[j.task_id]["tokens"])))
    barrier(d)
    shutil.rmtree(journal, ignore_errors=True)  # every rank: nodes without a shared file system each hold one
    if d.enabled and dist.is_initialized() and "RANK" in os.environ:
        dist.destroy_process_group()
    return cfg.out


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(p, GenerateConfig)


def run(args: argparse.Namespace) -> int:
    cfg = dataclass_from_args(GenerateConfig, args)
    path = generate_samples(cfg)
    if "RANK" not in os.environ or os.environ.get("RANK") == "0":
        print(path)
    return 0


if __name__ == "__main__":  # torchrun --nproc_per_node N -m wizardcoder.generate ...
    from .cli import main

    sys.exit(main(["generate", *sys.argv[1:]]))
