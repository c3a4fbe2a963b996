"""What the trainer's tests share: a small byte-level BPE tokenizer trained on the demo seed data (384 tokens, so the
Triton interpreter's loss kernel runs in well under a second), a random checkpoint folder of that vocabulary, packed
shards, and a runner for `wizardcoder train` in this process or under torchrun."""
import json
import os
import subprocess
import sys

from _util import REPO, repo_env

SEED_DATA = os.path.join(REPO, "wizardcoder", "assets", "demo_seed.jsonl")
VOCAB = 384


def small_tokenizer(folder: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = []
    for line in open(SEED_DATA, encoding="utf-8"):
        r = json.loads(line)
        texts += [str(v) for v in r.values()]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    os.makedirs(folder, exist_ok=True)
    tk.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>"}, f)
    return folder


def small_checkpoint(folder: str, tokenizer_dir: str, seed: int = 0, **shape) -> str:
    """A random GPTBigCode checkpoint of the small vocabulary, with its tokenizer."""
    import shutil

    from wizardcoder import StarCoder, StarCoderConfig

    cfg = StarCoderConfig(**{**dict(vocab_size=VOCAB, n_positions=256, n_embd=64, n_layer=2, n_head=4), **shape})
    StarCoder.from_config(cfg, seed=seed).save_pretrained(folder)
    for f in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, f), folder)
    return folder


def small_llama_checkpoint(folder: str, tokenizer_dir: str, seed: int = 0) -> str:
    """A random Llama checkpoint of the small vocabulary made by transformers (the independent reference): GQA 4:2,
    CodeLlama's rope theta 1e6, an odd SwiGLU width, an untied head, non-trivial RMSNorm gains; with its tokenizer."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=173, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    hf = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    hf.save_pretrained(folder)
    for f in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, f), folder)
    return folder


def pack(out: str, tokenizer_dir: str, seq_len: int = 128) -> str:
    from wizardcoder.data import pack_dataset

    pack_dataset(SEED_DATA, tokenizer_dir, seq_len, out, progress=False)
    return out


def train_here(**fields) -> dict:
    """`wizardcoder train` in this process (a world of one), its settings built as a config section is; returns the
    last metrics row."""
    from wizardcoder import settings
    from wizardcoder.train import Config, train

    return train(settings.build(Config, {"progress": False, "warmup_steps": 1, **fields}))


def torchrun(nproc: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc -m wizardcoder.train args` (gloo on CPU); fails the test on a non-zero exit."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    r = subprocess.run(cmd, env=repo_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def metrics(run: str, event: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    return [r for r in rows if r.get("event") == event]
