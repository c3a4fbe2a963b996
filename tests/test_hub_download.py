"""Hub ids through the real huggingface_hub client against a hub on 127.0.0.1 (tests/_fakehub.py): one weight format
is downloaded (safetensors when the repository has it, else .bin; an index's shards only), the result loads with the
source's logits, the cache then answers with HF_HUB_OFFLINE=1, with the hub down and with it gone (asking nothing
more of it), and an unknown repository, one without weights or weights not cached offline are one sentence each."""
import gzip
import json
import os
import shutil
import subprocess

import pytest
import torch

from _fakehub import FakeHub
from _util import PYTHON, REPO, repo_env
from wizardcoder import StarCoder, StarCoderConfig
from wizardcoder.checkpoint import export_state_dict

CFG = StarCoderConfig(vocab_size=311, n_positions=64, n_embd=48, n_layer=2, n_head=4)
TOKENIZER = os.path.join(REPO, "wizardcoder", "assets", "tokenizer")

# Resolves each hub id given on the command line (`tokenizer:ID`: the tokenizer alone); prints {id: snapshot folder
# (a tokenizer's name), or "ErrorType: message"} as JSON.
CLIENT = """
import json, sys
from wizardcoder import Tokenizer
from wizardcoder.checkpoint import resolve_folder
out = {}
for repo in sys.argv[1:]:
    try:
        out[repo] = Tokenizer.from_pretrained(repo[10:]).name if repo.startswith("tokenizer:") else resolve_folder(repo)
    except Exception as e:
        out[repo] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def _save_bin(sd: dict, folder, shards: int = 1) -> None:
    """`sd` as pytorch_model.bin, or as `shards` .bin files with pytorch_model.bin.index.json (transformers' names)."""
    if shards == 1:
        torch.save(sd, os.path.join(folder, "pytorch_model.bin"))
        return
    names = list(sd)
    weight_map = {}
    for i in range(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: sd[n] for n in names[i::shards]}
        torch.save(part, os.path.join(folder, fname))
        weight_map.update({n: fname for n in part})
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
                   "weight_map": weight_map}, f)


