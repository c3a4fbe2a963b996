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
              "--set", "generate.limit=2", "--set", "evolve.max_new_tokens=8", "--set", "evolve.rounds=1")
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


def test_demo_config_and_recipes_resolve_against_the_verbs_on_disk():
    """Every shipped config names only sections and fields the verbs have, and wires into five stages."""
    from wizardcoder.cli import load_config
    from wizardcoder.pipeline.run import Run

    assets = os.path.join(REPO, "wizardcoder", "assets")
    paths = [os.path.join(assets, "demo.toml")] + [os.path.join(assets, "recipes", f) for f in
                                                   sorted(os.listdir(os.path.join(assets, "recipes")))]
    assert len(paths) == 5
    for path in paths:
        run = Run(load_config(path), path)
        stages = run.plain_stages({})
        assert [s.verb for s in stages] == ["evolve", "pack", "train", "generate", "evaluate"], path
        assert stages[3].section["model"] == os.path.join(run.out, "train", "final")
        assert stages[4].section["samples"] == stages[3].section["out"]
