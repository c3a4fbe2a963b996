"""`wizardcoder generate`: a samples file `evaluate` reads, the same file from one process, from two torchrun ranks
(gloo, CPU) and from a run killed with SIGKILL and started again."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from _util import REPO, repo_env
from test_engine import one_thread  # noqa: F401  (autouse fixture: one intra-op thread for tiny tensors)
from wizardcoder import settings
from wizardcoder.cli import main
from wizardcoder.generate import Config, generate_samples

ARGS = ["--model", "tiny", "--task", "humaneval", "--limit", "4", "--temperature", "0.8", "--top-p", "0.95",
        "--max-new-tokens", "12", "--seed", "7", "--no-progress"]


@pytest.fixture(scope="module")
def humaneval(shared_data):
    return os.path.join(shared_data, "humaneval", "HumanEval.jsonl")


@pytest.fixture(scope="module")
def reference(humaneval, tmp_path_factory):
    """One process, three slots: the file every other way of running must reproduce byte for byte."""
    out = str(tmp_path_factory.mktemp("ref") / "samples.jsonl")
    cfg = settings.build(Config, {"model": "tiny", "task": "humaneval", "data": humaneval, "limit": 4, "n": 2,
                                  "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 12, "seed": 7, "batch_slots": 3,
                                  "progress": False, "out": out})
    assert generate_samples(cfg) == out
    with open(out, "rb") as f:
        return f.read()


def test_samples_file_is_what_evaluate_reads(reference, humaneval, tmp_path):
    from wizardcoder.benchmarks import get_benchmark
    from wizardcoder.eval.results import read_samples

    path = tmp_path / "s.jsonl"
    path.write_bytes(reference)
    bench = get_benchmark("humaneval")
    problems = bench.load(humaneval)
    rows = read_samples(str(path), bench, problems)
    assert [r["task_id"] for r in rows] == [t for t in list(problems)[:4] for _ in range(2)]
    assert all(isinstance(r["response"], str) and r["finish_reason"] in ("stop", "length") for r in rows)
    assert len({r["response"] for r in rows}) == 8  # sampled: every answer differs


def test_the_samples_flag_is_spelled_so_that_torchrun_accepts_it():
    """torchrun's own parser reads `--n` after the module name as an ambiguous abbreviation of its options and exits;
    `--num-samples` passes through to us, and our help shows it first (`--n` stays an alias)."""
    from torch.distributed.run import get_args_parser

    torchrun = get_args_parser()
    with pytest.raises(SystemExit):
        torchrun.parse_args(["--nproc_per_node", "2", "-m", "wizardcoder.generate", "--n", "200"])
    ns = torchrun.parse_args(["--nproc_per_node", "2", "-m", "wizardcoder.generate", "--num-samples", "200"])
    assert settings.parse(Config, ["--model", "tiny", "--task", "mbpp", *ns.training_script_args]).generation.n == 200
    assert settings.parse(Config, ["--model", "tiny", "--task", "mbpp", "--n", "7"]).generation.n == 7
    assert "--num-samples INT, --n INT" in settings.parser_for(Config, "wizardcoder generate").format_help()


def test_two_torchrun_ranks_write_the_same_file(reference, humaneval, tmp_path):
    out = tmp_path / "samples.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "wizardcoder.generate",
           *ARGS, "--num-samples", "2", "--batch-slots", "2", "--data", humaneval, "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=repo_env(OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.read_bytes() == reference
    assert not os.path.exists(str(out) + ".journal")


def test_a_killed_run_resumes_without_losing_or_repeating_samples(reference, humaneval, tmp_path):
    out = tmp_path / "samples.jsonl"
    part = tmp_path / "samples.jsonl.journal" / "part-0.jsonl"
    args = [*ARGS, "--n", "2", "--batch-slots", "1", "--data", humaneval, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "wizardcoder", "generate", *args], cwd=REPO,
                            env=repo_env(OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and part.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = [json.loads(line)["task_id"] for line in part.read_text().splitlines() if line.strip()]
    assert 1 <= len(done) < 4 and not out.exists()  # killed mid-run, with some prompts journaled
    assert main(["generate", *args]) == 0  # started again (in this process: the journal is all it shares)
    assert out.read_bytes() == reference  # nothing lost, nothing twice, same samples
    assert not part.parent.exists()


def test_prompts_file_and_user_errors(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"task_id": "a", "prompt": "def f(x):\n", "stop": ["\n\n"]}) + "\n"
                       + json.dumps({"task_id": "b", "prompt": "# hello\n"}) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["generate", "--model", "tiny", "--prompts", str(prompts), "--max-new-tokens", "6",
                 "--prompt-style", "plain", "--no-progress", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["a", "b"] and all("completion" in r for r in rows)
    assert "\n\n" not in rows[0]["completion"]
    for bad, says in [(["--prompts", str(prompts), "--task", "humaneval"], "exactly one of --task"),
                      (["--prompts", str(prompts), "--top-p", "0"], "--top-p"),
                      (["--prompts", str(prompts), "--max-new-tokens", "5000"], "--max-new-tokens"),
                      (["--prompts", str(tmp_path / "none.jsonl")], "no such file")]:
        assert main(["generate", "--model", "tiny", "--no-progress", "--out", str(tmp_path / "x.jsonl"), *bad]) == 2
        assert says in capsys.readouterr().err
    # a journal left by other settings is not mixed into this run
    os.makedirs(str(out) + ".journal")
    with open(str(out) + ".journal/settings.json", "w") as f:
        json.dump({"version": 1, "seed": 123}, f)
    assert main(["generate", "--model", "tiny", "--prompts", str(prompts), "--no-progress", "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err
    # a journal of the same prompts with another seed: the one sentence names what changed
    from wizardcoder.generate import JOURNAL_VERSION, GenerationSettings
    from wizardcoder.resume import Marker

    other = {"version": JOURNAL_VERSION, "model": "tiny", "prompts": str(prompts),
             **GenerationSettings(seed=123).identity()}
    Marker(str(out) + ".journal/settings.json").write(other, state="running")
    assert main(["generate", "--model", "tiny", "--prompts", str(prompts), "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed: 123 -> 0" in err and "max_new_tokens" not in err


# ------------------------------------------------------------------------------- bad input: one sentence each
def _checkpoint(folder, tokenizer, **overrides):
    """A tiny random StarCoder (49153 rows unless overridden) saved with `tokenizer` beside it."""
    from wizardcoder import StarCoder

    StarCoder.from_preset("tiny", seed=0, **overrides).save_pretrained(str(folder))
    tokenizer.save(str(folder))
    return str(folder)


def _generate(tmp_path, capsys, *flags):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"task_id": "a", "prompt": "def f(x):\n"}) + "\n")
    out = tmp_path / "o.jsonl"
    rc = main(["generate", "--prompts", str(prompts), "--max-new-tokens", "4", "--prompt-style", "plain",
               "--no-progress", "--out", str(out), *flags])
    return rc, capsys.readouterr().err, out


def test_a_tokenizer_that_does_not_fit_the_checkpoint_is_refused(tmp_path, capsys, llama2_tokenizer_model):
    """Before: a 32000-token tokenizer on a 49153-row checkpoint sampled ids it cannot decode and exited 0."""
    from wizardcoder import Tokenizer

    ckpt = _checkpoint(tmp_path / "ckpt", Tokenizer.from_pretrained(llama2_tokenizer_model), vocab_size=49153)
    rc, err, out = _generate(tmp_path, capsys, "--model", ckpt)
    assert rc == 2 and not out.exists()
    assert err.strip() == (f"error: the tokenizer ({ckpt}) has 32000 tokens but the model's vocabulary has 49153; "
                           "sample from the checkpoint with the tokenizer it was trained with.")


def test_a_checkpoint_of_nan_weights_is_refused(tmp_path, capsys):
    """Before: every logit NaN, every answer token 0 (EOS): empty answers marked "stop", exit 0."""
    import torch

    from wizardcoder import StarCoder, Tokenizer

    tok = Tokenizer.bundled()
    model = StarCoder.from_preset("tiny", seed=0, vocab_size=tok.vocab_size)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[3, 5] = float("nan")
    model.save_pretrained(str(tmp_path / "ckpt"))
    tok.save(str(tmp_path / "ckpt"))
    rc, err, out = _generate(tmp_path, capsys, "--model", str(tmp_path / "ckpt"))
    assert rc == 2 and not out.exists()
    assert err.startswith(f"error: {tmp_path / 'ckpt'}: the weight transformer.h.1.mlp.c_fc.weight holds NaN")


@pytest.mark.parametrize("flag, value, says", [
    ("--batch-slots", "100000000", "--batch-slots must be in [1, 16384], got 100000000."),  # before: killed (memory)
    ("--num-samples", "100000000", "--num-samples must be in [1, 10000], got 100000000."),  # before: ran forever
])
def test_sizes_beyond_any_machine_are_one_sentence(tmp_path, capsys, flag, value, says):
    rc, err, out = _generate(tmp_path, capsys, "--model", "tiny", flag, value)
    assert rc == 2 and err.strip() == f"error: {says}" and not out.exists()


def test_a_cache_larger_than_free_memory_is_one_sentence():
    """Slots within the flag's bound can still exceed the machine: the engine refuses before allocating."""
    from wizardcoder import StarCoder
    from wizardcoder.engine import Engine
    from wizardcoder.errors import ConfigError

    model = StarCoder.from_preset("tiny", seed=0)
    with pytest.raises(ConfigError, match=r"^16384 sample slots of 1024 tokens need .* GiB of KV cache but the cpu "
                                          r"device has .* GiB free; use fewer slots \(generate's --batch-slots"):
        Engine(model, max_slots=16384, max_len=1024, max_prompts=10**6)


