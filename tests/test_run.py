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


def write_config(path, out, *, until="evaluate", train_steps=6, extra="", llm=None):
    """A small pipeline: the shipped seed set packed, the tiny model trained, 2 HumanEval problems scored. With
    `llm` (a base URL) the seeds are first evolved for one round through it and the evolved set is packed."""
    evolve = f'''
[evolve]
data = ["{{assets}}/demo_seed.jsonl"]
rounds = 1
llm_base_url = "{llm}"
llm_model = "stub-model"
concurrency = 1
equality_check = false
decontaminate = false
progress = false
''' if llm else ""
    packed = "{evolve}" if llm else "{assets}/demo_seed.jsonl"
    text = f'''
[run]
out = "{out}"
report = false
{evolve}
[pack]
data = ["{packed}"]
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


def test_also_evaluate_scores_more_benchmarks_and_reports_them_in_one_table(tmp_path):
    """`[run] also_evaluate`: generate@TASK and evaluate@TASK per benchmark, with the same model and settings, each
    on its own problems; the report has one pass@k row per benchmark, equal to each summary; a rerun redoes
    nothing; an unknown task is one sentence."""
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "r.toml", run, train_steps=2)
    text = open(cfg).read().replace("report = false", 'also_evaluate = ["humaneval-js", "mbpp"]')
    open(cfg, "w").write(text)
    assert wizardcoder_main(["run", cfg]) == 0
    summaries = {}
    for task, ids in (("humaneval", {"HumanEval/0", "HumanEval/1"}),
                      ("humaneval-js", {"HumanEval_23_strlen", "HumanEval_89_encrypt"}),
                      ("mbpp", {"11", "12"})):
        folder = "" if task == "humaneval" else "-" + task
        samples = list(read_jsonl(str(run / f"generate{folder}" / "samples.jsonl")))
        assert {r["task_id"] for r in samples} == ids, task
        summaries[task] = json.load(open(run / f"evaluate{folder}" / "summary.json"))
        assert summaries[task]["task"] == task and summaries[task]["n_samples"] == 2
        marker = _state(run, "evaluate" if task == "humaneval" else f"evaluate.{task}")
        assert marker["state"] == "done"
    report = open(run / "report.md").read()
    table = report.split("### pass@k per benchmark\n\n")[1].split("\n\n")[0].splitlines()
    assert table[0] == "| benchmark | task | problems | samples | pass@1 | note |"
    assert [row.split(" | ")[1] for row in table[2:]] == ["humaneval", "humaneval-js", "mbpp"]
    for row, (task, s) in zip(table[2:], summaries.items()):
        assert float(row.split(" | ")[4]) == pytest.approx(s["pass@1"], abs=1e-4)
    proc = wc("run", cfg)
    assert proc.returncode == 0 and proc.stdout.count("complete, skipped") == 8, proc.stdout
    open(cfg, "w").write(text.replace('"mbpp"]', '"mbpp", "humaneval-cobol"]'))
    err = one_sentence_error(wc("run", cfg))
    assert "also_evaluate" in err and "humaneval-cobol" in err and "humaneval-js" in err


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
    if not os.path.exists(os.path.join(run, "generate")):  # a run --until train
        return shards, weights, [], {}
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


def test_sigkill_in_train_then_rerun_gives_the_same_outputs_and_redoes_nothing_complete(tmp_path, capsys):
    """Killed after train's first checkpoint: the rerun skips pack, resumes train, and ends bit for bit where an
    uninterrupted run ends."""
    ref_run, run = str(tmp_path / "ref"), str(tmp_path / "killed")  # pack and train (the other stages: slow tests)
    # the uninterrupted run, in-process
    assert wizardcoder_main(["run", write_config(tmp_path / "ref.toml", ref_run, until="train")]) == 0

    cfg = write_config(tmp_path / "k.toml", run, until="train")
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
    capsys.readouterr()
    assert wizardcoder_main(["run", cfg]) == 0
    third = capsys.readouterr().out
    assert "pack: complete, skipped" in third and "train: complete, skipped" in third
    assert wizardcoder_main(["run", cfg, "--set", "train.max_steps=2"]) == 0
    changed = capsys.readouterr().out
    assert "pack: complete, skipped" in changed and "train: settings changed" in changed
    rows = [r for r in read_jsonl(os.path.join(run, "train", "metrics.jsonl")) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["evolve", "pack", "generate", "evaluate"])
def test_sigkill_in_other_stages(tmp_path, stage):
    from openai_stub import StubLLM

    ref_run, run = str(tmp_path / "ref"), str(tmp_path / "killed")
    with StubLLM(delay=0.05) as stub:  # answers are a function of the prompt: both runs get the same data
        llm = stub.base_url if stage == "evolve" else None
        assert wc("run", write_config(tmp_path / "ref.toml", ref_run, llm=llm)).returncode == 0
        cfg = write_config(tmp_path / "k.toml", run, llm=llm)
        journal = os.path.join(run, "evolve", "round_1.jsonl")
        started = (lambda: os.path.exists(journal) and os.path.getsize(journal) > 0) if stage == "evolve" else \
            (lambda: (_state(run, stage) or {}).get("state") == "running")
        with open(tmp_path / "log1", "w") as log:
            proc = _start(cfg, log)
            _kill_when(proc, started, f"{stage} running")
        again = wc("run", cfg)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    order = ["evolve", "pack", "train", "generate", "evaluate"]
    for before in order[1: order.index(stage)]:
        assert f"[run] {before}: complete, skipped" in again.stdout
    _same(_outputs(ref_run), _outputs(run))
    if llm:
        assert open(os.path.join(ref_run, "evolve", "merged.jsonl")).read() == \
            open(os.path.join(run, "evolve", "merged.jsonl")).read()


# ------------------------------------------------------------------------------------------ round selection


def test_round_selection_keeps_the_round_before_dev_pass_at_1_falls(tmp_path):
    """The dev score of each round is set by the data a scripted LLM (a real local server) writes in that round:
    answers are eight equal digits, the tiny model learns the majority digit within a few steps, and the dev problem
    (`return ` + one generated token) passes only when that digit is 1.

    seeds: 8 lineages, only "Task 0" has an answer (0s)
    round 1: every answer empty -> all eliminated        data: 1 x 0s          model says 0 -> dev pass@1 0
    round 2: lineages 0-2 answer 1s, the others empty    data: 1 x 0s, 3 x 1s  model says 1 -> dev pass@1 1
    round 3: every lineage answers 0s                    data: 9 x 0s, 3 x 1s  model says 0 -> dev pass@1 0
    so the loop stops at round 3 (pass@1 fell), keeps round 2, and never runs round 4."""
    import re

    import torch
    from openai_stub import StubLLM, question_of

    evolutions: dict[int, int] = {}
    ONES, ZEROS = "1" * 8, "0" * 8

    def responder(kind, prompt):
        if kind == "evolve":
            k = int(re.search(r"Task (\d+)", question_of(prompt)).group(1))
            evolutions[k] = evolutions.get(k, 0) + 1  # rounds reach the server in order: the count is the round
            return f"Task {k}, evolved in round {evolutions[k]}"
        k, r = map(int, re.search(r"Task (\d+), evolved in round (\d+)", prompt).groups())
        return {1: "", 2: ONES if k < 3 else "", 3: ZEROS, 4: ONES}[r]

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Task {k}", **({"output": ZEROS} if k == 0 else {})}) + "\n"
                             for k in range(8)))
    dev = tmp_path / "dev.jsonl"  # HumanEval format: the program is prompt + answer + test
    dev.write_text(json.dumps({"task_id": "Dev/0", "prompt": "def answer():\n    return ", "entry_point": "answer",
                               "canonical_solution": "1\n", "test": "def check(f):\n    assert f() == 1\n"}) + "\n")
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only spins
    with StubLLM(responder=responder) as stub:
        cfg = tmp_path / "rounds.toml"
        cfg.write_text(f'''
