"""Profiling built in: `train --profile` and `generate --profile` write Chrome traces (gzipped JSON) holding the
named phases; metrics.jsonl carries the per-step time breakdown, which agrees with the profiler's own clock and is
plotted in the run's report; `python -m bench.roofline` writes its plot and table on CPU."""
import gc
import json
import os
import time

import pytest

from test_engine import one_thread  # noqa: F401  (autouse fixture: one intra-op thread for tiny tensors)
from _util import REPO
from train_util import pack, small_checkpoint, small_tokenizer
from wizardcoder import profiling
from wizardcoder.cli import main
from wizardcoder.errors import ConfigError

PHASES = {"data", "forward", "backward", "optimizer", "comm"}
TOKENIZER = os.path.join(REPO, "wizardcoder", "assets", "tokenizer")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The demo seed data packed into 128-token shards with the bundled tokenizer (what the tiny preset trains on)."""
    return pack(str(tmp_path_factory.mktemp("profiling") / "shards"), TOKENIZER)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random 2-layer checkpoint of a 384-token vocabulary and its tokenizer (fast to sample from)."""
    tmp = tmp_path_factory.mktemp("profiling")
    return small_checkpoint(str(tmp / "ckpt"), small_tokenizer(str(tmp / "tok")))


def _train(shards, out, *flags):
    assert main(["train", "--model", "tiny", "--data", shards, "--out", out, "--warmup-steps", "1", "--no-progress",
                 "--no-save-final", *flags]) == 0
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"step"' in line]


def _annotations(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e.get("cat") == "user_annotation" and e.get("ph") == "X"]


def _inside(e, outer) -> bool:
    return outer["ts"] <= e["ts"] and e["ts"] + e["dur"] <= outer["ts"] + outer["dur"]


def test_train_profile_writes_a_trace_of_the_phases_that_matches_the_breakdown(shards, tmp_path):
    gc.disable()  # a full collection between a phase's mark and its range would show as a difference of clocks
    try:
        rows = _train(shards, str(tmp_path / "run"), "--max-steps", "5", "--profile")
    finally:
        gc.enable()
    assert not profiling._on  # the ranges are off again once the run ends
    folder = tmp_path / "run" / "profile"
    # wait 1, warmup 1, active 3 (the defaults): the window closes after step 5, one trace for the one rank
    assert os.listdir(folder) == ["rank0.step5.trace.json.gz"]
    trace = profiling.read_trace(str(folder / "rank0.step5.trace.json.gz"))  # gzip + json.load, as Perfetto reads it
    ann = _annotations(trace)
    names = {e["name"] for e in ann}
    assert PHASES <= names and any(n.startswith("FSDP::") for n in names), names
    steps = sorted((e for e in ann if e["name"].startswith("ProfilerStep#")), key=lambda e: e["ts"])
    assert [e["name"] for e in steps] == ["ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"]  # steps 3, 4, 5

    # every step's row has the breakdown, and it accounts for the step's wall time
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        parts = [r[f"{p}_s"] for p in PHASES]
        assert min(parts) >= 0 and r["forward_s"] > 0 and r["backward_s"] > 0 and r["optimizer_s"] > 0
        assert abs(sum(parts) - r["step_s"]) <= 0.1 * r["step_s"] + 0.005, r
    # ... and agrees with the profiler's clock over the same intervals: in the trace, "forward" holds the nested
    # "comm" ranges of the FSDP pre-forward waits, which the breakdown counts as comm. A mark's clock reading sits in
    # the gap between one range's end and the next one's start: time lost there (the thread descheduled on a busy
    # machine) lands in a phase by the marks and in no range by the trace, so the gaps bound the difference too.
    for step_event, r in zip(steps, rows[2:]):
        mine = [e for e in ann if _inside(e, step_event) and e["tid"] == step_event["tid"]]
        ranges = {p: [e for e in mine if e["name"] == p] for p in PHASES}
        nested_comm = [c for c in ranges["comm"] if any(_inside(c, f) for f in ranges["forward"])]
        assert nested_comm  # the root and both blocks are FSDP modules: their pre-forward waits are carved out
        traced = {p: sum(e["dur"] for e in ranges[p]) / 1e6 for p in PHASES}
        traced["forward"] -= sum(c["dur"] for c in nested_comm) / 1e6
        top = sorted((e for p in PHASES for e in ranges[p] if not any(e is c for c in nested_comm)),
                     key=lambda e: e["ts"])
        gaps = sum(b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(top, top[1:])) / 1e6
        assert 0 <= gaps < 0.5 * r["step_s"], gaps  # one top-level range after the other
        traced["forward+comm"], r["forward+comm_s"] = traced["forward"] + traced["comm"], r["forward_s"] + r["comm_s"]
        for p in ("data", "backward", "optimizer", "forward+comm"):
            assert abs(traced[p] - r[f"{p}_s"]) <= 0.02 * r[f"{p}_s"] + 0.0005 + gaps, (p, traced[p], gaps, r)
        for p in ("forward", "comm"):  # split by the nested marks, whose gaps no top-level range shows: looser
            assert abs(traced[p] - r[f"{p}_s"]) <= 0.1 * r[f"{p}_s"] + 0.003 + gaps, (p, traced[p], gaps, r)

    # the run's own plot, and the pipeline report's training section plots it too
    from matplotlib.image import imread

    from wizardcoder.report import write_report

    assert imread(str(tmp_path / "run" / "breakdown.png")).shape[0] > 100
    os.makedirs(tmp_path / ".run")
    (tmp_path / ".run" / "train.json").write_text(json.dumps(
        {"verb": "train", "stage": "train", "state": "done", "section": {"out": str(tmp_path / "run")}}))
    report = open(write_report(str(tmp_path))).read()
    assert "![step breakdown](breakdown.png)" in report and imread(str(tmp_path / "breakdown.png")).shape[0] > 100


