"""HF checkpoint round trips through transformers, sharded and .bin formats, the hub cache, and bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from wizardcoder import StarCoder, StarCoderConfig  # noqa: E402
from wizardcoder.errors import CheckpointError, ConfigError  # noqa: E402

CFG = StarCoderConfig(vocab_size=311, n_positions=64, n_embd=48, n_layer=2, n_head=4)


def _ids(vocab=311):
    return torch.randint(0, vocab, (2, 19), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def ours():
    return StarCoder.from_config(CFG, seed=7).eval()


def test_save_pretrained_loads_in_transformers(ours, tmp_path):
    ours.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", "model.safetensors"]
    hf = transformers.GPTBigCodeForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert (hf(_ids()).logits - ours(_ids())).abs().max() <= 1e-5


def test_transformers_checkpoint_loads_in_ours(tmp_path):
    hf_cfg = transformers.GPTBigCodeConfig(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                           multi_query=False, activation_function="gelu")
    torch.manual_seed(0)
    hf = transformers.GPTBigCodeForCausalLM(hf_cfg).eval()
    hf.save_pretrained(str(tmp_path))
    ours = StarCoder.from_pretrained(str(tmp_path)).eval()
    assert ours.config.multi_query is False and ours.config.vocab_size == 300
    with torch.no_grad():
        assert (hf(_ids(300)).logits - ours(_ids(300))).abs().max() <= 1e-5


def test_sharded_checkpoints_both_ways(ours, tmp_path):
    ours.save_pretrained(str(tmp_path / "ours"), max_shard_bytes=40_000)
    files = os.listdir(tmp_path / "ours")
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    hf = transformers.GPTBigCodeForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
    hf.save_pretrained(str(tmp_path / "hf"), max_shard_size="50KB")
    assert "model.safetensors.index.json" in os.listdir(tmp_path / "hf")
    back = StarCoder.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        assert (back(_ids()) - ours(_ids())).abs().max() <= 1e-5


def test_pytorch_bin_checkpoint(ours, tmp_path):
    from wizardcoder.checkpoint import export_state_dict

    ours.config.save_json(str(tmp_path))
    sd = export_state_dict(ours)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    torch.save(sd, tmp_path / "pytorch_model.bin")
    back = StarCoder.from_pretrained(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(back(_ids()), ours(_ids()))


def test_dtype_and_device_on_load(ours, tmp_path):
    ours.save_pretrained(str(tmp_path))
    m = StarCoder.from_pretrained(str(tmp_path), dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert m.transformer.wte.weight.shape[0] == CFG.padded_vocab_size


def test_hub_id_from_local_cache_offline(ours, tmp_path, monkeypatch):
    """The real huggingface_hub path, served from a cache laid out as the hub client lays it out."""
    cache = tmp_path / "hub"
    snap = cache / "models--someorg--tiny-starcoder" / "snapshots" / ("a" * 40)
    ours.save_pretrained(str(snap))
    (cache / "models--someorg--tiny-starcoder" / "refs").mkdir(parents=True)
    (cache / "models--someorg--tiny-starcoder" / "refs" / "main").write_text("a" * 40)
    code = (
        "import torch, sys; from wizardcoder import StarCoder;"
        "m = StarCoder.from_pretrained('someorg/tiny-starcoder'); print(m.config.vocab_size)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "311"
    code_missing = (
        "from wizardcoder import StarCoder\n"
        "try:\n StarCoder.from_pretrained('someorg/not-cached')\n"
        "except Exception as e: print(type(e).__name__, e)"
    )
    out = subprocess.run([sys.executable, "-c", code_missing], env=env, capture_output=True, text=True)
    assert out.stdout.startswith("CheckpointError someorg/not-cached: not a local path and not in the hub cache"), out.stdout + out.stderr


def test_missing_folder_and_missing_weights(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        StarCoder.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    CFG.save_json(str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="no model weights"):
        StarCoder.from_pretrained(str(tmp_path / "empty"))
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(ConfigError, match="config.json: no such file"):
        StarCoder.from_pretrained(str(tmp_path / "noconfig"))


def test_corrupt_safetensors(ours, tmp_path):
    ours.save_pretrained(str(tmp_path))
    p = tmp_path / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or unreadable safetensors file"):
        StarCoder.from_pretrained(str(tmp_path))
    p.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        StarCoder.from_pretrained(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConfigError, match="model_type 'llama'.*is not a GPTBigCode"):
        StarCoder.from_pretrained(str(tmp_path))


def test_shape_mismatch_names_tensor(ours, tmp_path):
    ours.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_inner"] = 100
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"h\.0\.mlp\.c_fc\.bias has shape \(192,\), config.json implies \(100,\)"):
        StarCoder.from_pretrained(str(tmp_path))


def test_incomplete_shard_index(ours, tmp_path):
    ours.save_pretrained(str(tmp_path), max_shard_bytes=40_000)
    shard = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))[1]
    os.unlink(tmp_path / shard)
    with pytest.raises(CheckpointError, match=f"lists shard {shard} which is not in"):
        StarCoder.from_pretrained(str(tmp_path))


def test_save_leaves_no_temporaries(ours, tmp_path):
    ours.save_pretrained(str(tmp_path), max_shard_bytes=40_000)
    assert not [f for f in os.listdir(tmp_path) if "tmp" in f]
    shutil.rmtree(tmp_path)