[run]
out = "{run}"
select_rounds = true
dev_task = "humaneval"
dev_data = "{dev}"

[evolve]
data = ["{seeds}"]
rounds = 4
llm_base_url = "{stub.base_url}"
llm_model = "stub-model"
concurrency = 1
equality_check = false
dedup = false
decontaminate = false
progress = false

[pack]
tokenizer = "{{assets}}/tokenizer"
seq_len = 64

[train]
model = "tiny"
max_steps = 20
lr = 1e-2
min_lr = 1e-2
beta2 = 0.95
warmup_steps = 1
micro_batch_packs = 2
progress = false

[generate]
task = "humaneval"
max_new_tokens = 1
temperature = 0.0
''')
        try:
            assert wizardcoder_main(["run", str(cfg), "--until", "train"]) == 0
        finally:
            torch.set_num_threads(threads)
    sel = json.load(open(run / "rounds" / "selection.json"))
    assert [r["pass@1"] for r in sel["rounds"]] == [0.0, 1.0, 0.0]
    assert sel["best"] == 2 and "fell at round 3" in sel["stopped"]
    assert not os.path.exists(run / "rounds" / "r4") and max(evolutions.values()) == 3
    # each round trained on seed + rounds 1..r only
    assert [len(list(read_jsonl(str(run / "rounds" / f"r{r}" / "evolved.jsonl")))) for r in (1, 2, 3)] == [1, 4, 12]
    report = open(run / "report.md").read()
    assert "Best round: **2**" in report and os.path.exists(run / "rounds.png")


@pytest.mark.slow
def test_train_under_torchrun(tmp_path):
    """`[run] launcher = "torchrun"`: train runs as torchrun ... -m wizardcoder train FLAGS (2 CPU ranks, gloo)."""
    cfg = write_config(tmp_path / "t.toml", tmp_path / "run", until="train", train_steps=2)
    text = open(cfg).read().replace("report = false", 'report = false\nlauncher = "torchrun"\nnproc_per_node = 2')
    open(cfg, "w").write(text)
    proc = wc("run", cfg)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the resolved [train] section as the verb's flags, the wired data and out included
    run = tmp_path / "run"
    launch = "torch.distributed.run --nproc_per_node=2 -m wizardcoder train"
    line = next(x for x in proc.stdout.splitlines() if launch in x)
    for flags in ("--model=tiny", "--max-steps=2", "--no-progress", f"--data={run / 'pack'}", f"--out={run / 'train'}"):
        assert f" {flags}" in line, (flags, line)
    assert "2 rank(s)" in proc.stdout and os.path.exists(tmp_path / "run" / "train" / "final" / "model.safetensors")


RESUME_SENTENCE = ("interrupted: stopped during stage train; run the same command again to resume: finished stages "
                   "are skipped and the interrupted one resumes from what it saved.")


def test_ctrl_c_says_which_stage_stopped_and_how_to_resume(tmp_path):
    """Ctrl-C (SIGINT) in the middle of train exits 130 with one line naming the stage and saying that the same
    command resumes (it printed only "interrupted")."""
    run = str(tmp_path / "run")
    cfg = write_config(tmp_path / "c.toml", run, until="train", train_steps=10_000)
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "wizardcoder", "run", cfg], stdout=subprocess.DEVNULL,
                                stderr=log, env=repo_env(OMP_NUM_THREADS="1"))
        deadline = time.monotonic() + 300
        metrics = os.path.join(run, "train", "metrics.jsonl")
        # inside the training loop: after its first logged step (the first moments: the tests below)
        while not (os.path.exists(metrics) and '"step"' in open(metrics).read()):
            assert proc.poll() is None and time.monotonic() < deadline, "train never logged a step"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
    err = open(tmp_path / "log").read().strip().splitlines()[-1]
    assert err == RESUME_SENTENCE, err


# `python -m interrupted WHEN run CONFIG`: `wizardcoder run` with a Ctrl-C (a SIGINT to itself) in the train stage.
# WHEN "exec", "report", "exit", "unwind", "swallowed": the stages are replaced by one Ctrl-C, "exec" sent from inside
# a string exec (as when it lands while a dataclass is being made, e.g. while train imports torch.distributed),
# "report" with a second one while the resume sentence is printed, "exit" with a second one from an atexit callback,
# while the process exits, "unwind" with a second one in a finally block that the first one runs, "swallowed" after a
# first one that a library swallowed (the stage going on): the second must stop it.
# "checkpoint": the real stages, the Ctrl-C sent from inside the first checkpoint's write (torch.distributed.checkpoint)
INTERRUPTED = """
import atexit, os, signal, sys, time

from wizardcoder import interrupts
from wizardcoder.cli import main
from wizardcoder.pipeline import run as pipeline

when = sys.argv.pop(1)


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


def stages(run, start, until):
    run.current = "train"
    try:
        if when == "swallowed":
            try:
                ctrl_c()
            except KeyboardInterrupt:
                pass
            time.sleep(getattr(interrupts, "IGNORE_S", 0) + 0.5)
        exec("ctrl_c()", {"ctrl_c": ctrl_c}) if when == "exec" else ctrl_c()
        time.sleep(10)
    finally:
        if when == "unwind":
            ctrl_c()
            print("cleaned up")


class Stderr:
    def __init__(self, f):
        self.f = f

    def write(self, text):
        if "interrupted" in text:
            ctrl_c()
        return self.f.write(text)

    def flush(self):
        self.f.flush()


def checkpoint_write(save):
    def wrapped(*args, **kwargs):
        if sys._getframe(1).f_globals["__name__"].startswith("torch.distributed.checkpoint") and not sent:
            sent.append(ctrl_c())
        return save(*args, **kwargs)
    return wrapped


sent = []
if when == "checkpoint":
    import torch
    torch.save = checkpoint_write(torch.save)
else:
    pipeline._run_stages = stages
if when == "report":
    sys.stderr = Stderr(sys.stderr)
if when == "exit":
    atexit.register(lambda: (ctrl_c(), time.sleep(0.5)))
sys.exit(main())
"""


@pytest.mark.parametrize("when", ["exec", "report", "exit", "unwind", "swallowed"])
def test_ctrl_c_exits_130_with_one_sentence_wherever_it_lands(tmp_path, when):
    """Ctrl-C exits with status 130 and the resume sentence alone on stderr, wherever it lands: a SIGINT raised
    inside a string exec made `python -m wizardcoder` end by the signal after printing the sentence (returncode -2;
    CPython marked the KeyboardInterrupt unhandled although main() caught it); a second one while the sentence was
    printed escaped main() (a traceback, the signal again), one during the exit printed "Exception ignored", and one
    during the unwinding cut its cleanup short (in torch, a KeyboardInterrupt in a destructor aborts the process);
    and when a library swallows the first Ctrl-C, a later one still stops the stage."""
    (tmp_path / "interrupted.py").write_text(INTERRUPTED)
    cfg = write_config(tmp_path / "c.toml", tmp_path / "run", until="train")
    env = repo_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-m", "interrupted", when, "run", cfg], capture_output=True, text=True,
                          env=env, timeout=60)
    assert (proc.returncode, proc.stderr.strip()) == (130, RESUME_SENTENCE), proc.stderr[-3000:]
    assert ("cleaned up" in proc.stdout) == (when == "unwind")


def test_ctrl_c_while_a_checkpoint_is_written_lets_it_finish_then_exits_130_and_the_rerun_resumes_from_it(tmp_path):
    """A Ctrl-C inside a checkpoint's write waits for the checkpoint to be whole, then stops the run with status 130
    and the resume sentence; the rerun resumes from that checkpoint (torch.distributed.checkpoint turned the
    KeyboardInterrupt into a CheckpointException: exit 1 with a traceback, and a checkpoint left half written)."""
    (tmp_path / "interrupted.py").write_text(INTERRUPTED)
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", run, until="train")
    env = repo_env(OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-m", "interrupted", "checkpoint", "run", cfg], capture_output=True,
                          text=True, env=env, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 130 and err[-2:] == ["Ctrl-C: stopping once checkpoint step_0000002 is written",
                                                   RESUME_SENTENCE], proc.stderr[-3000:]
    assert open(run / "train" / "checkpoints" / "latest").read() == "step_0000002\n"
    again = wc("run", cfg)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout and "at step 2" in again.stdout, again.stdout[-3000:]


def _ctrl_c(cfg: str, when, second: float | None = None) -> None:
    """`wizardcoder run CFG`, a SIGINT `when` (seconds after the train stage started, or a predicate polled), a second
    one `second` seconds later; it must end with status 130 and the resume sentence once, last, with no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "wizardcoder", "run", cfg], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=repo_env(OMP_NUM_THREADS="1"))
    try:
        for line in proc.stdout:
            if line.startswith("[run] train: train ->"):
                break
        deadline = time.monotonic() + 300
        while not (when() if callable(when) else True):
            assert proc.poll() is None and time.monotonic() < deadline, "train ended before the Ctrl-C"
            time.sleep(0.02)
        time.sleep(0 if callable(when) else when)
        proc.send_signal(signal.SIGINT)
        if second is not None:
            time.sleep(second)
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.count(RESUME_SENTENCE) == 1, (when, proc.returncode, err[-3000:])
    assert err.strip().splitlines()[-1] == RESUME_SENTENCE and "Traceback" not in err, (when, err[-3000:])


@pytest.mark.slow
def test_ctrl_c_in_the_first_moments_of_train_exits_130_and_the_rerun_resumes(tmp_path):
    """Ctrl-C at moments of the train stage from its first (train importing torch.distributed, where one that landed
    while a dataclass was being made ended the process by the signal, returncode -2) to its first checkpoint, one of
    them pressed twice: every run exits 130 with the resume sentence once, and the next run resumes."""
    run = str(tmp_path / "run")
    cfg = write_config(tmp_path / "c.toml", run, until="train", train_steps=40)
    for when, second in ((0.0, None), (0.3, None), (0.6, 0.05), (1.0, None), (1.5, 0.2)):
        _ctrl_c(cfg, when, second)
    _ctrl_c(cfg, lambda: os.path.exists(os.path.join(run, "train", "checkpoints", "latest")), 0.05)
    again = wc("run", cfg)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[run] pack: complete, skipped" in again.stdout and "resumed from" in again.stdout
    assert os.path.exists(os.path.join(run, "train", "final", "model.safetensors"))


def test_a_section_as_flags_parses_back_to_the_same_config():
    """The command line a child verb gets (train under torchrun, the [serve] server) is read back by the verb's own
    parser into the Config that `settings.build` makes from the section: every kind of setting."""
    from dataclasses import dataclass, field
    from typing import Literal

    from wizardcoder import settings
    from wizardcoder.pipeline.stages import command_line

    @dataclass
    class Group:
        seed: int | None = 3
        top_p: float = 1.0

    @dataclass
    class Verb:
        model: str = field(metadata={"positional": True})
        data: list[str] = field(default_factory=list)
        k: list[int] = field(default_factory=lambda: [1])
        progress: bool = True
        dtype: Literal["fp32", "bf16"] = "fp32"
        max_steps: int | None = 10
        note: str | None = None
        sampling: Group = field(default_factory=Group)

    sections = [{"model": "m", "data": ["a b.jsonl", "c"], "k": [1, 10], "progress": False, "dtype": "bf16",
                 "max_steps": None, "note": "-x=1,y", "seed": None, "top_p": 0.95},
                {"data": [], "model": "m", "progress": True, "top_p": 1e-4, "seed": 0, "note": None}]
    for section in sections:
        argv = command_line(Verb, section)
        assert settings.parse(Verb, argv) == settings.build(Verb, section), argv


def test_run_command_line():
    """`--set` repeats (every one kept, in order); `--from` after `--until` is one sentence."""
    from wizardcoder import settings
    from wizardcoder.errors import ConfigError
    from wizardcoder.pipeline import run

    cfg = settings.parse(run.Config, ["c.toml", "--set", "train.lr=1e-4", "--from", "pack", "--set", "pack.seed=2"])
    assert (cfg.config, cfg.start, cfg.until, cfg.sets) == ("c.toml", "pack", None, ["train.lr=1e-4", "pack.seed=2"])
    assert run.parse_set(cfg.sets) == [("train", "lr", 1e-4), ("pack", "seed", 2)]
    with pytest.raises(ConfigError, match="--from train comes after --until pack"):
        settings.parse(run.Config, ["c.toml", "--from", "train", "--until", "pack"])
