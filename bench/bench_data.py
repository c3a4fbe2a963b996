"""Data stage benchmark: tokenizing, packing, packing efficiency and batch assembly, each against its peer.

- tokenize: our path (prompt and response through `Tokenizer.encode_batch`, the tokenizers library's parallel batch
  path) vs WizardCoder's `preprocess` (transformers fast tokenizer called once per string, on the joined text and on
  the prompt, as src/train_wizardcoder.py does), samples/s on the evolved data.
- pack: best-fit-decreasing with bisect buckets on 100k samples (lengths drawn from the evolved data's distribution)
  vs the plain O(n * packs) best-fit loop (on fewer samples: it is quadratic), samples/s; and the whole pack step
  (packing plus gathering tokens and loss masks into pack order) on 100k tokenized samples.
- efficiency: real tokens / tokens computed, packed at 2048 vs WizardCoder's right-padded batches of 16.
- batches: our loader's packed micro-batches vs the recipe's DataCollatorForSupervisedDataset (pad_sequence of 16
  samples), real tokens/s assembled on the host.
- validate: `shards.validate` (the trainer's check before its first step) vs the same checks written naively, and
  the floor of hashing every file once, MiB/s on synthetic shards.

Needs ../shared/data (or $WIZARDCODER_SHARED_DATA) for the evolved data and the StarCoder tokenizer.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import time

import numpy as np

from bench.common import REPO

SHARED = os.environ.get("WIZARDCODER_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
SEQ = 2048


def _tokenizer_dir(tmp: str) -> str:
    src = os.path.join(SHARED, "tokenizers", "starcoder")
    for f in os.listdir(src):
        if f.endswith(".gz"):
            with gzip.open(os.path.join(src, f), "rb") as fi, open(os.path.join(tmp, f[:-3]), "wb") as fo:
                shutil.copyfileobj(fi, fo)
        else:
            shutil.copy(os.path.join(src, f), tmp)
    return tmp


def _best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _recipe_preprocess(examples, hf_tokenizer):
    """WizardCoder's train_tokenize_function + preprocess, minus datasets.map (per-string tokenizer calls)."""
    from wizardcoder.data.templates import ALPACA

    sources = [ALPACA.prompt(e.instruction, e.input) for e in examples]
    texts = [s + e.output + hf_tokenizer.eos_token for s, e in zip(sources, examples)]
    out = []
    for s, t in zip(sources, texts):
        ids = hf_tokenizer(t, return_tensors="pt", padding="longest", max_length=SEQ, truncation=True).input_ids[0]
        n_src = hf_tokenizer(s, return_tensors="pt", padding="longest", max_length=SEQ, truncation=True).input_ids[0].numel()
        labels = ids.clone()
        labels[:n_src] = -100
        out.append((ids, labels))
    return out


def _naive_validate(folder: str, vocab_size: int) -> None:
    """The peer of `shards.validate`: the same checks written the obvious way, every array read into memory and
    hashed through a bytes copy (`np.load` + `tobytes`), then checked with numpy."""
    import hashlib
    import json

    from wizardcoder.data.shards import ARRAYS

    meta = json.load(open(os.path.join(folder, "metadata.json")))
    digest = hashlib.sha256()
    for s in meta["shards"]:
        a = {name: np.load(os.path.join(folder, f"{name}-{s['index']:05d}.npy")) for name in ARRAYS}
        for name in ARRAYS:
            digest.update(a[name].tobytes())
        docs, packs = a["doc_offsets"], a["pack_offsets"]
        assert docs[0] == 0 and docs[-1] == len(a["tokens"]) and (np.diff(docs) > 0).all()
        assert packs[0] == 0 and packs[-1] == len(docs) - 1 and (np.diff(packs) > 0).all()
        assert int(a["tokens"].max()) < vocab_size and int(a["loss_mask"].max()) <= 1
    assert digest.hexdigest() == meta["content_sha256"]


