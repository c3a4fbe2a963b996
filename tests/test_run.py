"""`wizardcoder run` and `--config`: real verbs, real files, real subprocesses killed with SIGKILL.

The pipelines here are the tiny model on a handful of records: pack (128-token packs), train (a few steps), generate
(2 HumanEval problems, a few tokens), evaluate (in the sandbox)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from _util import REPO, repo_env

from wizardcoder.cli import main as wizardcoder_main
from wizardcoder.io import read_jsonl

ASSETS = os.path.join(REPO, "wizardcoder", "assets")


def wc(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "wizardcoder", *args], capture_output=True, text=True,
                          env=repo_env(OMP_NUM_THREADS="1"), cwd=cwd, timeout=timeout)


def one_sentence_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def write_config(path, out, *, until="evaluate", train_steps=6, extra=""):
    """A small pipeline: the shipped seed set packed, the tiny model trained, 2 HumanEval problems scored."""
    text = f'''
[run]
out = "{out}"
report = false

[pack]
data = ["{{assets}}/demo_seed.jsonl"]
tokenizer = "{{assets}}/tokenizer"
seq_len = 128

[train]
model = "tiny"
max_steps = {train_steps}
lr = 3e-3
warmup_steps = 1
save_every = 2
progress = false
'''
    if until in ("generate", "evaluate"):
        text += '''
[generate]
task = "humaneval"
limit = 2
n = 1
temperature = 0.0
max_new_tokens = 8
'''
    if until == "evaluate":
        text += '\n[evaluate]\nk = [1]\n'
    with open(path, "w") as f:
        f.write(text + extra)
    return str(path)


# --------------------------------------------------------------------------------------------- --config per verb


def test_config_file_gives_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[pack]\ndata = ["{ASSETS}/demo_seed.jsonl"]\ntokenizer = "{ASSETS}/tokenizer"\nseq_len = 128\n'
                   f'out = "{tmp_path}/from_file"\n')
    # required flags (--data, --tokenizer, --seq-len, --out) come from the file; --seq-len on the line wins
    assert wizardcoder_main(["pack", "--config", str(cfg), "--seq-len", "96", "--out", str(tmp_path / "s")]) == 0
    meta = json.load(open(tmp_path / "s" / "metadata.json"))
    assert meta["seq_len"] == 96 and meta["tokenizer"]["name"].endswith("tokenizer")
    assert not os.path.exists(tmp_path / "from_file")
    assert wizardcoder_main(["pack", "--config", str(cfg)]) == 0
    assert json.load(open(tmp_path / "from_file" / "metadata.json"))["seq_len"] == 128


def test_config_json_works_too(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"pack": {"data": [f"{ASSETS}/demo_seed.jsonl"], "tokenizer": f"{ASSETS}/tokenizer",
                                        "seq_len": 48, "out": str(tmp_path / "s")}}))
    assert wizardcoder_main(["pack", "--config", str(cfg)]) == 0
    assert json.load(open(tmp_path / "s" / "metadata.json"))["seq_len"] == 48


@pytest.mark.parametrize("text, words", [
    ('[bogus]\nx = 1\n', ["[bogus]", "unknown section", "evolve", "pack", "train", "generate", "evaluate", "serve"]),
    ('[pack]\nseq_lenn = 64\n', ["[pack]", "'seq_lenn'", "valid fields", "seq_len", "tokenizer"]),
    ('[pack]\nseq_len = "long"\n', ["[pack] seq_len", "'long'", "--seq-len"]),
    ('[pack]\nseq_len = 64\n[pack', ["not valid TOML"]),
])
def test_bad_config_is_one_sentence_naming_file_section_and_field(tmp_path, text, words):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    err = one_sentence_error(wc("pack", "--config", str(cfg)))
    assert str(cfg) in err
    for w in words:
        assert w in err, (w, err)


def test_run_config_errors_are_one_sentence(tmp_path):
    cfg = write_config(tmp_path / "r.toml", tmp_path / "run", extra='\n[train]\n')  # duplicate table: bad TOML
    one_sentence_error(wc("run", cfg))
    cfg = tmp_path / "u.toml"
    cfg.write_text('[run]\nout = "x"\nlaunch = "torchrun"\n')
    err = one_sentence_error(wc("run", str(cfg)))
    assert "'launch'" in err and "launcher" in err and "[run]" in err
    cfg.write_text('[train]\nmax_step = 3\n')
    err = one_sentence_error(wc("run", str(cfg)))
    assert "[train]" in err and "'max_step'" in err and "max_steps" in err
    err = one_sentence_error(wc("run", str(cfg), "--set", "trian.lr=1"))
    assert "trian" in err and "valid sections" in err


def test_missing_input_is_one_sentence(tmp_path):
    cfg = write_config(tmp_path / "r.toml", tmp_path / "run", until="train")
    err = one_sentence_error(wc("run", cfg, "--from", "train"))
    assert os.path.join(str(tmp_path / "run"), "pack") in err and "does not exist" in err and "[train] data" in err


# ------------------------------------------------------------------------------------------ kill and resume


def _outputs(run):
    """Everything the stages made that must not depend on a kill: shard bytes, weights, samples, verdicts."""
    from safetensors.torch import load_file

    shards = {n: open(os.path.join(run, "pack", n), "rb").read() for n in sorted(os.listdir(os.path.join(run, "pack")))
              if n.endswith(".npy")}
    weights = load_file(os.path.join(run, "train", "final", "model.safetensors"))
    samples = list(read_jsonl(os.path.join(run, "generate", "samples.jsonl")))
    summary = json.load(open(os.path.join(run, "evaluate", "summary.json")))
    return shards, weights, samples, {k: v for k, v in summary.items() if k.startswith("pass@") or k == "n_samples"}


def _same(a, b):
    import torch

    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert a[2] == b[2] and a[3] == b[3]


def _start(cfg, log):
    return subprocess.Popen([sys.executable, "-m", "wizardcoder", "run", cfg], stdout=log, stderr=subprocess.STDOUT,
                            env=repo_env(OMP_NUM_THREADS="1"))


def _kill_when(proc, ready, what, limit=300):
    deadline = time.monotonic() + limit
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _state(run, stage):
    try:
        return json.load(open(os.path.join(run, ".run", f"{stage}.json")))
    except (OSError, json.JSONDecodeError):
        return None


def test_sigkill_in_train_then_rerun_gives_the_same_outputs_and_redoes_nothing_complete(tmp_path):
    ref_run, run = str(tmp_path / "ref"), str(tmp_path / "killed")
    ref = wc("run", write_config(tmp_path / "ref.toml", ref_run))
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]

    cfg = write_config(tmp_path / "k.toml", run)
    with open(tmp_path / "log1", "w") as log:
        proc = _start(cfg, log)
        # a checkpoint exists and training is not finished: the kill lands mid-stage
        _kill_when(proc, lambda: (_state(run, "train") or {}).get("state") == "running"
                   and os.path.exists(os.path.join(run, "train", "checkpoints", "latest")), "a train checkpoint")
    assert _state(run, "pack")["state"] == "done" and _state(run, "train")["state"] == "running"
    pack_marker = open(os.path.join(run, ".run", "pack.json")).read()
    again = wc("run", cfg)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[run] pack: complete, skipped" in again.stdout
    assert "resumed from" in again.stdout  # train went on from its checkpoint
    assert open(os.path.join(run, ".run", "pack.json")).read() == pack_marker
    _same(_outputs(ref_run), _outputs(run))

    # a third run redoes nothing; a changed setting reruns its stage and the ones after, not the ones before
    third = wc("run", cfg, "--until", "train")
    assert third.returncode == 0 and "pack: complete, skipped" in third.stdout and "train: complete" in third.stdout
    changed = wc("run", cfg, "--until", "train", "--set", "train.max_steps=2")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "pack: complete, skipped" in changed.stdout and "settings changed" in changed.stdout
    rows = [r for r in read_jsonl(os.path.join(run, "train", "metrics.jsonl")) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pack", "generate", "evaluate"])
def test_sigkill_in_other_stages(tmp_path, stage):
    ref_run, run = str(tmp_path / "ref"), str(tmp_path / "killed")
    assert wc("run", write_config(tmp_path / "ref.toml", ref_run)).returncode == 0
    cfg = write_config(tmp_path / "k.toml", run)
    with open(tmp_path / "log1", "w") as log:
        proc = _start(cfg, log)
        _kill_when(proc, lambda: (_state(run, stage) or {}).get("state") == "running", f"{stage} running")
    again = wc("run", cfg)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    order = ["pack", "train", "generate", "evaluate"]
    for before in order[: order.index(stage)]:
        assert f"[run] {before}: complete, skipped" in again.stdout
    _same(_outputs(ref_run), _outputs(run))
