"""`make gpu-check`: on one GPU, in under 8 minutes, every GPU test and every GPU benchmark against its peer.

    python3 -m bench.gpu_check [--out DIR] [--budget-s 470] [--only tests kernels ...]

Runs with the machine's own python3 and torch (no venv, no network): builds `csrc/` in place when it can, runs the
`@pytest.mark.gpu` tests, then each benchmark below in its own process with its own time limit (a hung or failing
step is recorded and the next one runs), and writes everything under DIR (default $OUT, else bench/out/gpu):
`kernel-tests.xml` and `gpu-tests.xml` (JUnit), `<step>.log`, the benchmarks' `<name>.jsonl` rows, and `summary.md`, a table of what ran, how
long it took and how it ended, followed by each benchmark's printed table. Copy the figures from there into
bench/RESULTS.md with the card, date and commit the rows carry.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, command, extra environment, time limit in seconds). Order: correctness first, then the figures, the most
# wanted first, so a run cut short still brings them back. On CUDA the kernel and model tests run in bf16 against
# their references; WIZARDCODER_AUTOTUNE=0 keeps one attention tile per kernel so each new test shape does not
# autotune again.
KERNEL_TESTS = sorted(glob.glob(os.path.join("tests", "test_kernels_*.py"))) + [os.path.join("tests", "test_model.py")]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
STEPS: list[tuple[str, list[str], dict, int]] = [
    ("kernel-tests", PYTEST + ["--junitxml={out}/kernel-tests.xml", *KERNEL_TESTS], {"WIZARDCODER_AUTOTUNE": "0"}, 150),
    ("gpu-tests", PYTEST + ["-m", "gpu", "--continue-on-collection-errors", "--junitxml={out}/gpu-tests.xml", "tests"]
     + [f"--ignore={t}" for t in KERNEL_TESTS], {"WIZARDCODER_AUTOTUNE": "0"}, 100),
    ("kernels", [sys.executable, "-m", "bench.bench_kernels", "--quick"], {}, 80),
    ("generate", [sys.executable, "-m", "bench.bench_generate"], {}, 100),
    ("train", [sys.executable, "-m", "bench.bench_train"], {}, 100),
    ("model", [sys.executable, "-m", "bench.bench_model", "--quick"], {}, 60),
]


def build_native() -> str:
    """Build the sandbox extension in place (the evaluation tests need it); say what happened."""
    try:
        r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
        return "built" if r.returncode == 0 else f"build failed (rc {r.returncode}): {r.stderr.strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"build failed: {e}"


def run_step(name: str, cmd: list[str], extra_env: dict, limit: float, out: str) -> tuple[str, float]:
    cmd = [c.format(out=out) for c in cmd]
    env = dict(os.environ, **extra_env, OUT=out, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)  # real kernels on the GPU
    t0 = time.time()
    with open(os.path.join(out, f"{name}.log"), "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit).returncode
            status = "ok" if rc == 0 else f"failed (rc {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    return status, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "bench", "out", "gpu"))
    p.add_argument("--budget-s", type=float, default=470.0, help="stop starting new steps after this many seconds")
    p.add_argument("--only", nargs="*", default=None, help=f"steps to run: {', '.join(s[0] for s in STEPS)}")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; it runs on a GPU machine (`make gpu-check` there).", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    head = [f"# gpu-check on {device}", "",
            f"torch {torch.__version__}, python {sys.version.split()[0]}, native build: {build_native()}", "",
            "| step | status | seconds |", "|---|---|---|"]
    print("\n".join(head), flush=True)
    rows, t_start = [], time.time()
    for name, cmd, extra_env, limit in STEPS:
        if args.only and name not in args.only:
            continue
        left = args.budget_s - (time.time() - t_start)
        if left < 20:
            rows.append(f"| {name} | skipped: budget spent | 0 |")
            print(rows[-1], flush=True)
            continue
        status, secs = run_step(name, cmd, extra_env, min(limit, left), args.out)
        rows.append(f"| {name} | {status} | {secs:.0f} |")
        print(rows[-1], flush=True)
    logs = []
    for name, *_ in STEPS:
        path = os.path.join(args.out, f"{name}.log")
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            logs += ["", f"## {name}", "", "```", text[-6000:].rstrip(), "```"]
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(head + rows + logs) + "\n")
    print(f"\nwrote {os.path.join(args.out, 'summary.md')}")
    return 0 if all("| ok |" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