def test_without_profile_no_trace_but_the_breakdown_is_logged(shards, tmp_path):
    rows = _train(shards, str(tmp_path / "run"), "--max-steps", "2", "--log-every", "2")
    assert not (tmp_path / "run" / "profile").exists()
    (r,) = rows  # step 2 only: its breakdown is the mean over steps 1 and 2, read once
    assert r["step"] == 2 and all(r[f"{p}_s"] >= 0 for p in PHASES) and r["forward_s"] > 0


def test_step_timer_accounts_each_phase_and_carves_out_interruptions():
    timer = profiling.StepTimer("cpu")
    for _ in range(2):
        timer.begin("data")
        time.sleep(0.03)
        timer.begin("forward")
        time.sleep(0.02)
        timer.interrupt("comm")  # a wait inside forward
        time.sleep(0.02)
        timer.resume()
        time.sleep(0.01)
        timer.end_step()
        time.sleep(0.05)  # between steps (logging, checkpoints): no phase's time
    got = timer.read()  # mean per step over the two steps
    for phase, slept in (("data", 0.03), ("forward", 0.03), ("comm", 0.02), ("backward", 0.0)):
        assert slept <= got[f"{phase}_s"] <= slept + 0.03, (phase, got)
    assert timer.read() == {f"{p}_s": 0.0 for p in profiling.BREAKDOWN}  # read empties the window

    # a long logging window: finished marks are folded in as they pile up, and nothing is lost
    t0 = time.perf_counter()
    for _ in range(3000):
        for phase in ("data", "forward", "backward", "optimizer"):
            timer.begin(phase)
            t = time.perf_counter()
            while time.perf_counter() - t < 2e-5:  # 20 us of work in each phase
                pass
        timer.end_step()
    wall = time.perf_counter() - t0
    assert len(timer._marks) <= 4096 + 5
    got = timer.read()
    assert 3000 * 4 * 2e-5 <= 3000 * sum(got.values()) <= wall
    assert got["optimizer_s"] >= 2e-5 and got["comm_s"] == 0.0


def test_ranges_are_nothing_without_a_profile():
    assert profiling.phase("x") is profiling.phase("y")  # one shared no-op object: no allocation, no record

    @profiling.ranged("sampling")
    def f(a):
        return a + 1

    assert f(1) == 2


