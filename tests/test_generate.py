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
from wizardcoder.cli import main
from wizardcoder.generate import GenerateConfig, generate_samples

ARGS = ["--model", "tiny", "--task", "humaneval", "--limit", "4", "--temperature", "0.8", "--top-p", "0.95",
        "--max-new-tokens", "12", "--seed", "7", "--no-progress"]


@pytest.fixture(scope="module")
def humaneval(shared_data):
    return os.path.join(shared_data, "humaneval", "HumanEval.jsonl")


@pytest.fixture(scope="module")
def reference(humaneval, tmp_path_factory):
    """One process, three slots: the file every other way of running must reproduce byte for byte."""
    out = str(tmp_path_factory.mktemp("ref") / "samples.jsonl")
    cfg = GenerateConfig(model="tiny", task="humaneval", data=humaneval, limit=4, n=2, temperature=0.8, top_p=0.95,
                         max_new_tokens=12, seed=7, batch_slots=3, progress=False, out=out)
    assert generate_samples(cfg) == out
    with open(out, "rb") as f:
        return f.read()


def test_samples_file_is_what_evaluate_reads(reference, humaneval, tmp_path):
    from wizardcoder.eval.benchmarks import get_benchmark
    from wizardcoder.eval.scoring import read_samples

    path = tmp_path / "s.jsonl"
    path.write_bytes(reference)
    bench = get_benchmark("humaneval")
    problems = bench.load(humaneval)
    rows = read_samples(str(path), bench, problems)
    assert [r["task_id"] for r in rows] == [t for t in list(problems)[:4] for _ in range(2)]
    assert all(isinstance(r["response"], str) and r["finish_reason"] in ("stop", "length") for r in rows)
    assert len({r["response"] for r in rows}) == 8  # sampled: every answer differs


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
