"""`make gpu-check` (bench/gpu_check.py): its steps fit its budget, and its plumbing, run on CPU with --dry-run,
ends inside the budget with at most 8 files, a summary row per step and the benchmarks' figures merged into one."""
import json
import os
import subprocess
import sys
import time

import pytest
from _util import REPO, repo_env


def test_the_build_and_every_step_limit_add_up_inside_the_budget():
    from bench import gpu_check

    assert gpu_check.planned_seconds() <= 470 - 10  # 8 minutes, less start-up
    assert len(gpu_check.OUTPUTS) <= gpu_check.MAX_FILES == 8
    junit = [a for s in gpu_check.STEPS for a in s.cmd if a.startswith("--junitxml=")]
    assert sorted(a.split("/")[-1] for a in junit) == sorted(f for f in gpu_check.OUTPUTS if f.endswith(".xml"))


@pytest.mark.slow
def test_dry_run_ends_inside_its_budget_with_at_most_8_files(tmp_path):
    budget = 300
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(tmp_path),
                        "--budget-s", str(budget)], cwd=REPO, env=repo_env(), capture_output=True, text=True,
                       timeout=budget + 120)
    wall = time.time() - t0
    print(r.stdout, file=sys.stderr)
    assert wall <= budget + 20, wall  # interpreter start-up and the last summary write
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert 0 < len(files) <= 8, files
    summary = open(tmp_path / "summary.md").read()
    from bench import gpu_check

    for step in gpu_check.STEPS:
        assert f"| {step.name} |" in summary
    for line in open(tmp_path / "figures.jsonl"):
        row = json.loads(line)
        assert {"bench", "device", "commit"} <= set(row)