@pytest.mark.parametrize("flag, value", [("--profile-active", "0"), ("--profile-wait", "-1")])
def test_bad_window_is_one_sentence_naming_the_flag(flag, value):
    from wizardcoder.train import TrainConfig

    with pytest.raises(ConfigError, match=flag):
        TrainConfig(**{flag[2:].replace("-", "_"): int(value)})


def test_generate_profile_writes_a_trace_of_the_engine_phases_and_the_same_samples(small, tmp_path):
    ckpt = small
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"task_id": t, "prompt": p, "stop": ["\nclass"]}) + "\n"
                               for t, p in (("a", "def add(a, b):"), ("b", "import os\nprint("))))
    common = ["generate", "--model", ckpt, "--prompts", str(prompts), "--prompt-style", "plain", "--num-samples", "3",
              "--temperature", "0.8", "--max-new-tokens", "16", "--batch-slots", "2", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "plain" / "s.jsonl")]) == 0
    assert main(common + ["--out", str(tmp_path / "prof" / "s.jsonl"), "--profile", "--profile-wait", "0"]) == 0
    assert not (tmp_path / "plain" / "profile").exists()
    assert (tmp_path / "plain" / "s.jsonl").read_text() == (tmp_path / "prof" / "s.jsonl").read_text()
    folder = tmp_path / "prof" / "profile"  # beside the samples file
    (trace_file,) = [f for f in os.listdir(folder) if f.endswith(".trace.json.gz")]
    names = {e["name"] for e in _annotations(profiling.read_trace(str(folder / trace_file)))}
    assert {"scheduling", "prefill", "decode", "sampling", "sync", "stop check"} <= names, names


def test_roofline_writes_its_plot_and_table_on_cpu(tmp_path):
    from matplotlib.image import imread

    from bench import roofline

    assert roofline.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "roofline.jsonl")]
    ceil, points = rows[0], rows[1:]
    peak, bw = ceil["matmul_flops_per_s"], ceil["copy_bytes_per_s"]
    assert ceil["case"] == "ceilings" and peak > 0 and bw > 0
    by_name = {p["name"].split()[0]: p for p in points}
    assert sorted(by_name) == ["add+layernorm", "attention", "bias+gelu", "decode", "linear+cross-entropy", "matmul",
                               "train"], by_name.keys()
    for p in points:  # the table's derived columns follow from its measured ones
        assert p["seconds"] > 0 and p["intensity"] == pytest.approx(p["flops"] / p["bytes"])
        assert p["TFLOP/s"] == pytest.approx(p["flops"] / p["seconds"] / 1e12)
        assert p["roof TFLOP/s"] == pytest.approx(min(peak, bw * p["intensity"]) / 1e12)
    # a LayerNorm moves more bytes than it does FLOPs; the MLP's GEMM is far right of any CPU's ridge
    assert by_name["add+layernorm"]["bound"] == "memory" and by_name["matmul"]["bound"] == "compute"
    table = (tmp_path / "roofline.md").read_text()
    assert table.count("\n| ") == 1 + len(points) and "ridge at" in table
    assert imread(str(tmp_path / "roofline.png")).shape[0] > 100


@pytest.mark.slow  # the server's own start-up (15 s on 2 busy cores); the profile adds about one second
def test_serve_profile_traces_a_window_of_engine_steps_while_serving(tmp_path):
    from _serve import post, save_tiny_checkpoint, serve

    ckpt = save_tiny_checkpoint(str(tmp_path / "tiny"))
    folder = tmp_path / "trace"
    with serve("--model", ckpt, "--profile", "--profile-wait", "0", "--profile-active", "2", "--profile-dir", str(folder)) as (base, _):
        status, answer = post(base, "/v1/completions", {"model": "tiny", "prompt": "def f(x):", "max_tokens": 40})
        assert status == 200, answer
        # the window (1 warm-up step + 2 recorded ones) closed during the request: the trace is written, the server goes on
        (trace_file,) = os.listdir(folder)
        names = {e["name"] for e in _annotations(profiling.read_trace(str(folder / trace_file)))}
        assert {"decode", "sampling", "sync"} <= names, names
        assert post(base, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 4})[0] == 200
