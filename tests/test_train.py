"""The trainer: loss goes down, gradient accumulation and FSDP2 over 2 ranks (torchrun, gloo, CPU) give the same
update as one big batch in one process, a killed run resumes to the same weights, and the export loads in
transformers."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from _util import REPO
SEED_DATA = os.path.join(REPO, "wizardcoder", "assets", "demo_seed.jsonl")
TOKENIZER = os.path.join(REPO, "wizardcoder", "assets", "tokenizer")
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
SMALL = {"model": "tiny", "lr": 3e-3, "warmup_steps": 1, "seed": 0, "progress": False}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from wizardcoder.data import pack_dataset

    out = str(tmp_path_factory.mktemp("train") / "shards")
    pack_dataset(SEED_DATA, TOKENIZER, 128, out, progress=False)
    return out


def _train(tmp, shards, name, nproc=1, **overrides):
    out = os.path.join(tmp, name)
    cfg_path = os.path.join(tmp, f"{name}.json")
    with open(cfg_path, "w") as f:
        json.dump({"train": {**SMALL, "data": shards, "out": out, **overrides}}, f)
    if nproc == 1:
        cmd = [sys.executable, "-m", "wizardcoder.train", "--config", cfg_path]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "wizardcoder.train", "--config", cfg_path]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _weights(run):
    """Final weights, less the key bias: attention scores are invariant to it (it adds q.b_k to a whole softmax row),
    so its gradient is exactly zero and Adam turns mere round-off there into updates of arbitrary sign."""
    from safetensors.torch import load_file

    from wizardcoder import StarCoderConfig

    w = load_file(os.path.join(run, "final", "model.safetensors"))
    cfg = StarCoderConfig.from_json_file(os.path.join(run, "final", "config.json"))
    for k in [k for k in w if k.endswith("attn.c_attn.bias")]:
        key = slice(cfg.n_embd, cfg.n_embd + cfg.n_kv_head * cfg.head_dim)
        w[k] = torch.cat([w[k][: key.start], w[k][key.stop :]])
    return w


def _metrics(run, event=None):
    """The step rows (or, with `event`, that event's rows) of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    return [r for r in rows if r.get("event") == event]


def test_loss_decreases_and_export_loads_in_transformers(tmp_path, shards):
    run = _train(str(tmp_path), shards, "a", max_steps=12)
    losses = [m["loss"] for m in _metrics(run)]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    assert os.path.isfile(os.path.join(run, "loss.png"))
    transformers = pytest.importorskip("transformers")
    from wizardcoder import StarCoder, Tokenizer

    hf = transformers.GPTBigCodeForCausalLM.from_pretrained(os.path.join(run, "final")).eval()
    ours = StarCoder.from_pretrained(os.path.join(run, "final")).eval()
    ids = torch.tensor([Tokenizer.from_pretrained(os.path.join(run, "final")).encode("def f(x):")])
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max() <= 1e-4


def test_grad_accumulation_equals_one_big_batch(tmp_path, shards):
    big = _train(str(tmp_path), shards, "big", max_steps=2, micro_batch_packs=2, grad_accum=1)
    acc = _train(str(tmp_path), shards, "acc", max_steps=2, micro_batch_packs=1, grad_accum=2)
    a, b = _weights(big), _weights(acc)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k
    assert [m["loss"] for m in _metrics(big)] == pytest.approx([m["loss"] for m in _metrics(acc)], rel=1e-5)


@pytest.mark.slow
def test_fsdp2_two_ranks_equal_one_process(tmp_path, shards):
    one = _train(str(tmp_path), shards, "one", max_steps=2, micro_batch_packs=2)
    two = _train(str(tmp_path), shards, "two", nproc=2, max_steps=2, micro_batch_packs=1)
    a, b = _weights(one), _weights(two)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert [m["loss"] for m in _metrics(one)] == pytest.approx([m["loss"] for m in _metrics(two)], rel=1e-4)


def test_killed_run_resumes_to_the_same_weights(tmp_path, shards):
    ref = _train(str(tmp_path), shards, "ref", max_steps=6, save_every=2)
    out = os.path.join(str(tmp_path), "killed")
    cfg = os.path.join(str(tmp_path), "killed.json")
    with open(cfg, "w") as f:
        json.dump({"train": {**SMALL, "data": shards, "out": out, "max_steps": 6, "save_every": 2}}, f)
    proc = subprocess.Popen([sys.executable, "-m", "wizardcoder.train", "--config", cfg], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = os.path.join(out, "checkpoints", "latest")
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.isfile(latest) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.isdir(os.path.join(out, "final")), "the run finished before it could be killed"
    _train(str(tmp_path), shards, "killed", max_steps=6, save_every=2)
    a, b = _weights(ref), _weights(out)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


def test_bad_config_is_one_sentence(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"data": "x", "learning_rate": 1}}))
    r = subprocess.run([sys.executable, "-m", "wizardcoder", "train", "--config", str(cfg)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown field 'learning_rate'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "wizardcoder", "train", "--data", str(tmp_path / "nope")], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "no such folder" in r.stderr and "Traceback" not in r.stderr


def test_llama_trains_and_exports_what_transformers_loads(tmp_path):
    """`wizardcoder train --model <Llama folder>` (a checkpoint made by transformers): the same trainer through the
    model protocol; the loss falls and final/ loads in transformers.LlamaForCausalLM with the logits of ours."""
    transformers = pytest.importorskip("transformers")
    from train_util import metrics, pack, small_llama_checkpoint, small_tokenizer

    from wizardcoder import Llama, Tokenizer, load_pretrained
    from wizardcoder.cli import main

    tok = small_tokenizer(str(tmp_path / "tok"))
    ckpt = small_llama_checkpoint(str(tmp_path / "ckpt"), tok)
    shards = pack(str(tmp_path / "shards"), tok)
    run = str(tmp_path / "run")
    assert main(["train", "--model", ckpt, "--data", shards, "--out", run, "--max-steps", "12", "--lr", "3e-3",
                 "--warmup-steps", "1", "--no-progress"]) == 0
    losses = [m["loss"] for m in metrics(run)]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    final = os.path.join(run, "final")
    hf = transformers.LlamaForCausalLM.from_pretrained(final).eval()
    ours = load_pretrained(final).eval()
    start = Llama.from_pretrained(ckpt)
    assert isinstance(ours, Llama) and not torch.equal(ours.lm_head.weight, start.lm_head.weight)  # it trained
    ids = torch.tensor([Tokenizer.from_pretrained(final).encode("def f(x):\n    return x + 1")])
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max() <= 1e-4


def test_llama_preset_trains_from_random_init(tmp_path, shards):
    """`--model llama-tiny`: a Llama preset, built sharded and initialised rank by rank (init_sharded_ through the
    protocol's init), its vocabulary grown to the tokenizer's."""
    from wizardcoder import LlamaConfig

    run = _train(str(tmp_path), shards, "llama", model="llama-tiny", max_steps=2)
    assert [m["step"] for m in _metrics(run)] == [1, 2]
    cfg = LlamaConfig.from_json_file(os.path.join(run, "final", "config.json"))
    assert cfg.num_key_value_heads == 2 and cfg.vocab_size == 49153  # the bundled tokenizer's vocabulary
