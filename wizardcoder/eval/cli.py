"""`wizardcoder evaluate`: score samples (or generate them with a checkpoint first) with pass@k.

    wizardcoder evaluate --task humaneval --samples samples.jsonl --out runs/he
    wizardcoder evaluate --task mbpp+ --samples s.jsonl --data MbppPlus.jsonl.gz --out runs/mbppp --k 1 10
    wizardcoder evaluate --task humaneval --model ckpt/ --n 20 --temperature 0.2 --top-p 0.95 --out runs/he20
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import UserError
from ..io import write_jsonl
from .postprocessing import STYLES as POSTPROCESS
from .prompts import STYLES as PROMPT_STYLES
from .tasks import TASKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=TASKS, help="benchmark to score on")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", help="JSONL: task_id and one of completion / solution / response per line")
    src.add_argument("--model", help="checkpoint folder or hub id: generate samples first, then score them")
    p.add_argument("--data", help="local dataset file in its upstream format (default: package, release or hub)")
    p.add_argument("--out", required=True, help="output folder: results.jsonl, summary.json (and samples.jsonl)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100], help="pass@k to report (those <= n)")
    p.add_argument("--postprocess", choices=POSTPROCESS, default="wizardcoder",
                   help="how `response` samples become code (default: WizardCoder's rules)")
    p.add_argument("--workers", type=int, default=None, help="sandbox workers (default: one per CPU core)")
    p.add_argument("--timeout", type=float, default=None,
                   help="wall seconds per program (default 3 HumanEval, 10 MBPP, 60 DS-1000; + tasks: evalplus's)")
    p.add_argument("--memory-mb", type=int, default=4096, help="address-space cap per program (MiB)")
    p.add_argument("--allow-fork", action="store_true", help="let programs fork (bounded by RLIMIT_NPROC only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("generation (with --model)")
    g.add_argument("--n", type=int, default=1, help="samples per problem")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--prompt-style", choices=PROMPT_STYLES, default="wizardcoder",
                   help="wizardcoder: Alpaca instruction prompt (answers post-processed); plain: code completion")
    g.add_argument("--instructions", help="MBPP+ instruction prompts (WizardCoder's mbppplus.json) to use verbatim")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", default="bfloat16", help="model dtype for generation")
    g.add_argument("--device", default=None, help="cuda, cpu ... (default: cuda when available)")
    g.add_argument("--limit", type=int, default=None, help="only the first N problems (smoke runs)")


def generate_samples(args: argparse.Namespace, path: str) -> str:
    """Generate `args.n` answers per problem with the checkpoint; write OUT/samples.jsonl; return its path."""
    import torch

    from .. import StarCoder, Tokenizer
    from ..sampling import SamplingParams, generate
    from .prompts import build_prompt, stop_sequences
    from .tasks import load_problems, read_json_map

    problems = list(load_problems(args.task, path).values())[: args.limit]
    instructions = read_json_map(args.instructions) if args.instructions else None
    prompts = [build_prompt(args.task, p, args.prompt_style, instructions) for p in problems]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dtype = getattr(torch, args.dtype)
    except AttributeError:
        raise UserError(f"--dtype {args.dtype!r} is not a torch dtype; use bfloat16, float16 or float32.") from None
    model = StarCoder.from_pretrained(args.model, dtype=dtype, device=device)
    tok = Tokenizer.from_pretrained(args.model)
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, stop=stop_sequences(args.task, args.prompt_style),
                            seed=args.seed)
    outs = generate(model, tok, prompts, params, batch_size=args.batch_size, progress=not args.no_progress)
    field = "response" if args.prompt_style == "wizardcoder" else "completion"
    rows = [{"task_id": p.task_id, field: text} for p, texts in zip(problems, outs) for text in texts]
    samples = os.path.join(args.out, "samples.jsonl")
    write_jsonl(samples, rows)
    return samples


def format_report(summary: dict) -> str:
    lines = [f"{summary['task']}: {summary['n_samples']} samples over {summary['n_tasks']} problems"
             + (f" ({summary['missing_tasks']} problems without samples)" if summary.get("missing_tasks") else "")]
    ks = [k for k in summary if k.startswith("pass@")]
    if "base" in summary:
        lines.append("  base tests:  " + "  ".join(f"{k} {100 * v:.2f}" for k, v in summary["base"].items()))
        lines.append("  base + plus: " + "  ".join(f"{k} {100 * v:.2f}" for k, v in summary["plus"].items()))
    else:
        lines.append("  " + "  ".join(f"{k} {100 * summary[k]:.2f}" for k in ks))
    lines.append("  verdicts: " + ", ".join(f"{v} {c}" for v, c in summary["verdicts"].items() if c))
    if summary["failures"]:
        lines.append("  failures by kind:")
        for kind, f in summary["failures"].items():
            lines.append(f"    {f['count']:6d}  {kind}  (e.g. {f['example']})")
    lines.append("  isolation:")
    for layer, what in summary["isolation"].items():
        lines.append(f"    {layer}: {what}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .scoring import evaluate
    from .sandbox import SandboxConfig
    from .tasks import default_data_path

    path = args.data or default_data_path(args.task)
    if args.data and not os.path.exists(args.data):
        raise UserError(f"--data {args.data}: no such file.")
    samples = args.samples
    if args.model:
        os.makedirs(args.out, exist_ok=True)
        samples = generate_samples(args, path)
    elif not os.path.exists(samples):
        raise UserError(f"--samples {samples}: no such file.")
    config = SandboxConfig(memory=args.memory_mb << 20, allow_fork=args.allow_fork)
    summary = evaluate(args.task, samples, args.out, data=path, postprocess=args.postprocess, ks=args.k,
                       workers=args.workers, timeout=args.timeout, config=config, progress=not args.no_progress)
    print(format_report(summary), file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("pass@") or k in ("task", "n_samples")}))
    return 0
