"""Bad training input fails before the first step with one sentence naming the flag, file or field; a resumed run
does not log its replayed steps twice."""
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _util import repo_env
from train_util import metrics, pack, small_checkpoint, small_tokenizer, train_here

from wizardcoder.errors import ConfigError, DataError
from wizardcoder.train import TrainConfig
from wizardcoder.train.config import grad_accum_for


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    tok = small_tokenizer(str(root / "tok"))
    return small_checkpoint(str(root / "ckpt"), tok), pack(str(root / "shards"), tok), tok, root


@pytest.mark.parametrize("field,value,flag", [
    ("lr", -1.0, "--lr"), ("lr", math.nan, "--lr"), ("lr", math.inf, "--lr"), ("grad_accum", 0, "--grad-accum"),
    ("micro_batch_packs", 0, "--micro-batch-packs"), ("beta2", 1.0, "--beta2"), ("eps", 0.0, "--eps"),
    ("optimizer", "sgd", "--optimizer"), ("dtype", "float8", "--dtype"), ("recipe", "gpt-5", "--recipe"),
    ("max_steps", 0, "--max-steps"), ("checkpoint_every", 0, "--checkpoint-every"),
])
def test_bad_values_name_their_flag(field, value, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(**{field: value})


def test_cli_bad_value_is_one_sentence_exit_2(capsys):
    from wizardcoder.cli import main

    assert main(["train", "--data", "x", "--lr", "nan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --lr nan") and "Traceback" not in err and err.count("\n") == 1


def test_every_field_is_a_flag_and_a_key():
    import dataclasses

    from wizardcoder import settings
    from wizardcoder.train import Config

    assert Config is TrainConfig
    known = settings.settings(Config)
    assert {"beta1", "beta2", "eps", "log_every", "optimizer", "offload", "recipe", "global_batch_tokens"} <= set(known)
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(known)
    parser = settings.parser_for(Config, "wizardcoder train")
    assert {a.dest for a in parser._actions} >= set(known)


def test_recipe_then_config_then_flags(tmp_path):
    from wizardcoder import settings

    cfg = settings.parse(TrainConfig, ["--recipe", "wizardcoder-15b", "--lr", "1e-5"])
    assert (cfg.model, cfg.lr, cfg.warmup_steps, cfg.epochs, cfg.beta2, cfg.weight_decay) == \
        ("bigcode/starcoder", 1e-5, 30, 3.0, 0.999, 0.0)
    assert grad_accum_for(cfg, 8, 2048) == 64  # 512 x 2048 tokens = 8 ranks x 1 pack x 2048 x 64
    with pytest.raises(ConfigError, match="--global-batch-tokens 1048576 does not divide over 3 rank"):
        grad_accum_for(cfg, 3, 2048)
    cfg = settings.parse(TrainConfig, ["--recipe", "wizardcoder-15b", "--grad-accum", "4"])
    assert cfg.global_batch_tokens is None and grad_accum_for(cfg, 8, 2048) == 4
    # an explicit value equal to the dataclass default still wins over the recipe's
    cfg = settings.parse(TrainConfig, ["--activation-checkpointing", "none"], {"recipe": "wizardcoder-15b"})
    assert cfg.activation_checkpointing == "none" and cfg.model == "bigcode/starcoder"
    # the config section's values lie over the recipe, the flags over both
    cfg = settings.parse(TrainConfig, ["--lr", "3e-5"], {"recipe": "wizardcoder-python-34b", "lr": 1e-5, "warmup_steps": 5})
    assert (cfg.model, cfg.lr, cfg.warmup_steps, cfg.global_batch_tokens) == \
        ("codellama/CodeLlama-34b-Python-hf", 3e-5, 5, 512 * 2048)
    assert settings.values_of(settings.replace(cfg, seed=3))["lr"] == 3e-5  # a rebuilt config keeps what it holds


def test_llama_recipes_name_their_base_models():
    from wizardcoder.train import RECIPES

    assert {"wizardcoder-python-7b", "wizardcoder-python-13b", "wizardcoder-python-34b",
            "wizardcoder-33b-v1.1"} <= set(RECIPES)
    for name in ("wizardcoder-python-7b", "wizardcoder-33b-v1.1"):
        cfg = TrainConfig(recipe=name)
        assert (cfg.lr, cfg.epochs, cfg.warmup_steps, cfg.global_batch_tokens) == (2e-5, 3.0, 30, 512 * 2048)


def test_importing_the_verb_imports_no_torch():
    code = "import sys, wizardcoder.train, wizardcoder.train.config; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], env=repo_env(), capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr[-2000:]


def test_out_that_is_a_file_or_unwritable(small, tmp_path):
    ckpt, shards, _, _ = small
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="--out .*is a file"):
        train_here(model=ckpt, data=shards, out=str(f))
    with pytest.raises(ConfigError, match="--out .*cannot write there"):  # a folder inside a file: never creatable
        train_here(model=ckpt, data=shards, out=str(f / "run"))


def test_offload_without_cuda(small, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ckpt, shards, _, _ = small
    with pytest.raises(ConfigError, match="--offload .*needs CUDA"):
        train_here(model=ckpt, data=shards, out=str(tmp_path / "r"), offload=True)


def test_8bit_optimizer_without_bitsandbytes(small, tmp_path):
    """A real missing module: a `bitsandbytes` package that fails to import shadows the installed one."""
    ckpt, shards, _, _ = small
    fake = tmp_path / "shadow" / "bitsandbytes"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named bitsandbytes')\n")
    env = repo_env()
    env["PYTHONPATH"] = f"{tmp_path / 'shadow'}{os.pathsep}{env['PYTHONPATH']}"
    r = subprocess.run([sys.executable, "-m", "wizardcoder", "train", "--model", ckpt, "--data", shards, "--out",
                        str(tmp_path / "r"), "--optimizer", "adamw8bit", "--max-steps", "1", "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "error: --optimizer adamw8bit needs bitsandbytes" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_batch_that_does_not_divide(small, tmp_path):
    ckpt, shards, _, _ = small
    with pytest.raises(ConfigError, match="--global-batch-tokens 1000 does not divide"):
        train_here(model=ckpt, data=shards, out=str(tmp_path / "r"), global_batch_tokens=1000)


def _copy_shards(shards, dst):
    shutil.copytree(shards, dst)
    return str(dst)


def test_bad_shards_fail_before_the_first_step(small, tmp_path):
    ckpt, shards, tok, root = small
    # shards packed longer than the model's positions
    long = pack(str(tmp_path / "long"), tok, seq_len=512)
    with pytest.raises(DataError, match="longer than the model's 256 positions"):
        train_here(model=ckpt, data=long, out=str(tmp_path / "r1"))
    # token ids outside the model's vocabulary
    bad = _copy_shards(shards, tmp_path / "ids")
    tokens = next(n for n in sorted(os.listdir(bad)) if n.startswith("tokens-"))
    arr = np.load(os.path.join(bad, tokens), mmap_mode="r+")
    arr[3] = 5000
    arr.flush()
    del arr
    with pytest.raises(DataError, match="outside the model's vocabulary of 384"):
        train_here(model=ckpt, data=bad, out=str(tmp_path / "r3"))
    # a changed byte: the content hash no longer matches
    changed = _copy_shards(shards, tmp_path / "hash")
    arr = np.load(os.path.join(changed, tokens), mmap_mode="r+")
    arr[3] = (int(arr[3]) + 1) % 384
    arr.flush()
    del arr
    with pytest.raises(DataError, match="content hash"):
        train_here(model=ckpt, data=changed, out=str(tmp_path / "r4"))
    # a 0-byte shard file
    empty = _copy_shards(shards, tmp_path / "empty")
    open(os.path.join(empty, tokens), "w").close()
    with pytest.raises(DataError):
        train_here(model=ckpt, data=empty, out=str(tmp_path / "r5"))


def test_resume_truncates_metrics_and_refuses_another_model(small, tmp_path):
    ckpt, shards, tok, root = small
    out = str(tmp_path / "run")
    train_here(model=ckpt, data=shards, out=out, max_steps=4, save_every=2, keep_checkpoints=3)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    # as if killed after step 4's row but before its checkpoint: resume from step 2
    shutil.rmtree(os.path.join(out, "checkpoints", "step_0000004"))
    with open(os.path.join(out, "checkpoints", "latest"), "w") as f:
        f.write("step_0000002\n")
    train_here(model=ckpt, data=shards, out=out, max_steps=4, save_every=2, keep_checkpoints=3)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    assert len(metrics(out, "memory")) == 1  # the replaced run's memory row went with its steps
    other = small_checkpoint(str(root / "wide"), tok, n_embd=96)
    with pytest.raises(ConfigError, match="--out .*step_0000004 holds output made with other settings "
                                          r"\(n_embd: 64 -> 96; head_dim: 16 -> 24; ffn_dim: 256 -> 384\); resume with the same model"):
        train_here(model=other, data=shards, out=out, max_steps=6)
