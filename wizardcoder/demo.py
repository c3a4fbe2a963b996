"""`wizardcoder demo`: the pipeline on embedded defaults, on a CPU, in about a minute.

Stages (each prints what it did and where its files are):
1. tokenizer: the bundled WizardCoder/StarCoder tokenizer;
2. model: the `tiny` StarCoder preset, randomly initialised (or `--model CKPT`), saved as an HF checkpoint and
   reloaded through the same path users load real checkpoints with;
3. sample: batched sampling from that checkpoint on WizardCoder's instruction prompt.
"""
from __future__ import annotations

import argparse
import os
import time

DEMO_INSTRUCTIONS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "Create a Python script for this problem:\ndef is_palindrome(s: str) -> bool:\n    \"\"\"Return True if s reads the same backwards.\"\"\"",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes (default demo_out)")
    p.add_argument("--model", default=None, help="a checkpoint folder or hub id instead of the random tiny model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=48)


def run(args: argparse.Namespace) -> int:
    import torch

    from . import StarCoder, Tokenizer
    from .sampling import SamplingParams, generate

    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    tok = Tokenizer.bundled() if args.model is None else Tokenizer.from_pretrained(args.model)
    print(f"[1/3] tokenizer: {tok}")

    ckpt = os.path.join(args.out, "model")
    if args.model is None:
        model = StarCoder.from_preset("tiny", seed=args.seed, vocab_size=tok.vocab_size)
        model.save_pretrained(ckpt)
    else:
        ckpt = args.model
    model = StarCoder.from_pretrained(ckpt, dtype=torch.float32).eval()
    cfg = model.config
    print(f"[2/3] model: {cfg.n_layer} layers, d={cfg.n_embd}, {cfg.n_head} heads "
          f"({'MQA' if cfg.multi_query else 'MHA'}), {cfg.num_params():,} parameters, checkpoint {ckpt}")

    from .data import ALPACA

    prompts = [ALPACA.prompt(i) for i in DEMO_INSTRUCTIONS]
    params = SamplingParams(n=2, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=args.seed)
    t1 = time.time()
    outs = generate(model, tok, prompts, params)
    dt = time.time() - t1
    n_tok = sum(len(tok.encode(c)) for o in outs for c in o)
    print(f"[3/3] sampled {sum(map(len, outs))} completions, {n_tok} tokens in {dt:.2f}s ({n_tok / max(dt, 1e-9):.0f} tok/s)")
    for inst, o in zip(DEMO_INSTRUCTIONS, outs):
        print(f"  instruction: {inst.splitlines()[0]}")
        for c in o:
            print(f"    -> {c[:80]!r}")
    print(f"done in {time.time() - t0:.1f}s; files under {args.out}/")
    return 0
