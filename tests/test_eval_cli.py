"""`wizardcoder evaluate`: output files and formats, resuming, responses post-processed, user errors, and the
--model path (generate with the sampler, then score)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from _util import REPO

from wizardcoder.cli import main
from wizardcoder.benchmarks import get_benchmark


@pytest.fixture()
def he_subset(shared_data, tmp_path):
    probs = get_benchmark("humaneval").load(os.path.join(shared_data, "humaneval", "HumanEval.jsonl"))
    keep = list(probs)[:5]
    path = tmp_path / "he5.jsonl"
    with open(path, "w") as f:
        for t in keep:
            f.write(json.dumps(probs[t].raw) + "\n")
    return str(path), {t: probs[t] for t in keep}


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_cli_scores_all_three_sample_fields_and_resumes(he_subset, tmp_path, capsys):
    data, probs = he_subset
    ids = list(probs)
    rows = []
    for t in ids:
        p = probs[t]
        rows.append({"task_id": t, "completion": p.raw["canonical_solution"]})
        rows.append({"task_id": t, "solution": p.prompt + p.raw["canonical_solution"]})
        rows.append({"task_id": t, "response": "Sure:\n```python\n" + p.prompt + p.raw["canonical_solution"]
                     + "\n# Example usage\nprint(1)\n```\nDone."})
        rows.append({"task_id": t, "completion": "    return None\n"})
    samples = write(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out"
    rc = main(["evaluate", "--task", "humaneval", "--samples", samples, "--data", data, "--out", str(out),
               "--k", "1", "2", "10", "--no-progress", "--workers", "2"])
    assert rc == 0
    summary = json.load(open(out / "summary.json"))
    assert summary["task"] == "humaneval" and summary["n_samples"] == 20 and summary["n_tasks"] == 5
    assert summary["pass@1"] == pytest.approx(0.75) and "pass@10" not in summary  # k > n is not reported
    assert summary["pass@2"] == pytest.approx(1.0)
    assert summary["verdicts"]["passed"] == 15 and summary["verdicts"]["failed"] == 5
    assert summary["failures"]["failed: AssertionError"]["count"] == 4  # `return None`: a wrong answer...
    assert summary["failures"]["failed: TypeError"] == {"count": 1, "example": "HumanEval/4"}  # ...or a crash
    assert summary["per_task"][ids[0]] == {"n": 4, "c": 3, "pass@1": 0.75, "pass@2": 1.0}
    assert "isolation" in summary
    res = [json.loads(line) for line in open(out / "results.jsonl")]
    assert [r["sample"] for r in res] == list(range(20))
    assert [r["completion_id"] for r in res[:4]] == [0, 1, 2, 3]
    assert {"task_id", "passed", "status", "error", "seconds", "solution"} <= set(res[0])
    printed = capsys.readouterr()
    assert json.loads(printed.out.strip().splitlines()[-1])["pass@1"] == pytest.approx(0.75)
    assert "failures by kind" in printed.err and "isolation" in printed.err

    # resume: a run killed part-way leaves some rows; only the rest are run again
    kept = res[:7]
    kept[3] = dict(kept[3], passed=False, status="failed")  # a marker we can see survive the rerun
    write(out / "results.jsonl", kept)
    with open(out / "results.jsonl", "a") as f:
        f.write('{"sample": 7, "task_id": "HumanEval/1", "pas')  # torn last line of a crash
    rc = main(["evaluate", "--task", "humaneval", "--samples", samples, "--data", data, "--out", str(out),
               "--no-progress"])
    assert rc == 0
    res2 = [json.loads(line) for line in open(out / "results.jsonl")]
    assert len(res2) == 20 and res2[3]["status"] == "failed"  # kept, not re-run
    assert [r["passed"] for i, r in enumerate(res2) if i != 3] == [r["passed"] for i, r in enumerate(res) if i != 3]
    # a changed sample is re-run even if its position was done
    rows[0] = {"task_id": ids[0], "completion": "    return 42\n"}
    write(tmp_path / "samples.jsonl", rows)
    main(["evaluate", "--task", "humaneval", "--samples", samples, "--data", data, "--out", str(out), "--no-progress"])
    res3 = [json.loads(line) for line in open(out / "results.jsonl")]
    assert res3[0]["passed"] is False and res3[3]["status"] == "failed"


def test_cli_user_errors(he_subset, tmp_path, capsys):
    data, probs = he_subset
    bad = write(tmp_path / "bad.jsonl", [{"task_id": "HumanEval/0"}])
    assert main(["evaluate", "--task", "humaneval", "--samples", bad, "--data", data, "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "sample 1" in capsys.readouterr().err
    unknown = write(tmp_path / "unknown.jsonl", [{"task_id": "HumanEval/999", "completion": ""}])
    assert main(["evaluate", "--task", "humaneval", "--samples", unknown, "--data", data, "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    assert "HumanEval/999" in capsys.readouterr().err
    not_text = write(tmp_path / "not_text.jsonl", [{"task_id": "HumanEval/0", "completion": "", "solution": None}])
    assert main(["evaluate", "--task", "humaneval", "--samples", not_text, "--data", data, "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    assert "sample 1 (HumanEval/0) needs a string" in capsys.readouterr().err
    assert main(["evaluate", "--task", "humaneval", "--samples", str(tmp_path / "nope.jsonl"), "--data", data,
                 "--out", str(tmp_path / "o")]) == 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"task_id": "HumanEval/0", "completion": ""}\nnot json\n')
    assert main(["evaluate", "--task", "humaneval", "--samples", str(broken), "--data", data, "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    assert "broken.jsonl:2" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--timeout", "-1"], "--timeout -1.0: give the CPU seconds per program as a number > 0"),
    (["--timeout", "0"], "--timeout 0.0: give the CPU seconds per program as a number > 0"),
    (["--timeout", "nan"], "--timeout nan"),
    (["--workers", "0"], "--workers 0: give a whole number >= 1"),
    (["--k", "0"], "every k >= 1"),
    (["--memory-mb", "0"], "--memory-mb 0: give a whole number of MiB >= 64"),
])
def test_cli_numeric_flags_are_checked_before_anything_runs(he_subset, tmp_path, capsys, flags, message):
    data, probs = he_subset
    samples = write(tmp_path / "s.jsonl", [{"task_id": t, "completion": "    pass\n"} for t in probs])
    out = tmp_path / "o"
    assert main(["evaluate", "--task", "humaneval", "--samples", samples, "--data", data, "--out", str(out),
                 "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "3"])
def test_api_timeout_is_checked(he_subset, tmp_path, timeout):
    from wizardcoder.errors import ConfigError
    from wizardcoder.eval import evaluate

    data, probs = he_subset
    samples = write(tmp_path / "s.jsonl", [{"task_id": t, "completion": "    pass\n"} for t in probs])
    with pytest.raises(ConfigError, match="give the CPU seconds per program as a number > 0"):
        evaluate("humaneval", samples, str(tmp_path / "o"), data=data, timeout=timeout, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,message", [
    (b"", "no samples (the file is empty)"),
    (b"\n\n", "no samples (the file is empty)"),
    (bytes(range(256)) * 8, "not a UTF-8 text file"),
    (b"\x1f\x8b\x08\x00garbage", "not a UTF-8 text file"),
])
def test_cli_unusable_samples_file_is_one_sentence_and_writes_nothing(he_subset, tmp_path, capsys, content, message):
    data, _ = he_subset
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(content)
    out = tmp_path / "o"
    assert main(["evaluate", "--task", "humaneval", "--samples", str(samples), "--data", data, "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(samples) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_out_that_is_a_file_or_unwritable(he_subset, tmp_path, capsys):
    data, probs = he_subset
    samples = write(tmp_path / "s.jsonl", [{"task_id": t, "completion": "    pass\n"} for t in probs])
    a_file = tmp_path / "results"
    a_file.write_text("keep me")
    assert main(["evaluate", "--task", "humaneval", "--samples", samples, "--data", data, "--out", str(a_file),
                 "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "keep me"
    assert main(["evaluate", "--task", "humaneval", "--samples", samples, "--data", data, "--out",
                 str(a_file / "o"), "--no-progress"]) == 2  # beneath a file: no folder can be made there
    assert "cannot write there (Not a directory)" in capsys.readouterr().err


def test_cli_needs_task_out_and_one_source(he_subset, tmp_path, capsys):
    data, _ = he_subset
    s = write(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    assert main(["evaluate", "--samples", s, "--out", str(tmp_path / "o")]) == 2
    assert "--task is required" in capsys.readouterr().err
    assert main(["evaluate", "--task", "humaneval", "--samples", s]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert main(["evaluate", "--task", "humaneval", "--samples", s, "--model", "x", "--out", str(tmp_path / "o")]) == 2
    assert "exactly one of --samples" in capsys.readouterr().err
    assert main(["evaluate", "--task", "humaneval", "--samples", s, "--out", str(tmp_path / "o"), "--n", "20"]) == 2
    assert "--num-samples only applies with --model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_help_says_timeout_is_cpu_seconds(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "CPU seconds per program" in text and "--no-progress" in text


def test_cli_runs_as_a_program(he_subset, tmp_path):
    data, probs = he_subset
    samples = write(tmp_path / "s.jsonl", [{"task_id": t, "completion": p.raw["canonical_solution"]}
                                           for t, p in probs.items()])
    r = subprocess.run([sys.executable, "-m", "wizardcoder", "evaluate", "--task", "humaneval", "--samples", samples,
                        "--data", data, "--out", str(tmp_path / "o"), "--no-progress"], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"task": "humaneval", "n_samples": 5, "pass@1": 1.0}


def test_cli_generates_with_a_model_then_scores(he_subset, tmp_path, wizardcoder_tokenizer_dir, capsys):
    pytest.importorskip("torch")
    from wizardcoder import StarCoder
    from wizardcoder.starcoder_config import PRESETS

    data, probs = he_subset
    ckpt = tmp_path / "ckpt"
    StarCoder.from_config(PRESETS["tiny"], seed=0).save_pretrained(str(ckpt))
    for f in os.listdir(wizardcoder_tokenizer_dir):
        if f != "config.json":
            shutil.copy(os.path.join(wizardcoder_tokenizer_dir, f), ckpt / f)
    out = tmp_path / "gen"
    argv = ["evaluate", "--task", "humaneval", "--model", str(ckpt), "--data", data, "--out", str(out),
            "--n", "2", "--temperature", "0.8", "--top-p", "0.95", "--max-new-tokens", "8", "--device", "cpu",
            "--dtype", "float32", "--limit", "3", "--no-progress", "--k", "1", "2"]
    rc = main(argv)
    assert rc == 0
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert len(samples) == 6 and all("response" in s for s in samples)
    summary = json.load(open(out / "summary.json"))
    assert summary["n_samples"] == 6 and summary["missing_tasks"] == 2
    assert summary["pass@1"] == 0.0  # random weights

    # run again: the finished samples are reused (same settings), not generated again
    capsys.readouterr()
    first = (out / "samples.jsonl").read_bytes()
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().err and (out / "samples.jsonl").read_bytes() == first
    # another seed: generated again
    assert main([*argv, "--seed", "7"]) == 0
    assert "reusing" not in capsys.readouterr().err
    assert json.load(open(out / "generation.json"))["settings"]["seed"] == 7
