"""DS-1000 in both modes, on hand-written data in the releases' exact formats: the 2024 release's JSONL (completion;
Matplotlib, Tensorflow, Scipy and Pytorch problems) and the 2022 release's folders (insertion; Pandas, Numpy with a
stringTest, Scipy). Reference solutions pass, wrong ones fail, pass@1 comes per library, a library this machine lacks
is skipped (never failed), and the libraries' threads are limited inside the sandbox."""
import importlib.util
import json
import os

import pytest

from wizardcoder.benchmarks import get_benchmark
from wizardcoder.benchmarks import ds1000 as ds1000_module
from wizardcoder.cli import main
from wizardcoder.errors import DataError
from wizardcoder.eval import SandboxPool, evaluate
from wizardcoder.eval.jobs import Job
from wizardcoder.eval.results import sandbox_config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
RELEASE_2024 = os.path.join(FIXTURES, "ds1000_libraries.jsonl")
RELEASE_2022 = os.path.join(FIXTURES, "ds1000_data")
HAS_TF = importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2, sandbox_config(get_benchmark("ds1000"), None, None)) as p:
        yield p


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def results(out):
    with open(os.path.join(out, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_2024_release_scores_per_library(tmp_path, pool):
    bench = get_benchmark("ds1000")
    probs = bench.load(RELEASE_2024)
    assert list(probs) == ["511", "666", "711", "932"]
    assert [bench.group(p) for p in probs.values()] == ["Matplotlib", "Tensorflow", "Scipy", "Pytorch"]
    rows = [{"task_id": t, "solution": p.canonical} for t, p in probs.items()]
    rows += [{"task_id": "511", "solution": "plt.plot(x, y, 'b-')\nplt.show()\n"},  # solid blue: not the plot asked
             {"task_id": "932", "solution": "result = torch.stack([t[:, j].sum() for j in range(t.shape[1])])\n"},
             {"task_id": "932", "solution": "result = t.sum(dim=1)\n"},  # rows, not columns
             {"task_id": "711", "response": "Use cdist:\n```python\nresult = distance.cdist(a, b, 'cityblock')\n```"}]
    s = evaluate("ds1000", write(tmp_path / "s.jsonl", rows), str(tmp_path / "o"), data=RELEASE_2024,
                 progress=False, pool=pool)
    res = results(tmp_path / "o")
    ran = [r for r in rows if HAS_TF or r["task_id"] != "666"]
    assert [(r["task_id"], r["passed"]) for r in res] == [
        (r["task_id"], ok) for r, ok in zip(ran, [True] * (4 if HAS_TF else 3) + [False] * 4)]
    assert "test_string" in res[-3]["error"] or "for" in res[-3]["error"]  # the loop fails the token check
    groups = s["groups"]
    assert list(groups) == ["Matplotlib", "Tensorflow", "Scipy", "Pytorch"]
    assert groups["Matplotlib"] == {"n_tasks": 1, "pass@1": 0.5}
    assert groups["Scipy"] == {"n_tasks": 1, "pass@1": 0.5}
    assert groups["Pytorch"]["n_tasks"] == 1 and groups["Pytorch"]["pass@1"] == pytest.approx(1 / 3)
    if HAS_TF:
        assert groups["Tensorflow"] == {"n_tasks": 1, "pass@1": 1.0} and "skipped_tasks" not in s
    else:  # skipped for that reason, and not in the overall figure either
        assert groups["Tensorflow"] == {"n_tasks": 0, "skipped": {"n_tasks": 1,
                                                                  "reason": "needs tensorflow, not installed here"}}
        assert s["skipped_tasks"] == {"666": "needs tensorflow, not installed here"}
        assert s["n_tasks"] == 3 and s["missing_tasks"] == 0 and s["n_samples"] == 7
        assert s["pass@1"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)


def test_insertion_mode_reads_the_2022_release(tmp_path):
    bench = get_benchmark("ds1000-insertion")
    probs = bench.load(RELEASE_2022)
    assert list(probs) == ["Pandas/q0", "Pandas/q1", "Numpy/q291", "Scipy/q711"]  # the release's library order
    p = probs["Numpy/q291"]
    assert p.raw["metadata"] == {"library": "Numpy", "test_type": 3, "test_case_cnt": 1,
                                 "perturbation_type": "Origin", "perturbation_origin_id": "291"}
    assert p.canonical == "result = a ** 2\n" and bench.normalize_id(" Numpy/q291 ") == "Numpy/q291"
    with open(os.path.join(RELEASE_2022, "Numpy", "Insertion", "q291", "prompt.txt")) as f:
        text = f.read()
    prefix, suffix = text.split("[insert]")
    # WizardCoder's prompt: the Alpaca instruction holding the problem, asking for the code at the marked place
    assert bench.prompt(p) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{text.rstrip()}\n\nWrite the code that replaces [insert] in the code above: only that "
        "code, not the code around it.\n\n### Response:")
    # plain: StarCoder's fill-in-the-middle around the marker, trimmed as the bigcode harness trims
    assert bench.prompt(p, "plain") == (f"<fim_prefix>{prefix.strip()}\n<fim_suffix>\n{suffix.strip()}\n"
                                        "<fim_middle>")
    assert prefix.endswith("BEGIN SOLUTION\n<code>\n") and suffix.startswith("\n</code>\nEND SOLUTION")
    assert bench.stop == ["</code>", "# SOLUTION END"] and bench.answer_field("plain") == "completion"
    assert bench.postprocess("Here it is:\n```python\nresult = a ** 2\n```\nIt squares.") == "\nresult = a ** 2\n"


def test_insertion_mode_runs_the_2022_harness(tmp_path, pool):
    data = RELEASE_2022
    probs = get_benchmark("ds1000-insertion").load(data)
    rows = [{"task_id": t, "solution": p.canonical} for t, p in probs.items()]
    rows += [
        {"task_id": "Numpy/q291", "solution": "import os\nassert not os.path.exists('ans')\nresult = a * a\n"},
        {"task_id": "Pandas/q0", "completion": "df = df.assign(Double=df.Value + df.Value)"},  # plain style
        {"task_id": "Numpy/q291", "solution": "result = np.array([[x * x for x in r] for r in a])\n"},  # a loop
        {"task_id": "Pandas/q1", "solution": "result = df.groupby('key')['val'].mean()\n"},
        {"task_id": "Scipy/q711", "response": "Sure:\n```python\nresult = distance.cdist(a, b, 'cityblock')\n```"},
        {"task_id": "Pandas/q0", "solution": "df['Double'] = df['Value'] * 2\nexit()\n"},  # ends before its result
        {"task_id": "Scipy/q711", "solution": ""},
    ]
    s = evaluate("ds1000-insertion", write(tmp_path / "s.jsonl", rows), str(tmp_path / "o"), data=data,
                 progress=False, pool=pool)
    res = results(tmp_path / "o")
    assert [r["passed"] for r in res] == [True] * 6 + [False] * 5, [r["error"] for r in res]
    assert "stringTest" in res[6]["error"] and "test case 1: wrong result" in res[7]["error"]
    assert "Not equal to tolerance" in res[8]["error"] and "test case 1: no result" in res[9]["error"]
    assert "NameError" in res[10]["error"]  # nothing defined `result`: the 2022 harness's program says so
    assert s["groups"] == {"Pandas": {"n_tasks": 2, "pass@1": pytest.approx((2 / 3 + 1 / 2) / 2)},
                           "Numpy": {"n_tasks": 1, "pass@1": pytest.approx(2 / 3)},
                           "Scipy": {"n_tasks": 1, "pass@1": pytest.approx(1 / 3)}}


def test_absent_library_is_skipped_never_failed(tmp_path, pool, monkeypatch):
    """A machine without scipy: its problems are not run in either mode; the report says why."""
    from wizardcoder.eval.cli import format_report

    monkeypatch.setattr(ds1000_module, "_installed", lambda module: module != "scipy")
    for task, data, sid in (("ds1000-insertion", RELEASE_2022, "Scipy/q711"), ("ds1000", RELEASE_2024, "711")):
        bench = get_benchmark(task)
        probs = bench.load(data)
        assert bench.problem_unavailable(probs[sid]) == "needs scipy, not installed here"
        keep = [t for t in probs if t != "666"]  # tensorflow's problem aside
        rows = [{"task_id": t, "solution": probs[t].canonical} for t in keep]
        out = str(tmp_path / task)
        s = evaluate(task, write(tmp_path / f"{task}.jsonl", rows), out, data=data, progress=False, pool=pool)
        assert sid not in {r["task_id"] for r in results(out)} and s["verdicts"]["failed"] == 0
        assert s["skipped_tasks"] == {sid: "needs scipy, not installed here"} and s["pass@1"] == 1.0
        assert s["groups"]["Scipy"] == {"n_tasks": 0, "skipped": {"n_tasks": 1,
                                                                  "reason": "needs scipy, not installed here"}}
        report = format_report(bench, s)
        assert "  library Scipy: 1 problem skipped: needs scipy, not installed here\n" in report
        assert "  skipped (not run here): 1 problem\n" in report


def test_report_and_cli_show_pass_at_1_per_library(tmp_path, capsys):
    probs = get_benchmark("ds1000-insertion").load(RELEASE_2022)
    rows = [{"task_id": t, "solution": p.canonical} for t, p in probs.items()]
    rows.append({"task_id": "Pandas/q1", "solution": "result = 0\n"})
    out = tmp_path / "o"
    assert main(["evaluate", "--task", "ds1000-insertion", "--data", RELEASE_2022, "--samples",
                 write(tmp_path / "s.jsonl", rows), "--out", str(out), "--k", "1", "--workers", "2",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "ds1000-insertion: 5 samples over 4 problems\n  pass@1 87.50\n" in err
    assert ("  library Pandas: 2 problems  pass@1 75.00\n  library Numpy: 1 problem  pass@1 100.00\n"
            "  library Scipy: 1 problem  pass@1 100.00\n") in err
    with open(out / "summary.json") as f:
        assert json.load(f)["groups"]["Pandas"] == {"n_tasks": 2, "pass@1": 0.75}
    # the same scoring as a `run` stage: its report has the table per library
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[evaluate]\ntask = "ds1000-insertion"\ndata = "{RELEASE_2022}"\n'
                   f'samples = "{tmp_path / "s.jsonl"}"\nk = [1]\nworkers = 2\nprogress = false\n')
    assert main(["run", str(cfg)]) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert ("### DS-1000 (insertion): pass@k per library\n\n| library | problems | pass@1 | not run |\n|---|---|---|---|\n"
            "| Pandas | 2 | 0.75 |  |\n| Numpy | 1 | 1 |  |\n| Scipy | 1 | 1 |  |\n") in report, report


def test_threads_are_limited_inside_the_sandbox(pool):
    """numpy is preloaded in the worker (DS-1000's preload): its OpenBLAS must still run one thread a program, and so
    must torch."""
    code = ("import os\nimport numpy as np\na = np.random.rand(600, 600)\nfor _ in range(3):\n    a @ a\n"
            "assert len(os.listdir('/proc/self/task')) == 1, os.listdir('/proc/self/task')\n"
            "assert os.environ['OMP_NUM_THREADS'] == os.environ['OPENBLAS_NUM_THREADS'] == '1'\n")
    if importlib.util.find_spec("torch"):
        code += "import torch\nassert torch.get_num_threads() == 1\n"
    (r,) = pool.run([Job(0, "script", code, 60)])
    assert r.status == "passed", r.error


def test_wrong_2022_data_is_one_sentence(tmp_path, monkeypatch):
    bench = get_benchmark("ds1000-insertion")
    with pytest.raises(DataError, match="--data /nope: no such folder.*ds1000_data"):
        bench.load("/nope")
    with pytest.raises(DataError, match="no DS-1000 \\(insertion\\) problems found"):
        bench.load(str(tmp_path))
    monkeypatch.setenv("WIZARDCODER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="not cached here.*--data"):
        bench.load()
    q = tmp_path / "d" / "Numpy" / "Insertion" / "q0"
    q.mkdir(parents=True)
    for name in ("prompt.txt", "reference_code.txt", "code_context.txt", "test_code.py"):
        (q / name).write_text("[insert]\n")
    with pytest.raises(DataError, match="q0: lacks .cfg"):
        bench.load(str(tmp_path / "d"))
    (q / ".cfg").write_text("[library]\nlib = Numpy\n")
    with pytest.raises(DataError, match=r"q0/\.cfg: .*test_case_cnt"):
        bench.load(str(tmp_path / "d"))


def test_the_2022_folder_names_its_benchmark():
    """`recognize` (what evolve's decontamination is given) knows the release folder; its problems are references."""
    from wizardcoder.benchmarks import recognize
    from wizardcoder.evol.hygiene import load_benchmark

    assert recognize(RELEASE_2022).name == "ds1000-insertion"
    refs = load_benchmark(RELEASE_2022)
    assert [r.task_id for r in refs] == ["Pandas/q0", "Pandas/q1", "Numpy/q291", "Scipy/q711"]
    assert refs[2].solution == "result = a ** 2\n" and "[insert]" in refs[2].prompt
    with pytest.raises(DataError, match="a folder, but no benchmark's dataset folder"):
        recognize(FIXTURES)