def _repos(model, root) -> dict[str, str]:
    """Four repositories of the same weights: both formats (+ tokenizer), .bin only, both sharded (+ a stray full
    copy under another name, as some repositories carry), sharded .bin only; `org/partial`, the first again (only its
    tokenizer is fetched), and `org/no-weights` (a config.json alone)."""
    sd = export_state_dict(model)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, as HF's .bin files store it
    folders = {name: os.path.join(root, name) for name in ("both", "bin-only", "sharded", "sharded-bin")}
    both = folders["both"]
    model.save_pretrained(both)
    _save_bin(sd, both)
    with gzip.open(os.path.join(TOKENIZER, "tokenizer.json.gz"), "rb") as src, open(os.path.join(both, "tokenizer.json"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(os.path.join(TOKENIZER, "tokenizer_config.json"), both)
    with open(os.path.join(both, "README.md"), "w") as f:
        f.write("# tiny\n")
    os.makedirs(folders["bin-only"])
    model.config.save_json(folders["bin-only"])
    _save_bin(sd, folders["bin-only"])
    model.save_pretrained(folders["sharded"], max_shard_bytes=40_000)
    _save_bin(sd, folders["sharded"], shards=2)
    shutil.copy(os.path.join(both, "model.safetensors"), os.path.join(folders["sharded"], "consolidated.safetensors"))
    os.makedirs(folders["sharded-bin"])
    model.config.save_json(folders["sharded-bin"])
    _save_bin(sd, folders["sharded-bin"], shards=2)
    folders["no-weights"] = os.path.join(root, "no-weights")
    os.makedirs(folders["no-weights"])
    model.config.save_json(folders["no-weights"])
    return {**{f"org/{name}": folder for name, folder in folders.items()}, "org/partial": both}


def _resolve(env: dict, repos) -> dict[str, str]:
    out = subprocess.run([PYTHON, "-c", CLIENT, *repos], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ours():
    return StarCoder.from_config(CFG, seed=7).eval()


@pytest.fixture(scope="module")
def runs(ours, tmp_path_factory):
    """The same hub ids resolved online, with HF_HUB_OFFLINE=1, with the hub down (503), with every repository
    refused (401: private, without a token), with the hub stopped; what was served."""
    root = tmp_path_factory.mktemp("hub")
    repos = _repos(ours, root / "repos")
    ids = [*_expected(repos), "org/no-weights", "org/partial"]
    with FakeHub(repos) as hub:
        env = repo_env(**hub.env(root / "hf"))
        online = _resolve(env, [*ids[:-1], "tokenizer:org/partial", "org/missing"])
        n_online = len(hub.served)
        offline = _resolve({**env, "HF_HUB_OFFLINE": "1"}, ids)
        n_offline = len(hub.served) - n_online
        hub.status = 503
        down = _resolve(env, ids)
        requests_down = hub.served[n_online + n_offline:]
        hub.status = 401
        refused = _resolve(env, [*ids, "org/missing"])
        hub.stop()
        unreachable = _resolve(env, ids)
    return {"hub": hub, "repos": repos, "online": online, "offline": offline, "down": down, "refused": refused,
            "unreachable": unreachable, "n_offline": n_offline, "requests_down": requests_down}


def _shards(folder, index: str) -> list[str]:
    with open(os.path.join(folder, index)) as f:
        return sorted(set(json.load(f)["weight_map"].values()))


def _expected(repos) -> dict[str, list[str]]:
    """Repository -> the files to download from it: JSON files, tokenizer files, one weight format."""
    sharded = repos["org/sharded"]
    assert len(_shards(sharded, "model.safetensors.index.json")) > 2
    return {
        "org/both": ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"],
        "org/bin-only": ["config.json", "pytorch_model.bin"],
        "org/sharded": sorted(["config.json", "generation_config.json", "model.safetensors.index.json",
                               "pytorch_model.bin.index.json", *_shards(sharded, "model.safetensors.index.json")]),
        "org/sharded-bin": ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                            "pytorch_model.bin.index.json"],
    }


def test_one_weight_format_is_downloaded(runs):
    hub = runs["hub"]
    for repo, files in _expected(runs["repos"]).items():
        assert hub.downloads(repo) == files, repo
        folder = runs["online"][repo]
        assert os.path.isdir(folder), folder
        assert sorted(os.listdir(folder)) == files, repo  # nothing else in the snapshot either


def test_downloaded_checkpoints_load_with_the_source_logits(runs, ours):
    from wizardcoder import Tokenizer

    ids = torch.randint(0, CFG.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours(ids)
        for repo in _expected(runs["repos"]):
            got = StarCoder.from_pretrained(runs["online"][repo]).eval()(ids)
            assert torch.equal(got, want), repo
    tok = Tokenizer.from_pretrained(runs["online"]["org/both"])
    assert tok.decode(tok.encode("def f(x):\n    return x")) == "def f(x):\n    return x"


def test_cache_answers_offline_and_without_the_hub(runs):
    complete = list(_expected(runs["repos"]))
    assert {r: runs["offline"][r] for r in complete} == {r: runs["online"][r] for r in complete}
    assert runs["n_offline"] == 0  # HF_HUB_OFFLINE=1: not one request
    assert runs["down"] == runs["unreachable"] == runs["offline"]
    # the hub down: one listing request per id, and no retried file requests (nothing waits on it)
    assert runs["requests_down"] == [("GET", f"/api/models/{repo}") for repo in runs["offline"]]


def test_bad_repositories_are_one_sentence(runs):
    assert runs["online"]["org/missing"] == (
        "CheckpointError: org/missing: no such model repository on the hub (or it is private: set HF_TOKEN).")
    no_weights = ("CheckpointError: org/no-weights: the hub repository has no model weights (expected one of "
                  "model.safetensors.index.json, model.safetensors, pytorch_model.bin.index.json, pytorch_model.bin).")
    assert runs["online"]["org/no-weights"] == runs["offline"]["org/no-weights"] == no_weights
    # the listing is cached (the tokenizer was fetched) but the weights are not: offline, that is one sentence too
    assert "models--org--partial/snapshots/" in runs["online"]["tokenizer:org/partial"]
    assert runs["hub"].downloads("org/partial") == ["config.json", "generation_config.json", "tokenizer.json",
                                                    "tokenizer_config.json"]
    assert runs["offline"]["org/partial"] == (
        "CheckpointError: org/partial: not a local path and not in the hub cache, and the hub cannot be reached "
        "(offline or HF_HUB_OFFLINE=1); download the checkpoint once with network access or give a local folder.")


def test_refused_repositories_resolve_from_the_cache(runs):
    """401 for everything (private, no token): what is cached resolves as before, the rest is one sentence."""
    refused = runs["refused"]
    for repo in [*_expected(runs["repos"]), "org/no-weights"]:
        assert refused[repo] == runs["offline"][repo], repo
    for repo in ("org/partial", "org/missing"):
        assert refused[repo] == (
            f"CheckpointError: {repo}: no such model repository on the hub (or it is private: set HF_TOKEN).")
