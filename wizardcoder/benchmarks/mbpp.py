"""MBPP (Austin et al. 2021; the 500-problem test split, tasks 11-510) and MBPP+ (EvalPlus).

| task  | data (upstream format)                                | a sample's program                         |
|-------|-------------------------------------------------------|--------------------------------------------|
| mbpp  | mbpp.jsonl (google-research; ships in this package)    | code + test_setup_code + the three asserts |
| mbpp+ | MbppPlus.jsonl.gz (evalplus v0.2.0)                    | prompt + completion, on base and plus inputs |

WizardCoder's instruction prompts: mbpp_gen.py for MBPP (the text, "Test examples:" and the asserts) and the
instructions of its mbppplus.json for MBPP+ (rebuilt here from the MBPP+ docstring prompt, or taken verbatim from
that file with `instructions=`).
"""
from __future__ import annotations

import re

from .base import INSTRUCTION, Benchmark, Problem
from .plus import PlusBenchmark
from .sources import Source

# the test-split test whose list is too long to show the model (WizardCoder's mbpp_gen.py does the same)
MBPP_LONG_TEST = {493: "calculate_polygons(startx, starty, endx, endy, radius)"}
TEST_SPLIT = range(11, 511)  # 1-10 prompt, 11-510 test, 511-600 validation, 601-974 train
# evalplus 0.3.1's special output checks for MBPP+ (by entry point)
MBPP_ORACLES = ("are_equivalent", "sum_div", "surface_Area", "digit_distance_nums")
MBPP_OUTPUT_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
                      "intersection_array", "find_dissimilar", "Diff")
MBPP_OUTPUT_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")


class Mbpp(Benchmark):
    """MBPP's test split; `all_splits=True` reads all 974 problems (for decontamination)."""

    name = "mbpp"
    title = "MBPP"
    source = Source("mbpp.jsonl.gz", package=("wizardcoder.eval", "data/mbpp.jsonl.gz"),
                    url="https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl")
    required = ("task_id", "text", "code", "test_list")
    timeout = 10.0  # its canonical solution of task 123 takes about 3-5 s
    continues_prompt = False  # MBPP's prompt is prose: a completion is the whole program
    fence_close = "\n```"
    cuts = Benchmark.cuts + ("# Test examples",)

    def __init__(self, all_splits: bool = False):
        self.all_splits = all_splits

    def problem(self, rec: dict, index: int) -> Problem | None:
        if not self.all_splits and int(rec["task_id"]) not in TEST_SPLIT:
            return None
        return Problem(str(rec["task_id"]), "", None, rec["code"], text=rec["text"], tests=list(rec["test_list"]),
                       raw=rec)

    def every_problem(self, path: str) -> dict[str, Problem]:
        """All 974 problems, every split."""
        return Mbpp(all_splits=True).read(path)

    def qualified_id(self, problem: Problem) -> str:
        return f"Mbpp/{problem.task_id}"  # as MBPP+ spells it

    def instruction(self, problem: Problem, instructions: dict | None = None) -> str:
        """mbpp_gen.py's input: newline, text, "Test examples:", one assert per line (task 493: the call only)."""
        text = f"\n{problem.text}\nTest examples:"
        if int(problem.task_id) in MBPP_LONG_TEST:
            text += f"\n{MBPP_LONG_TEST[int(problem.task_id)]}"
        else:
            for test in problem.tests:
                text += f"\n{test}"
        return (INSTRUCTION + text).replace("    ", "\t")

    def plain_prompt(self, problem: Problem) -> str:
        return f'"""\n{problem.text}\n{problem.tests[0]}\n"""\n'

    def entry_point(self, problem: Problem) -> str | None:
        """The function MBPP's asserts call."""
        m = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:set\(|math\.isclose\(|abs\()?\s*([A-Za-z_]\w*)\s*\(",
                      problem.tests[0] if problem.tests else "")
        return m.group(1) if m else None

    def program(self, problem: Problem, code: str) -> str:
        r = problem.raw
        return code + "\n" + (r.get("test_setup_code") or "") + "\n" + "\n".join(r["test_list"]) + "\n"


class MbppPlus(PlusBenchmark):
    name = "mbpp+"
    title = "MBPP+"
    source = Source("MbppPlus.jsonl.gz", cache_names=("MbppPlus-v0.2.0.jsonl",),
                    url="https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz")
    id_prefix = "Mbpp/"
    fence_close = "\n```"
    cuts = Benchmark.cuts + ("assert",)

    def problem(self, rec: dict, index: int) -> Problem:
        rec = dict(rec, base_input=mbpp_deserialize_inputs(rec["task_id"], rec["base_input"]),
                   plus_input=mbpp_deserialize_inputs(rec["task_id"], rec["plus_input"]))
        return super().problem(rec, index)

    def instruction(self, problem: Problem, instructions: dict | None = None) -> str:
        text = (instructions or {}).get(problem.task_id) or mbppplus_instruction(problem)
        return text.replace("    ", "\t")

    def oracle(self, problem: Problem) -> str | None:
        entry = problem.entry_point
        if entry in MBPP_ORACLES:
            return entry
        if entry in MBPP_OUTPUT_SET_EQ:
            return "set_eq"
        return "not_none" if entry in MBPP_OUTPUT_NOT_NONE else None


def mbppplus_instruction(problem: Problem) -> str:
    """The MBPP+ instruction of WizardCoder's mbppplus.json, rebuilt from the docstring prompt: the text, "Your code
    should satisfy the following assertion:" and the assert in a python block."""
    body = problem.prompt.strip()
    if body.startswith('"""') and body.endswith('"""'):
        body = body[3:-3].strip()
    lines = body.split("\n")
    k = next((i for i, line in enumerate(lines) if line.lstrip().startswith("assert")), len(lines))
    text, asserts = "\n".join(lines[:k]).strip(), "\n".join(lines[k:]).strip()
    if not text.endswith("."):
        text += "."
    return f"{text} Your code should satisfy the following assertion:\n```python\n{asserts}\n```"


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
