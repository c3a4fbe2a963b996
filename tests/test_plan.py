"""`wizardcoder plan`: per-GPU bytes from the meta device. The static part (parameters, gradients, optimizer state)
equals what a real run holds after its first step (one process here, 2 ranks in test_train_distributed.py); the
levers move the figures the way they should; bad input is one sentence."""
import json
import subprocess
import sys

import pytest
import torch
from _util import repo_env
from train_util import metrics, pack, small_checkpoint, small_tokenizer, train_here

from wizardcoder import settings
from wizardcoder.plan import Config, plan_memory, resolve_config


def _plan(capsys, *args):
    """`wizardcoder plan ARGS` through the CLI's own entry point, in this process."""
    from wizardcoder.cli import main

    rc = main(["plan", *args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def test_wizardcoder_15b_on_8x80gb_json(capsys):
    r = _plan(capsys, "--recipe", "wizardcoder-15b", "--world-size", "8", "--gpu-memory-gb", "80", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    g = out["per_gpu"]
    assert set(g) == {"params", "grads", "optimizer", "activations", "transient", "total"}
    assert g["total"] == sum(v for k, v in g.items() if k != "total") and out["fits"] is True
    n = resolve_config("bigcode/starcoder").num_params()
    assert g["params"] == pytest.approx(4 * n / 8, rel=0.01) and g["optimizer"] == pytest.approx(2 * g["params"], rel=0.01)


def test_levers_move_the_right_terms():
    cfg = resolve_config("starcoder-15b")
    base = Config(model="starcoder-15b", world_size=8, micro_batch_packs=2)
    p = plan_memory(cfg, base)["per_gpu"]
    full = plan_memory(cfg, Config(**{**vars(base), "activation_checkpointing": "full"}))["per_gpu"]
    sel = plan_memory(cfg, Config(**{**vars(base), "activation_checkpointing": "selective"}))["per_gpu"]
    assert full["activations"] < sel["activations"] < p["activations"] and full["params"] == p["params"]
    eight = plan_memory(cfg, Config(**{**vars(base), "optimizer": "adamw8bit"}))["per_gpu"]
    assert 0.25 < eight["optimizer"] / p["optimizer"] < 0.27
    off = plan_memory(cfg, Config(**{**vars(base), "offload": True}))
    assert off["per_gpu"]["params"] == 0 and off["host_per_rank"] == p["params"] + p["grads"] + p["optimizer"]


def test_does_not_fit_names_a_lever_and_bad_input_is_one_sentence(capsys):
    r = _plan(capsys, "--model", "starcoder-15b", "--world-size", "1", "--gpu-memory-gb", "80")
    assert r.returncode == 0 and "fits: no; pull --activation-checkpointing" in r.stdout
    r = _plan(capsys, "--model", "./no-such-checkpoint", "--world-size", "1")
    assert r.returncode == 2 and r.stderr.startswith("error: --model './no-such-checkpoint': not a preset")
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    r = _plan(capsys, "--recipe", "nope")
    assert r.returncode == 2 and "--recipe 'nope' is unknown" in r.stderr


def test_recipe_is_a_base_that_flags_override(capsys):
    cfg = settings.parse(Config, ["--recipe", "wizardcoder-3b"])
    assert (cfg.model, cfg.micro_batch_packs, cfg.activation_checkpointing) == ("bigcode/starcoderbase-3b", 2,
                                                                                "selective")
    # a flag equal to the no-recipe default still wins over the recipe
    cfg = settings.parse(Config, ["--recipe", "wizardcoder-3b", "--activation-checkpointing", "none"],
                         section={"micro_batch_packs": 1})
    assert (cfg.micro_batch_packs, cfg.activation_checkpointing) == (1, "none")
    assert settings.build(Config, {}) == Config(model="starcoder-15b", micro_batch_packs=1,
                                                activation_checkpointing="none")
    r = _plan(capsys, "--recipe", "wizardcoder-15b", "--activation-checkpointing", "none", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["model"] == "bigcode/starcoder"


def test_dtype_is_resolved_for_the_planned_device_or_taken_as_given():
    """`auto` is bfloat16 for a cuda plan and float32 for a cpu plan; a training run's own dtype is used as given."""
    cfg = resolve_config("tiny")
    bf16 = plan_memory(cfg, Config(model="tiny"))
    fp32 = plan_memory(cfg, Config(model="tiny", dtype="float32"))
    assert bf16["dtype"] == "bfloat16" and fp32["dtype"] == "float32"
    assert fp32["per_gpu"]["activations"] > bf16["per_gpu"]["activations"]
    assert plan_memory(cfg, Config(model="tiny", device="cpu")) == fp32
    assert plan_memory(cfg, Config(model="tiny"), dtype=torch.float32) == fp32  # not resolved again
    assert plan_memory(cfg, Config(model="tiny", device="cpu"), dtype=torch.bfloat16) == bf16


def test_plan_does_not_import_the_trainer():
    code = ("import sys, wizardcoder.plan; "
            "print(sorted(m for m in sys.modules if m.startswith('wizardcoder.train')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=repo_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "wizardcoder.train.loop" not in r.stdout and "'wizardcoder.train.config'" in r.stdout


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_static_part_equals_a_run_in_one_process(tmp_path_factory, tmp_path, optimizer):
    if optimizer != "adamw":
        pytest.importorskip("bitsandbytes")
    root = tmp_path_factory.mktemp("plan")
    tok = small_tokenizer(str(root / "tok"))
    ckpt = small_checkpoint(str(root / "ckpt"), tok, n_embd=128)
    run = str(tmp_path / "run")
    train_here(model=ckpt, data=pack(str(root / "shards"), tok), out=run, max_steps=1, optimizer=optimizer,
               save_final=False)
    held = metrics(run, "memory")[0]
    plan = plan_memory(resolve_config(ckpt), Config(model=ckpt, world_size=1, optimizer=optimizer))["per_gpu"]
    assert {k: held[k] for k in ("params", "grads", "optimizer")} == {k: plan[k] for k in ("params", "grads", "optimizer")}


def test_every_recipe_setting_plan_knows_is_one_it_takes_from_the_recipe():
    import dataclasses

    from wizardcoder.plan import RECIPE_FIELDS
    from wizardcoder.train.config import RECIPES

    planned = {f.name for f in dataclasses.fields(Config)}
    assert {k for r in RECIPES.values() for k in r} & planned == set(RECIPE_FIELDS)
    assert Config() == Config(**RECIPE_FIELDS)
