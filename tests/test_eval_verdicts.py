"""A sample decides nothing for others or for itself: a program cannot forge its verdict (the result channel, the
harness's functions, a lying __eq__), whatever reaches the evaluator from a sample is validated and bounded and fails
that sample alone (also when resuming), and the evaluator's own limits are bounded. docs/sandbox.md, "Verdicts"."""
import json
import sys

import pytest

from wizardcoder.cli import main
from wizardcoder.eval import SandboxConfig, SandboxPool
from wizardcoder.eval.jobs import Job
from wizardcoder.eval.pool import MAX_ERROR, verdict_fields

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

FORGED = '{"status": "passed"}'
# Each program fails its test (or never reaches it) and tries to be scored passed anyway.
FORGERIES = {
    "write a pass on fd 3 and exit": f"import os\nos.write(3, b'{FORGED}')\nos._exit(0)",
    "exec a shell that prints a pass on fd 3":
        f"import os\nos.execv('/bin/sh', ['sh', '-c', 'printf %s \\'{FORGED}\\' >&3'])",
    "write a pass on every descriptor": f"import os\nfor fd in range(3, 1024):\n    try:\n        os.write(fd, b'{FORGED}')\n"
                                        "    except OSError:\n        pass\nos._exit(0)",
    "replace _flat_json through sys.modules":
        f"import sys\nsys.modules['wizardcoder.eval.sandbox']._flat_json = lambda d: '{FORGED}'\nassert False",
    "replace the harness's describe": "import sys\n"
                                      "sys.modules['wizardcoder.eval.checks']._describe = lambda e, s: ('passed', '')\n"
                                      "assert False",
    "call the judge itself": "from wizardcoder import _sandbox\n_sandbox.judge(3, 4, lambda: None, None)",
    "always-equal result": "class Yes:\n    def __eq__(self, other):\n        return True\n"
                           "def inc(x):\n    return Yes()\nassert inc(1) == 2\nassert False",
}


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2, SandboxConfig(timeout=2.0, memory=512 << 20)) as p:
        yield p


def test_forged_verdicts_are_not_passes(pool):
    jobs = [Job(name, "script", code) for name, code in FORGERIES.items()]
    jobs.append(Job("honest", "script", "def inc(x):\n    return x + 1\nassert inc(1) == 2"))
    res = {r.id: r for r in pool.run(jobs)}
    assert res["honest"].status == "passed"
    for name in FORGERIES:
        assert res[name].status != "passed", (name, res[name])
    assert "no verdict from the harness" in res["write a pass on fd 3 and exit"].error
    assert "RuntimeError: a verdict is already being judged" in res["call the judge itself"].error


# ------------------------------------------------------------------------------------------ plus: typed compare

PLUS_TASK = {"entry_point": "f", "oracle": None, "atol": 0, "base_input": [[1], [2]], "base_expected": [2, 3],
             "base_limits": [1.0, 1.0]}
PLUS_PROGRAMS = {
    "correct": ("def f(x):\n    return x + 1", True),
    "numpy integer (evalplus accepts it)": ("import numpy as np\ndef f(x):\n    return np.int64(x + 1)", True),
    "always-equal object": ("class Yes:\n    def __eq__(self, other):\n        return True\n"
                            "def f(x):\n    return Yes()", False),
    "int subclass that lies": ("class Int(int):\n    def __eq__(self, other):\n        return True\n"
                               "    __hash__ = int.__hash__\ndef f(x):\n    return Int(0)", False),
    "list of always-equal objects": ("class Yes:\n    def __eq__(self, other):\n        return True\n"
                                     "def f(x):\n    return Yes() if x == 1 else [Yes()]", False),
    "rebind check_output through sys.modules":
        ("import sys\nsys.modules['wizardcoder.eval.checks'].check_output = lambda *a: None\n"
         "def f(x):\n    return 0", False),
}


def test_plus_outputs_are_compared_with_their_types(pool):
    pool.add_task("t", PLUS_TASK)
    res = {r.id: r for r in pool.run([Job(name, "plus", code, 2.0, "t", "base")
                                       for name, (code, _) in PLUS_PROGRAMS.items()])}
    for name, (_, passes) in PLUS_PROGRAMS.items():
        assert res[name].passed == passes, (name, res[name])
    assert res["correct"].tests == 2
    assert res["always-equal object"].failed_test == 0
    assert "wrong output: a Yes, not the int" in res["always-equal object"].error


def test_plain_check_matches_its_reference():
    np = pytest.importorskip("numpy")
    from wizardcoder import _sandbox
    from wizardcoder.eval.checks import numpy_scalar_types, plain_reference

    class Sub(float):
        pass
    leaves = numpy_scalar_types()
    deep = []
    for _ in range(200):
        deep = [deep]
    values = [1, True, None, 1.5, 2j, "s", b"b", (1, [2, {3: frozenset({4})}]), {"a": {5}}, np.float64(1), Sub(1),
              [Sub(1)], np.array([1]), object(), {1: object()}, deep, [[]] * 10]
    for v in values:
        assert _sandbox.plain(v, 1 << 20, leaves) == plain_reference(v, 1 << 20, leaves), v
    assert not _sandbox.plain(list(range(100)), 50, ())  # past its item budget: not plain


