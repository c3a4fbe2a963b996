"""`wizardcoder plan`: per-GPU bytes from the meta device, for either family. The static part (parameters, gradients,
optimizer state) equals what a real run holds after its first step (one process here, 2 ranks in
test_train_distributed.py); the per-block activations equal what autograd saves; the levers move the figures the way
they should; bad input is one sentence."""
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


# ------------------------------------------------------------------------------------------------ both families
def test_llama_presets_hub_ids_and_folders_resolve_through_the_family(tmp_path, capsys):
    from wizardcoder.llama_config import LlamaConfig

    assert resolve_config("WizardLMTeam/WizardCoder-Python-34B-V1.0") == LlamaConfig.from_preset("wizardcoder-python-34b")
    assert resolve_config("deepseek-coder-33b", vocab_size=32300).vocab_size == 32300
    cfg = LlamaConfig.from_preset("llama-tiny", rope_scaling={"type": "linear", "factor": 4.0})
    cfg.save_json(str(tmp_path))
    assert resolve_config(str(tmp_path)) == cfg
    r = _plan(capsys, "--recipe", "wizardcoder-python-34b", "--world-size", "8", "--json")
    out = json.loads(r.stdout)
    n = LlamaConfig.from_preset("wizardcoder-python-34b").num_params()
    assert r.returncode == 0 and out["per_gpu"]["params"] == pytest.approx(4 * n / 8, rel=0.001)
    assert (out["fits"], out["advice"]) == (False, "pull --optimizer adamw8bit")  # the README's table
    out = json.loads(_plan(capsys, "--recipe", "wizardcoder-33b-v1.1", "--optimizer", "adamw8bit", "--json").stdout)
    assert out["fits"] and out["model"] == "deepseek-ai/deepseek-coder-33b-base"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    r = _plan(capsys, "--model", str(tmp_path))
    assert r.returncode == 2 and "model_type 'mistral'" in r.stderr and r.stderr.count("\n") == 1


def _saved_bytes(model, T: int) -> int:
    """Bytes autograd keeps for backward over a packed forward of T tokens (every saved tensor's storage once, the
    parameters' not): the measured activations."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, T), device=device)
    cu = torch.tensor([0, T // 3, T], dtype=torch.int32, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.hidden_states(ids, cu_seqlens=cu, max_seqlen=T - T // 3)
    return sum(kept.values())


@pytest.mark.parametrize("family", ["starcoder", "llama"])
def test_activation_estimate_equals_what_autograd_keeps(family):
    """The plan's per-block activations (ModelConfig.block_activation_bytes) are exactly the bytes the fused-kernel
    path (Triton kernels: on CUDA, else in the interpreter; fp32) saves for backward: the difference between a 4-layer and a
    2-layer model's saved tensors, measured by autograd's saved-tensor hooks. Llama: GQA 4:2 and an odd SwiGLU width,
    so a count with multi-head K/V or StarCoder's two MLP tensors would be off."""
    from wizardcoder.starcoder_config import StarCoderConfig
    from wizardcoder.families import class_for
    from wizardcoder.llama_config import LlamaConfig

    T = 48
    kernels = dict(attn_backend="triton", kernel_backend="triton")
    make = {"starcoder": lambda L: StarCoderConfig(vocab_size=101, n_embd=64, n_layer=L, n_head=4, n_positions=128,
                                                   **kernels),
            "llama": lambda L: LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=45, num_hidden_layers=L,
                                           num_attention_heads=4, num_key_value_heads=2, **kernels)}[family]
    measured = {}
    for L in (2, 4):
        cfg = make(L)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        measured[L] = _saved_bytes(class_for(cfg.model_type).from_config(cfg, seed=0, device=device), T)
    per_block = (measured[4] - measured[2]) // 2
    assert per_block == T * cfg.block_activation_bytes(4)
    plan = plan_memory(cfg, Config(model=family, seq_len=T, micro_batch_packs=1, dtype="float32",
                                   kernel_backend="triton"))["per_gpu"]
    root = measured[4] - 4 * per_block  # the final norm's input and statistics, positions, cu_seqlens
    assert 0 < root <= plan["activations"] - 4 * per_block