def _validate_rows(tmp: str, quick: bool) -> list[dict]:
    """shards.validate (memory-mapped, hashed in place, one numpy max per shard) against the naive peer and against
    the floor of hashing every file's bytes once (`hashlib.file_digest`), on synthetic shards of the evolved data's
    shape: 49,152-token vocabulary, documents of 100 to 409 tokens, five to a pack."""
    import hashlib

    from wizardcoder.data.shards import validate, write_shards
    from wizardcoder.outdir import atomic_dir

    rng = np.random.default_rng(0)
    n_tokens = 5_000_000 if quick else 40_000_000
    doc_lens = rng.integers(100, 410, n_tokens // 255)
    doc_offsets = np.concatenate([[0], np.cumsum(doc_lens)]).astype(np.int64)
    pack_offsets = np.unique(np.append(np.arange(0, len(doc_lens), 5), len(doc_lens)))  # 5 docs, <= 2,045 tokens
    tokens = rng.integers(0, 49152, int(doc_offsets[-1]), dtype=np.int64)
    folder = os.path.join(tmp, "validate")
    with atomic_dir(folder, "pack") as t:
        write_shards(t, tokens, (tokens & 1).astype(np.uint8), doc_offsets, pack_offsets,
                     np.arange(len(doc_lens)), {"seq_len": SEQ}, 49152, packs_per_shard=16384)
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    case = f"validate shards: {len(tokens) / 1e6:.0f}M tokens, {size / 2**20:.0f} MiB (page cache warm)"

    def floor():
        for f in sorted(os.listdir(folder)):
            with open(os.path.join(folder, f), "rb") as fh:
                hashlib.file_digest(fh, "sha256")

    t_ours = _best_of(lambda: validate(folder, vocab_size=49152, max_positions=8192), 3)
    t_naive = _best_of(lambda: _naive_validate(folder, 49152), 3)
    t_floor = _best_of(floor, 3)
    return [
        {"bench": "data", "case": case, "impl": "ours (shards.validate, mmap + in-place hash)",
         "MiB/s": size / 2**20 / t_ours, "seconds": t_ours, "ratio": 1.0},
        {"bench": "data", "case": case, "impl": "naive (np.load + tobytes + checks)",
         "MiB/s": size / 2**20 / t_naive, "seconds": t_naive, "ratio": t_ours / t_naive},
        {"bench": "data", "case": case, "impl": "floor: sha256 of every file's bytes",
         "MiB/s": size / 2**20 / t_floor, "seconds": t_floor, "ratio": t_ours / t_floor},
    ]


def run(quick: bool = False, only: str | None = None) -> list[dict]:
    from wizardcoder.data import (PackedLoader, best_fit_decreasing, best_fit_decreasing_reference, pack_dataset,
                                  packing_efficiency, padded_efficiency, read_examples, tokenize_examples)
    from wizardcoder.data.templates import ALPACA
    from wizardcoder.tokenizer import Tokenizer

    rows: list[dict] = []
    tmp = tempfile.mkdtemp(prefix="bench_data_")
    try:
        rows += _validate_rows(tmp, quick)
        if only == "validate":
            return rows
        tok_dir = _tokenizer_dir(tmp)
        tok = Tokenizer.from_pretrained(tok_dir)
        examples = read_examples(os.path.join(SHARED, "evol_instruct_code"))
        if quick:
            examples = examples[:1000]
        n = len(examples)
        threads = os.cpu_count()

        # --- tokenize
        samples = tokenize_examples(examples, tok, ALPACA, SEQ)
        n_tok = int(samples.lengths.sum())
        t_ours = _best_of(lambda: tokenize_examples(examples, tok, ALPACA, SEQ), 1 if quick else 3)
        case = f"tokenize {n} evolved samples ({threads} CPU threads)"
        rows.append({"bench": "data", "case": case, "impl": "ours (encode_batch, prompt and response)",
                     "samples/s": n / t_ours, "tokens/s": n_tok / t_ours, "ratio": 1.0})
        peer = None
        try:
            from transformers import PreTrainedTokenizerFast

            peer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tok_dir, "tokenizer.json"),
                                           eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        except Exception:  # transformers missing: no peer row
            pass
        if peer is not None:
            t_peer = _best_of(lambda: _recipe_preprocess(examples, peer), 1 if quick else 2)
            rows.append({"bench": "data", "case": case, "impl": "WizardCoder preprocess (transformers, per string)",
                         "samples/s": n / t_peer, "tokens/s": n_tok / t_peer, "ratio": t_ours / t_peer})

        # --- efficiency on the real data
        lengths = samples.lengths
        items, offsets = best_fit_decreasing(lengths, SEQ)
        eff = packing_efficiency(lengths, len(offsets) - 1, SEQ)
        pad = float(np.mean([padded_efficiency(lengths, 16, seed) for seed in range(5)]))
        rows.append({"bench": "data", "case": f"real-token share, {n} evolved samples, seq 2048", "impl": "ours (BFD packs)",
                     "efficiency": eff, "ratio": 1.0})
        rows.append({"bench": "data", "case": f"real-token share, {n} evolved samples, seq 2048", "impl": "WizardCoder (bs16 right-padded)",
                     "efficiency": pad, "ratio": pad / eff})

        # --- pack
        rng = np.random.default_rng(0)
        big = rng.choice(lengths, 20_000 if quick else 100_000)
        t_bfd = _best_of(lambda: best_fit_decreasing(big, SEQ), 3)
        rows.append({"bench": "data", "case": f"pack {len(big)} samples into {SEQ}", "impl": "ours (BFD, bisect buckets)",
                     "samples/s": len(big) / t_bfd, "seconds": t_bfd, "ratio": 1.0})
        # the whole pack step of `wizardcoder pack` (BFD + gathering tokens and masks into pack order) on 100k
        # tokenized samples drawn from the evolved data
        from wizardcoder.data import TokenizedSamples, pack_samples
        from wizardcoder.data.shards import gather_ranges

        pick = rng.integers(0, len(samples), len(big))
        many = TokenizedSamples(
            tokens=samples.tokens[gather_ranges(samples.offsets, pick)],
            offsets=np.concatenate([[0], np.cumsum(samples.lengths[pick])]).astype(np.int64),
            prompt_lens=samples.prompt_lens[pick], source=pick, truncated=samples.truncated[pick])
        t_step = _best_of(lambda: pack_samples(many, SEQ, 0), 3)
        rows.append({"bench": "data", "case": f"pack step: {len(big)} tokenized samples ({int(many.lengths.sum()) / 1e6:.0f}M tokens) into {SEQ}",
                     "impl": "ours (pack_samples: BFD + gather)", "samples/s": len(big) / t_step, "seconds": t_step,
                     "ratio": 1.0})
        small = big[: 2000 if quick else 5000]
        t_ref = _best_of(lambda: best_fit_decreasing_reference(small, SEQ), 1)
        t_bfd_small = _best_of(lambda: best_fit_decreasing(small, SEQ), 3)
        rows.append({"bench": "data", "case": f"pack {len(small)} samples into {SEQ}", "impl": "ours (BFD, bisect buckets)",
                     "samples/s": len(small) / t_bfd_small, "seconds": t_bfd_small, "ratio": 1.0})
        rows.append({"bench": "data", "case": f"pack {len(small)} samples into {SEQ}", "impl": "plain best-fit loop O(n*packs)",
                     "samples/s": len(small) / t_ref, "seconds": t_ref, "ratio": t_bfd_small / t_ref})

        # --- batches: our packed micro-batches vs the recipe's padded collator
        out = os.path.join(tmp, "shards")
        pack_dataset(os.path.join(SHARED, "evol_instruct_code"), tok, SEQ, out, progress=False)
        loader = PackedLoader(out, micro_batch_size=4, seed=0)
        steps = min(len(loader), 50 if quick else 200)

        def ours():
            it = iter(loader)
            real = 0
            for _ in range(steps):
                real += next(it)["num_real_tokens"]
            loader.set_epoch(0)
            return real

        real = ours()
        t = _best_of(ours, 3)
        rows.append({"bench": "data", "case": "assemble training batches", "impl": "ours (PackedLoader, 4 x 2048 packs)",
                     "real tok/s": real / t, "ratio": 1.0})
        import torch

        seqs = [torch.tensor(samples.tokens[samples.offsets[i]: samples.offsets[i + 1]], dtype=torch.long)
                for i in range(len(samples))]
        order = np.random.default_rng(0).permutation(len(seqs))
        nb = min(len(seqs) // 16, steps * 4)

        def recipe():
            real = 0
            for b in range(nb):
                batch = [seqs[i] for i in order[b * 16:(b + 1) * 16]]
                ids = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=0)
                labels = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=-100)
                _ = ids.ne(0)
                real += sum(len(x) for x in batch) + 0 * labels.shape[0]
            return real

        real_r = recipe()
        t_r = _best_of(recipe, 3)
        rows.append({"bench": "data", "case": "assemble training batches", "impl": "WizardCoder collator (pad_sequence, bs16)",
                     "real tok/s": real_r / t_r, "ratio": (real_r / t_r) / (real / t)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    import argparse

    from bench.common import print_table, save_rows, stamp

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("validate",), default=None, help="only the shard validation rows")
    a = ap.parse_args()
    print(stamp())
    rows = run(quick=a.quick, only=a.only)
    print_table(rows, ["case", "impl", "samples/s", "tokens/s", "efficiency", "real tok/s", "MiB/s", "seconds",
                       "ratio"])
    save_rows(rows, "data")