# ------------------------------------------------------------------------------------------ malformed reports

@pytest.mark.parametrize("raw,want", [
    (b'{"status": "failed", "error": ["a", "list"]}', "crashed"),
    (b'{"status": "failed", "error": {"a": "dict"}}', "crashed"),
    (b'{"status": "failed", "error": "x", "seconds": NaN}', "crashed"),  # NaN is not JSON
    (b'{"status": "passed", "seconds": "soon"}', "passed"),
    (b'{"status": "failed", "failed_test": true}', "crashed"),
    (b'{"status": "failed", "failed_test": -1}', "crashed"),
    (b'{"status": "won"}', "crashed"),
    (b'[1, 2]', "crashed"),
    (b'\xff\xfe', "crashed"),
    (b'[' * 100000, "crashed"),
])
def test_verdict_fields_are_validated(raw, want):
    got = verdict_fields(raw)
    assert got["status"] == want, got
    assert set(got) <= {"status", "error", "failed_test", "tests"}  # never the program's `seconds`


def test_a_huge_error_is_cut():
    got = verdict_fields(json.dumps({"status": "failed", "error": "E" * (1 << 20)}).encode())
    assert got["status"] == "failed" and len(got["error"]) == MAX_ERROR


def write_dataset(path):
    row = {"task_id": "HumanEval/0", "prompt": "def inc(x):\n", "entry_point": "inc",
           "canonical_solution": "    return x + 1\n", "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
    path.write_text(json.dumps(row) + "\n")


BAD_REPORTS = {  # what a program wrote on fd 3 (before the fix, taken as its verdict)
    "list error": '{"status": "failed", "error": ["a"]}',
    "dict error": '{"status": "failed", "error": {"a": 1}}',
    "NaN seconds": '{"status": "failed", "error": "x", "seconds": NaN}',
    "1 MB error": json.dumps({"status": "failed", "error": "E" * (1 << 20)}),
}


def strict_json(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the output"))


def test_malformed_reports_fail_alone_and_resume(tmp_path, capsys):
    """Programs that write malformed verdicts, and one whose exception's name is 1 MB: the run ends with a summary,
    the correct samples pass, the bad ones fail, nothing unbounded or non-JSON is written; a results.jsonl holding
    such rows (a run of an older version) is scored again on resume."""
    data, samples, out = tmp_path / "data.jsonl", tmp_path / "s.jsonl", tmp_path / "out"
    write_dataset(data)
    body = "    return x + 1\n"
    programs = {name: f"import os\nos.write(3, {report!r}.encode())\nos._exit(0)"
                for name, report in BAD_REPORTS.items()}
    programs["1 MB exception name"] = "raise type('E' * (1 << 20), (Exception,), {})()"
    rows = [{"task_id": "HumanEval/0", "completion": body}]
    rows += [{"task_id": "HumanEval/0", "completion": body + code} for code in programs.values()]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["evaluate", "--task", "humaneval", "--samples", str(samples), "--data", str(data), "--out", str(out),
            "--workers", "2", "--no-progress", "--k", "1"]
    assert main(args) == 0
    results = [strict_json(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True] + [False] * len(programs)
    summary_text = (out / "summary.json").read_text()
    summary = strict_json(summary_text)
    assert max(len(k) for k in summary["failures"]) <= 100
    assert all(len(r["error"]) <= MAX_ERROR for r in results)

    # an older version's rows: a list as error, NaN seconds, a 1 MB error; resuming scores those samples again
    results[1]["error"] = ["a"]
    results[2]["seconds"] = float("nan")
    results[3]["error"] = "E" * (1 << 20)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    capsys.readouterr()
    assert main(args) == 0
    again = [strict_json(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in again] == [True] + [False] * len(programs)
    assert all(isinstance(r["error"], str) and len(r["error"]) <= MAX_ERROR for r in again)


# ------------------------------------------------------------------------------------------ the evaluator's limits

@pytest.mark.parametrize("flags,message", [
    (["--workers", "100000"], "--workers 100000: at most"),
    (["--timeout", "1e10"], "--timeout 10000000000.0: at most 3600 CPU seconds per program"),
])
def test_workers_and_timeout_are_bounded(tmp_path, capsys, flags, message):
    data, samples, out = tmp_path / "data.jsonl", tmp_path / "s.jsonl", tmp_path / "out"
    write_dataset(data)
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return x + 1\n"}) + "\n")
    assert main(["evaluate", "--task", "humaneval", "--samples", str(samples), "--data", str(data), "--out", str(out),
                 "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_pool_workers_are_bounded():
    from wizardcoder.errors import ConfigError

    with pytest.raises(ConfigError, match="at most"):
        SandboxPool(100000)
