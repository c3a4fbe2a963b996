"""The trainer itself (`wizardcoder.train.train`: loader, FSDP2 world of one, mixed precision, fused AdamW, metrics)
against HF transformers' GPTBigCode training in the same run, on two workloads:

- recipe: evolved-instruction lengths (a log-normal fitted to the evolved data, StarCoder tokens with the Alpaca
  template: mean 332, median 245, p90 683). Peer: WizardCoder's recipe, batches of 16 samples right-padded to the
  batch's longest (33-39% real tokens on this data). Ours: the same samples packed best-fit-decreasing into packs of
  `seq` tokens, 4 packs per micro-batch. Figure: real (non-padding) tokens per second.
- dense: full sequences, 4 x `seq` tokens per step on both sides (no padding anywhere).

Both sides take an optimizer step per batch (fused AdamW on CUDA); HF runs pure low-precision parameters (its usual
bf16 recipe), ours bf16 compute over fp32 master weights. Tokens are random ids (no network, no tokenizer download).
Rows also give our MFU (useful model FLOPs, wizardcoder.flops) and, on CUDA, the plan's activation + transient
estimate against the measured peak less the static bytes.

GPU mode: the StarCoderBase-1B shape, seq 2048 (about 2 minutes on an H100). CPU (or --quick): the tiny preset,
seq 256, fp32, a proxy only.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile

import numpy as np
import torch

from bench.common import timeit


def sample_lengths(n: int, seed: int = 0, max_len: int = 2048) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(245), 0.78, n).astype(int), 16, max_len)


def write_synthetic_shards(folder: str, lengths: np.ndarray, vocab: int, seq_len: int, seed: int = 0) -> None:
    """Packed shards of random token ids with these document lengths (40% prompt, the rest response)."""
    from wizardcoder.data.pipeline import pack_samples
    from wizardcoder.data.shards import write_shards
    from wizardcoder.data.tokenize import TokenizedSamples
    from wizardcoder.outdir import atomic_dir

    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    samples = TokenizedSamples(tokens=rng.integers(0, vocab, int(offsets[-1])).astype(np.int32), offsets=offsets,
                               prompt_lens=(lengths * 0.4).astype(np.int32), source=np.arange(len(lengths)),
                               truncated=np.zeros(len(lengths), bool))
    packed = pack_samples(samples, seq_len, seed)
    with atomic_dir(folder, "pack", overwrite=True) as tmp:
        write_shards(tmp, packed.tokens, packed.loss_mask, packed.doc_offsets, packed.pack_offsets, packed.source,
                     {"seq_len": seq_len, "seed": seed, "pad_token_id": 0}, vocab)


def run_trainer(preset: str, shards: str, out: str, steps: int, micro_batch_packs: int) -> dict:
    """Our trainer for `steps` steps; medians over the steps after the first two (warm-up)."""
    from wizardcoder.train import TrainConfig, train

    train(TrainConfig(model=preset, data=shards, out=out, max_steps=steps, micro_batch_packs=micro_batch_packs,
                      lr=1e-5, warmup_steps=1, progress=False, save_final=False, seed=0))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    steps_ = [r for r in rows if "step" in r and "event" not in r][2:]
    memory = next(r for r in rows if r.get("event") == "memory")
    tok_s = statistics.median(r["tok_per_s"] for r in steps_)
    mfu = [r["mfu"] for r in steps_ if r["mfu"] is not None]
    return {"real_tok/s": tok_s, "mfu": statistics.median(mfu) if mfu else None, "memory": memory,
            "tflops_per_gpu": statistics.median(r["tflops_per_gpu"] for r in steps_)}


def hf_step_time(cfg, batches, device, dtype) -> float:
    """Seconds for one pass over `batches` (ids, mask, labels) with HF GPTBigCode: forward, backward, AdamW step."""
    from bench.bench_model import _hf_from_ours
    from wizardcoder import StarCoder

    hf = _hf_from_ours(StarCoder.from_config(cfg, seed=0)).to(device=device, dtype=dtype).train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, fused=device == "cuda")

    def epoch():
        for ids, mask, labels in batches:
            hf(ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    t = timeit(epoch, warmup=1, iters=2)
    del hf, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return t


def padded_batches(docs, batch: int, device):
    out = []
    for i in range(0, len(docs), batch):
        chunk = docs[i : i + batch]
        L = max(len(d) for d in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        mask = torch.zeros(len(chunk), L, dtype=torch.long)
        for r, d in enumerate(chunk):
            ids[r, : len(d)], mask[r, : len(d)] = d, 1
        out.append((ids.to(device), mask.to(device), ids.masked_fill(mask == 0, -100).to(device)))
    return out


def run(quick: bool = False) -> list[dict]:
    from wizardcoder import StarCoderConfig

    cuda = torch.cuda.is_available() and not quick
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    preset, seq, n_samples, n_dense = ("starcoderbase-1b", 2048, 128, 16) if cuda else ("tiny", 256, 96, 16)
    cfg = StarCoderConfig.from_preset(preset)
    lengths = sample_lengths(n_samples, max_len=seq)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, cfg.vocab_size, (int(n),), generator=g) for n in lengths]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, lens, hf_batch in (("recipe", lengths, 16), ("dense", np.full(n_dense, seq), 4)):
            shards = os.path.join(tmp, f"{case}-shards")
            write_synthetic_shards(shards, lens, cfg.vocab_size, seq)
            with open(os.path.join(shards, "metadata.json")) as f:
                n_packs = json.load(f)["num_packs"]
            case_docs = docs if case == "recipe" else [torch.randint(0, cfg.vocab_size, (seq,), generator=g) for _ in lens]
            batches = padded_batches(case_docs, hf_batch, device)
            # the same work on both sides: the same documents in the same number of optimizer steps (a step's fixed
            # cost, the optimizer over every parameter, is most of a tiny model's step on a CPU)
            packs_per_step = max(1, -(-n_packs // len(batches)))
            steps = max(4, 2 * len(batches))  # two passes, so the median skips the warm-up steps
            ours = run_trainer(preset, shards, os.path.join(tmp, case), steps, micro_batch_packs=packs_per_step)
            t = hf_step_time(cfg, batches, device, dtype)
            real = int(sum(len(d) for d in case_docs))
            hf_tok_s = real / t
            label = f"{preset}, seq {seq}, {'evolved lengths' if case == 'recipe' else f'dense 4x{seq}'}"
            padded = sum(b[0].numel() for b in batches)
            rows.append({"bench": "train", "case": label, "impl": f"HF transformers, {'padded batches of 16' if case == 'recipe' else 'bs4'}",
                         "real_tok/s": hf_tok_s, "real_fraction": real / padded, "speedup_vs_HF": 1.0})
            row = {"bench": "train", "case": label, "impl": "wizardcoder train (packed, FSDP2 world of one)",
                   "real_tok/s": ours["real_tok/s"], "mfu": ours["mfu"], "tflops_per_gpu": ours["tflops_per_gpu"],
                   "speedup_vs_HF": ours["real_tok/s"] / hf_tok_s}
            if cuda:
                m = ours["memory"]
                static = m["params"] + m["grads"] + m["optimizer"]
                row["plan_act+transient_GB"] = (m["plan"]["activations"] + m["plan"]["transient"]) / 1e9
                row["measured_peak-static_GB"] = (m["peak_bytes"] - static) / 1e9
            rows.append(row)
    return rows


if __name__ == "__main__":
    import sys

    from bench.common import print_table, save_rows

    r = run(quick="--quick" in sys.argv)
    print_table(r)
    save_rows(r, "train")