def test_deterministic_mode_gives_the_same_file_whatever_the_slots_and_ranks(humaneval, tmp_path):
    """64 new tokens with --deterministic: one process with 3 slots, one with 7, and two torchrun ranks with 2 each
    write the same bytes. (Without it, 3 and 7 slots already part on this workload: the matmuls round a row by
    the number of rows they run with.)"""
    args = ["--model", "tiny", "--task", "humaneval", "--data", humaneval, "--limit", "3", "--num-samples", "2",
            "--temperature", "0.8", "--top-p", "0.95", "--max-new-tokens", "64", "--seed", "1", "--no-progress",
            "--deterministic"]
    files = []
    for slots in ("3", "7"):
        files.append(tmp_path / f"s{slots}.jsonl")
        assert main(["generate", *args, "--batch-slots", slots, "--out", str(files[-1])]) == 0
    files.append(tmp_path / "ranks.jsonl")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "wizardcoder.generate",
           *args, "--batch-slots", "2", "--out", str(files[-1])]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=repo_env(OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    texts = [f.read_bytes() for f in files]
    assert texts[0] == texts[1] == texts[2]
    rows = [json.loads(line) for line in texts[0].decode().splitlines()]
    assert len(rows) == 6 and max(r["completion_tokens"] for r in rows) == 64
